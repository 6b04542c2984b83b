"""The split audit on FiftyOne collections: operator, stored reports, HTML, Brain comparison."""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest
from conftest import operator_requests

pytestmark = pytest.mark.fiftyone

fo = pytest.importorskip("fiftyone")
foo = pytest.importorskip("fiftyone.operators")
bfo = pytest.importorskip("bubblefence_plugin.fo")

from fiftyone.operators.delegated import DelegatedOperationService  # noqa: E402
from fiftyone.operators.executor import ExecutionError, resolve_type  # noqa: E402
from fiftyone.operators.registry import OperatorRegistry  # noqa: E402

from bubblefence_plugin.fo import audit  # noqa: E402

REPORT = "@bubblefence/bubblefence/bubblefence_report"


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
    assert any(m.startswith("FiftyOne Brain leaks") for m in metrics_shown)
    assert any(m.startswith("Group violations") for m in metrics_shown)
    assert shown["html_path"] == str(html_path)
    page = html_path.read_text(encoding="utf-8")
    assert "<table>" in page and "Plotly.newPlot" in page
    # plotly.js is inline (no <script src=...>): the page works offline.
    assert not re.search(r"<script[^>]*\ssrc=", page) and len(page) > 1_000_000

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

    clone = ds.clone()
    try:
        assert bfo.latest_report(clone) == bfo.latest_report(ds)
        assert len(bfo.list_reports(clone)) == 3
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
    with pytest.raises(ValueError, match="group_field 'emb' is a VectorField"):
        bfo.report(ds, "my_split", "emb", group_field="emb")
    with pytest.raises(ExecutionError, match="thresholds"):
        foo.get_operator(REPORT)(ds, "my_split", "emb", thresholds=[1.5])
    with pytest.raises(ValueError, match="unknown report parameter .eval_share."):
        foo.get_operator(REPORT)(ds, "my_split", "emb", eval_share=0.2)
    ds.limit(3).set_values("emb", [None, None, None])
    r = bfo.report(ds, "my_split", "emb", store=False)
    assert r["n_without_embedding"] == 3 and r["n_audited"] == 197
