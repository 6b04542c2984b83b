"""`bubblefence_plugin.fo.dataset` on real FiftyOne datasets with a precomputed embeddings field."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import clustered_embeddings

pytestmark = pytest.mark.fiftyone

fo = pytest.importorskip("fiftyone")
bfd = pytest.importorskip("bubblefence_plugin.fo.dataset")
F = fo.ViewField


def _splits(ds) -> dict[str, str]:
    ids, splits = ds.values(["id", "split"])
    return dict(zip(ids, splits, strict=True))


def _check_mirror(ds) -> None:
    """Tags mirror the split field exactly, and held-out samples carry bubble fields."""
    for sid, split, tags, anchor, shell in zip(
        *ds.exists("split").values(["id", "split", "tags", "anchor_id", "bubblefence_shell"]),
        strict=True,
    ):
        assert [t for t in tags if t in bfd.SPLIT_TAGS] == (
            [split] if split in bfd.SPLIT_TAGS else []
        ), sid
        if split in ("validation", "test"):
            assert anchor is not None and shell in ("inner", "outer")
        if split == "train":
            assert anchor is None and shell is None


def _add(ds, n: int, seed: int) -> None:
    start = len(ds)
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{seed}_{start + i}.png") for i in range(n)])
    new = ds.exists("emb", False)
    new.set_values("emb", list(clustered_embeddings(len(new), seed=seed)))


def test_split_writes_fields_tags_and_state(field_dataset):
    ds = field_dataset
    summary = bfd.split(ds, embeddings_field="emb", eval_ratio=0.2)
    assert summary["n_new"] == 200 and summary["n_assigned"] == 200
    assert summary["round"] == 0
    counts = ds.count_values("split")
    assert sum(counts.values()) == 200
    assert counts.get("validation", 0) + counts.get("test", 0) > 0
    assert summary["counts_total"]["train"] == counts.get("train", 0)
    _check_mirror(ds)
    assert set(ds.distinct("bubblefence_round")) == {0}
    assert ds.list_runs() == ["bubblefence", "bubblefence_layout"]  # state + 2-D map
    info = bfd.state_info(ds)
    assert info["embeddings_field"] == "emb" and info["n_samples"] == 200
    assert info["config"]["eval_ratio"] == 0.2
    # Arrays are stored as npy bytes, loadable without pickle.
    results = ds.load_run_results("bubblefence", cache=False)
    for blob in results.arrays.values():
        assert isinstance(blob, bytes) and blob[:6] == b"\x93NUMPY"
        bfd.from_npy_bytes(blob)
    # The vectors live only in the embeddings field; the run keeps a checksum per row.
    assert "embeddings" not in results.arrays
    assert bfd.from_npy_bytes(results.arrays["embedding_checks"]).shape == (200,)


def test_three_incremental_rounds_are_stable(field_dataset):
    ds = field_dataset
    bfd.split(ds, embeddings_field="emb")
    history = [_splits(ds)]
    for k, seed in enumerate((11, 12), start=1):
        _add(ds, 60, seed)
        summary = bfd.split(ds, embeddings_field="emb")
        assert summary["round"] == k and summary["n_new"] == 60
        now = _splits(ds)
        for before in history:
            changed = [i for i, s in before.items() if now[i] != s]
            assert changed == []  # stability 100%
        history.append(now)
        assert len(ds.match(F("bubblefence_round") == k)) == 60
    _check_mirror(ds)
    again = bfd.split(ds, embeddings_field="emb")
    assert again["n_new"] == 0 and "Nothing new" in again["message"]
    assert again["round"] is None


def test_view_target_assigns_only_the_view(field_dataset):
    ds = field_dataset
    summary = bfd.split(ds.limit(50), embeddings_field="emb")
    assert summary["n_assigned"] == 50
    assert len(ds.exists("split")) == 50
    summary = bfd.split(ds, embeddings_field="emb")
    assert summary["n_assigned"] == 150


def test_excluded_tag_is_left_out(field_dataset):
    ds = field_dataset
    ds.limit(10).tag_samples(bfd.EXCLUDED_TAG)
    summary = bfd.split(ds, embeddings_field="emb")
    assert summary["n_assigned"] == 190
    assert len(ds.match_tags(bfd.EXCLUDED_TAG).exists("split")) == 0


def test_deleted_samples_are_dropped_from_state(field_dataset):
    ds = field_dataset
    bfd.split(ds, embeddings_field="emb")
    before = _splits(ds)
    gone = ds.take(15, seed=1).values("id")
    ds.delete_samples(gone)
    _add(ds, 20, 7)
    summary = bfd.split(ds, embeddings_field="emb")
    assert summary["n_forgotten"] == 15 and summary["n_new"] == 20
    assert bfd.state_info(ds)["n_samples"] == 205
    now = _splits(ds)
    assert all(now[i] == s for i, s in before.items() if i not in gone)


def test_bad_vectors_get_per_sample_errors(field_dataset):
    ds = field_dataset
    ids = ds.values("id")
    ds.set_values("emb", {ids[0]: np.full(16, np.nan), ids[1]: np.zeros(16)}, key_field="id")
    ds.set_values("emb", {ids[2]: None}, key_field="id")
    summary = bfd.split(ds, embeddings_field="emb")
    assert summary["n_errors"] == 3 and summary["n_assigned"] == 197
    errors = dict(
        zip(*ds.exists("bubblefence_error").values(["id", "bubblefence_error"]), strict=True)
    )
    assert set(errors) == set(ids[:3])
    assert ds.select(ids[:3]).exists("split").count() == 0


def test_wrong_dimension_field_is_refused(field_dataset):
    ds = field_dataset
    bfd.split(ds.limit(100), embeddings_field="emb")
    rest = ds.exists("split", False)
    rest.set_values("emb", list(clustered_embeddings(len(rest), dim=8)))
    with pytest.raises(ValueError, match=r"emb.*(16-d|dimension)"):
        bfd.split(ds, embeddings_field="emb")
    assert len(ds.exists("split")) == 100  # nothing half-done


def test_other_field_or_frozen_knob_is_refused(field_dataset):
    ds = field_dataset
    ds.clone_sample_field("emb", "emb2")
    bfd.split(ds.limit(100), embeddings_field="emb")
    with pytest.raises(ValueError, match="emb2"):
        bfd.split(ds, embeddings_field="emb2")
    with pytest.raises(ValueError, match="seed"):
        bfd.split(ds, embeddings_field="emb", seed=7)
    # A non-frozen knob applies to the new round; the stored config follows.
    summary = bfd.split(ds, embeddings_field="emb", eval_ratio=0.3)
    assert summary["config_changed"] == ["eval_ratio"]
    assert bfd.state_info(ds)["config"]["eval_ratio"] == 0.3


def test_concurrent_run_is_refused(field_dataset):
    ds = field_dataset
    with bfd.RunLock(ds):
        assert bfd.is_locked(ds)
        with pytest.raises(bfd.BubbleFenceBusyError, match="in progress"):
            bfd.split(ds, embeddings_field="emb")
        with pytest.raises(bfd.BubbleFenceBusyError):
            bfd.reset(ds)
    assert not bfd.is_locked(ds)
    assert bfd.split(ds, embeddings_field="emb")["n_assigned"] == 200


def test_stale_lock_of_a_dead_process_is_taken_over(field_dataset):
    ds = field_dataset
    lock = bfd.RunLock(ds)
    lock.acquire()
    # Simulate a killed holder: same host, a pid that does not exist.
    dead = dict(lock._value, pid=2**22 + 12345, token="dead")
    lock._store.set(bfd.LOCK_KEY, dead)
    assert not bfd.is_locked(ds)
    assert bfd.split(ds, embeddings_field="emb")["n_assigned"] == 200


def test_interrupted_runs_leave_state_intact_and_next_run_finishes(field_dataset, monkeypatch):
    ds = field_dataset
    bfd.split(ds.limit(100), embeddings_field="emb")
    before = _splits(ds)
    state_before = bfd.state_info(ds)

    # 1. Killed while committing (the official copy is being rewritten).
    real_put = bfd._put_run

    def dying_put(dataset, key, params, payload):
        if key == bfd.RUN_KEY:
            raise KeyboardInterrupt("killed")
        real_put(dataset, key, params, payload)

    monkeypatch.setattr(bfd, "_put_run", dying_put)
    with pytest.raises(KeyboardInterrupt):
        bfd.split(ds, embeddings_field="emb")
    monkeypatch.setattr(bfd, "_put_run", real_put)
    assert not bfd.is_locked(ds)
    assert _splits(ds) == before  # fields untouched: the round had not been mirrored

    # The next run rolls the committed copy forward and mirrors it.
    summary = bfd.split(ds, embeddings_field="emb")
    assert summary["n_repaired"] == 100 and summary["n_new"] == 0
    assert ds.list_runs() == ["bubblefence", "bubblefence_layout"]  # state + 2-D map
    assert len(ds.exists("split")) == 200
    assert all(_splits(ds)[i] == s for i, s in before.items() if s is not None)

    # 2. Killed before the commit point: the previous state stays as it was.
    _add(ds, 30, 5)
    monkeypatch.setattr(bfd, "save_state", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        bfd.split(ds, embeddings_field="emb")
    monkeypatch.undo()
    assert bfd.state_info(ds)["n_samples"] == 200
    assert len(ds.exists("split")) == 200
    assert state_before["n_samples"] == 100
    assert bfd.split(ds, embeddings_field="emb")["n_assigned"] == 30


def test_clone_keeps_the_state(field_dataset, fo_datasets):
    ds = field_dataset
    bfd.split(ds.limit(120), embeddings_field="emb")
    clone = ds.clone()
    fo_datasets.append(clone)
    assert clone.list_runs() == ["bubblefence", "bubblefence_layout"]  # state + 2-D map
    assert bfd.state_info(clone)["n_samples"] == 120
    summary = bfd.split(clone, embeddings_field="emb")
    assert summary["n_new"] == 80 and summary["round"] == 1
    cloned = _splits(clone)
    assert all(cloned[i] == s for i, s in _splits(ds).items() if s is not None)


def test_reset_removes_state_fields_and_tags(field_dataset):
    ds = field_dataset
    ds.limit(5).tag_samples("keepme")
    bfd.split(ds, embeddings_field="emb")
    result = bfd.reset(ds)
    assert ds.list_runs() == []
    for field in bfd.RESULT_FIELDS:
        assert not ds.has_field(field)
    tags = ds.count_sample_tags()
    assert not set(tags) & set(bfd.SPLIT_TAGS)
    assert tags == {"keepme": 5}
    assert ds.has_field("emb")  # never touch user fields
    assert result["n_samples_untagged"] == 200
    assert bfd.split(ds, embeddings_field="emb")["round"] == 0


def test_export_round_trip_and_manifest(field_dataset, tmp_path, fo_datasets):
    from PIL import Image

    ds = field_dataset
    # Real files, so the export can copy media.
    paths = []
    for i in range(len(ds)):
        p = tmp_path / "media" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(p)
        paths.append(str(p))
    ds.set_values("filepath", paths)
    bfd.split(ds, embeddings_field="emb")
    out = tmp_path / "export"
    result = bfd.export(ds, out)
    counts = ds.count_values("split")
    assert result["counts"] == {s: counts.get(s, 0) for s in bfd.SPLIT_TAGS}

    for name in bfd.SPLIT_TAGS:
        back = fo.Dataset.from_dir(str(out / name), dataset_type=fo.types.FiftyOneDataset)
        fo_datasets.append(back)
        expected = ds.match_tags(name)
        assert sorted(back.values("id")) == sorted(expected.values("id"))
        assert set(back.distinct("split")) == {name}

    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == bfd.MANIFEST_COLUMNS
    assert len(rows) == sum(result["counts"].values())
    by_id = {r["id"]: r for r in rows}
    for sid, fp, split, anchor, rnd in zip(
        *ds.values(["id", "filepath", "split", "anchor_id", "bubblefence_round"]), strict=True
    ):
        if split in bfd.SPLIT_TAGS:
            row = by_id[sid]
            assert (row["filepath"], row["split"], row["round"]) == (fp, split, str(rnd))
            assert row["anchor_id"] == ("" if anchor is None else str(anchor))

    with pytest.raises(ValueError, match="not empty"):
        bfd.export(ds, out)
    # Images-only export of a chosen tag, overwriting.
    ds.limit(7).tag_samples("picked")
    result = bfd.export(ds, out, "ImageDirectory", tags=["picked"], overwrite=True)
    assert result["counts"] == {"picked": 7}
    assert len(list((out / "picked").iterdir())) == 7
    assert not (out / "train").exists()


def test_export_refuses_to_overwrite_media(field_dataset, tmp_path):
    from PIL import Image

    ds = field_dataset
    media = tmp_path / "media"
    media.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(media / f"{i}.png")
    ds.set_values("filepath", [str(media / f"{i % 3}.png") for i in range(len(ds))])
    bfd.split(ds, embeddings_field="emb")
    with pytest.raises(ValueError, match="media"):
        bfd.export(ds, media, overwrite=True)
    assert len(list(media.iterdir())) == 3


def test_state_from_a_newer_version_is_refused(field_dataset):
    ds = field_dataset
    bfd.split(ds.limit(50), embeddings_field="emb")
    params = bfd.state_info(ds)
    params["state_version"] = bfd.STATE_VERSION + 1
    ds.update_run_config(bfd.RUN_KEY, ds.init_run(**params))
    with pytest.raises(ValueError, match="newer BubbleFence"):
        bfd.split(ds, embeddings_field="emb")
    assert not bfd.is_locked(ds)


def test_state_rebuilds_embeddings_from_the_field(field_dataset):
    ds = field_dataset
    bfd.split(ds, embeddings_field="emb")
    bf, _ = bfd.load_state(ds)
    ids, vectors = ds.select(bf.assignments()["id"].tolist(), ordered=True).values(["id", "emb"])
    expected = np.stack(vectors).astype(np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(bf.state_dict()[1]["embeddings"], expected, atol=1e-6)


def test_edited_embeddings_of_assigned_samples_are_refused(field_dataset):
    ds = field_dataset
    bfd.split(ds, embeddings_field="emb")
    before = _splits(ds)
    edited = ds.first()
    edited["emb"] = np.asarray(edited["emb"])[::-1].copy()
    edited.save()
    _add(ds, 10, 3)
    with pytest.raises(ValueError, match="changed for 1 samples"):
        bfd.split(ds, embeddings_field="emb")
    assert _splits(ds) == {**before, **{i: None for i in ds.exists("split", False).values("id")}}
    assert not bfd.is_locked(ds)


def test_state_of_version_1_with_embeddings_inside_is_read(field_dataset):
    ds = field_dataset
    bfd.split(ds.limit(150), embeddings_field="emb")
    before = _splits(ds)
    bf, params = bfd.load_state(ds)
    meta, arrays = bf.state_dict()  # version 1 stored exactly this, embeddings included
    params["state_version"] = 1
    payload = {"meta": meta, "arrays": {k: bfd.to_npy_bytes(v) for k, v in arrays.items()}}
    bfd._put_run(ds, bfd.RUN_KEY, params, payload)
    summary = bfd.split(ds, embeddings_field="emb")
    assert summary["n_new"] == 50 and summary["n_forgotten"] == 0
    now = _splits(ds)
    assert all(now[i] == s for i, s in before.items() if s is not None)


def test_stale_split_tags_are_replaced_and_samples_marked_modified(field_dataset):
    ds = field_dataset
    # Tags from elsewhere (a zoo dataset's split), one sample even tagged twice.
    ds.take(30, seed=2).tag_samples("test")
    ds.take(30, seed=3).tag_samples("train")
    ds.take(5, seed=4).tag_samples("keep-me")
    before = dict(zip(*ds.values(["id", "last_modified_at"]), strict=True))
    sample = ds.first()  # loaded before the split
    bfd.split(ds, embeddings_field="emb")
    _check_mirror(ds)  # exactly one split tag per sample, the one of its split field
    assert ds.count_sample_tags()["keep-me"] == 5
    after = dict(zip(*ds.values(["id", "last_modified_at"]), strict=True))
    assert all(after[i] > before[i] for i in before)
    # A sample loaded in memory sees the written values (FiftyOne reloads it).
    assert sample["split"] in bfd.SPLIT_TAGS and sample["split"] in sample.tags
