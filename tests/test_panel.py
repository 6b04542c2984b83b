"""The BubbleFence panel through FiftyOne's own executor: its callbacks, traces and sizes."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.fiftyone, pytest.mark.usefixtures("new_panel")]

fo = pytest.importorskip("fiftyone")
fob = pytest.importorskip("fiftyone.brain")
foo = pytest.importorskip("fiftyone.operators")

from conftest import PANEL_URI, add_embedded_samples, operator_requests  # noqa: E402
from fiftyone.operators.registry import OperatorRegistry  # noqa: E402

import bubblefence_plugin.fo as bfo  # noqa: E402
from bubblefence_plugin.fo import map as viz  # noqa: E402
from bubblefence_plugin.fo import runs  # noqa: E402

F = fo.ViewField
PLUGIN = "@bubblefence/bubblefence"
PANEL = PANEL_URI


class Reply:
    """What one panel event sent back to the App."""

    def __init__(self, result: Any):
        self.state: dict[str, Any] = {}
        self.data: dict[str, Any] = {}  # as sent: keys may be paths such as "plot[0].marker"
        self.ops: dict[str, list[dict]] = {}
        for request in result.executor.to_json()["requests"]:
            uri, params = request["operator_uri"], request["params"]
            if uri == "patch_panel_state":
                self.state.update(params["state"])
            elif uri == "patch_panel_data":
                self.data.update(params["data"])
            else:
                self.ops.setdefault(uri, []).append(params)
        outputs = self.ops.get("show_panel_output")
        self.output = outputs[-1]["output"] if outputs else None  # None: not re-rendered

    @property
    def plot_key(self) -> str:
        """The key of the plot the rendered panel shows, as the App finds it."""
        (key,) = [name for name in self.properties() if name.startswith("plot_")]
        return key

    @property
    def figure(self) -> list[dict]:
        """The traces of the figure this event drew, under its new key."""
        return self.data[self.plot_key]

    @property
    def traces(self) -> dict[str, dict]:
        return {t["name"]: t for t in self.figure if t.get("name")}

    @property
    def points(self) -> dict:
        return self.figure[0]

    @property
    def legend(self) -> list[dict]:
        """The legend entries of the points' colours."""
        return [t for t in self.figure if t.get("legendgroup") == "points"]

    def outlines(self, shell: str) -> dict[str, dict]:
        """The outline traces of ``shell`` ("bubble, outer ring" or "inner shell"), by split."""
        return {n.split()[-1]: t for n, t in self.traces.items() if n.startswith(shell)}

    @property
    def has_map(self) -> bool:
        return any(name.startswith("plot_") for name in self.properties())

    def text(self, name: str) -> str | None:
        """The text of the rendered panel's markdown ``name`` (None: not shown)."""
        prop = self.properties().get(name)
        return prop["default"] if prop else None

    def properties(self) -> dict[str, Any]:
        """Every property of the rendered panel, nested stacks flattened, by name."""
        found = {}
        stack = [self.output["type"]["properties"]]
        while stack:
            for name, prop in stack.pop().items():
                found[name] = prop
                stack.append(prop["type"].get("properties") or {})
        return found


def event(
    samples: Any,
    handler: str,
    state: dict | None = None,
    shown: list[str] | None = None,
    selected: list[str] | None = None,
    **params: Any,
) -> Reply:
    """Runs the panel's ``handler`` on ``samples`` (the App's view) with ``params``;
    ``shown``: the ids of the App's extended selection, sent as the App sends them;
    ``selected``: the App's selected samples."""
    ctx = {"view": samples} if isinstance(samples, fo.DatasetView) else {"dataset": samples}
    ctx["selected"] = selected or []
    if shown is not None:
        ctx["extended"] = {"fiftyone.core.stages.Select": {"sample_ids": shown, "ordered": False}}
        ctx["extended_selection"] = {"selection": shown, "scope": "bubblefence"}
    ctx["params"] = {"__method__": handler, "panel_id": "p1", "panel_state": state or {}, **params}
    return Reply(foo.execute_operator(PANEL, ctx=ctx))


def loaded_view(params: dict, dataset: Any) -> Any:
    """The view a ``set_view`` request asks the App to load."""
    return fo.DatasetView._build(dataset, params["view"])


