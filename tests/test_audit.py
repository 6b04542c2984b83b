"""The split audit on FiftyOne collections: operator, stored reports, HTML, Brain comparison."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import operator_requests, unit

pytestmark = pytest.mark.fiftyone

fo = pytest.importorskip("fiftyone")
foo = pytest.importorskip("fiftyone.operators")
bfo = pytest.importorskip("bubblefence_plugin.fo")

from fiftyone.operators.delegated import DelegatedOperationService  # noqa: E402
from fiftyone.operators.executor import ExecutionError, resolve_type  # noqa: E402
from fiftyone.operators.registry import OperatorRegistry  # noqa: E402

from bubblefence_plugin.fo import audit  # noqa: E402
from bubblefence_plugin.fo.map import SPLIT_COLORS, load_layout, shell_splits  # noqa: E402
from bubblefence_plugin.text import report_text, reset_text  # noqa: E402

REPORT = "@bubblefence/bubblefence/bubblefence_report"
# A report of 200 samples with 24 thumbnails; plotly.js inline made it 4.9 MB.
SMALL_REPORT_BYTES = 100_000


@pytest.fixture
def split_dataset(field_dataset):
    """field_dataset split by BubbleFence, with a label and a group per sample."""
    ds = field_dataset
    ds.set_values("label", [f"c{i % 4}" for i in range(len(ds))])
    ds.set_values("group", [f"g{i // 5}" for i in range(len(ds))])
    bfo.split(ds, embeddings_field="emb", seed=1)
    return ds


def test_registered_with_a_form(split_dataset):
    assert REPORT in {op.uri for op in OperatorRegistry().list_operators()}
    assert foo.get_operator(REPORT).config.label == "BubbleFence report"
    request = {
        "dataset_name": split_dataset.name,
        "operator_uri": REPORT,
        "params": {"brain": True},
        "view": [],
        "target": "inputs",
    }
    props = asyncio.run(resolve_type(OperatorRegistry(), REPORT, request)).to_json()["type"][
        "properties"
    ]
    for name in ("split_source", "embeddings_field", "label_field", "group_field", "thresholds"):
        assert name in props, name
    assert props["split_source"]["default"] == "split"
    assert {"tags", "split", "label"} <= {
        c["value"] for c in props["split_source"]["view"]["choices"]
    }
    assert props["embeddings_field"]["default"] == "emb"
    assert props["thresholds"]["default"] == [0.99, 0.95, 0.9]
    assert "brain_warning" not in props  # 200 samples: the Brain is quick


def test_operator_report_with_brain_html_and_stored_run(split_dataset, tmp_path):
    ds = split_dataset
    html_path = tmp_path / "reports" / "audit.html"
    result = foo.execute_operator(
        REPORT,
        ctx={
            "dataset": ds,
            "params": {
                "split_source": "split",
                "embeddings_field": "emb",
                "label_field": "label",
                "group_field": "group",
                "brain": True,
                "html_path": str(html_path),
            },
        },
    )
    requests = operator_requests(result)
    progress = [p["progress"] for p in requests["set_progress"]]
    assert progress == sorted(progress) and progress[-1] == 1.0
    shown = requests["show_output"][0]["results"]
    metrics_shown = [row["metric"] for row in shown["table"]]
    assert "Leakage@0.95 eval→train" in metrics_shown
    similarity = next(r for r in shown["table"] if r["metric"].startswith("NN similarity"))
    # The max to 4 places, so a value just under a threshold does not read as it.
    assert all(
        len(similarity[c].split(" / ")[-1].split(".")[1]) == 4 for c in ("split", "baseline")
    )
    assert any(m.startswith("FiftyOne Brain leaks") for m in metrics_shown)
    assert any(m.startswith("Group violations") for m in metrics_shown)
    assert shown["html_path"] == str(html_path)
    page = html_path.read_text(encoding="utf-8")
    assert "<table>" in page and page.count("<svg") == 2  # the map and the histogram
    # No script at all, nothing fetched: the page works offline.
    assert not re.search(r"<script|\ssrc=['\"]?https?:", page)
    assert "FiftyOne Brain compute_leaky_splits" in page

    stored = bfo.latest_report(ds)
    assert stored["source"] == "split" and stored["is_bubblefence_split"]
    assert stored["run_key"] in ds.list_runs()
    json.dumps(stored, allow_nan=False)  # plain JSON all the way down
    m = stored["metrics"]
    assert m["eval_ratio"] == 0.2  # target read from the BubbleFence config
    assert m["split"]["counts"] == m["baseline"]["counts"]
    assert m["split"]["counts"]["train"] + m["split"]["counts"]["validation"] > 0
    assert m["split"]["coverage"]["n_eligible"] == 4
    # BubbleFence never cuts a group only when given the group field; this split was not.
    assert m["split"]["groups"]["n_groups"] == 40
    assert m["stability"] is None  # first report of this source
    # The split state is untouched by the report, and both live side by side.
    assert bfo.load_state(ds) is not None and bfo.RUN_KEY in ds.list_runs()


def test_brain_comparison_agrees_with_the_exact_count(split_dataset):
    ds = split_dataset
    # A random split of the same clustered data leaks: both tools must see it.
    rng = np.random.default_rng(2)
    ds.set_values("random_split", rng.choice(["train", "validation", "test"], len(ds)).tolist())
    found = {}
    for source in ("split", "random_split"):
        r = bfo.report(ds, source, "emb", brain=True, store=False)
        brain = r["brain"]
        assert brain["n_samples"] == r["n_audited"] and brain["splits"] == source
        for row, t in zip(brain["rows"], r["metrics"]["thresholds"], strict=True):
            assert row["distance"] == pytest.approx(1 - t)
            # The Brain flags a subset of the samples that have a cross-split neighbour
            # within its distance; the few it attaches past the threshold are just past it.
            assert row["brain_leaks"] - row["brain_not_ours"] <= row["ours_same_meaning"]
            assert row["brain_not_ours"] <= max(2, 0.1 * row["brain_leaks"])
            if row["brain_not_ours"]:
                assert row["brain_not_ours_min_similarity"] > t - 0.02
        exact = [row["ours_same_meaning"] for row in brain["rows"]]
        assert exact == sorted(exact)  # a lower similarity threshold finds more
        found[source] = (brain["rows"][1]["brain_leaks"], brain["rows"][1]["ours_same_meaning"])
    assert found["random_split"][0] > found["split"][0]
    assert found["random_split"][1] > found["split"][1]


def test_the_report_form_refuses_a_string_field_that_names_no_split(field_dataset):
    # Found by an App walk: every string field is offered as the split source, and one
    # holding other values ("kind") failed only after Execute.
    from conftest import operator_form

    ds = field_dataset
    ds.set_values("kind", ["frame", "single"] * (len(ds) // 2))
    ds.set_values("my_split", [" VAL ", "train"] * (len(ds) // 2))
    kind = operator_form(ds, REPORT, {"split_source": "kind"})["split_source"]
    assert (
        kind["invalid"] and "No sample here has a split name in 'kind'" in (kind["error_message"])
    )
    assert not operator_form(ds, REPORT, {"split_source": "my_split"})["split_source"].get(
        "invalid"
    )
    assert bfo.names_a_split(ds, "my_split") and not bfo.names_a_split(ds, "kind")
    # The default source is checked too: no split tag at all, or a user's own `split`
    # field of folds (no BubbleFence state), failed only after Execute.
    tags = operator_form(ds, REPORT)["split_source"]
    assert (
        tags["invalid"]
        and "No sample here has a split name in the sample tags" in (tags["error_message"])
    )
    ds.set_values("split", ["fold1", "fold2"] * (len(ds) // 2))
    folds = operator_form(ds, REPORT)["split_source"]  # `split` is the default now
    assert folds["invalid"] and "in 'split'" in folds["error_message"]
    ds.delete_sample_field("split")
    bfo.split(ds, embeddings_field="emb")  # BubbleFence's own split: not checked
    assert not operator_form(ds, REPORT)["split_source"].get("invalid")


def test_any_split_source_tags_and_a_field_with_aliases(field_dataset):
    ds = field_dataset
    rng = np.random.default_rng(0)
    names = rng.choice(["train", "val", "Test", "holdout"], size=len(ds), p=[0.6, 0.15, 0.15, 0.1])
    ds.set_values("my_split", names.tolist())
    r = bfo.report(ds, "my_split", "emb", store=False)
    counts = r["metrics"]["split"]["counts"]
    assert counts["train"] == int((names == "train").sum())
    assert counts["validation"] == int((names == "val").sum())
    assert counts["test"] == int((names == "Test").sum())
    assert r["other_values"] == [["holdout", int((names == "holdout").sum())]]
    # Said, not only listed (found by a stress test: the headline folded them into
    # "duplicates or not split"); an empty value is no such value.
    n_holdout = int((names == "holdout").sum())
    assert f"Values not read as a split (left out): 'holdout' ({n_holdout})" in (
        bfo.split_warnings(r)
    )
    ds.limit(5).set_values("my_split", [None] * 5)
    assert [v for v, _ in bfo.report(ds, "my_split", "emb", store=False)["other_values"]] == [
        "holdout"
    ]

    ds.select(ds.values("id")[:100]).tag_samples("train")
    ds.select(ds.values("id")[100:150]).tag_samples("validation")
    ds.select(ds.values("id")[140:200]).tag_samples("test")  # 140..149: two split tags
    r = bfo.report(ds, "tags", "emb", store=False)
    assert r["metrics"]["split"]["counts"] == {
        "train": 100,
        "validation": 40,
        "test": 50,
        "other": 10,
    }
    assert r["n_conflicting_tags"] == 10 and "two split tags" in r["warnings"][0]
    # One sample is said in the singular (found by a stress test: "1 samples ... have").
    ds.select(ds.values("id")[:149]).untag_samples("test")  # 149 alone carries two
    ds.select(ds.values("id")[0]).set_values("emb", [None])
    warnings = bfo.report(ds, "tags", "emb", store=False)["warnings"]
    assert "1 sample with a split has no usable 'emb'" in warnings[0]
    assert warnings[1] == "1 sample carries two split tags: left out"


def test_stability_between_reports_clone_and_pruning(split_dataset, monkeypatch):
    ds = split_dataset
    first = bfo.report(ds, "split", "emb")
    assert first["metrics"]["stability"] is None
    second = bfo.report(ds, "split", "emb")
    assert second["metrics"]["stability"]["share_unchanged"] == 1.0
    moved = ds.match(fo.ViewField("split") == "train").first()
    moved.split = "test"
    moved.save()
    third = bfo.report(ds, "split", "emb")
    stab = third["metrics"]["stability"]
    assert stab["changes"] == {"train->test": 1}
    assert stab["n_unchanged"] == stab["n_compared"] - 1
    assert bfo.latest_report(ds)["run_key"] == third["run_key"]
    # Excluded since: not changes of split, counted apart (found by a lifecycle fuzz:
    # "train->none" for every exclusion).
    bfo.exclude(ds.match(fo.ViewField("split") == "train").limit(4))
    fourth = bfo.report(ds, "split", "emb")
    assert fourth["metrics"]["stability"]["changes"] == {}
    assert fourth["metrics"]["stability"]["n_left_out"] == 4
    (row,) = [r for r in bfo.summary_rows(fourth) if r["key"] == "stability"]
    assert row["split"].endswith("unchanged (4 samples excluded since, not compared)")

    clone = ds.clone()
    try:
        assert bfo.latest_report(clone) == bfo.latest_report(ds)
        assert len(bfo.list_reports(clone)) == 4
    finally:
        clone.delete()

    monkeypatch.setattr(audit, "KEEP_REPORTS", 2)
    bfo.report(ds, "tags", "emb")
    assert [r["source"] for r in bfo.list_reports(ds)] == ["tags", "split"]
    assert bfo.latest_report(ds)["source"] == "tags"


def test_delegated_report(split_dataset):
    result = foo.get_operator(REPORT)(split_dataset, embeddings_field="emb", delegate=True)
    assert result.delegated
    service = DelegatedOperationService()
    service.execute_queued_operations(dataset_name=split_dataset.name)
    op = service.get(result.result["id"])
    assert op.run_state == "completed", op.run_state
    out = op.result.result
    assert out["table"][0]["metric"].startswith("Samples")
    assert out["result"]["run_key"] == bfo.latest_report(split_dataset)["run_key"]


def test_view_target_audits_only_the_view(split_dataset):
    view = split_dataset.limit(120)
    r = bfo.report(view, "split", "emb", store=False)
    assert r["n_collection"] == 120


def test_bad_input_is_named(field_dataset):
    ds = field_dataset
    with pytest.raises(ValueError, match="split_source"):
        bfo.report(ds, "nope", "emb")
    with pytest.raises(ValueError, match="nothing to audit"):
        bfo.report(ds, "tags", "emb")  # no sample has a split tag
    ds.set_values("my_split", ["train", "test"] * 100)
    with pytest.raises(ValueError, match="label_field"):
        bfo.report(ds, "my_split", "emb", label_field="missing")
    with pytest.raises(ValueError, match="group_field='emb' is a field of type VectorField"):
        bfo.report(ds, "my_split", "emb", group_field="emb")
    with pytest.raises(ExecutionError, match="thresholds"):
        foo.get_operator(REPORT)(ds, "my_split", "emb", thresholds=[1.5])
    with pytest.raises(ValueError, match="unknown report parameter .eval_share."):
        foo.get_operator(REPORT)(ds, "my_split", "emb", eval_share=0.2)
    ds.limit(3).set_values("emb", [None, None, None])
    r = bfo.report(ds, "my_split", "emb", store=False)
    assert r["n_without_embedding"] == 3 and r["n_audited"] == 197
    # Without a vector field the report says how to name one (a stress test).
    ds.set_values("floats", [list(v) if v is not None else None for v in ds.values("emb")])
    ds.delete_sample_field("emb")
    with pytest.raises(ValueError, match="name the field that holds the embeddings") as info:
        bfo.report(ds, "my_split", store=False)
    assert "fields of lists of numbers: ['floats']" in str(info.value)
    assert bfo.report(ds, "my_split", "floats", store=False)["n_audited"] == 197


@pytest.fixture
def labelled_dataset(field_dataset):
    """field_dataset with a fixed split and the same classes as a Classification field
    ``cls`` and as a Detections field ``det`` (plus a "person" on every sample): "hidden"
    (30 samples) only in train, "noval" (30) in train and test only, a/b/c everywhere."""
    ds = field_dataset
    rows = np.arange(len(ds))  # 200: 140 train, then validation (odd) and test (even)
    split = np.where(rows < 140, "train", np.where(rows % 2, "validation", "test"))
    classes = np.asarray(["a", "b", "c"], dtype=object)[rows % 3]
    classes[:30] = "hidden"
    classes[30:40] = "noval"
    classes[140:180:2] = "noval"  # 20 test samples
    ds.set_values("my_split", split.tolist())
    ds.set_values("cls", [fo.Classification(label=c) for c in classes])
    box = [0.1, 0.1, 0.2, 0.2]
    ds.set_values(
        "det",
        [
            fo.Detections(
                detections=[
                    fo.Detection(label=c, bounding_box=box),
                    fo.Detection(label="person", bounding_box=box),
                ]
            )
            for c in classes
        ],
    )
    ds.select(ds.values("id")[-1]).set_values("det", [None])  # a sample without detections
    return ds


EXPECTED_WARNINGS = [
    "Classes with >= 20 samples but no eval sample (1): hidden",
    "Classes with >= 20 samples but no validation sample (1): noval",
]


@pytest.mark.parametrize(
    "field, n_labels", [("cls", 5), ("det", 6)], ids=["classification", "detections"]
)
def test_label_coverage_reads_labels_as_the_split_does(labelled_dataset, field, n_labels):
    r = bfo.report(labelled_dataset, "my_split", "emb", label_field=field, store=False)
    coverage = r["metrics"]["split"]["coverage"]
    # Each class counted by name (a Classification object is not one label string).
    assert (coverage["n_labels"], coverage["n_eligible"]) == (n_labels, n_labels)
    assert coverage["covered"] == {
        "train": n_labels,
        "validation": n_labels - 2,
        "test": n_labels - 1,
        "eval": n_labels - 1,
    }
    assert coverage["missing_from_eval"] == ["hidden"]
    assert coverage["missing_from_validation"] == ["hidden", "noval"]
    row = next(row for row in bfo.summary_rows(r) if row["key"] == "label_coverage")
    assert row["split"] == f"{n_labels - 1} / {n_labels - 2} / {n_labels - 1} of {n_labels}"
    assert bfo.split_warnings(r) == EXPECTED_WARNINGS


def test_report_ends_in_amber_naming_the_missing_classes(labelled_dataset):
    params = {"split_source": "my_split", "embeddings_field": "emb", "label_field": "det"}
    result = foo.execute_operator(REPORT, ctx={"dataset": labelled_dataset, "params": params})
    requests = operator_requests(result)
    assert [n["variant"] for n in requests["notify"]] == ["warning"]
    # Short (a tester's toasts ran to 330-700 characters): how many warnings, the first;
    # the dialog shows them all, in amber.
    message = requests["notify"][0]["message"]
    assert "; 2 warnings: Classes with >= 20 samples but no eval sample (1): hidden" in message
    assert len(message) <= 200
    shown = requests["show_output"][0]
    assert shown["results"]["warnings"] == EXPECTED_WARNINGS
    properties = shown["outputs"]["type"]["properties"]
    alerts = [properties[f"warning_{k}"]["view"] for k in range(2)]
    assert [a["name"] for a in alerts] == ["Warning", "Warning"]
    assert "hidden" in alerts[0]["label"] and "noval" in alerts[1]["label"]
    assert list(properties).index("warning_1") < list(properties).index("summary")

    # Every class in every held-out split, no group field: green, no warning view.
    params["label_field"] = None
    result = foo.execute_operator(REPORT, ctx={"dataset": labelled_dataset, "params": params})
    requests = operator_requests(result)
    assert [n["variant"] for n in requests["notify"]] == ["success"]
    assert "warning_0" not in requests["show_output"][0]["outputs"]["type"]["properties"]


def test_html_report_is_small_readable_with_bubbles_and_closest_pairs(media_dataset, tmp_path):
    ds = media_dataset
    old_umask = os.umask(0o022)
    try:
        r = bfo.report(ds, "split", "emb", html_path=str(tmp_path / "report.html"))
    finally:
        os.umask(old_umask)
    path = Path(r["html_path"])
    assert path.stat().st_size < SMALL_REPORT_BYTES
    assert path.stat().st_mode & 0o777 == 0o644  # as any file the user writes, not 0600
    page = path.read_text(encoding="utf-8")
    assert len(drawn_outlines(page)) == len(load_layout(ds).anchors)  # every bubble
    pairs = r["closest_pairs"]
    assert len(pairs) == audit.CLOSEST_PAIRS
    similarities = [p["similarity"] for p in pairs]
    assert similarities == sorted(similarities, reverse=True)
    x = dict(zip(*ds.values(["id", "emb"]), strict=True))
    top = pairs[0]
    cosine = unit(np.stack([x[top["eval_id"]], x[top["train_id"]]]))
    assert top["similarity"] == pytest.approx(float(cosine[0] @ cosine[1]), abs=1e-3)
    assert page.count("<img class='thumb' src='data:image/jpeg;base64,") == 2 * len(pairs)
    assert "thumb missing" not in page

    # A missing image is a placeholder; the report is still written.
    os.remove(ds[top["eval_id"]].filepath)
    old_umask = os.umask(0o027)
    try:
        again = bfo.report(ds, "split", "emb", html_path=str(tmp_path), store=False)
    finally:
        os.umask(old_umask)
    path = Path(again["html_path"])
    assert path.parent == tmp_path and path.stat().st_mode & 0o777 == 0o640  # the umask rules
    page = path.read_text(encoding="utf-8")
    assert page.count("<img class='thumb'") == 2 * len(pairs) - 1
    assert page.count("thumb missing") == 1


def drawn_outlines(page: str) -> dict[int, dict[str, np.ndarray]]:
    """The report map's bubble outlines: per bubble number, the (m, 2) pixel corners of
    its "outer" outline and of its "inner" one where drawn."""
    svg = re.search(r"<svg[^>]*class='map'>.*?</svg>", page, re.S).group(0)
    outlines = {}
    for number, marks in re.findall(r"<g><title>bubble (\d+)</title>(.*?)</g>", svg):
        shells = {}
        for inner, path in re.findall(r"<path( class='inner')? stroke='#\w+' d='([^']*)'/>", marks):
            numbers = [int(v) for v in re.findall(r"-?\d+", path)]
            shells["inner" if inner else "outer"] = np.cumsum(np.reshape(numbers, (-1, 2)), 0)
        outlines[int(number)] = shells
    return outlines


def test_html_map_draws_the_stored_outlines_of_every_bubble(split_dataset, tmp_path):
    ds = split_dataset
    page = Path(bfo.report(ds, "split", "emb", html_path=str(tmp_path), store=False)["html_path"])
    page = page.read_text(encoding="utf-8")
    stored = load_layout(ds)
    drawn = drawn_outlines(page)
    assert sorted(drawn) == sorted(stored.anchors["anchor_id"])
    # Each drawn outline is its stored corners, on the map's one scale (y pointing down)
    # and in whole pixels: x_px = a + s x, y_px = b - s y.
    corners, pixels = [], []
    for row in stored.anchors.itertuples():
        for shell in ("outer", "inner"):
            outline = stored.outline(row, shell)
            assert (shell in drawn[row.anchor_id]) == bool(len(outline)), (row.anchor_id, shell)
            if len(outline):
                assert len(drawn[row.anchor_id][shell]) == len(outline)
                corners.append(outline)
                pixels.append(drawn[row.anchor_id][shell])
    # Each in its shell's split colour, as the panel draws it (they were all dark grey).
    layouts = stored.anchors.set_index("anchor_id")["layout"]
    strokes = re.findall(r"<title>bubble (\d+)</title><path stroke='(#\w+)'", page)
    assert strokes and all(
        colour == SPLIT_COLORS[shell_splits(layouts[int(a)])[1]] for a, colour in strokes
    )
    assert set(re.findall(r"<path class='inner' stroke='(#\w+)'", page)) <= {
        SPLIT_COLORS["validation"],
        SPLIT_COLORS["test"],
    }
    corners, pixels = np.vstack(corners).astype(np.float64), np.vstack(pixels)
    n = len(corners)
    design = np.zeros((2 * n, 3))
    design[:n, 0], design[n:, 1] = 1, 1
    design[:n, 2], design[n:, 2] = corners[:, 0], -corners[:, 1]
    target = np.concatenate([pixels[:, 0], pixels[:, 1]])
    fit, *_ = np.linalg.lstsq(design, target, rcond=None)
    assert fit[2] > 0
    # Half a pixel of rounding, and a little more: the scale is fitted to rounded pixels.
    assert np.abs(design @ fit - target).max() <= 0.6
    # The map's bounds hold every outline, inside its margin.
    width, height = (
        int(v) for v in re.search(r"width='(\d+)' height='(\d+)' class='map'", page).groups()
    )
    assert (
        pixels.min() >= 9 and pixels[:, 0].max() <= width - 9 and pixels[:, 1].max() <= height - 9
    )
    assert "<circle" not in page


def test_html_map_draws_circles_where_the_stored_map_has_no_outlines(
    split_dataset, tmp_path, monkeypatch
):
    # A layout stored before outlines were (version 1) has the drawn radii only.
    ds = split_dataset
    stored = load_layout(ds)
    monkeypatch.setattr(
        audit, "load_layout", lambda _: dataclasses.replace(stored, outline_vertices=None)
    )
    page = Path(bfo.report(ds, "split", "emb", html_path=str(tmp_path), store=False)["html_path"])
    page = page.read_text(encoding="utf-8")
    anchors = stored.anchors
    circles = int((anchors["r2d"] > 0).sum() + (anchors["inner_r2d"] > 0).sum())
    assert circles > 0 and page.count("<circle") == circles
    assert page.count("<circle class='inner'") == int((anchors["inner_r2d"] > 0).sum())
    assert all(shells == {} for shells in drawn_outlines(page).values())


def test_leak_view_holds_exactly_the_leaking_eval_samples(field_dataset, monkeypatch):
    ds = field_dataset
    rng = np.random.default_rng(11)
    x = unit(rng.normal(size=(200, 16))).astype(np.float64)
    split = np.asarray(["train"] * 120 + ["validation"] * 40 + ["test"] * 40)
    # 15 eval samples become near copies of train samples 0..14, at cosines 0.961..0.996.
    for k, row in enumerate(rng.choice(np.arange(120, 200), 15, replace=False)):
        cosine = 0.961 + 0.0025 * k
        other = rng.normal(size=16)
        other -= (other @ x[k]) * x[k]
        x[row] = cosine * x[k] + np.sqrt(1 - cosine**2) * other / np.linalg.norm(other)
    ds.set_values("emb", list(x))
    ds.set_values("my_split", split.tolist())
    ids = np.asarray(ds.values("id"))

    def brute_force(threshold: float) -> list[str]:
        """Eval ids whose most similar train sample reaches the threshold, most similar first."""
        best = (x[120:] @ x[:120].T).max(axis=1)
        assert np.abs(best - threshold).min() > 5e-4  # none on the threshold: float32 agrees
        order = np.argsort(-best)
        return ids[120:][order][best[order] >= threshold].tolist()

    r = bfo.report(ds, "my_split", "emb")
    expected = brute_force(0.95)
    assert len(expected) == 15
    assert r["leaks"] == {
        "threshold": 0.95,
        "n_found": 15,
        "n_in_view": 15,
        "n_measured": 80,
        "n_eval": 80,
        "view": bfo.LEAKS_VIEW,
    }
    assert ds.load_saved_view(bfo.LEAKS_VIEW).values("id") == expected
    assert bfo.latest_report(ds)["leaks"]["view"] == bfo.LEAKS_VIEW
    top = r["closest_pairs"][0]
    assert top["eval_id"] == expected[0] and top["train_id"] == ids[14]  # cosine 0.996

    # Without 0.95 the first threshold counts; the view keeps the most similar ids only,
    # and is rewritten by each report.
    monkeypatch.setattr(audit, "MAX_LEAK_IDS", 5)
    r = bfo.report(ds, "my_split", "emb", thresholds=[0.97, 0.9])
    expected = brute_force(0.97)
    assert (r["leaks"]["threshold"], r["leaks"]["n_found"], r["leaks"]["n_in_view"]) == (
        0.97,
        len(expected),
        5,
    )
    assert ds.load_saved_view(bfo.LEAKS_VIEW).values("id") == expected[:5]


def test_a_list_field_the_split_read_is_what_the_report_and_its_form_default_to(fo_datasets):
    """Vectors stored as Python lists (a ListField, as ``set_values`` writes lists) split
    from Python; the report then reads the same field by default, its form and the next
    round's split form offer and pre-fill it, and a list of strings is refused by name."""
    from conftest import clustered_embeddings

    ds = fo.Dataset()
    fo_datasets.append(ds)
    x = clustered_embeddings(200)
    ds.add_samples(
        [fo.Sample(filepath=f"/nonexistent/{i}.png", vec=x[i].tolist()) for i in range(200)]
    )
    assert isinstance(ds.get_field("vec"), fo.ListField)
    bfo.split(ds, embeddings_field="vec", seed=1)
    r = bfo.report(ds, store=False)
    assert r["embeddings_field"] == "vec" and r["n_audited"] == 200
    request = {
        "dataset_name": ds.name,
        "operator_uri": REPORT,
        "params": {},
        "view": [],
        "target": "inputs",
    }
    props = asyncio.run(resolve_type(OperatorRegistry(), REPORT, request)).to_json()
    field = props["type"]["properties"]["embeddings_field"]
    assert field["default"] == "vec" and "vec" in str(field["view"])
    split_uri = "@bubblefence/bubblefence/bubblefence_split"  # the next round's form
    request = {**request, "operator_uri": split_uri}
    props = asyncio.run(resolve_type(OperatorRegistry(), split_uri, request)).to_json()
    props = props["type"]["properties"]
    assert props["embeddings"]["default"] == "field"
    assert props["embeddings_field"]["default"] == "vec"
    ds.set_values("words", [["a", "b"]] * 200)
    with pytest.raises(ValueError, match="'words' is of type ListField of StringField, not a"):
        bfo.report(ds, "split", "words", store=False)


