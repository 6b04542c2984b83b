"""Curation on a FiftyOne dataset: `curate.sample`, the operator, exclusion from the panel."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from conftest import killed, operator_requests

pytestmark = [pytest.mark.fiftyone, pytest.mark.usefixtures("new_panel")]

fo = pytest.importorskip("fiftyone")
foo = pytest.importorskip("fiftyone.operators")
bfo = pytest.importorskip("bubblefence_plugin.fo")

from fiftyone.operators.delegated import DelegatedOperationService  # noqa: E402
from fiftyone.operators.executor import ExecutionError  # noqa: E402

from bubblefence_plugin.core.curation import typicality  # noqa: E402
from bubblefence_plugin.fo import curate, fields, state  # noqa: E402
from bubblefence_plugin.fo import map as viz  # noqa: E402
from bubblefence_plugin.fo.runs import from_npy_text  # noqa: E402
from bubblefence_plugin.text import round_text  # noqa: E402

F = fo.ViewField
PLUGIN = "@bubblefence/bubblefence"
SAMPLE = f"{PLUGIN}/bubblefence_sample"
PANEL = f"{PLUGIN}/bubblefence_panel"


def panel_event(ds, method, state=None, selected=None, **params):
    from test_panel import Reply

    ctx = {
        "dataset": ds,
        "params": {"__method__": method, "panel_id": "p1", "panel_state": state or {}, **params},
    }
    if selected is not None:
        ctx["selected"] = selected
    return Reply(foo.execute_operator(PANEL, ctx=ctx))


def splits_of(ds) -> dict[str, str | None]:
    return dict(zip(*ds.values(["id", "split"]), strict=True))


def test_sample_tags_a_pick_and_writes_scores(field_dataset):
    ds = field_dataset
    ds.add_sample(fo.Sample(filepath="/nonexistent/bad.png"))  # no embedding: skipped
    summary = curate.sample(ds, "diverse", count=10, tag="pick", embeddings_field="emb", seed=1)
    assert summary["n_picked"] == 10 and summary["n_errors"] == 1
    assert ds.count_sample_tags()["pick"] == 10
    assert sorted(ds.match_tags("pick").values("id")) == sorted(summary["picked_ids"])
    # the pick reaches all 10 clusters of the fixture data
    from sklearn.cluster import KMeans

    x = np.stack(ds.exists("emb").values("emb"))
    clusters = KMeans(10, n_init=5, random_state=0).fit_predict(x)
    picked = set(ds.match_tags("pick").values("id"))
    ids = ds.exists("emb").values("id")
    assert len({c for i, c in zip(ids, clusters, strict=True) if i in picked}) == 10
    # typicality and region for every sample read, as the core computes them
    typ = np.asarray(ds.exists("emb").values(curate.TYPICALITY_FIELD))
    np.testing.assert_allclose(typ, typicality(x / np.linalg.norm(x, axis=1)[:, None]), atol=1e-6)
    regions = ds.exists("emb").values(curate.REGION_FIELD)
    assert None not in regions and summary["n_regions"] == len(set(regions)) > 1
    # an existing tag is refused before anything changes; replace moves it
    with pytest.raises(ValueError, match="already exists"):
        curate.sample(ds, "typical", count=5, tag="pick", embeddings_field="emb")
    assert ds.count_sample_tags()["pick"] == 10
    again = curate.sample(ds, "typical", count=5, tag="pick", embeddings_field="emb", replace=True)
    assert ds.count_sample_tags()["pick"] == 5
    assert set(ds.match_tags("pick").values("id")) == set(again["picked_ids"])


def test_regions_are_kept_and_new_samples_join(field_dataset):
    ds = field_dataset
    curate.sample(ds, "random", count=3, tag="a", embeddings_field="emb")
    before = dict(zip(*ds.values(["id", curate.REGION_FIELD]), strict=True))
    n_regions = len(curate.load_regions(ds)[0].centres)
    new = ds.add_samples([fo.Sample(filepath=f"/nonexistent/n{i}.png") for i in range(20)])
    far = np.zeros((20, 16), np.float32)
    far[:, 0] = -1.0  # unlike anything seen: opens a region
    far[:10] = np.stack(ds.limit(10).values("emb"))  # near twins of known samples: join
    ds.select(new).set_values("emb", list(far))
    curate.sample(ds, "random", count=3, tag="b", embeddings_field="emb")
    after = dict(zip(*ds.values(["id", curate.REGION_FIELD]), strict=True))
    assert all(after[i] == r for i, r in before.items())  # earlier regions never change
    assert all(after[i] is not None for i in new)
    index = curate.load_regions(ds)[0]
    assert len(index.centres) == n_regions + 1
    assert {after[i] for i in new[10:]} == {n_regions}


def test_regions_of_another_field_are_refused_until_rebuilt_and_reset_drops_its_own(
    field_dataset,
):
    """Regions built from one field: a pick from another is refused with the way out,
    which rebuilds them; a reset drops regions built from the embeddings it deletes."""
    ds = field_dataset
    ds.clone_sample_field("emb", "emb2")
    curate.sample(ds, "random", count=3, tag="a", embeddings_field="emb")
    with pytest.raises(ValueError, match=r"built from field 'emb'.*rebuild_regions=True"):
        curate.sample(ds, "random", count=3, tag="b", embeddings_field="emb2")
    curate.sample(ds, "random", count=3, tag="b", embeddings_field="emb2", rebuild_regions=True)
    assert curate.load_regions(ds)[1]["embeddings_field"] == "emb2"
    bfo.reset(ds)  # built from a field of the user's: kept
    assert curate.load_regions(ds) is not None
    ds.clone_sample_field("emb", bfo.EMBEDDING_FIELD)
    curate.sample(ds, "random", count=3, tag="c", rebuild_regions=True)
    assert curate.load_regions(ds)[1]["embeddings_field"] == bfo.EMBEDDING_FIELD
    removed = bfo.reset(ds)["removed_runs"]
    assert curate.REGIONS_KEY in removed and curate.load_regions(ds) is None


def test_excluded_samples_neither_start_a_pick_nor_query_it(field_dataset):
    """Found by a tester: an excluded sample tagged as the start of a diverse pick still
    counted as picked (its far-away group never covered), and an excluded query sample
    steered a similar pick, where excluded samples are never to be read."""
    ds = field_dataset
    vectors = {i: np.asarray(v) for i, v in zip(*ds.values(["id", "emb"]), strict=True)}
    query, other = ds.limit(2).values("id")
    ds.select([query, other]).tag_samples("query")
    bfo.exclude(ds.select(query))
    out = curate.sample(ds, "similar", count=3, tag="like", query_tag="query")
    q = vectors[other] / np.linalg.norm(vectors[other])
    best = sorted(
        (float(v @ q) / np.linalg.norm(v), i) for i, v in vectors.items() if i not in (query, other)
    )
    assert set(out["picked_ids"]) == {i for _, i in best[-3:]}
    bfo.exclude(ds.select(other))
    with pytest.raises(ValueError, match="query_tag='query': no sample has that tag"):
        curate.sample(ds, "similar", count=3, tag="like2", query_tag="query")
    # A start of excluded samples only is none; a split's alias starts a pick as its
    # name does (`from_split` took "val", `start_from` did not).
    with pytest.raises(ValueError, match="start_from='query': no sample has that tag"):
        curate.sample(ds, "diverse", count=3, tag="far", start_from="query")
    ds.take(20, seed=2).tag_samples("val")
    picked = curate.sample(ds, "diverse", count=3, tag="far", start_from="val")["picked_ids"]
    assert not set(picked) & set(ds.match_tags("val").values("id"))


def test_from_split_start_from_similar_balance_metadata(field_dataset):
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    curate.sample(ds, "diverse", count=8, tag="first", from_split="train", embeddings_field="emb")
    assert set(ds.match_tags("first").values("split")) == {"train"}
    curate.sample(
        ds,
        "diverse",
        count=8,
        tag="second",
        from_split="train",
        start_from="first",
        embeddings_field="emb",
    )
    assert not set(ds.match_tags("first").values("id")) & set(ds.match_tags("second").values("id"))

    ds.limit(2).tag_samples("query")
    out = curate.sample(ds, "similar", count=5, tag="like", query_tag="query")
    x = {i: np.asarray(v) for i, v in zip(*ds.values(["id", "emb"]), strict=True)}
    q = [x[i] / np.linalg.norm(x[i]) for i in ds.match_tags("query").values("id")]
    best = {i: max(float(v @ qq) / np.linalg.norm(v) for qq in q) for i, v in x.items()}
    others = sorted((s for i, s in best.items() if i not in ds.match_tags("query").values("id")))
    assert min(best[i] for i in out["picked_ids"]) >= others[-5] - 1e-6

    ds.set_values("kind", ["cat" if k % 4 else "dog" for k in range(len(ds))])
    out = curate.sample(ds, "balance", count=40, tag="bal", label_field="kind", target="uniform")
    assert out["quotas"] == {"cat": 20, "dog": 20}
    assert ds.match_tags("bal").count_values("kind") == {"cat": 20, "dog": 20}
    # A class no sample has is refused (a typo), before anything is written.
    with pytest.raises(ValueError, match=r"unknown class 'dgo' \(did you mean 'dog'\?\)"):
        curate.sample(
            ds, "balance", count=4, tag="typo", label_field="kind", target={"cat": 0.5, "dgo": 0.5}
        )
    assert "typo" not in ds.count_sample_tags()
    # Asked for more than the classes hold: the message says so.
    n_dogs = ds.count_values("kind")["dog"]
    out = curate.sample(
        ds, "balance", count=500, tag="all-dogs", label_field="kind", target={"dog": 1.0}
    )
    assert out["n_picked"] == n_dogs and "500 were asked" in out["message"]

    ds.set_values("size", [float(k) for k in range(len(ds))])
    curate.sample(ds, [], count=3, tag="small", strengths={"metadata": -1.0}, metadata_field="size")
    assert sorted(ds.match_tags("small").values("size")) == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "spread"}, "strategy='spread'"),
        ({"tag": "train"}, "reserved"),
        # The audit reads these as splits, so a pick so tagged was in two splits there.
        ({"tag": "val"}, "reserved"),
        ({"tag": " Train"}, "reserved"),
        ({"tag": "Excluded"}, "reserved"),
        ({"strategy": "balance"}, "label_field"),
        ({"strategy": "similar"}, "query_tag"),
        ({"strategy": "metadata"}, "metadata_field"),
        ({"from_split": "holdout"}, r"from_split='holdout'.*alias such as 'val'"),
        ({"embeddings_field": "nope"}, "nope"),
        ({"count": 0}, "count"),
        ({"strategy": "balance", "label_field": "emb"}, "label_field='emb'"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(field_dataset, kwargs, match):
    args = {"strategy": "diverse", "count": 5, "tag": "t", "embeddings_field": "emb", **kwargs}
    with pytest.raises(ValueError, match=match):
        curate.sample(field_dataset, **args)
    assert not field_dataset.has_field(curate.TYPICALITY_FIELD)
    assert not field_dataset.count_sample_tags()


def test_operator_immediate_with_progress_and_delegated(field_dataset):
    ds = field_dataset
    result = foo.execute_operator(
        SAMPLE,
        ctx={
            "dataset": ds,
            "params": {"strategy": "outliers", "count": 7, "tag": "odd", "embeddings_field": "emb"},
        },
    )
    requests = operator_requests(result)
    progress = [p["progress"] for p in requests["set_progress"]]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert "Tagged 7" in requests["show_output"][0]["results"]["summary"]
    typ = dict(zip(*ds.values(["id", curate.TYPICALITY_FIELD]), strict=True))
    odd = ds.match_tags("odd").values("id")
    assert max(typ[i] for i in odd) <= sorted(typ.values())[6] + 1e-7  # the 7 lowest

    with pytest.raises(ExecutionError, match="'odd' exists already"):  # the form refuses it
        foo.get_operator(SAMPLE)(ds, strategy="diverse", count=3, tag="odd", embeddings_field="emb")
    with pytest.raises(ExecutionError, match=r"'val' is reserved \(a split's name\)"):
        foo.get_operator(SAMPLE)(ds, strategy="diverse", count=3, tag="val", embeddings_field="emb")
    with pytest.raises(ExecutionError, match=r"'excluded' is reserved \(the exclusion tag\)"):
        foo.get_operator(SAMPLE)(
            ds, strategy="diverse", count=3, tag="excluded", embeddings_field="emb"
        )

    op = foo.get_operator(SAMPLE)
    queued = op(
        ds.limit(100),
        count=5,
        tag="mix",
        strengths={"diverse": 1.0, "typical": 0.5},
        embeddings_field="emb",
        delegate=True,
    )
    assert queued.delegated and "mix" not in ds.count_sample_tags()
    service = DelegatedOperationService()
    service.execute_queued_operations(dataset_name=ds.name)
    run = service.get(queued.result["id"])
    assert run.run_state == "completed", run.run_state
    assert run.result.result["result"]["strengths"] == {"diverse": 1.0, "typical": 0.5}
    assert set(ds.match_tags("mix").values("id")) <= set(ds.limit(100).values("id"))
    assert ds.count_sample_tags()["mix"] == 5


def test_from_split_reads_a_split_of_tags_alone(field_dataset):
    # Found by a stress test: on a dataset split by tags only (as zoo datasets ship),
    # from_split="train" was refused as "no split yet" while start_from read the tags.
    ds = field_dataset
    train = ds.take(120, seed=1).values("id")
    ds.select(train).tag_samples("train")
    out = curate.sample(
        ds, "diverse", count=10, tag="pick", from_split="train", embeddings_field="emb"
    )
    assert out["n_candidates"] == 120
    assert set(ds.match_tags("pick").values("id")) <= set(train)
    with pytest.raises(ValueError, match="has no split yet"):
        curate.sample(ds, "diverse", count=3, tag="p2", from_split="test", embeddings_field="emb")
    # Tags read as the audit reads them: an alias, and no sample of two splits (found by
    # a stress test: "val" was "no split yet", and a train+test sample was picked).
    ds.match_tags("train", bool=False).tag_samples("Val")
    both = ds.match_tags("train").limit(10).values("id")
    ds.select(both).tag_samples("test")
    out = curate.sample(
        ds, "diverse", count=5, tag="p3", from_split="validation", embeddings_field="emb"
    )
    assert out["n_candidates"] == 80
    out = curate.sample(
        ds, "diverse", count=5, tag="p4", from_split="train", embeddings_field="emb"
    )
    assert out["n_candidates"] == 110 and not set(both) & set(ds.match_tags("p4").values("id"))
    # A split field of the user's with aliases, read as the audit reads it; and an alias
    # named as from_split.
    ds.set_values("split", ["val" if i % 4 else "Test" for i in range(len(ds))])
    out = curate.sample(ds, "diverse", count=5, tag="p5", from_split="val", embeddings_field="emb")
    assert out["n_candidates"] == 150


def test_a_pick_and_a_report_read_the_same_vector_field_when_none_is_named(field_dataset):
    # Found by a stress test: a pick on a dataset never split asked for embeddings_field
    # where a report took its only vector field.
    ds = field_dataset
    ds.select(ds.take(150, seed=2).values("id")).tag_samples("train")
    ds.match_tags("train", bool=False).tag_samples("test")
    out = curate.sample(ds, "diverse", count=5, tag="pick")
    assert out["n_read"] == 200 and ds.count_sample_tags()["pick"] == 5
    assert bfo.report(ds, "tags", store=False)["embeddings_field"] == "emb"
    # No vector field at all: said so, not as a field "bubblefence_embedding" missing.
    ds.set_values("floats", [list(map(float, v)) for v in ds.values("emb")])
    ds.delete_sample_field("emb")
    with pytest.raises(ValueError, match=r"has no embeddings to pick from.*\['floats'\]"):
        curate.sample(ds, "diverse", count=5, tag="pick2")


def test_operator_form_shows_strategy_options(field_dataset):
    import asyncio

    from fiftyone.operators.executor import resolve_type
    from fiftyone.operators.registry import OperatorRegistry

    def form(params):
        request = {
            "dataset_name": field_dataset.name,
            "operator_uri": SAMPLE,
            "params": params,
            "view": [],
            "target": "inputs",
        }
        return asyncio.run(resolve_type(OperatorRegistry(), SAMPLE, request)).to_json()["type"]

    props = form({})["properties"]
    assert {"strategy", "count", "tag", "embeddings_field", "start_from"} <= set(props)
    assert "label_field" not in props and "strength_typical" not in props
    # Pre-filled, so not required: the App flashed "Required property" under them.
    assert not any(props[name].get("required") for name in ("strategy", "count", "tag"))
    assert "label_field" in form({"strategy": "balance"})["properties"]
    assert "strength_typical" in form({"combine": True})["properties"]
    assert "metadata_field" in form({"strategy": "metadata"})["properties"]
    field_dataset.limit(3).tag_samples(curate.DEFAULT_TAG)
    tag = form({})["properties"]["tag"]
    assert tag["invalid"] and "exists already" in tag["error_message"]
    assert "rebuild_regions" not in props  # no regions yet
    foo.get_operator(SAMPLE)(field_dataset, count=3, tag="first", embeddings_field="emb")
    rebuild = form({})["properties"]["rebuild_regions"]
    assert "built from 'emb'" in rebuild["view"]["description"]
    field_dataset.clone_sample_field("emb", "emb2")
    foo.get_operator(SAMPLE)(
        field_dataset, count=3, tag="second", embeddings_field="emb2", rebuild_regions=True
    )
    assert curate.load_regions(field_dataset)[1]["embeddings_field"] == "emb2"
    # Combined, with no strength sent: the form's defaults (diverse 1, the rest 0), as
    # the App would send them; "strengths must be a non-empty dict" before.
    params = {"combine": True, "count": 4, "tag": "third", "embeddings_field": "emb2"}
    result = foo.execute_operator(SAMPLE, ctx={"dataset": field_dataset, "params": params})
    shown = operator_requests(result)["show_output"][0]["results"]["result"]
    assert shown["strengths"] == {"diverse": 1.0}


def test_exclude_from_the_panel_leaves_the_split_and_nothing_else_moves(field_dataset, tmp_path):
    ds = field_dataset
    bfo.split(ds.limit(150), embeddings_field="emb")
    before = splits_of(ds)
    held_out = ds.match(F("split").is_in(["validation", "test"])).limit(3).values("id")
    train_point = ds.match(F("split") == "train").first().id

    # lasso -> Exclude with a reason; the panel says how many
    panel_event(ds, "on_lasso", data=[{"id": i, "trace": "test", "idx": 0} for i in held_out])
    reply = panel_event(
        ds, "exclude", state={"curation": {"exclusion_reason": "blurry"}}, selected=held_out
    )
    assert "Excluded 3 samples" in reply.ops["notify"][0]["message"]
    # The App reloads the dataset page: its grid shows the new tags (reload_samples left
    # the thumbnails' old ones), and the first reason's new field.
    assert "reload_dataset" in reply.ops
    # a clicked point, without a selection
    panel_event(ds, "on_click", trace="train", id=train_point, idx=0)
    reply = panel_event(ds, "exclude")
    assert "Excluded 1 sample " in reply.ops["notify"][0]["message"]
    assert "reload_dataset" in reply.ops
    excluded = set(held_out) | {train_point}
    # While another run holds the dataset: the lock's message, cut for a toast (the whole
    # ran to 290 characters, seen in two tabs).
    from bubblefence_plugin.fo.runs import RunLock
    from bubblefence_plugin.text import TOAST_CHARS

    with RunLock(ds):
        reply = panel_event(ds, "exclude", selected=held_out)
    (notice,) = reply.ops["notify"]
    assert notice["variant"] == "error" and "in progress" in notice["message"]
    assert len(notice["message"]) <= TOAST_CHARS
    # Reset view forgets the clicked point: Exclude then has nothing to act on
    panel_event(ds, "reset_view")
    reply = panel_event(ds, "exclude")
    assert reply.ops["notify"][0]["variant"] == "warning"

    assert set(ds.match_tags("excluded").values("id")) == excluded
    assert ds.select(held_out).values(curate.REASON_FIELD) == ["blurry"] * 3
    for sample in ds.select(list(excluded)):
        assert sample.split is None and sample.anchor_id is None
        assert not set(sample.tags) & set(bfo.SPLIT_TAGS)
    bf, params = bfo.load_state(ds)
    assert not excluded & set(bf.assignments()["id"])
    assert sorted(params["excluded_ids"]) == sorted(excluded)
    now = splits_of(ds)
    assert all(now[i] == s for i, s in before.items() if i not in excluded)

    # the next split leaves them out and moves nothing that was split
    summary = bfo.split(ds, embeddings_field="emb")
    assert summary["n_new"] == 50
    after = splits_of(ds)
    assert all(after[i] == s for i, s in before.items() if s is not None and i not in excluded)
    assert all(after[i] is None for i in excluded)
    assert ds.match_tags("excluded").exists("split").count() == 0

    # the excluded paths, from the CLI
    from bubblefence_plugin.cli import main

    out = tmp_path / "excluded.txt"
    assert main(["excluded", "--dataset", f"no-such-{ds.name}", "--out", str(out)]) == 2
    assert main(["excluded", "--dataset", ds.name, "--out", str(out)]) == 0
    assert sorted(out.read_text().splitlines()) == sorted(
        ds.select(list(excluded)).values("filepath")
    )

    # Include again: the next round assigns them as new samples
    reply = panel_event(ds, "include_again", selected=held_out)
    assert "Included 3" in reply.ops["notify"][0]["message"] and "reload_dataset" in reply.ops
    assert bfo.split(ds, embeddings_field="emb")["n_new"] == 3
    assert None not in ds.select(held_out).values("split")


def _stored_state(ds) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """(run parameters, meta, arrays) of the committed state run, as stored."""
    params, results = state.STATE_RUN.read_committed(ds)
    return params, results.meta, {k: from_npy_text(v) for k, v in results.arrays.items()}


def test_exclude_commits_the_state_a_full_reload_commits_and_rounds_agree(
    field_dataset, fo_datasets, monkeypatch
):
    """Exclusion reads no embedding, yet commits what loading the whole state (vectors
    included), dropping the excluded rows and saving it commits; the rounds after agree."""
    ds = field_dataset
    bfo.split(ds.limit(150), embeddings_field="emb")
    ds.delete_samples(ds.match(F("split") == "train").first())  # a row the state must drop
    reference = ds.clone()
    fo_datasets.append(reference)
    assert reference.values("id") == ds.values("id")
    excluded = ds.match(F("split").is_in(["validation", "test"])).limit(5).values("id")
    excluded += ds.match(F("split") == "train").limit(5).values("id")

    read = []
    monkeypatch.setattr(state, "_stored_embeddings", lambda *a: read.append(a))
    bfo.exclude(ds.select(excluded))
    monkeypatch.undo()
    assert not read
    # The same exclusion through a full load: every vector rebuilt from the field.
    reference.select(excluded).tag_samples(bfo.EXCLUDED_TAG)
    bf, params = bfo.load_state(reference)
    assert len(state.leave_split_if_excluded(reference, bf, params)) == len(excluded)
    params["n_samples"] = bf.n_samples
    state.save_state(reference, bf, params)
    fields.clear_excluded_fields(reference)

    ours, theirs = _stored_state(ds), _stored_state(reference)
    assert ours[0] == theirs[0] and ours[1] == theirs[1]
    assert ours[2].keys() == theirs[2].keys()
    for name, array in theirs[2].items():
        # A bubble of whole units has no LID (NaN), equal on both sides.
        same = np.array_equal(ours[2][name], array, equal_nan=array.dtype.kind == "f")
        assert same or name == "embedding_checks", name
    # The kept checksums are the round's; a full load recomputes them from the vectors
    # read back: equal but for float64 rounding (1.7e-16 seen), far inside the 1e-4
    # that `load_state` allows.
    difference = np.abs(ours[2]["embedding_checks"] - theirs[2]["embedding_checks"]).max()
    assert difference < 1e-12
    loaded, expected = bfo.load_state(ds)[0], bfo.load_state(reference)[0]
    assert np.array_equal(state.state_embeddings(loaded), state.state_embeddings(expected))
    assert splits_of(ds) == dict(zip(*reference.values(["id", "split"]), strict=True))

    # Including a sample that left commits nothing: the state keeps its arrays.
    commits = []
    monkeypatch.setattr(type(state.STATE_RUN), "commit", lambda *a: commits.append(a))
    for dataset in (ds, reference):
        bfo.include_again(dataset.select(excluded[:4]))
    monkeypatch.undo()
    assert not commits
    assert _stored_state(ds)[0]["excluded_ids"] == sorted(excluded[4:])

    # The next round assigns the same samples alike on both.
    summaries = [bfo.split(d, embeddings_field="emb") for d in (ds, reference)]
    assert summaries[0]["n_new"] == summaries[1]["n_new"] == 50 + 4
    assert splits_of(ds) == dict(zip(*reference.values(["id", "split"]), strict=True))


def test_excluding_by_tag_alone_takes_effect_at_the_next_split(field_dataset):
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    before = splits_of(ds)
    ids = ds.match(F("split") == "train").limit(4).values("id")
    ds.select(ids).tag_samples(bfo.EXCLUDED_TAG)  # the App's tag menu, no panel
    summary = bfo.split(ds, embeddings_field="emb")
    assert summary["n_excluded_left"] == 4
    assert "excluded samples taken out of the split: 4" in round_text(summary).plain()
    after = splits_of(ds)
    assert all(after[i] is None for i in ids)
    assert all(after[i] == s for i, s in before.items() if i not in ids)
    assert sorted(bfo.state_info(ds)["excluded_ids"]) == sorted(ids)
    # Tagged by hand, then an exclusion of others: the message says why more left.
    by_hand = ds.match(F("split") == "train").limit(2).values("id")
    ds.select(by_hand).tag_samples(bfo.EXCLUDED_TAG)
    others = ds.select(ds.match(F("split") == "train").skip(2).limit(3).values("id"))
    assert bfo.exclude(others)["message"] == (
        "Excluded 3 samples (0 were already); 5 left their split, 2 of them tagged "
        "'excluded' earlier"
    )
    # Include again applies other hand tags too, and says so (found by a stress test).
    more = ds.match(F("split") == "train").limit(2).values("id")
    ds.select(more).tag_samples(bfo.EXCLUDED_TAG)
    assert bfo.include_again(others)["message"] == (
        "Included 3 samples again; the next split assigns them; 2 other samples tagged "
        "'excluded' by hand left the split"
    )


def test_an_exclusion_reason_goes_with_the_tag_however_the_tag_goes(field_dataset):
    # Untagged by hand (the App's tag menu), a sample kept "blurry" as its reason while
    # the next split assigned it again.
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    by_hand, by_button = (
        ds.match(F("split") == "train").skip(k).limit(2).values("id") for k in (0, 2)
    )
    bfo.exclude(ds.select(by_hand + by_button), reason="blurry")
    assert ds.select(by_hand + by_button).values(bfo.REASON_FIELD) == ["blurry"] * 4
    ds.select(by_hand).untag_samples(bfo.EXCLUDED_TAG)
    summary = bfo.split(ds, embeddings_field="emb")
    assert summary["n_new"] == 2
    assert ds.select(by_hand).values(bfo.REASON_FIELD) == [None, None]
    assert ds.select(by_button).values(bfo.REASON_FIELD) == ["blurry"] * 2
    bfo.include_again(ds.select(by_button))
    assert ds.select(by_button).values(bfo.REASON_FIELD) == [None, None]


def test_include_again_of_samples_tagged_by_hand_keeps_their_split(field_dataset):
    # Found by a stress test: Include again cleared their split fields and tags while the
    # state still held them, so an export left them out until the next split.
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    before = splits_of(ds)
    left = ds.match(F("split") == "train").limit(3).values("id")
    bfo.exclude(ds.select(left))
    by_hand = ds.match(F("split") == "validation").limit(2).values("id")
    ds.select(by_hand).tag_samples(bfo.EXCLUDED_TAG)
    result = bfo.include_again(ds.select(by_hand + left))
    assert result["message"] == (
        "Included 5 samples again; 2 had not left the split yet (tagged by hand, no split "
        "since) and keep it; the next split assigns the other 3"
    )
    after = splits_of(ds)
    assert [after[i] for i in by_hand] == ["validation", "validation"]
    assert all("validation" in ds[i].tags for i in by_hand)
    assert all(after[i] is None for i in left)
    summary = bfo.split(ds)
    assert summary["n_new"] == 3 and summary["n_repaired"] == 0
    assert all(splits_of(ds)[i] == s for i, s in before.items() if i not in left)


def test_panel_colours_by_typicality_and_region(field_dataset):
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    points = panel_event(ds, "on_color_by", value="typicality").points
    assert set(points["text"]) == {"no typicality"} and len(points["ids"]) == 200
    assert set(points["marker"]["color"]) == {viz.NO_SCORE_COLOR}
    legend = panel_event(ds, "on_color_by", value="region").legend
    assert [t["name"] for t in legend] == [viz.NOT_COMPUTED.format(what="region")]
    curate.sample(ds, "random", count=1, tag="r", embeddings_field="emb")
    points = panel_event(ds, "on_color_by", value="typicality").points
    typ = dict(zip(*ds.values(["id", curate.TYPICALITY_FIELD]), strict=True))
    assert points["text"] == [f"typicality {typ[i]:.3f}" for i in points["ids"]]
    assert len(set(points["marker"]["color"])) > 1  # the Viridis scale
    reply = panel_event(ds, "on_color_by", value="region")
    region = dict(zip(*ds.values(["id", curate.REGION_FIELD]), strict=True))
    assert reply.points["text"] == [f"region {region[i]}" for i in reply.points["ids"]]
    assert len(set(reply.points["marker"]["color"])) > 1
    props = reply.properties()
    assert {"exclude", "include_again", "exclusion_reason"} <= set(props)
    assert viz.COLOR_BY == ("split", "round", "typicality", "region")


def test_the_typicality_legend_keeps_its_values_apart():
    """Scores in a narrow range get as many decimals as keep the five stops apart."""
    legend = viz._scale_colors(np.array([0.9370, 0.9385, 0.9400, 0.9412, 0.9431])).legend
    names = [name for name, _ in legend]
    assert len(set(names)) == len(names) == 5
    assert names[0] == "typicality 0.937" and names[-1] == "typicality 0.943"
    wide = [name for name, _ in viz._scale_colors(np.array([0.1, 0.5, 0.9])).legend]
    assert wide == [
        "typicality 0.10",
        "typicality 0.30",
        "typicality 0.50",
        "typicality 0.70",
        "typicality 0.90",
    ]


def test_cli_sample_combines_strategies_and_refuses_bad_input(field_dataset, capsys):
    from bubblefence_plugin.cli import main

    ds = field_dataset
    args = ["sample", "--dataset", ds.name, "--embeddings-field", "emb", "--count", "6"]
    assert main([*args, "--strategy", "diverse=1", "--strategy", "typical=0.5", "--tag", "c"]) == 0
    assert "Tagged 6" in capsys.readouterr().out
    assert ds.count_sample_tags()["c"] == 6
    # the same pick as from Python: the CLI adds nothing of its own
    same = curate.sample(
        ds, [], 6, "py", strengths={"diverse": 1.0, "typical": 0.5}, embeddings_field="emb"
    )
    assert sorted(same["picked_ids"]) == sorted(ds.match_tags("c").values("id"))
    assert main([*args, "--strategy", "diverse=lots", "--tag", "d"]) == 2
    assert "diverse=lots" in capsys.readouterr().err
    assert main([*args, "--tag", "c"]) == 2  # the tag exists
    assert "already exists" in capsys.readouterr().err


def test_samples_of_an_exclusion_stopped_after_its_commit_can_be_included_again(
    field_dataset, monkeypatch
):
    """An exclusion killed between its commit (the samples left the state) and clearing
    their split fields, then Include again: the samples were new again but kept a split
    no state holds, which the next round refuses as a split that came with them."""
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    chosen = ds.take(5, seed=2)

    monkeypatch.setattr(curate, "clear_excluded_fields", killed)
    with pytest.raises(KeyboardInterrupt):
        bfo.exclude(chosen)
    monkeypatch.undo()
    assert bfo.state_info(ds)["n_samples"] == 195 and len(chosen.exists("split")) == 5
    bfo.include_again(chosen)
    assert len(chosen.exists("split")) == 0
    summary = bfo.split(ds, embeddings_field="emb")
    assert (summary["n_new"], bfo.state_info(ds)["n_samples"]) == (5, 200)


@pytest.mark.parametrize("how", ["exclude", "hand tag then split", "deleted then split"])
def test_a_duplicate_takes_the_place_of_an_original_that_leaves(field_dataset, how):
    # Found by a stress test: the copy stayed "duplicate" of nothing (in no split, never
    # exported), and the original included again became the copy's duplicate.
    ds = field_dataset
    original, copies = _split_with_two_copies_of_sample_3(ds)
    assert ds.select(copies).values("duplicate_of") == [original, original]
    place = ds[original]["split"]
    if how == "exclude":
        bfo.exclude(ds.select([original]))
    elif how == "hand tag then split":
        ds.select([original]).tag_samples(bfo.EXCLUDED_TAG)
        bfo.split(ds)
    else:
        ds.delete_samples([original])
        summary = bfo.split(ds)
        assert summary["n_split_edited"] == 0  # the copy's new place is no edit of the user's
    heir, other = (ds[i] for i in copies)
    assert (heir["split"], heir["duplicate_of"], heir.tags) == (place, None, [place])
    assert (other["split"], other["duplicate_of"]) == ("duplicate", heir.id)
    rows = bfo.load_state(ds, embeddings=False)[0].assignments().set_index("id")
    assert rows.loc[heir.id, "split"] == place and rows.loc[other.id, "duplicate_of"] == heir.id
    assert bfo.split(ds)["n_repaired"] == 0  # fields and state agree
    if how != "deleted then split":
        bfo.include_again(ds.select([original]))
        bfo.split(ds)
        back = ds[original]
        assert (back["split"], back["duplicate_of"]) == ("duplicate", heir.id)
        assert ds[heir.id]["split"] == place


def test_a_pick_never_takes_a_copy_the_split_set_aside(field_dataset):
    # Found by a user's walk on real photos: "outliers" tagged an image and its byte copy,
    # so the pick held one image twice and a tag export wrote it twice.
    ds = field_dataset
    original, copies = _split_with_two_copies_of_sample_3(ds)
    summary = curate.sample(ds, "typical", count=len(ds), tag="all", embeddings_field="emb")
    picked = set(summary["picked_ids"])
    assert original in picked and not picked & set(copies)
    assert summary["n_copies_not_picked"] == 2 and summary["n_picked"] == len(ds) - 2
    assert "2 duplicates the split found not picked" in summary["message"]
    # still read: scored, and counted in their neighbours' typicality
    assert None not in ds.select(copies).values(curate.TYPICALITY_FIELD)
    with pytest.raises(ValueError, match="every one of the 2 samples here is a copy the split"):
        curate.sample(ds.select(copies), "typical", count=1, tag="copies", embeddings_field="emb")


def test_a_pick_never_takes_a_copy_that_follows_its_original(field_dataset):
    # Under dedup_policy "follow" a copy keeps a split of its own beside its original
    # (found by a re-test: a random pick of 150 held 11 such pairs).
    ds = field_dataset
    vectors = ds.values("emb")
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/copy{i}.png") for i in range(20)])
    copies = ds.skip(200).values("id")
    ds.select(copies).set_values("emb", vectors[:20])
    bfo.split(ds, embeddings_field="emb", dedup_policy="follow")
    assert set(ds.select(copies).values("split")) <= set(bfo.SPLIT_TAGS)  # not set aside
    summary = curate.sample(ds, "random", count=len(ds), tag="all", embeddings_field="emb")
    assert not set(summary["picked_ids"]) & set(copies)
    assert summary["n_copies_not_picked"] == 20


def _split_with_two_copies_of_sample_3(ds) -> tuple[str, list[str]]:
    """Adds two exact copies of sample 3's vector to ``ds`` and splits it; returns
    (original, copies) ids."""
    vectors = ds.values("emb")
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/copy{i}.png") for i in range(2)])
    copies = ds.skip(200).values("id")
    ds.select(copies).set_values("emb", [vectors[3], vectors[3]])
    bfo.split(ds, embeddings_field="emb")
    return ds.skip(3).first().id, copies


def _with_a_copy_of_sample_3(ds) -> tuple[str, str]:
    """Adds an exact copy of sample 3's vector to ``ds``; returns (original, copy) ids."""
    vectors = ds.values("emb")
    ds.add_sample(fo.Sample(filepath="/nonexistent/copy.png"))
    copy = ds.skip(len(ds) - 1).first()
    copy["emb"] = vectors[3]
    copy.save()
    return ds.skip(3).first().id, copy.id