def polygons(trace: dict) -> int:
    """Closed polygons in an outline trace (None separates them)."""
    return trace["x"].count(None)


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
    assert reply.state == {}  # the panel renders from what the server drew
    props = reply.properties()
    intro = props["intro"]["default"]
    assert "no BubbleFence split yet" in intro
    assert props["run_split"]["view"]["operator"] == f"{PANEL}#run_split"
    assert not any(name.startswith("plot") for name in props)
    # The button opens the split's form and re-hydrates the panel when the round is done.
    (prompt,) = event(field_dataset, "run_split").ops["prompt_user_for_operation"]
    assert prompt["operator_uri"] == f"{PLUGIN}/bubblefence_split"
    assert prompt["on_success"] == f"{PANEL}#after_split"
    assert prompt["params"] == {"view_target": "DATASET"}  # not a selection left by a lasso
    # A sidebar filter alone is the view the panel counts: the split runs on it.
    filters = {"tags": {"values": ["x"], "exclude": False}}
    params = {"__method__": "run_split", "panel_id": "p1", "panel_state": {}}
    reply = foo.execute_operator(
        PANEL, ctx={"dataset": field_dataset, "filters": filters, "params": params}
    )
    (prompt,) = operator_requests(reply)["prompt_user_for_operation"]
    assert prompt["params"] == {"view_target": "CURRENT_VIEW"}
    # Export opens on the same target: after a lasso and Exclude, FiftyOne's default
    # (the selection) was the samples just excluded (found by a tester).
    (prompt,) = event(field_dataset, "export", selected=field_dataset.limit(3).values("id")).ops[
        "prompt_user_for_operation"
    ]
    assert prompt["operator_uri"] == f"{PLUGIN}/bubblefence_export"
    assert prompt["params"] == {"view_target": "DATASET"}


def test_a_saved_view_with_a_sidebar_filter_is_what_the_panel_counts_and_splits(field_dataset):
    """FiftyOne's current view of a saved view leaves out the sidebar's filters: the panel
    counted and drew the whole saved view, a lasso could exclude samples the grid hid, and
    Run split split them all (found by a tester)."""
    ds = field_dataset
    ids = ds.values("id")
    ds.select(ids[:100]).tag_samples("b2")
    ds.select(ids[:30]).tag_samples("b3")
    ds.save_view("sv_b2", ds.match_tags("b2"))
    bfo.split(ds.select(ids[150:]), embeddings_field="emb")
    filters = {"tags": {"values": ["b3"], "exclude": False}}
    ctx = {"dataset": ds, "view_name": "sv_b2", "filters": filters}
    params = {"__method__": "run_split", "panel_id": "p1", "panel_state": {}}
    reply = foo.execute_operator(PANEL, ctx={**ctx, "params": params})
    (prompt,) = operator_requests(reply)["prompt_user_for_operation"]
    assert prompt["params"] == {"view_target": "CURRENT_VIEW"}
    reply = foo.execute_operator(PANEL, ctx={**ctx, "params": {**params, "__method__": "on_load"}})
    assert "30 samples not split yet" in str(reply.executor.to_json())
    # The split runs on the 30 samples the grid shows.
    split_params = {"embeddings": "field", "embeddings_field": "emb", **prompt["params"]}
    foo.execute_operator(f"{PLUGIN}/bubblefence_split", ctx={**ctx, "params": split_params})
    assert sorted(ds.exists("split").values("id")) == sorted(ids[:30] + ids[150:])