def test_our_split_is_audited_by_the_fields_it_was_split_by(field_dataset):
    """`report` on our split reads the label and group fields the split used unless told
    otherwise ("" for none; one deleted since is left out, with a warning); another split
    source assumes none."""
    ds = field_dataset
    ds.set_values("label", [f"c{i % 4}" for i in range(len(ds))])
    ds.set_values("group", [f"g{i // 5}" for i in range(len(ds))])
    bfo.split(ds, embeddings_field="emb", label_field="label", group_field="group", seed=1)
    r = bfo.report(ds, store=False)
    assert (r["label_field"], r["group_field"]) == ("label", "group")
    ours = r["metrics"]["split"]
    assert ours["coverage"]["n_eligible"] == 4 and ours["groups"] is not None
    r = bfo.report(ds, label_field="", group_field="", store=False)
    assert (r["label_field"], r["group_field"]) == (None, None)
    assert r["metrics"]["split"]["coverage"] is None
    ds.set_values("theirs", ["train", "validation", "test", "train", "train"] * 40)
    r = bfo.report(ds, "theirs", store=False)
    assert (r["label_field"], r["group_field"]) == (None, None)
    ds.delete_sample_field("group")  # gone since the split: left out, said
    r = bfo.report(ds, store=False)
    assert (r["label_field"], r["group_field"]) == ("label", None)
    assert "the split's group_field 'group' is gone: not measured" in r["warnings"]
    # A view that leaves the label field out: the remembered one is left out, said; one
    # asked for is refused by name (it failed with FiftyOne's bare "no field").
    r = bfo.report(ds.exclude_fields("label"), store=False)
    assert r["label_field"] is None
    assert "the split's label_field 'label' is left out of this view: not measured" in r["warnings"]
    with pytest.raises(ValueError, match="label_field='label': the view audited leaves"):
        bfo.report(ds.exclude_fields("label"), label_field="label", store=False)


