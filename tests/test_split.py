"""`bubblefence_plugin.fo.split` on real FiftyOne datasets with a precomputed embeddings field."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from conftest import (
    add_embedded_samples,
    clustered_embeddings,
    killed,
    split_stopped_at,
    splits_by_id,
)

pytestmark = pytest.mark.fiftyone

fo = pytest.importorskip("fiftyone")
bfo = pytest.importorskip("bubblefence_plugin.fo")
from bubblefence_plugin.fo import runs  # noqa: E402
from bubblefence_plugin.text import round_text, round_warnings  # noqa: E402

F = fo.ViewField


def _check_mirror(ds) -> None:
    """Tags mirror the split field exactly, and held-out samples carry bubble fields."""
    for sid, split, tags, anchor, shell in zip(
        *ds.exists("split").values(["id", "split", "tags", "anchor_id", "bubblefence_shell"]),
        strict=True,
    ):
        assert [t for t in tags if t in bfo.SPLIT_TAGS] == (
            [split] if split in bfo.SPLIT_TAGS else []
        ), sid
        if split in ("validation", "test"):
            assert anchor is not None and shell in ("inner", "outer")
        if split == "train":
            assert anchor is None and shell is None


def test_split_writes_fields_tags_and_state(field_dataset):
    ds = field_dataset
    summary = bfo.split(ds, embeddings_field="emb", eval_ratio=0.2)
    assert summary["n_new"] == 200 and summary["n_assigned"] == 200
    assert summary["round"] == 0
    counts = ds.count_values("split")
    assert sum(counts.values()) == 200
    assert counts.get("validation", 0) + counts.get("test", 0) > 0
    assert summary["counts_total"]["train"] == counts.get("train", 0)
    # What the round's share warnings compare (`text.round_warnings`).
    n_eval = counts.get("validation", 0) + counts.get("test", 0)
    assert summary["n_eval"] == n_eval
    assert summary["bridge_leaks"] == 0  # one round: no later round bridged anything
    assert summary["validation_share_of_eval"] == round(counts.get("validation", 0) / n_eval, 4)
    assert summary["targets"] == {
        "eval_ratio": 0.2,
        "eval_tolerance": 0.03,
        "validation_ratio": 0.5,
    }
    _check_mirror(ds)
    assert set(ds.distinct("bubblefence_round")) == {0}
    assert ds.list_runs() == ["bubblefence", "bubblefence_layout"]  # state + 2-D map
    info = bfo.state_info(ds)
    assert info["embeddings_field"] == "emb" and info["n_samples"] == 200
    assert info["config"]["eval_ratio"] == 0.2
    # Arrays are stored as npy bytes in base64 text (JSON can hold them: a dataset
    # export carries them), loadable without pickle.
    results = ds.load_run_results("bubblefence", cache=False)
    for blob in results.arrays.values():
        assert isinstance(blob, str) and runs.npy_bytes(blob)[:6] == b"\x93NUMPY"
        runs.from_npy_text(blob)
    # The vectors live only in the embeddings field; the run keeps a checksum per row.
    assert "embeddings" not in results.arrays
    assert runs.from_npy_text(results.arrays["embedding_checks"]).shape == (200,)


def test_progress_events_are_ordered_and_end_done(field_dataset):
    for n_new in (0, 30):  # a first round, then one that reads the state's vectors
        if n_new:
            add_embedded_samples(field_dataset, n_new, 5)
        events = []
        bfo.split(
            field_dataset, embeddings_field="emb", progress=lambda *e, out=events: out.append(e)
        )
        seen = [fraction for fraction, _ in events]
        assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == 1.0
        assert any(label == "Reading the state's embeddings" for _, label in events) == bool(n_new)


def test_three_incremental_rounds_are_stable(field_dataset):
    """Later rounds that name no embeddings field read the one the state was built from
    (remembered, as the label and group fields are), and move no earlier sample."""
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    history = [splits_by_id(ds)]
    for k, seed in enumerate((11, 12), start=1):
        add_embedded_samples(ds, 60, seed)
        summary = bfo.split(ds)
        assert not ds.has_field(bfo.EMBEDDING_FIELD)  # no model ran
        assert summary["round"] == k and summary["n_new"] == 60
        record = bfo.load_state(ds, embeddings=False)[0].history[-1]
        assert summary["cut_pairs"] == record["cut_pairs"]
        assert summary["eval_floor_shortfall"] == record["floor_shortfall"]
        now = splits_by_id(ds)
        for before in history:
            changed = [i for i, s in before.items() if now[i] != s]
            assert changed == []  # stability 100%
        history.append(now)
        assert len(ds.match(F("bubblefence_round") == k)) == 60
    _check_mirror(ds)
    again = bfo.split(ds, embeddings_field="emb")
    assert again["n_new"] == 0 and "Nothing new" in again["message"]
    assert again["round"] is None


def test_view_target_assigns_only_the_view(field_dataset):
    ds = field_dataset
    summary = bfo.split(ds.limit(50), embeddings_field="emb")
    assert summary["n_assigned"] == 50
    assert len(ds.exists("split")) == 50
    summary = bfo.split(ds, embeddings_field="emb")
    assert summary["n_assigned"] == 150


def test_excluded_tag_is_left_out(field_dataset):
    ds = field_dataset
    ds.limit(10).tag_samples(bfo.EXCLUDED_TAG)
    summary = bfo.split(ds, embeddings_field="emb")
    assert summary["n_assigned"] == 190
    assert len(ds.match_tags(bfo.EXCLUDED_TAG).exists("split")) == 0
    # Tagged by hand after the round, then deleted: a run with nothing new says what left.
    ds.exists("split").limit(3).tag_samples(bfo.EXCLUDED_TAG)
    ds.delete_samples(ds.exists("split").match_tags(bfo.EXCLUDED_TAG, bool=False).limit(2))
    message = bfo.split(ds, embeddings_field="emb")["message"]
    assert message == (
        "Nothing new to split: every sample in the target is already assigned; "
        "3 excluded samples left the split; 2 deleted samples left the state"
    )


def test_duplicates_placed_with_their_original_are_said_apart(field_dataset):
    """Under dedup_policy follow, copies count in their original's split; the summary
    says how many there are instead of "duplicates 0" alone."""
    ds = field_dataset
    originals = ds.limit(5)
    copies = [
        fo.Sample(filepath=f"/nonexistent/copy{i}.png", emb=v)
        for i, v in enumerate(originals.values("emb"))
    ]
    ds.add_samples(copies)
    follow = bfo.split(ds, embeddings_field="emb", dedup_policy="follow")
    assert follow["counts_round"]["duplicate"] == 0
    assert follow["n_duplicates_placed"] == 5
    assert "duplicates 0; 5 duplicates placed with their original)" in follow["message"]
    assert len(ds.exists(bfo.DUPLICATE_FIELD)) == 5
    assert "duplicates placed with their original: 5" in round_text(follow).plain()


def test_deleted_samples_are_dropped_from_state(field_dataset):
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    before = splits_by_id(ds)
    gone = ds.take(15, seed=1).values("id")
    ds.delete_samples(gone)
    add_embedded_samples(ds, 20, 7)
    summary = bfo.split(ds, embeddings_field="emb")
    assert summary["n_forgotten"] == 15 and summary["n_new"] == 20
    assert bfo.state_info(ds)["n_samples"] == 205
    now = splits_by_id(ds)
    assert all(now[i] == s for i, s in before.items() if i not in gone)


def test_vectors_are_read_only_when_a_round_needs_them(field_dataset, monkeypatch):
    """Nothing new: no vector is read. A deletion or an exclusion with nothing new: read,
    checked and saved with the state (the next round's check passes on them)."""
    from bubblefence_plugin.fo import state as fo_state

    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    before = splits_by_id(ds)
    reads = []
    real = fo_state.read_vectors
    monkeypatch.setattr(fo_state, "read_vectors", lambda *a: reads.append(a) or real(*a))
    again = bfo.split(ds, embeddings_field="emb")
    assert again["n_new"] == 0 and "Nothing new" in again["message"] and reads == []
    gone = ds.take(5, seed=2).values("id")
    ds.delete_samples(gone)
    ds.take(3, seed=3).tag_samples(bfo.EXCLUDED_TAG)
    summary = bfo.split(ds, embeddings_field="emb")
    assert summary["n_forgotten"] == 5 and summary["n_excluded_left"] == 3
    assert len(reads) == 1 and bfo.state_info(ds)["n_samples"] == 192
    add_embedded_samples(ds, 20, 9)
    summary = bfo.split(ds, embeddings_field="emb")
    assert summary["n_new"] == 20 and len(reads) == 2
    now = splits_by_id(ds)
    held = set(ds.match_tags(bfo.EXCLUDED_TAG, bool=False).values("id"))
    assert all(now[i] == s for i, s in before.items() if i in held)
    assert bfo.state_info(ds)["n_samples"] == 212


def test_bad_vectors_get_per_sample_errors(field_dataset):
    ds = field_dataset
    ids = ds.values("id")
    ds.set_values("emb", {ids[0]: np.full(16, np.nan), ids[1]: np.zeros(16)}, key_field="id")
    ds.set_values("emb", {ids[2]: None}, key_field="id")
    summary = bfo.split(ds, embeddings_field="emb")
    assert summary["n_errors"] == 3 and summary["n_assigned"] == 197
    # The summary names the files, which a user can find (the field holds the same errors).
    assert set(summary["errors"]) == set(ds.select(ids[:3]).values("filepath"))
    errors = dict(
        zip(*ds.exists("bubblefence_error").values(["id", "bubblefence_error"]), strict=True)
    )
    assert set(errors) == set(ids[:3])
    assert ds.select(ids[:3]).exists("split").count() == 0


def test_a_first_round_with_no_usable_vector_adds_only_the_error_field(field_dataset):
    """Found by a tester: every vector NaN, the round assigned nothing and saved no
    state, yet left `split`, `anchor_id` and three more fields, empty, in the schema
    (and the App's sidebar)."""
    ds = field_dataset
    ds.set_values("emb", [np.full(16, np.nan)] * len(ds))
    before = set(ds.get_field_schema())
    summary = bfo.split(ds, embeddings_field="emb")
    assert summary["n_errors"] == len(ds) and summary["n_assigned"] == 0
    assert set(ds.get_field_schema()) - before == {bfo.ERROR_FIELD}


def test_vectors_are_read_back_as_fiftyone_decodes_them(field_dataset, monkeypatch):
    """`read_vectors` decodes a field's stored arrays itself (fast): every kind of value
    a vector field can hold comes back as FiftyOne's own `values` gives it."""
    import fiftyone as fo

    from bubblefence_plugin.fo import embeddings

    ds = field_dataset
    ids = ds.values("id")
    odd = {
        ids[1]: np.arange(16, dtype=np.float64),  # another dtype: another header
        ids[2]: np.arange(8, dtype=np.float32),  # another length
        ids[3]: None,
        ids[4]: [0.5] * 16,  # stored as a float64 array
        ids[5]: np.full(16, np.nan, np.float32),
        ids[6]: np.arange(16, dtype=np.float16),
    }
    ds.set_values("emb", odd, key_field="id")
    decoded = []
    original = embeddings.fou.deserialize_numpy_array
    monkeypatch.setattr(
        embeddings.fou,
        "deserialize_numpy_array",
        lambda b, **kw: decoded.append(1) or original(b, **kw),
    )
    # An array field may hold other shapes: those go through FiftyOne's decoder.
    ds.add_sample_field("arr", fo.ArrayField)
    ds.set_values("arr", list(ds.values("emb")))
    ds.set_values("arr", {ids[7]: np.ones((4, 4), np.float32)}, key_field="id")
    for view, field, n_decoded in (
        (ds.limit(12), "emb", 0),  # every array 1-D: each header parsed once
        (ds.skip(1).limit(10), "emb", 0),  # the first array read differs
        (ds.limit(12), "arr", 1),
    ):
        decoded.clear()
        ours_ids, ours = embeddings.read_vectors(view, field)
        assert len(decoded) == n_decoded
        theirs_ids, theirs = view.values(["id", field])
        assert ours_ids == theirs_ids
        for mine, expected in zip(ours, theirs, strict=True):
            if expected is None:
                assert mine is None
            else:
                mine = np.asarray(mine)
                assert mine.dtype == expected.dtype and mine.shape == expected.shape
                assert np.array_equal(mine, expected, equal_nan=True)


def test_ids_are_read_in_pieces_whatever_their_number(field_dataset):
    """A million ids in one view passed MongoDB's 16 MB per command (DocumentTooLarge):
    `values_by_id` reads them in pieces, in the order given, the unknown ones left out."""
    from bson import ObjectId

    from bubblefence_plugin.fo.fields import values_by_id

    ds = field_dataset
    ids, paths = ds.values(["id", "filepath"])
    unknown = [str(ObjectId()) for _ in range(1_000_000)]
    asked = unknown[:500_000] + ids[::-1] + unknown[500_000:] + ids[:3]
    found, (found_paths,) = values_by_id(ds, asked, ["filepath"])
    assert found == ids[::-1] and found_paths == paths[::-1]


def test_a_round_read_in_small_pieces_is_the_same_round(field_dataset, fo_datasets, monkeypatch):
    """Splits, labels, deletions, exclusions and a pick read and written through pieces
    of 7 ids give what one piece gives."""
    from bubblefence_plugin.fo import curate, fields

    ds = field_dataset
    ds.set_values("kind", [f"k{i % 4}" for i in range(len(ds))])
    reference = ds.clone()
    fo_datasets.append(reference)
    outcomes = []
    for data, pieces in ((reference, None), (ds, 7)):
        if pieces:
            monkeypatch.setattr(fields, "MAX_IDS_PER_QUERY", pieces)
        bfo.split(data.limit(120), embeddings_field="emb", label_field="kind")
        data.delete_samples(data.match(F("split") == "train").limit(3))
        bfo.exclude(data.skip(10).limit(12), reason="blurry")  # split ones leave it
        bfo.include_again(data.skip(10).limit(3))
        summary = bfo.split(data, embeddings_field="emb")
        picked = curate.sample(
            data,
            "diverse",
            count=6,
            tag="pick",
            embeddings_field="emb",
            from_split="train",
            label_field="kind",
            seed=1,
        )
        outcomes.append(
            (
                summary["n_new"],
                summary["n_forgotten"],
                splits_by_id(data),
                picked["picked_ids"],
                data.values(curate.REGION_FIELD),
            )
        )
    assert outcomes[0] == outcomes[1]
    # 80 never split, 3 included again; the exclusion dropped the 3 deleted ones already.
    assert outcomes[1][:2] == (83, 0)
    assert ds.count_sample_tags()[bfo.EXCLUDED_TAG] == 9
    _check_mirror(ds)


def test_a_split_field_of_the_users_own_is_never_overwritten(field_dataset):
    """A first round refuses a dataset whose ``split`` (or ``anchor_id``...) already holds
    values: with no state they are the user's (a split that came with the data). Declared
    but empty, the field is taken; renamed, the user's split can be audited."""
    ds = field_dataset
    theirs = ["train", "train", "train", "train", "test"] * 40
    ds.set_values("split", theirs)
    with pytest.raises(ValueError, match=r"'split' \(200 samples\).*rename_sample_field"):
        bfo.split(ds, embeddings_field="emb")
    assert ds.values("split") == theirs and bfo.state_info(ds) is None
    with pytest.raises(ValueError, match="'split'"):
        bfo.check_split_config(ds, None, {})  # the CLI's check before it adds images
    ds.rename_sample_field("split", "original_split")
    ds.add_sample_field("anchor_id", fo.IntField)  # declared, no value: taken
    assert bfo.split(ds, embeddings_field="emb")["n_new"] == 200
    assert ds.values("original_split") == theirs
    report = bfo.report(ds, "original_split", store=False)
    assert report["metrics"]["split"]["counts"]["test"] == 40


def test_split_tags_of_the_users_own_are_never_replaced(field_dataset):
    """A first round refuses a dataset whose samples carry train/validation/test tags
    (a zoo dataset's split): with no state they are the user's. Kept in a field as the
    refusal says, the tags removed, the split runs and the report audits theirs."""
    ds = field_dataset
    ds.take(40, seed=0).tag_samples("validation")
    ds.match_tags("validation", bool=False).tag_samples("train")
    before = ds.values("tags")
    with pytest.raises(ValueError, match=r"tagged 'train' \(160 samples\), 'validation' \(40"):
        bfo.split(ds, embeddings_field="emb")
    with pytest.raises(ValueError, match="tagged 'train'"):
        bfo.check_split_config(ds, None, {})  # the CLI's check before it adds images
    assert ds.values("tags") == before and bfo.state_info(ds) is None
    for t in ("train", "validation", "test"):
        view = ds.match_tags(t)
        view.set_values("original_split", [t] * len(view))
    ds.untag_samples(["train", "validation", "test"])
    assert bfo.split(ds, embeddings_field="emb")["n_new"] == 200
    report = bfo.report(ds, "original_split", store=False)
    assert report["metrics"]["split"]["counts"]["validation"] == 40


def test_a_copy_voted_apart_from_its_original_counts_every_pair_it_crosses(fo_datasets):
    # Found by stress tests (dedup_policy follow, groups): copies of train samples voted
    # into eval groups were first not counted at all, then counted as (pairs after) -
    # (pairs at the original's side), though the latter were the original's: short.
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(10, 512))
    which = rng.integers(0, 10, 400)
    x = centres[which] + rng.normal(size=(400, 512)) * (0.25 / np.sqrt(512))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ds = fo.Dataset()
    fo_datasets.append(ds)
    groups = [f"g{c}_{k % 3}" for k, c in enumerate(which)]
    ds.add_samples(
        [
            fo.Sample(filepath=f"/c/{k}.png", emb=v, video=g)
            for k, (v, g) in enumerate(zip(x, groups, strict=True))
        ]
    )
    bfo.split(ds, embeddings_field="emb", group_field="video", dedup_policy="follow")
    split = np.asarray(ds.values("split"))
    held = np.isin(split, ["validation", "test"])
    sides = {g: set(held[np.asarray(groups) == g]) for g in set(groups)}
    eval_groups = sorted(g for g, s in sides.items() if s == {True})
    crossing = [k for k in np.flatnonzero(~held) if (x[held] @ x[k] >= 0.95).any()]
    assert eval_groups and crossing  # originals that already cross the line
    copies = [
        fo.Sample(filepath=f"/c/copy{n}.png", emb=x[k], video=eval_groups[n % len(eval_groups)])
        for n, k in enumerate(crossing[:3])
    ]
    ds.add_samples(copies)
    summary = bfo.split(ds)
    ids, split, emb = ds.values(["id", "split", "emb"])
    split, e = np.asarray(split), np.asarray(emb, np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    original = dict(zip(ids, ds.values("duplicate_of"), strict=True))
    row = {sid: k for k, sid in enumerate(ids)}
    apart = [k for k, i in enumerate(ids) if original[i] and split[k] != split[row[original[i]]]]
    apart_now = [k for k in apart if k >= 400]  # this round's copies (round 0 had some)
    assert apart_now and summary["n_duplicates_placed"] == len(copies) - len(apart_now)

    def across(a, b):
        return ((a == "train") != (b == "train")) | ((a != "train") & (b != "train") & (a != b))

    # Every pair that crosses among the samples with a split is counted, copies included
    # (a later stress test: copies a vote parted from their family crossed the rest of
    # it uncounted, and a copy beside its original crossed what the original did not).
    placed = np.isin(split, bfo.SPLIT_TAGS)
    sims = np.triu((e @ e.T >= 0.95) & placed[:, None] & placed[None, :], 1)
    pairs = int(across(split[:, None], split[None, :])[sims].sum())
    history = bfo.load_state(ds, embeddings=False)[0].history
    assert pairs == sum(h["cut_pairs"] for h in history)
    assert any(h.get("cut_pairs_copies") for h in history)


def test_class_aware_without_a_label_field_is_refused_before_anything_is_written(field_dataset):
    # Found by a README audit: accepted, frozen, and it did nothing.
    from bubblefence_plugin.cli import main

    ds = field_dataset
    with pytest.raises(ValueError, match=r"class_aware=True needs a label field"):
        bfo.split(ds, embeddings_field="emb", class_aware=True)
    with pytest.raises(ValueError, match=r"class_aware=True needs a label field"):
        bfo.check_split_config(ds, None, {"class_aware": True})  # the CLI's check
    args = ["split", "--dataset", ds.name, "--embeddings-field", "emb"]
    assert main([*args, "--set", "class_aware=true"]) == 2
    assert bfo.state_info(ds) is None and not ds.has_field("split")
    ds.set_values("kind", [f"k{i % 3}" for i in range(len(ds))])
    bfo.split(ds, embeddings_field="emb", class_aware=True, label_field="kind")
    assert bfo.state_info(ds)["config"]["class_aware"] is True


def test_split_tags_under_alias_names_are_refused_too(field_dataset):
    # Found by a README audit: "val" and "training" tags were split beside, and a report
    # of the tags then read two splits (113 samples with two split tags).
    ds = field_dataset
    ds.take(40, seed=0).tag_samples("val")
    ds.match_tags("val", bool=False).tag_samples(" Training")
    with pytest.raises(ValueError, match=r"tagged ' Training' \(160 samples\), 'val' \(40"):
        bfo.split(ds, embeddings_field="emb")
    ds.untag_samples(["val", " Training"])
    ds.take(5, seed=1).tag_samples("validated")  # not a split name
    assert bfo.split(ds, embeddings_field="emb")["n_new"] == 200


def test_a_first_round_whose_model_cannot_load_adds_no_field(field_dataset, tmp_path):
    ds = field_dataset
    before = set(ds.get_field_schema())
    (tmp_path / "no-model").mkdir()
    with pytest.raises(bfo.ModelUnavailableError):
        bfo.split(ds, model_name=str(tmp_path / "no-model"))
    assert set(ds.get_field_schema()) == before and bfo.state_info(ds) is None


def test_a_first_round_that_fails_after_reading_its_embeddings_adds_no_field(
    field_dataset, monkeypatch
):
    # Found by a stress test: a group field that no sample of the view fills failed in
    # the core (fixed: `test_groups`) and left six empty split fields behind.
    ds = field_dataset
    before = set(ds.get_field_schema())

    def failing(*args, **kwargs):
        raise ValueError("the core failed")

    with monkeypatch.context() as patched:
        patched.setattr(importlib.import_module("bubblefence_plugin.fo.split"), "_ingest", failing)
        with pytest.raises(ValueError, match="the core failed"):
            bfo.split(ds, embeddings_field="emb")
    assert set(ds.get_field_schema()) == before and bfo.state_info(ds) is None
    # The stress test's case, now split: no sample of the view has a group.
    ds.add_sample_field("drive", fo.StringField)
    ds.skip(100).set_values("drive", [f"d{i % 3}" for i in range(100)])
    summary = bfo.split(ds.limit(100), embeddings_field="emb", group_field="drive")
    assert summary["n_new"] == 100 and ds.count("split") == 100


def test_split_fields_and_tags_lost_since_are_written_again_edited_ones_are_said(
    field_dataset,
):
    """The state is the split: a split field deleted, or split tags removed, come back at
    the next run; values changed by hand are left and said (a warning), not overwritten."""
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    stored = splits_by_id(ds)
    ds.delete_sample_field("split")
    ds.limit(50).untag_samples(list(bfo.SPLIT_TAGS))
    summary = bfo.split(ds)
    assert summary["n_repaired"] == 200 and summary["n_split_edited"] == 0
    assert splits_by_id(ds) == stored
    _check_mirror(ds)  # every sample's split tag is its split field's value again
    # The round and bubble fields too (they were left gone, the split field came back).
    rounds, anchors = ds.values("bubblefence_round"), ds.values("anchor_id")
    ds.delete_sample_fields(["bubblefence_round", "anchor_id"])
    assert bfo.split(ds)["n_repaired"] == 200
    assert (ds.values("bubblefence_round"), ds.values("anchor_id")) == (rounds, anchors)
    edited = ds.match(F("split") == "test").limit(3)
    edited.set_values("split", ["train"] * 3)
    summary = bfo.split(ds)
    assert summary["n_repaired"] == 0 and summary["n_split_edited"] == 3
    assert any("3 samples' split field differs" in w for w in round_warnings(summary))
    assert len(ds.match(F("split") == "test")) == list(stored.values()).count("test") - 3


def test_a_split_tag_added_by_hand_is_taken_off_at_the_next_run(field_dataset):
    # Found by a hostile-input walk: a test sample also tagged "train" by hand kept both
    # tags, and export stayed refused although the README says a run writes them back.
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    stored = splits_by_id(ds)
    test_id = ds.match_tags("test").first().id
    ds.select(test_id).tag_samples("train")
    assert bfo.split(ds)["n_repaired"] == 1
    assert ds[test_id].tags == ["test"] and splits_by_id(ds) == stored
    _check_mirror(ds)


def test_wrong_dimension_field_is_refused(field_dataset):
    ds = field_dataset
    bfo.split(ds.limit(100), embeddings_field="emb")
    rest = ds.exists("split", False)
    rest.set_values("emb", list(clustered_embeddings(len(rest), dim=8)))
    with pytest.raises(ValueError, match=r"emb.*(16-d|dimension)"):
        bfo.split(ds, embeddings_field="emb")
    assert len(ds.exists("split")) == 100  # nothing half-done


def test_other_field_or_frozen_knob_is_refused(field_dataset):
    ds = field_dataset
    ds.clone_sample_field("emb", "emb2")
    bfo.split(ds.limit(100), embeddings_field="emb")
    with pytest.raises(ValueError, match="emb2"):
        bfo.split(ds, embeddings_field="emb2")
    with pytest.raises(ValueError, match="seed"):
        bfo.split(ds, embeddings_field="emb", seed=7)
    with pytest.raises(ValueError, match="seed"):
        bfo.check_split_config(ds, {"seed": 7}, {})  # the same check, writing nothing
    # Split from a field, the state used no model: a model is not a change of one.
    for check in (
        lambda: bfo.split(ds, model_name="efficientnet-lite0"),
        lambda: bfo.check_split_config(ds, None, {"model_name": "efficientnet-lite0"}),
    ):
        with pytest.raises(ValueError, match="from the field 'emb', not from a model") as info:
            check()
        assert "clip" not in str(info.value)
    # A knob given to a run with nothing new is not stored, and the run says so.
    ds.limit(100).tag_samples("first")
    summary = bfo.split(ds.match_tags("first"), eval_ratio=0.3)
    assert "eval_ratio not changed" in summary["message"] and not summary["config_changed"]
    assert bfo.state_info(ds)["config"]["eval_ratio"] == 0.2
    # So is a label or group field, or dropping one ("" is none): it was silently unused.
    ds.set_values("kind", ["a"] * len(ds))
    for asked in ({"label_field": "kind"}, {"group_field": "kind"}):
        summary = bfo.split(ds.match_tags("first"), **asked)
        name = next(iter(asked))
        assert f"{name} not changed" in summary["message"] and summary[name] is None
        assert bfo.state_info(ds)[name] is None
    summary = bfo.split(ds.match_tags("first"), label_field="")
    assert "not changed" not in summary["message"]
    # A non-frozen knob applies to the new round; the stored config follows.
    summary = bfo.split(ds, embeddings_field="emb", eval_ratio=0.3)
    assert summary["config_changed"] == ["eval_ratio"]
    assert bfo.state_info(ds)["config"]["eval_ratio"] == 0.3


def test_a_yaml_config_changes_only_the_knobs_it_names(field_dataset, tmp_path):
    ds = field_dataset
    bfo.split(ds.limit(100), embeddings_field="emb", eval_ratio=0.3, seed=4)
    path = tmp_path / "config.yaml"
    path.write_text("validation_ratio: 0.4\n", encoding="utf-8")
    summary = bfo.split(ds, path, embeddings_field="emb")
    assert summary["config_changed"] == ["validation_ratio"]
    config = bfo.state_info(ds)["config"]
    assert (config["eval_ratio"], config["seed"], config["validation_ratio"]) == (0.3, 4, 0.4)


def test_clone_keeps_the_state(field_dataset, fo_datasets):
    ds = field_dataset
    bfo.split(ds.limit(120), embeddings_field="emb")
    clone = ds.clone()
    fo_datasets.append(clone)
    assert clone.list_runs() == ["bubblefence", "bubblefence_layout"]  # state + 2-D map
    assert bfo.state_info(clone)["n_samples"] == 120
    summary = bfo.split(clone, embeddings_field="emb")
    assert summary["n_new"] == 80 and summary["round"] == 1
    cloned = splits_by_id(clone)
    assert all(cloned[i] == s for i, s in splits_by_id(ds).items() if s is not None)


def test_reset_removes_state_fields_and_tags(field_dataset):
    ds = field_dataset
    ds.limit(5).tag_samples("keepme")
    bfo.split(ds, embeddings_field="emb")
    result = bfo.reset(ds)
    assert ds.list_runs() == []
    for field in bfo.RESULT_FIELDS:
        assert not ds.has_field(field)
    tags = ds.count_sample_tags()
    assert not set(tags) & set(bfo.SPLIT_TAGS)
    assert tags == {"keepme": 5}
    assert ds.has_field("emb")  # never touch user fields
    assert result["n_samples_untagged"] == 200
    assert bfo.split(ds, embeddings_field="emb")["round"] == 0


def test_a_reset_stopped_before_it_deleted_the_fields_says_to_reset_again(
    field_dataset, monkeypatch
):
    """A reset killed between deleting the state and the split fields: the next split
    called BubbleFence's own values the user's and said to rename ``split``."""
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")

    monkeypatch.setattr(fo.Dataset, "delete_sample_fields", killed)
    with pytest.raises(KeyboardInterrupt):
        bfo.reset(ds)
    monkeypatch.undo()
    assert bfo.state_info(ds) is None and ds.count("split") == 200
    stopped = "no BubbleFence state: a reset was stopped.*copy it.*Then reset"
    with pytest.raises(ValueError, match=stopped):
        bfo.split(ds, embeddings_field="emb")
    bfo.reset(ds)
    assert bfo.split(ds, embeddings_field="emb")["n_assigned"] == 200


def test_a_round_stopped_before_the_map_is_placed_on_it_by_the_next_run(field_dataset, monkeypatch):
    """A split killed after its commit and tags, before the 2-D map: a rerun with nothing
    new left the map without that round's samples until a later round added some."""
    from bubblefence_plugin.fo import map as bfmap

    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    add_embedded_samples(ds, 50, seed=3)
    split_stopped_at(ds, "update_after_round", monkeypatch)
    assert len(bfmap.load_points(ds)[0]) == 200
    summary = bfo.split(ds)
    assert summary["n_new"] == 0 and summary["map"]["n_new_points"] == 50
    assert "placed 50 samples on the 2-D map" in summary["message"]
    assert sorted(bfmap.load_points(ds)[0]) == sorted(ds.values("id"))
    assert "map" not in bfo.split(ds)  # nothing to place: no map work


@pytest.mark.parametrize("stopped_in", ["bubblefence_layout", "bubblefence_viz"])
def test_a_map_stopped_while_being_written_is_no_map_and_the_next_run_redraws_it(
    field_dataset, monkeypatch, stopped_in
):
    """Killed while FiftyOne wrote a map run (its parameters written, its old results
    deleted, the new not yet saved): the panel's figure raised a bare AttributeError,
    and a rerun said "Nothing new to split" since the parameters counted every point."""
    from fiftyone.core.runs import BaseRun

    from bubblefence_plugin.fo import map as bfmap

    ds = field_dataset
    bfo.split(ds.limit(150), embeddings_field="emb")
    real_save = BaseRun.save_run_results.__func__  # every run's, a brain run's too

    def killed(cls, samples, key, *args, **kwargs):
        if key == stopped_in:
            raise KeyboardInterrupt("killed")
        return real_save(cls, samples, key, *args, **kwargs)

    monkeypatch.setattr(BaseRun, "save_run_results", classmethod(killed))
    with pytest.raises(KeyboardInterrupt):
        bfo.split(ds, embeddings_field="emb")
    monkeypatch.undo()
    assert bfmap.map_lacks_samples(ds, 200)
    assert bfo.map_figure(ds) is None  # no map to draw, not a crash
    summary = bfo.split(ds)
    assert summary["n_new"] == 0 and summary["map"]["n_points"] == 200
    assert bfo.map_figure(ds)["stats"]["n_on_map"] == 200


def test_samples_merged_with_a_split_of_their_own_are_refused_in_a_later_round(
    field_dataset, fo_datasets
):
    """A first round refuses split values it did not write; a later round overwrote those
    of samples merged in (their own test tags and values became ours), silently."""

    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    theirs = fo.Dataset()
    fo_datasets.append(theirs)
    add_embedded_samples(theirs, 40, seed=8)
    theirs.set_values("split", ["test"] * 20 + ["train"] * 20)
    # Split by BubbleFence in their dataset: they carry a round too (a stress test: the
    # hint selected the samples without one, none of these).
    theirs.set_values("bubblefence_round", [0] * 40)
    theirs.limit(20).tag_samples("test")
    ds.merge_samples(theirs)
    before = bfo.state_info(ds)
    merged = ds.match(F("filepath").is_in(theirs.values("filepath")))
    with pytest.raises(ValueError, match="40 of the samples not split yet .* 'split' value") as e:
        bfo.split(ds, embeddings_field="emb")
    assert "new = dataset.select(bfo.ids_not_split(dataset))" in str(e.value)
    assert sorted(bfo.ids_not_split(ds)) == sorted(merged.values("id"))
    assert bfo.state_info(ds) == before
    assert merged.count_values("split") == {"test": 20, "train": 20}
    # As the message says: keep their split in another field, then clear it.
    merged.set_values("original_split", merged.values("split"))
    merged.clear_sample_field("split")
    merged.untag_samples(["train", "validation", "test"])
    assert bfo.split(ds, embeddings_field="emb")["n_assigned"] == 40
    assert merged.count_values("original_split") == {"test": 20, "train": 20}
    # A split tag under an alias name is theirs too (found by a README audit).
    add_embedded_samples(ds, 3, seed=9)
    ds.exists("split", False).tag_samples("Val")
    with pytest.raises(ValueError, match=r"or a split tag \(3\).*untag_samples\(\[.*'Val'") as e:
        bfo.split(ds, embeddings_field="emb")
    # Its hint, as written, keeps the tags' split (found by a stress test: it copied the
    # samples' empty split values instead, and failed).
    hint = str(e.value).split("e.g. in Python: ", 1)[1]
    assert "set_values('original_split', [t] * len(v))" in hint and "v.values(" not in hint
    new = ds.select(bfo.ids_not_split(ds))
    for t in ["Val"]:
        v = new.match_tags(t)
        v.set_values("original_split", [t] * len(v))
    new.untag_samples(["Val"])
    assert bfo.split(ds, embeddings_field="emb")["n_assigned"] == 3
    assert ds.count_values("original_split")["Val"] == 3


def test_split_tags_are_written_beside_other_tags_and_samples_marked_modified(field_dataset):
    ds = field_dataset
    ds.take(5, seed=4).tag_samples("keep-me")
    before = dict(zip(*ds.values(["id", "last_modified_at"]), strict=True))
    sample = ds.first()  # loaded before the split
    bfo.split(ds, embeddings_field="emb")
    _check_mirror(ds)  # exactly one split tag per sample, the one of its split field
    assert ds.count_sample_tags()["keep-me"] == 5
    after = dict(zip(*ds.values(["id", "last_modified_at"]), strict=True))
    assert all(after[i] > before[i] for i in before)
    # A sample loaded in memory sees the written values (FiftyOne reloads it).
    assert sample["split"] in bfo.SPLIT_TAGS and sample["split"] in sample.tags


def test_patches_views_and_other_media_are_refused(field_dataset, fo_datasets):
    with pytest.raises(ValueError, match="dataset or view"):
        bfo.split([1, 2, 3])
    box = [0.1, 0.1, 0.5, 0.5]
    field_dataset.set_values(
        "det",
        [
            fo.Detections(detections=[fo.Detection(label="a", bounding_box=box)])
            for _ in range(len(field_dataset))
        ],
    )
    with pytest.raises(ValueError, match="patches"):
        bfo.split(field_dataset.to_patches("det"), embeddings_field="emb")
    # The report says so too, rather than that `split` is no field of it (a stress test).
    with pytest.raises(ValueError, match="not a patches/frames/clips view"):
        bfo.report(field_dataset.to_patches("det"), "split", "emb", store=False)
    video = fo.Dataset()
    fo_datasets.append(video)
    video.add_sample(fo.Sample(filepath="/nonexistent/clip.mp4"))
    with pytest.raises(ValueError, match="media type 'video'"):
        bfo.split(video)


def test_a_remembered_label_field_that_is_gone_is_named_as_remembered(field_dataset):
    # Found by a stress test: "label_field='kind': ... no such field", an option the
    # user never passed.
    ds = field_dataset
    ds.set_values("kind", ["a", "b"] * 100)
    bfo.split(ds.limit(100), embeddings_field="emb", label_field="kind")
    ds.delete_sample_field("kind")
    for check in (lambda: bfo.split(ds), lambda: bfo.check_split_config(ds, None, {})):
        with pytest.raises(ValueError, match="the label field 'kind' that earlier rounds"):
            check()  # the second is the command line's check, before it adds images
    assert bfo.split(ds, label_field="")["n_new"] == 100