def test_map_draws_points_bubble_outlines_and_a_legend_for_every_mark(split_dataset):
    ds = split_dataset
    anchors = bfo.load_state(ds)[0].anchors
    reply = event(ds, "on_load")
    assert reply.has_map and reply.text("summary")
    assert reply.state == {}  # the plot is panel data, and the rest is kept on the server

    # One WebGL trace of points, coloured by split, held-out splits drawn last (on top).
    points = reply.points
    assert points["name"] == viz.POINTS_TRACE and points["type"] == "scattergl"
    split_of = dict(zip(*ds.values(["id", "split"]), strict=True))
    assert sorted(points["ids"]) == sorted(split_of)
    drawn_splits = [split_of[i] for i in points["ids"]]
    assert points["marker"]["color"] == [viz.SPLIT_COLORS[s] for s in drawn_splits]
    assert drawn_splits.index("validation") > max(
        k for k, s in enumerate(drawn_splits) if s == "train"
    )
    # Its legend: one entry per split drawn.
    shown = [(t["name"], t["marker"]["color"]) for t in reply.legend]
    assert shown == [(s, viz.SPLIT_COLORS[s]) for s in ("train", "validation", "test")]
    assert reply.legend[0]["legendgrouptitle"]["text"] == "Points by split:"

    # Bubbles: a solid outline per bubble in its outer ring's colour, a dotted one per
    # inner shell in the inner split's colour; both named in the legend.
    outer_split = np.where(anchors["layout"] == "inner_val", "test", "validation")
    outer = reply.outlines("bubble, outer ring")
    assert {s: polygons(t) for s, t in outer.items()} == {
        s: int((outer_split == s).sum()) for s in set(outer_split)
    }
    inner = reply.outlines("inner shell")
    assert sum(polygons(t) for t in inner.values()) == int((anchors["inner_radius"] > 0).sum())
    for split, trace in outer.items():
        assert (
            trace["line"]["dash"] == "solid" and trace["line"]["color"] == viz.SPLIT_COLORS[split]
        )
    assert all(t["line"]["dash"] == "dot" for t in inner.values())
    # SVG polylines: no WebGL buffers and shaders per plot mount (`map.OUTLINE_TRACE_TYPE`).
    assert {t["type"] for t in (*outer.values(), *inner.values())} == {"scatter"}
    assert (
        "solid: whole bubble, dotted: inner shell"
        in (reply.figure[1 + len(reply.legend)]["legendgrouptitle"]["text"])
    )
    centres = reply.traces[bfo.BUBBLES_TRACE]
    assert centres["ids"] == [str(a) for a in anchors["anchor_id"]]
    # Few bubbles: labelled, each number at its centre or left out where it would
    # cover a larger bubble's (`map._spaced`).
    assert any(centres["text"])
    assert all(t in ("", i) for t, i in zip(centres["text"], centres["ids"], strict=True))
    assert "LID %{customdata[3]}" in centres["hovertemplate"]
    assert [c[0] for c in centres["customdata"]] == anchors["anchor_id"].tolist()
    assert {c[6] for c in centres["customdata"]} == {0}  # created in round 0
    # The shells a bubble's hover names hold samples: an empty ring is not named.
    for _, shells, _, n_validation, n_test in (c[1:6] for c in centres["customdata"]):
        if "outer ring validation" in shells or "all validation" in shells:
            assert n_validation > 0
        if "outer ring test" in shells or "all test" in shells:
            assert n_test > 0

    # Dark hover box, legend below the plot (clear of the toolbar), no SVG shapes, no
    # wheel zoom.
    props = reply.properties()
    plot = props[reply.plot_key]
    layout = plot["view"]["layout"]
    assert "shapes" not in layout and layout["hoverlabel"]["bgcolor"] == viz.HOVER_STYLE["bgcolor"]
    # The App's re-renders hand Plotly copies of the arrays: the revision tells it
    # that the figure is unchanged (see `_draw`).
    assert layout["datarevision"] == reply.plot_key
    assert layout["legend"]["orientation"] == "h" and layout["legend"]["y"] < 0
    assert plot["view"]["name"] == "PlotlyView" and plot["view"]["config"]["scrollZoom"] is False
    assert props["export"]["view"]["operator"] == f"{PANEL}#export"
    assert props["color_split"]["view"]["variant"] == "contained"
    assert props["color_round"]["view"]["params"] == {"value": "round"}
    assert "A **solid** outline holds a whole bubble" in reply.text("note")
    counts = ds.count_values("split")
    summary = reply.text("summary")
    assert f"| 0 | {counts['train']} | {counts['validation']} | {counts['test']} |" in summary
    assert (
        "Eval share" in summary and "target 0.20" in summary and f"{len(anchors)} in all" in summary
    )
    assert "not_split" not in props