def test_the_panel_redraws_an_heir_and_hand_tagged_samples_in_their_new_place(field_dataset):
    # Found by a stress test: after Exclude (or Include again) the panel updated only the
    # points acted on: a copy that took the excluded original's place stayed "duplicate",
    # and samples tagged excluded by hand that left with them kept their split.
    from conftest import panel_module

    ds = field_dataset
    original, copy = _with_a_copy_of_sample_3(ds)
    bfo.split(ds, embeddings_field="emb")
    panel_event(ds, "on_load")

    def drawn_category() -> dict[str, str]:
        drawn = panel_module()._SHOWN["p1"].drawn
        return dict(zip(drawn.ids.tolist(), drawn.category.tolist(), strict=True))

    def fresh_category() -> dict[str, str]:
        drawn = viz.map_figure(ds)["drawn"]
        return dict(zip(drawn.ids.tolist(), drawn.category.tolist(), strict=True))

    assert drawn_category()[copy] == "duplicate"
    panel_event(ds, "exclude", selected=[original])
    assert drawn_category()[copy] == ds[copy].split != "duplicate"
    by_hand = ds.match(F("split") == "train").limit(3).values("id")
    ds.select(by_hand).tag_samples(bfo.EXCLUDED_TAG)
    panel_event(ds, "include_again", selected=[original])
    now, fresh = drawn_category(), fresh_category()
    assert all(now[i] == fresh[i] == "excluded" for i in by_hand if i in now)
    assert {i: now[i] for i in now if i in fresh} == {i: fresh[i] for i in now if i in fresh}