def test_our_split_is_audited_by_the_min_label_count_it_was_split_by(field_dataset):
    # Found by a stress test: the split covered labels of >= 5 samples, its report
    # expected only labels of >= 20 (none here) and found "0 of 0".
    ds = field_dataset
    ds.set_values("label", [f"c{i % 25}" for i in range(len(ds))])  # 8 samples each
    bfo.split(ds, embeddings_field="emb", label_field="label", min_label_count=5)
    coverage = bfo.report(ds, store=False)["metrics"]["split"]["coverage"]
    assert (coverage["min_count"], coverage["n_eligible"]) == (5, 25)
    other = bfo.report(ds, min_label_count=20, store=False)["metrics"]["split"]["coverage"]
    assert other["n_eligible"] == 0
    ds.set_values("theirs", ["train", "validation", "test", "train", "train"] * 40)
    theirs = bfo.report(ds, "theirs", label_field="label", store=False)
    assert theirs["metrics"]["split"]["coverage"]["min_count"] == 20


def test_a_report_without_leaks_points_at_no_view_of_them(field_dataset, tmp_path):
    ds = field_dataset
    x = unit(np.random.default_rng(12).normal(size=(len(ds), 64)))  # no pair near 0.95
    ds.set_values("emb", list(x))
    ds.set_values("my_split", (["train", "validation"] * len(ds))[: len(ds)])
    r = bfo.report(ds, "my_split", "emb", html_path=str(tmp_path / "report.html"))
    assert r["leaks"]["n_found"] == 0
    page = Path(r["html_path"]).read_text(encoding="utf-8")
    assert "have a train sample at cosine similarity" in page
    assert "saved view" not in page
    assert "saved view" not in report_text(r).plain()