def test_recolouring_draws_a_new_plot_and_drops_the_apps_copy(split_dataset, monkeypatch):
    ds = split_dataset
    add_embedded_samples(ds, 30, seed=9)
    bfo.split(ds, embeddings_field="emb")
    loaded = event(ds, "on_load")
    key, ids = loaded.plot_key, loaded.points["ids"]

    # The state comes back with the App's copy of the plot (the reason's input copies
    # the whole form): the copy is dropped. The figure, in the new colours, goes to a
    # plot of its own, mounted with its data: the App has no change of it to copy.
    # Nothing else of the panel state changes (each change reloads the App's page).
    # The points drawn are recoloured, not read from the samples again.
    with monkeypatch.context() as patched:
        patched.setattr(viz, "_drawn_points", lambda *a: pytest.fail("points read again"))
        reply = event(ds, "on_color_by", state={key: loaded.figure}, value="round")
    assert reply.state == {key: None}
    assert reply.plot_key != key and reply.data[key] is None
    assert reply.properties()[reply.plot_key]["view"]["layout"]["datarevision"] == reply.plot_key
    assert reply.properties()["color_round"]["view"]["variant"] == "contained"
    assert reply.points["ids"] == ids
    round_of = dict(zip(*ds.values(["id", "bubblefence_round"]), strict=True))
    rounds = [round_of[i] for i in ids]
    assert reply.points["text"] == [f"round {r}" for r in rounds]
    assert reply.points["marker"]["color"] == [viz.ROUND_COLORS[r] for r in rounds]
    assert [t["name"] for t in reply.legend] == ["round 0", "round 1"]
    assert reply.text("summary") == loaded.text("summary")

    # A curation score: none yet, then the typicality scale's colours, grey where none.
    reply = event(ds, "on_color_by", value="typicality")
    assert [t["name"] for t in reply.legend] == [
        "typicality not computed yet: the BubbleFence sample operator writes it"
    ]
    scores = dict(zip(ids[:10], np.linspace(0.0, 1.0, 10).tolist(), strict=True))
    ds.set_values(viz.SCORE_COLOR_FIELDS["typicality"], scores, key_field="id")
    reply = event(ds, "on_color_by", value="typicality")
    colors = reply.points["marker"]["color"]
    assert len(set(colors[:10])) == 10 and set(colors[10:]) == {viz.NO_SCORE_COLOR}
    assert reply.legend[0]["name"] == "typicality 0.00"

    # Excluded points are drawn in the exclusion's colour (the samples changed since
    # they were drawn: the recolour reads them again).
    bfo.exclude(ds.select(ids[:5]))
    reply = event(ds, "on_color_by", value="split")
    assert reply.state == {}
    color_of = dict(zip(reply.points["ids"], reply.points["marker"]["color"], strict=True))
    assert {color_of[i] for i in ids[:5]} == {viz.SPLIT_COLORS["excluded"]}


def test_the_colours_last_through_later_draws_and_a_restart_draws_afresh(
    split_dataset, new_panel, monkeypatch
):
    ds = split_dataset
    event(ds, "on_load")
    recoloured = event(ds, "on_color_by", value="round")
    assert recoloured.legend[0]["name"] == "round 0"
    refreshed = event(ds, "refresh")
    assert refreshed.legend[0]["name"] == "round 0" and refreshed.state == {}
    assert refreshed.data[recoloured.plot_key] is None  # the recolour's plot is emptied
    # A restarted server has no record of the panel: any event draws it first (in the
    # default colours), then runs.
    monkeypatch.setattr(new_panel, "_SHOWN", {})
    reply = event(ds, "reset_view")
    assert reply.legend[0]["name"] == "train" and reply.text("summary")
    assert reply.properties()["color_split"]["view"]["variant"] == "contained"
    event(ds, "on_unload")
    assert "p1" not in new_panel._SHOWN


def shown_ids(reply: Reply) -> list[str]:
    """The ids a click asks the App to show in the grid as its extended selection."""
    (request,) = reply.ops["set_extended_selection"]
    assert not request["clear"] and not request["reset"]
    return request["selection"]