def test_a_split_stopped_after_writing_an_heir_heals_when_the_original_comes_back(
    field_dataset, monkeypatch
):
    # Found by a stress test: the heir's fields were written before the commit; the run
    # was stopped, the original included again, and the copy stayed "train" beside it
    # (counted as changed by hand at every split; export refused).
    from conftest import add_embedded_samples, split_stopped_at

    ds = field_dataset
    original, copy = _with_a_copy_of_sample_3(ds)
    bfo.split(ds, embeddings_field="emb")
    ds.select([original]).tag_samples(bfo.EXCLUDED_TAG)
    add_embedded_samples(ds, 20, seed=5)
    split_stopped_at(ds, "with_embeddings", monkeypatch)
    assert ds[copy]["split"] != "duplicate"  # written before the run was stopped
    bfo.include_again(ds.select([original]))
    summary = bfo.split(ds)
    assert summary["n_split_edited"] == 0
    rows = bfo.load_state(ds, embeddings=False)[0].assignments().set_index("id")
    assert rows.loc[copy, "split"] == "duplicate" == ds[copy]["split"]
    assert ds[copy]["duplicate_of"] == original and ds[copy].tags == []


def test_a_copy_that_stood_in_points_to_its_original_included_again(field_dataset):
    # Found by a lifecycle fuzz: the round that made the stand-in a duplicate of the
    # original again left its duplicate_of field empty until the next run.
    ds = field_dataset
    ds.set_values("g", [f"g{i}" for i in range(len(ds))])
    bfo.split(ds, embeddings_field="emb", group_field="g")
    original = ds.match(F("split") == "validation").first()
    train = ds.match(F("split") == "train").first()
    ds.add_sample(fo.Sample(filepath="/nonexistent/copy.png", emb=original.emb, g=train.g))
    copy = ds.skip(len(ds) - 1).first().id
    bfo.split(ds)
    assert ds[copy].duplicate_of == original.id
    bfo.exclude(ds.select([original.id]))  # no heir: the copy's group is train's
    assert (ds[copy].split, ds[copy].duplicate_of) == ("duplicate", None)
    bfo.include_again(ds.select([original.id]))
    bfo.split(ds)
    rows = bfo.load_state(ds, embeddings=False)[0].assignments().set_index("id")
    assert rows.loc[copy, "duplicate_of"] == original.id == ds[copy].duplicate_of


