"""The BubbleFence panel through FiftyOne's own executor: its callbacks, traces and shapes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.fiftyone

fo = pytest.importorskip("fiftyone")
fob = pytest.importorskip("fiftyone.brain")
foo = pytest.importorskip("fiftyone.operators")

from fiftyone.operators.registry import OperatorRegistry  # noqa: E402

import bubblefence_plugin.fo as bfo  # noqa: E402
from bubblefence_plugin.fo import map as viz  # noqa: E402
from bubblefence_plugin.fo import runs  # noqa: E402

F = fo.ViewField
PLUGIN = "@bubblefence/bubblefence"
PANEL = f"{PLUGIN}/bubblefence_panel"


class Reply:
    """What one panel event sent back to the App."""

    def __init__(self, result: Any):
        self.state: dict[str, Any] = {}
        self.data: dict[str, Any] = {}
        self.ops: dict[str, list[dict]] = {}
        for request in result.executor.to_json()["requests"]:
            uri, params = request["operator_uri"], request["params"]
            if uri == "patch_panel_state":
                self.state.update(params["state"])
            elif uri == "patch_panel_data":
                self.data.update(params["data"])
            else:
                self.ops.setdefault(uri, []).append(params)
        self.output = self.ops["show_panel_output"][-1]["output"]

    @property
    def traces(self) -> dict[str, dict]:
        return {t["name"]: t for t in self.data["plot"]}

    @property
    def shapes(self) -> list[dict]:
        return self.state["plot_layout"]["shapes"]

    def properties(self) -> dict[str, Any]:
        """Every property of the rendered panel, nested stacks flattened, by name."""
        found = {}
        stack = [self.output["type"]["properties"]]
        while stack:
            for name, prop in stack.pop().items():
                found[name] = prop
                stack.append(prop["type"].get("properties") or {})
        return found


def event(samples: Any, method: str, state: dict | None = None, **params: Any) -> Reply:
    ctx = {"view": samples} if isinstance(samples, fo.DatasetView) else {"dataset": samples}
    ctx["params"] = {"__method__": method, "panel_id": "p1", "panel_state": state or {}, **params}
    return Reply(foo.execute_operator(PANEL, ctx=ctx))


def loaded_view(params: dict, dataset: Any) -> Any:
    """The view a ``set_view`` request asks the App to load."""
    return fo.DatasetView._build(dataset, params["view"])


@pytest.fixture
def split_dataset(field_dataset):
    bfo.split(field_dataset, embeddings_field="emb")
    return field_dataset


def test_panel_is_registered_with_its_label():
    registry = OperatorRegistry()
    assert registry.operator_exists(PANEL)
    assert registry.get_operator(PANEL).config.label == "BubbleFence"
    assert registry.list_errors() == []


def test_without_a_run_the_panel_explains_and_offers_the_split(field_dataset):
    reply = event(field_dataset, "on_load")
    assert reply.state["has_state"] is False
    props = reply.properties()
    intro = props["intro"]["default"]
    assert "no BubbleFence split yet" in intro
    assert props["run_split"]["view"]["operator"] == f"{PANEL}#run_split"
    assert "plot" not in props
    # The button opens the split's form and re-hydrates the panel when the round is done.
    (prompt,) = event(field_dataset, "run_split").ops["prompt_user_for_operation"]
    assert prompt["operator_uri"] == f"{PLUGIN}/bubblefence_split"
    assert prompt["on_success"] == f"{PANEL}#refresh"


def test_map_has_a_circle_per_bubble_and_points_coloured_by_split(split_dataset):
    ds = split_dataset
    bf, _ = bfo.load_state(ds)
    anchors = bf.anchors
    reply = event(ds, "on_load")
    assert reply.state["has_state"] and reply.state["has_map"]

    outer = [s for s in reply.shapes if not s["name"].endswith("inner")]
    inner = [s for s in reply.shapes if s["name"].endswith("inner")]
    assert len(outer) == len(anchors)
    assert len(inner) == int((anchors["inner_radius"] > 0).sum()) >= 1
    assert all(s["type"] == "circle" and s["xref"] == "x" for s in reply.shapes)
    # A shell is drawn in the colour of the split it holds.
    for shape in reply.shapes:
        layout = anchors.loc[int(shape["name"].split()[1]), "layout"]
        inner_split, outer_split = ("validation", "test")[:: 1 if layout == "inner_val" else -1]
        expected = inner_split if shape["name"].endswith("inner") else outer_split
        assert shape["line"]["color"] == viz.SPLIT_COLORS[expected]

    traces = reply.traces
    counts = ds.count_values("split")
    for split in ("train", "validation", "test"):
        trace = traces[split]
        assert trace["type"] == "scattergl"
        assert trace["marker"]["color"] == viz.SPLIT_COLORS[split]
        assert len(trace["x"]) == len(trace["ids"]) == counts[split]
        assert set(trace["ids"]) == set(ds.match(F("split") == split).values("id"))
    bubbles = traces[bfo.BUBBLES_TRACE]
    assert bubbles["ids"] == [str(a) for a in anchors["anchor_id"]]
    assert "LID" in bubbles["text"][0] and "created in round 0" in bubbles["text"][0]

    props = reply.properties()
    assert props["plot"]["view"]["name"] == "PlotlyView"
    assert props["export"]["view"]["operator"] == f"{PLUGIN}/bubblefence_export"
    summary = reply.state["summary_md"]
    assert f"| 0 | {counts['train']} | {counts['validation']} | {counts['test']} |" in summary
    assert "target 0.20" in summary and f"{len(anchors)} in all" in summary
    assert reply.state["plot"] is None  # the App's stale copy of the plot is dropped


def test_clicking_a_bubble_or_a_point_shows_that_bubbles_samples(split_dataset):
    ds = split_dataset
    anchor = ds.exists("anchor_id").first()["anchor_id"]
    members = set(ds.match(F("anchor_id") == anchor).values("id"))

    reply = event(ds, "on_click", trace=bfo.BUBBLES_TRACE, id=str(anchor), idx=0)
    (request,) = reply.ops["set_view"]
    assert set(loaded_view(request, ds).values("id")) == members

    member = sorted(members)[0]
    split = ds[member]["split"]
    reply = event(ds, "on_click", trace=split, id=member, idx=0)
    assert set(loaded_view(reply.ops["set_view"][0], ds).values("id")) == members

    train_id = ds.match(F("split") == "train").first().id
    reply = event(ds, "on_click", trace="train", id=train_id, idx=0)
    assert loaded_view(reply.ops["set_view"][0], ds).values("id") == [train_id]


def test_lasso_selects_the_points_and_reset_clears_view_and_selection(split_dataset):
    ds = split_dataset
    ids = ds.limit(3).values("id")
    points = [{"id": i, "trace": "train", "idx": k} for k, i in enumerate(ids)]
    points.append({"id": "0", "trace": bfo.BUBBLES_TRACE, "idx": 0})
    reply = event(ds, "on_lasso", data=points)
    assert [s["id"] for s in reply.ops["set_selected_samples"][0]["samples"]] == ids

    reply = event(ds.limit(10), "reset_view")
    assert "clear_view" in reply.ops and "clear_selected_samples" in reply.ops
    assert sum(len(t["ids"]) for n, t in reply.traces.items() if n != "bubbles") == 200


def test_a_view_of_one_bubble_hydrates_to_that_bubble(split_dataset):
    ds = split_dataset
    anchor = ds.exists("anchor_id").first()["anchor_id"]
    view = ds.match(F("anchor_id") == anchor)
    reply = event(view, "on_change_view")
    assert {s["name"].split()[1] for s in reply.shapes} == {str(anchor)}
    drawn = [i for n, t in reply.traces.items() if n != "bubbles" for i in t["ids"]]
    assert sorted(drawn) == sorted(view.values("id"))
    assert "Bubbles: **1** in the view" in reply.state["summary_md"]


def test_colour_by_round_and_subsampling(split_dataset, monkeypatch):
    ds = split_dataset
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/new{i}.png") for i in range(30)])
    from conftest import clustered_embeddings

    ds.exists("emb", False).set_values("emb", list(clustered_embeddings(30, seed=9)))
    bfo.split(ds, embeddings_field="emb")

    reply = event(ds, "on_color_by", value="round")
    assert reply.state["color_by"] == "round"
    traces = reply.traces
    assert len(traces["round 0"]["ids"]) == 200 and len(traces["round 1"]["ids"]) == 30
    assert traces["round 0"]["marker"]["color"] != traces["round 1"]["marker"]["color"]

    monkeypatch.setattr(viz, "MAX_POINTS", 50)
    monkeypatch.setattr(viz, "MAX_SHAPE_BUBBLES", 1)
    assert len(viz.load_layout(ds).anchors) > 1
    reply = event(ds, "refresh", state={"color_by": "split"})
    drawn = sum(len(t["ids"]) for n, t in reply.traces.items() if n.startswith(("t", "v")))
    assert drawn <= 50
    assert "seeded random subsample of **50** of the 230 samples" in reply.state["map_note"]
    assert len({s["name"].split()[1] for s in reply.shapes}) == 1
    assert "more bubbles" in reply.traces and "only their outline" in reply.state["map_note"]


def test_missing_map_offers_to_compute_it(split_dataset):
    ds = split_dataset
    viz.delete_map(ds)
    reply = event(ds, "on_load")
    assert reply.state["has_state"] and not reply.state["has_map"]
    assert "build_map" in reply.properties()
    reply = event(ds, "build_map")
    assert reply.ops["notify"][0]["variant"] == "success"
    assert reply.state["has_map"] and viz.has_map(ds)

    reply = event(ds, "refit_map", state={"map_settings": {"layout_method": "tsne"}})
    assert viz.load_layout(ds).layout.method == "tsne"
    assert "TSNE" in reply.state["map_note"]


def test_audit_figures_are_shown_when_a_report_exists(split_dataset, monkeypatch):
    import panels.bubblefence_panel as panel_module

    report = {"created_at": "2026-01-02T03:04:05Z", "source": "split", "metrics": {}}
    rows = [
        {
            "key": "leakage_eval_train@0.95",
            "metric": "Leakage@0.95 eval→train",
            "split": "0.0000",
            "baseline": "0.2500",
        },
        {
            "key": "diversity",
            "metric": "Diversity score train / validation / test",
            "split": "0.9",
            "baseline": "1",
        },
        {
            "key": "counts",
            "metric": "Samples train / validation / test",
            "split": "1 / 2 / 3",
            "baseline": "-",
        },
    ]
    monkeypatch.setattr(bfo, "latest_report", lambda s: report)
    monkeypatch.setattr(bfo, "summary_rows", lambda r: rows)
    markdown = panel_module._audit_markdown(split_dataset)
    assert "2026-01-02T03:04:05Z" in markdown
    assert "| Leakage@0.95 eval→train | 0.0000 | 0.2500 |" in markdown
    assert "Diversity score" in markdown and "Samples train" not in markdown

    monkeypatch.setattr(bfo, "latest_report", lambda s: None)
    assert panel_module._audit_markdown(split_dataset) is None

    def broken(samples):
        raise KeyError("metrics")

    monkeypatch.setattr(bfo, "latest_report", broken)
    assert "could not be read" in panel_module._audit_markdown(split_dataset)


def test_samples_left_off_the_map_are_counted_and_update_places_them(field_dataset, monkeypatch):
    ds = field_dataset
    bfo.split(ds.limit(150), embeddings_field="emb")
    monkeypatch.setattr(viz, "update_map", lambda *a, **k: 1 / 0)
    assert "map_error" in bfo.split(ds, embeddings_field="emb")
    monkeypatch.undo()
    reply = event(ds, "on_load")
    assert "**50** split samples have no point yet" in reply.state["map_note"]
    reply = event(ds, "build_map")
    assert "no point yet" not in reply.state["map_note"]
    assert sum(len(t["ids"]) for n, t in reply.traces.items() if n != "bubbles") == 200


def test_a_foreign_run_in_the_maps_place_is_reported_not_crashed_on(split_dataset):
    ds = split_dataset
    viz.delete_map(ds)
    ds.register_run(viz.LAYOUT_KEY, ds.init_run(method="someone_else"))
    fob.compute_visualization(ds, points=np.zeros((len(ds), 2)), brain_key=viz.VIZ_KEY)
    reply = event(ds, "on_load")
    assert not reply.state["has_map"]
    assert "not written by BubbleFence" in reply.properties()["no_map"]["default"]
    reply = event(ds, "build_map")  # refused, and the other run is left alone
    assert "not written by BubbleFence" in reply.ops["notify"][0]["message"]
    assert runs.run_params(ds, viz.LAYOUT_KEY)["method"] == "someone_else"