def test_clicking_a_bubble_or_a_point_shows_that_bubbles_samples(split_dataset):
    ds = split_dataset
    loaded = event(ds, "on_load")
    anchor = ds.exists("anchor_id").first()["anchor_id"]
    members = set(ds.match(F("anchor_id") == anchor).values("id"))

    # The grid shows the bubble as the App's extended selection. Neither the App's view
    # nor the panel's state changes (each would make the App reload its page, which
    # drops that selection); the map stays that of the view, so the view-change events
    # that follow get no answer.
    reply = event(ds, "on_click", state=dict(loaded.state), trace=bfo.BUBBLES_TRACE, id=str(anchor))
    assert set(shown_ids(reply)) == members
    assert "set_view" not in reply.ops and reply.state == {} and reply.data == {}
    assert reply.output is None  # nothing the panel shows changed: no re-render
    assert event(ds, "on_change_view", state=dict(loaded.state), shown=shown_ids(reply)).ops == {}

    # A point: its bubble, and that point is what Exclude acts on without a selection.
    member = sorted(members)[0]
    reply = event(ds, "on_click", state=dict(loaded.state), trace=viz.POINTS_TRACE, id=member)
    assert set(shown_ids(reply)) == members and reply.state == {}
    reply = event(ds, "exclude", state=dict(loaded.state), shown=shown_ids(reply))
    assert ds.match_tags(bfo.EXCLUDED_TAG).values("id") == [member]
    assert "Excluded: 1" in reply.text("summary")  # the counts of the view, not the bubble

    train_id = ds.match(F("split") == "train").first().id
    reply = event(ds, "on_click", trace=viz.POINTS_TRACE, id=train_id)
    assert shown_ids(reply) == [train_id]

    # Clicked on a map drawn before a reset elsewhere: said, and the panel drawn anew
    # (a raw "DatasetView has no field 'anchor_id'" before; found by a stress test).
    bfo.reset(ds)
    for trace, clicked in ((viz.POINTS_TRACE, train_id), (bfo.BUBBLES_TRACE, str(anchor))):
        reply = event(ds, "on_click", state=dict(loaded.state), trace=trace, id=clicked)
        assert "set_extended_selection" not in reply.ops
        assert reply.ops["notify"][0]["message"] == "This dataset has no BubbleFence split any more"


def test_lasso_selects_the_points_and_reset_clears_selection_and_view(split_dataset):
    ds = split_dataset
    ids = ds.limit(3).values("id")
    points = [{"id": i, "trace": viz.POINTS_TRACE, "idx": k} for k, i in enumerate(ids)]
    points.append({"id": "0", "trace": bfo.BUBBLES_TRACE, "idx": 0})
    event(ds, "on_load")
    reply = event(ds, "on_lasso", data=points)
    assert [s["id"] for s in reply.ops["set_selected_samples"][0]["samples"]] == ids
    # A bubble shown by a click goes: the grid shows what the lasso selected.
    assert reply.ops["set_extended_selection"][0]["clear"]
    assert reply.output is None  # the panel shows nothing new: no re-render
    # The plot reports an empty selection after every click: no answer, no re-render.
    assert event(ds, "on_lasso", data=[]).ops == {}

    # After a bubble click: the selections go; no view to clear, no map to redraw.
    loaded = event(ds, "on_load")
    reply = event(ds, "reset_view", state=dict(loaded.state), shown=ids)
    assert reply.ops["set_extended_selection"][0]["clear"]
    assert "clear_selected_samples" in reply.ops and "clear_view" not in reply.ops
    assert reply.state == {}
    # In a view of the user's: the view is cleared and the whole dataset drawn.
    loaded = event(ds.limit(10), "on_load")
    reply = event(ds.limit(10), "reset_view", state=dict(loaded.state))
    assert reply.ops["set_extended_selection"][0]["clear"] and "clear_view" in reply.ops
    assert len(reply.points["ids"]) == 200


def test_view_change_events_for_the_drawn_view_get_no_answer(split_dataset):
    ds = split_dataset
    loaded = event(ds, "on_load")
    assert event(ds, "on_change_view", state=dict(loaded.state)).ops == {}
    # Before the App has applied the load's state, this server still knows what it drew.
    assert event(ds, "on_change_view", state={}).ops == {}
    # What the view shows changed (an exclusion): the figure is drawn afresh.
    bfo.exclude(ds.select(loaded.points["ids"][:3]))
    reply = event(ds, "on_change_view", state=dict(loaded.state))
    assert reply.figure and "Excluded: 3" in reply.text("summary")
    # Excluded samples are never split: not counted as "not split yet".
    assert "Not split yet: 0." in reply.text("summary")
    assert "not_split" not in reply.properties()