def test_an_exclusion_stopped_after_its_commit_is_finished_by_a_split_with_nothing_new(
    field_dataset, monkeypatch
):
    # Found by a stress test: only a split with new samples cleared the excluded sample's
    # split fields, and export's "run the split again" did not help.
    curate_module = importlib.import_module("bubblefence_plugin.fo.curate")
    ds = field_dataset
    original, copy = _with_a_copy_of_sample_3(ds)
    bfo.split(ds, embeddings_field="emb")
    place = ds[original]["split"]
    with monkeypatch.context() as patched:
        patched.setattr(curate_module, "clear_excluded_fields", killed)
        with pytest.raises(KeyboardInterrupt):
            bfo.exclude(ds.select([original]))
    assert ds[original]["split"] == place  # its fields still say so
    assert "Nothing new to split" in bfo.split(ds)["message"]
    assert ds[original]["split"] is None and ds[original].tags == [bfo.EXCLUDED_TAG]
    assert (ds[copy]["split"], ds[copy]["duplicate_of"]) == (place, None)


def test_a_follower_that_becomes_an_heir_has_no_original_in_its_field(field_dataset):
    # Found by a stress test (policy follow): the heir's duplicate_of field kept naming
    # the deleted original at every split.
    ds = field_dataset
    original, copy = _with_a_copy_of_sample_3(ds)
    bfo.split(ds, embeddings_field="emb", dedup_policy="follow")
    assert ds[copy]["duplicate_of"] == original
    ds.delete_samples([original])
    bfo.split(ds)
    assert ds[copy]["duplicate_of"] is None and ds[copy]["split"] != "duplicate"


def test_an_exclusion_stopped_after_its_commit_is_finished_by_running_it_again(
    field_dataset, monkeypatch
):
    """Killed after the state committed, before the copies of the excluded original had
    their fields written: running the exclusion again said "0 left their split" and
    left the heir reading "duplicate" without a split tag (export then refused), and
    then the other copy naming the excluded original."""
    from bubblefence_plugin.fo import state

    ds = field_dataset
    original, copies = _split_with_two_copies_of_sample_3(ds)
    place = ds[original]["split"]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(state, "write_assignments", killed)
    with pytest.raises(KeyboardInterrupt):
        bfo.exclude(ds.select([original]))
    monkeypatch.undo()
    assert ds.select(copies).values("duplicate_of") == [original, original]
    # The next exclusion finishes it, whichever samples it excludes.
    bfo.exclude(ds.select([ds.skip(50).first().id]))
    heir, other = (ds[i] for i in copies)
    assert (heir["split"], heir["duplicate_of"], heir.tags) == (place, None, [place])
    assert (other["split"], other["duplicate_of"]) == ("duplicate", heir.id)
    assert bfo.split(ds)["n_repaired"] == 0