def test_a_warning_names_a_few_groups_and_counts_the_rest(field_dataset):
    # 100 groups of two, one sample of each in train and one in validation: every group
    # is on both sides; a notice names 8 of them, the report keeps its longer list.
    ds = field_dataset
    rows = np.arange(len(ds))
    ds.set_values("grp", [f"g{r // 2}" for r in rows])
    ds.set_values("my_split", np.where(rows % 2, "validation", "train").tolist())
    r = bfo.report(ds, "my_split", "emb", group_field="grp", store=False)
    (warning,) = [w for w in bfo.split_warnings(r) if w.startswith("Groups")]
    head, names = warning.split(": ", 1)
    assert head == "Groups with samples in both train and eval (100 of 100)"
    assert names.endswith(" and 92 more") and len(names.split(", ")) == audit.NAMES_IN_WARNING
    assert len(r["metrics"]["split"]["groups"]["examples"]) > audit.NAMES_IN_WARNING


def test_reset_deletes_the_leak_view_of_our_split_and_keeps_that_of_another(field_dataset):
    """The leak view of a report on our split names samples that a reset takes out of
    eval: reset deletes it (and says so); the reports stay as history. A view from a
    report of the user's own split field is still true after a reset: kept."""
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    bfo.report(ds, "split", "emb")
    assert ds.has_saved_view(bfo.LEAKS_VIEW)
    result = bfo.reset(ds)
    assert result["removed_views"] == [bfo.LEAKS_VIEW]
    assert not ds.has_saved_view(bfo.LEAKS_VIEW)
    assert bfo.latest_report(ds)["source"] == "split"  # the report itself is kept
    assert "deleted the saved view bubblefence_leaks" in reset_text(result).plain()

    ds.set_values("my_split", (["train", "test"] * len(ds))[: len(ds)])
    bfo.split(ds, embeddings_field="emb")
    bfo.report(ds, "my_split", "emb")
    assert bfo.reset(ds)["removed_views"] == []
    assert ds.has_saved_view(bfo.LEAKS_VIEW)