def test_a_view_of_one_bubble_hydrates_to_that_bubble(split_dataset):
    ds = split_dataset
    anchor = ds.exists("anchor_id").first()["anchor_id"]
    view = ds.match(F("anchor_id") == anchor)
    reply = event(view, "on_change_view")
    assert reply.traces[bfo.BUBBLES_TRACE]["ids"] == [str(anchor)]
    assert sum(polygons(t) for t in reply.outlines("bubble, outer ring").values()) == 1
    assert sorted(reply.points["ids"]) == sorted(view.values("id"))
    assert "Bubbles: **1** in the view" in reply.text("summary")


def test_subsampling_and_fading_when_the_view_is_large(split_dataset, monkeypatch):
    ds = split_dataset
    monkeypatch.setattr(viz, "MAX_POINTS", 50)
    monkeypatch.setattr(viz, "FADE_ABOVE_BUBBLES", 1)
    reply = event(ds, "refresh", state={"color_by": "split"})
    assert len(reply.points["ids"]) == 50
    assert "Showing **50** of the 200 samples of the view" in reply.text("note")
    assert "drawn faint and unlabelled" in reply.text("note")
    centres = reply.traces[bfo.BUBBLES_TRACE]
    assert centres["mode"] == "markers" and "text" not in centres
    assert {t["opacity"] for t in reply.outlines("bubble, outer ring").values()} == {0.35}
    again = event(ds, "refresh", state={"color_by": "split"})
    assert again.points["ids"] == reply.points["ids"]  # a fixed subsample


def test_exclude_and_include_again_update_the_points_drawn_without_reading_the_view(
    split_dataset, monkeypatch
):
    ds = split_dataset
    monkeypatch.setattr(viz, "MAX_POINTS", 50)
    loaded = event(ds, "on_load")
    drawn = loaded.points["ids"]
    undrawn = [i for i in ds.values("id") if i not in set(drawn)]
    acted_on = drawn[:3] + undrawn[:3]

    def colours(reply: Reply) -> dict[str, str]:
        points = reply.points
        return dict(zip(points["ids"], points["marker"]["color"], strict=True))

    # The same subsample, the drawn ones of the excluded in the exclusion's colour, drawn
    # on top; the same points and colours as a drawing of the view anew.
    with monkeypatch.context() as patched:
        patched.setattr(viz, "_drawn_points", lambda *a: pytest.fail("the view read again"))
        excluded = event(ds, "exclude", selected=acted_on)
    assert colours(excluded) == colours(event(ds, "refresh"))
    assert excluded.points["ids"][-3:] == drawn[:3]
    assert {colours(excluded)[i] for i in drawn[:3]} == {viz.SPLIT_COLORS["excluded"]}
    assert "Showing **50** of the 200 samples of the view" in excluded.text("note")

    # Included again, they have no split: off the map, and out of the count.
    with monkeypatch.context() as patched:
        patched.setattr(viz, "_drawn_points", lambda *a: pytest.fail("the view read again"))
        included = event(ds, "include_again", selected=acted_on)
    assert set(included.points["ids"]) == set(drawn) - set(acted_on)
    assert colours(included) == {i: c for i, c in colours(loaded).items() if i in set(drawn[3:])}
    assert "Showing **47** of the 194 samples of the view" in included.text("note")
    assert len(event(ds, "refresh").points["ids"]) == 50  # drawn anew: a new subsample

    # In a view the exclusion changes (one tag's samples): those leaving it leave the map.
    view = ds.match_tags("validation")
    loaded = event(view, "on_load")
    drawn = loaded.points["ids"]
    with monkeypatch.context() as patched:
        patched.setattr(viz, "_drawn_points", lambda *a: pytest.fail("the view read again"))
        excluded = event(view, "exclude", selected=drawn[:2])
    assert excluded.points["ids"] == drawn[2:]
    n_left = view.count()
    assert f"Showing all **{n_left}** split samples in the view" in excluded.text("note")

    # In a view that keeps them, drawn all train: "excluded" came back "exclu" and the
    # event failed after the exclusion was written (found by a stress test).
    view = ds.select(ds.match_tags("train").limit(20).values("id"))
    drawn = event(view, "on_load").points["ids"]
    excluded = event(view, "exclude", selected=drawn[:3])
    assert excluded.points["ids"][-3:] == drawn[:3]
    assert {colours(excluded)[i] for i in drawn[:3]} == {viz.SPLIT_COLORS["excluded"]}