def test_excluded_samples_of_a_users_split_are_left_out_of_its_audit(field_dataset):
    """Found by a tester: excluding samples of a split not made by BubbleFence left their
    tags (nothing of BubbleFence's to leave), and the audit still measured them: its
    leakage, counts, leak view and closest pairs held the excluded samples."""
    ds = field_dataset
    ids = ds.values("id")
    ds.select(ids[:120]).tag_samples("train")
    ds.select(ids[120:160]).tag_samples("validation")
    ds.select(ids[160:]).tag_samples("test")
    excluded = ids[150:165]
    bfo.exclude(ds.select(excluded))
    measured = bfo.report(ds, "tags", embeddings_field="emb", store=False)
    # The same split without those samples at all: what the audit must measure.
    ds.select(excluded).untag_samples(["train", "validation", "test"])
    expected = bfo.report(ds, "tags", embeddings_field="emb", store=False)
    for key in ("counts", "eval_train", "validation_test", "diversity"):
        assert measured["metrics"]["split"][key] == expected["metrics"]["split"][key], key
    assert measured["n_split"] == 185
    assert (
        "15 samples tagged 'excluded' carry a split: left out of every measure"
        in (measured["warnings"])
    )
    assert not {p["eval_id"] for p in measured["closest_pairs"]} & set(excluded)


def test_an_html_path_that_cannot_be_written_is_refused_before_the_audit(split_dataset, tmp_path):
    """Found by a tester: a report file under a regular file failed only once the audit
    had run ("[Errno 17] File exists"), and nothing was stored."""
    (tmp_path / "file").write_text("x")
    events = []
    with pytest.raises(ValueError, match="is a file, not a folder"):
        bfo.report(
            split_dataset,
            html_path=tmp_path / "file" / "report.html",
            progress=lambda fraction, label: events.append(fraction),
        )
    assert events == [] and not audit._audit_runs(split_dataset)