def test_the_map_caption_counts_the_excluded_points_apart(split_dataset):
    """Excluded samples stay on the map in grey: the caption does not count them as
    split samples (it said 'all 300 split samples' after 60 were excluded)."""
    ds = split_dataset
    loaded = event(ds, "on_load")
    n_points = len(loaded.points["ids"])
    excluded = event(ds, "exclude", selected=loaded.points["ids"][:3])
    note = excluded.text("note")
    assert f"Showing all **{n_points - 3}** split samples in the view and 3 excluded" in note


def test_missing_map_offers_to_compute_it_and_refits_with_another_method(split_dataset):
    ds = split_dataset
    viz.delete_map(ds)
    reply = event(ds, "on_load")
    assert reply.text("summary") and not reply.has_map
    assert "build_map" in reply.properties()
    reply = event(ds, "build_map")
    assert reply.ops["notify"][0]["variant"] == "success"
    assert reply.has_map and viz.has_map(ds)
    assert reply.text("note").startswith("t-SNE map.")
    props = reply.properties()
    assert "refit_tsne" not in props and props["refit_pca"]["view"]["params"] == {"method": "pca"}

    reply = event(ds, "refit_map", method="pca")
    assert viz.load_layout(ds).layout.method == "pca"
    assert reply.text("note").startswith("PCA map.")


def test_a_map_stored_without_outlines_asks_for_an_update(split_dataset, monkeypatch):
    stored = viz.load_layout(split_dataset)
    monkeypatch.setattr(
        viz, "load_layout", lambda ds: dataclasses.replace(stored, outline_vertices=None)
    )
    reply = event(split_dataset, "on_load")
    assert reply.outlines("bubble, outer ring") == {} and reply.outlines("inner shell") == {}
    assert "**Update the map** draws them" in reply.text("note")


def test_samples_not_split_yet_are_announced_first(split_dataset):
    ds = split_dataset
    add_embedded_samples(ds, 30, seed=4)
    reply = event(ds, "on_load")
    names = list(reply.output["type"]["properties"])
    assert names[:2] == ["not_split", "actions"]
    assert "**30 samples not split yet**" in reply.properties()["not_split"]["default"]
    # Samples that failed (media or embedding) fail again at every run: said apart.
    failed = ds.exists("split", False).limit(4)
    failed.set_values(bfo.ERROR_FIELD, ["cannot identify image file"] * 4)
    reply = event(ds, "on_load")
    assert "**26 samples not split yet**" in reply.properties()["not_split"]["default"]
    assert reply.properties()["failed"]["default"].startswith("4 samples failed")
    assert "Not split yet: 26. Failed: 4." in reply.text("summary")


def test_audit_figures_are_shown_and_marked_stale_after_a_newer_split(split_dataset, monkeypatch):
    import panels.bubblefence_panel as panel_module

    report = {
        "created_at": "2026-01-02T03:04:05.000000Z",
        "source": "split",
        "n_collection": 1260,
        "n_audited": 1250,
        "n_split": 1200,
        "metrics": {},
    }
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
    markdown = panel_module._audit_markdown(split_dataset, "2026-01-02T03:04:00Z")
    assert "2026-01-02T03:04:05" in markdown and "Stale" not in markdown
    # What the report itself measured: duplicates and samples not split are left out.
    assert (
        "(split source split): 1200 split samples (50 duplicates or not split, "
        "10 without a usable embedding, left out)"
    ) in markdown
    assert "| Leakage@0.95 eval→train | 0.0000 | 0.2500 |" in markdown
    assert "Diversity score" in markdown and "Samples train" not in markdown
    stale = panel_module._audit_markdown(split_dataset, "2026-01-02T05:00:00Z")
    assert "**Stale:** the split changed after this audit" in stale
    # The panel passes the state's own time stamp: a split saved now is after the report.
    reply = event(split_dataset, "on_load")
    assert "**Stale:**" in reply.text("audit")

    monkeypatch.setattr(bfo, "latest_report", lambda s: None)
    assert panel_module._audit_markdown(split_dataset, None) is None

    def broken(samples):
        raise KeyError("metrics")

    monkeypatch.setattr(bfo, "latest_report", broken)
    assert "could not be read" in panel_module._audit_markdown(split_dataset, None)


def test_the_split_sets_one_colour_per_split_in_the_apps_colour_scheme(field_dataset):
    ds = field_dataset
    ds.app_config.color_scheme = fo.ColorScheme(
        fields=[{"path": "tags", "valueColors": [{"value": "mine", "color": "#123456"}]}]
    )
    ds.save()
    bfo.split(ds, embeddings_field="emb")
    ds.reload()
    scheme = ds.app_config.color_scheme
    fields = {f["path"]: f for f in scheme.fields}
    assert {v["value"]: v["color"] for v in fields["split"]["valueColors"]} == {
        s: viz.SPLIT_COLORS[s] for s in bfo.SPLIT_VALUES
    }
    tag_colors = {v["value"]: v["color"] for v in fields["tags"]["valueColors"]}
    assert tag_colors == {
        **{t: viz.SPLIT_COLORS[t] for t in (*bfo.SPLIT_TAGS, bfo.EXCLUDED_TAG)},
        "mine": "#123456",  # the user's own tag colour stays
    }
    assert scheme.color_by == "value"  # tags are coloured per value only in this mode
    # An open App is told: it reads the stored scheme only when it loads the dataset.
    (shown,) = event(ds, "after_split").ops["set_color_scheme"]
    assert shown == {"color_by": "value", "fields": scheme.fields}


def test_samples_left_off_the_map_are_counted_and_update_places_them(field_dataset, monkeypatch):
    ds = field_dataset
    bfo.split(ds.limit(150), embeddings_field="emb")
    monkeypatch.setattr(viz, "update_map", lambda *a, **k: 1 / 0)
    assert "map_error" in bfo.split(ds, embeddings_field="emb")
    monkeypatch.undo()
    reply = event(ds, "on_load")
    assert "**50** split samples have no point yet" in reply.text("note")
    reply = event(ds, "build_map")
    assert "no point yet" not in reply.text("note")
    assert len(reply.points["ids"]) == 200


def test_a_foreign_run_in_the_maps_place_is_reported_not_crashed_on(split_dataset):
    ds = split_dataset
    viz.delete_map(ds)
    ds.register_run(viz.LAYOUT_KEY, ds.init_run(method="someone_else"))
    fob.compute_visualization(ds, points=np.zeros((len(ds), 2)), brain_key=viz.VIZ_KEY)
    reply = event(ds, "on_load")
    assert not reply.has_map
    assert "not written by BubbleFence" in reply.properties()["no_map"]["default"]
    reply = event(ds, "build_map")  # refused, and the other run is left alone
    assert "not written by BubbleFence" in reply.ops["notify"][0]["message"]
    assert runs.run_params(ds, viz.LAYOUT_KEY)["method"] == "someone_else"


def test_bubble_hover_names_only_what_its_shells_hold():
    def shells(layout: str, inner_radius: float, n_validation: int, n_test: int) -> str:
        bubble = pd.Series(
            {
                "layout": layout,
                "inner_radius": inner_radius,
                "n_validation": n_validation,
                "n_test": n_test,
            }
        )
        return viz._shells_text(bubble)

    assert shells("inner_val", 0.1, 3, 5) == (
        "inner shell validation (radius 0.1), outer ring test"
    )
    assert shells("inner_val", -1.0, 0, 5) == "no inner shell, all test"
    # The counts decide, not the radius: a bubble without an inner radius that holds
    # both splits (an older state) is not said to be all test.
    assert shells("inner_val", -1.0, 2, 5) == "inner shell validation, outer ring test"
    assert shells("inner_test", 0.1, 0, 4) == "all test (inner shell only)"


def test_bubble_numbers_that_would_cover_each_other_are_left_to_the_hover():
    # Found by an App walk: at 48 bubbles "18 22 20" and "3813" stood over each other.
    import pandas as pd

    from bubblefence_plugin.fo.map import LABEL_GAP, _spaced

    bubbles = pd.DataFrame(
        {
            "anchor_id": [0, 1, 2, 3],
            "x": [0.0, 0.5 * LABEL_GAP, 1.0, 0.0],
            "y": [0.0, 0.0, 1.0, 2 * LABEL_GAP],
            "n_validation": [1, 5, 1, 1],
            "n_test": [1, 5, 1, 1],
        }
    )
    # 1 is the larger of the close pair (0, 1); 3 is two gaps from both.
    assert _spaced(bubbles).tolist() == [False, True, True, True]
    assert _spaced(bubbles.iloc[:1]).tolist() == [True]
