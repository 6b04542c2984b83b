"""The run store and lock (`bubblefence_plugin.fo.runs`) and the split state stored in it
(`bubblefence_plugin.fo.state`): crash safety, concurrency, versions, embeddings."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import add_embedded_samples, operator_form, splits_by_id

pytestmark = pytest.mark.fiftyone

fo = pytest.importorskip("fiftyone")
bfo = pytest.importorskip("bubblefence_plugin.fo")
foo = pytest.importorskip("fiftyone.operators")
from bubblefence_plugin.fo import runs, state  # noqa: E402


def test_concurrent_run_is_refused(field_dataset):
    ds = field_dataset
    with runs.RunLock(ds) as lock:
        assert bfo.is_locked(ds)
        # A holder on another host may be dead: the message gives the hour its lock lapses.
        expires = time.strftime("%H:%M:%S UTC", time.gmtime(lock._value["expires"]))
        with pytest.raises(bfo.BubbleFenceBusyError, match=f"in progress.*free at .*{expires}"):
            bfo.split(ds, embeddings_field="emb")
        with pytest.raises(bfo.BubbleFenceBusyError):
            bfo.reset(ds)
    assert not bfo.is_locked(ds)
    assert bfo.split(ds, embeddings_field="emb")["n_assigned"] == 200


def test_stale_lock_of_a_dead_process_is_taken_over(field_dataset):
    ds = field_dataset
    lock = runs.RunLock(ds)
    lock.acquire()
    # Simulate a killed holder: same host, a pid that does not exist.
    dead = dict(lock._value, pid=2**22 + 12345, token="dead")
    lock._store.set(runs.LOCK_KEY, dead)
    assert not bfo.is_locked(ds)
    assert bfo.split(ds, embeddings_field="emb")["n_assigned"] == 200


def test_a_round_by_another_process_is_seen_by_a_dataset_opened_before_it(field_dataset):
    """A notebook opened the dataset; the CLI (another process) split it twice; the
    notebook's object, FiftyOne's one object for that dataset in its process, still held
    the runs as they were. Its split saw no state and refused BubbleFence's own tags as
    the user's; after a second round elsewhere, the state's replaced results read as
    damaged and it was told to reset. Every read of the runs now reloads them."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    ds = field_dataset
    ds.persistent = True  # another process opens it by name
    ds.count()  # the notebook has it open, runs included
    cli = [sys.executable, "-m", "bubblefence_plugin", "split", "--dataset", ds.name]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for step in range(2):
        if step:
            add_embedded_samples(ds, 30, seed=5)
        done = subprocess.run(cli + ["--embeddings-field", "emb"], env=env, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    add_embedded_samples(ds, 20, seed=6)
    summary = bfo.split(ds)  # the embeddings field the CLI's state remembers
    assert (summary["round"], summary["n_new"], summary["n_repaired"]) == (2, 20, 0)
    assert ds.count_values("bubblefence_round") == {0: 200, 1: 30, 2: 20}


def test_interrupted_runs_leave_state_intact_and_next_run_finishes(field_dataset, monkeypatch):
    ds = field_dataset
    bfo.split(ds.limit(100), embeddings_field="emb")
    before = splits_by_id(ds)
    state_before = bfo.state_info(ds)
    real_put = runs.put_run

    def dying_put(key_to_die_on):
        def put(dataset, key, params, payload):
            if key == key_to_die_on:
                raise KeyboardInterrupt("killed")
            real_put(dataset, key, params, payload)

        return put

    # 1. Killed while committing: the copy is written, the official run is being rewritten.
    monkeypatch.setattr(runs, "put_run", dying_put(bfo.RUN_KEY))
    with pytest.raises(KeyboardInterrupt):
        bfo.split(ds, embeddings_field="emb")
    monkeypatch.setattr(runs, "put_run", real_put)
    assert not bfo.is_locked(ds)
    assert splits_by_id(ds) == before  # fields untouched: the round had not been mirrored
    # What is committed is the copy: the forms and the shell read its round, not the last.
    assert bfo.state_info(ds)["n_samples"] == 200
    assert state.unfinished_round(bfo.state_info(ds)) == 1

    # The next run rolls the committed copy forward and mirrors it.
    summary = bfo.split(ds, embeddings_field="emb")
    assert summary["n_repaired"] == 100 and summary["n_new"] == 0
    assert ds.list_runs() == ["bubblefence", "bubblefence_layout"]  # state + 2-D map
    assert len(ds.exists("split")) == 200
    assert all(splits_by_id(ds)[i] == s for i, s in before.items() if s is not None)

    # 2. Killed before the commit point: the previous state stays as it was.
    add_embedded_samples(ds, 30, 5)
    monkeypatch.setattr(runs, "put_run", dying_put(state.STATE_RUN.commit_key))
    with pytest.raises(KeyboardInterrupt):
        bfo.split(ds, embeddings_field="emb")
    monkeypatch.undo()
    assert bfo.state_info(ds)["n_samples"] == 200
    assert len(ds.exists("split")) == 200
    assert state_before["n_samples"] == 100
    assert bfo.split(ds, embeddings_field="emb")["n_assigned"] == 30


def test_a_first_commit_stopped_before_its_results_were_saved_leaves_no_state(
    field_dataset, monkeypatch
):
    """Killed between registering the write-ahead copy and saving its results, a first
    round committed nothing: no state, no "unreadable; reset" (a reset would have
    deleted the embeddings), and the next split runs as the first."""
    ds = field_dataset
    real_save = fo.Dataset.save_run_results

    def dying_save(self, key, *args, **kwargs):
        if key == state.STATE_RUN.commit_key:
            raise KeyboardInterrupt("killed")
        return real_save(self, key, *args, **kwargs)

    monkeypatch.setattr(fo.Dataset, "save_run_results", dying_save)
    with pytest.raises(KeyboardInterrupt):
        bfo.split(ds, embeddings_field="emb")
    monkeypatch.undo()
    assert ds.has_run(state.STATE_RUN.commit_key)
    assert bfo.state_info(ds) is None
    assert bfo.load_state(ds) is None
    summary = bfo.split(ds, embeddings_field="emb")
    assert (summary["round"], summary["n_assigned"]) == (0, 200)
    assert ds.list_runs() == ["bubblefence", "bubblefence_layout"]


def test_state_from_a_newer_version_is_refused(field_dataset):
    ds = field_dataset
    bfo.split(ds.limit(50), embeddings_field="emb")
    params = bfo.state_info(ds)
    assert params["state_version"] == state.STATE_RUN.version
    params["state_version"] = state.STATE_RUN.version + 1
    params["config"] = {**params["config"], "future_knob": 1}  # a knob this code lacks
    state.STATE_RUN.update_params(ds, params)
    with pytest.raises(ValueError, match="newer BubbleFence"):
        bfo.split(ds, embeddings_field="emb")
    assert not bfo.is_locked(ds)
    # The forms, which read the config with this code's knobs, give the same advice
    # (they failed on "unknown BubbleFence parameter 'future_knob'"; a stress test).
    with pytest.raises(ValueError, match="newer BubbleFence"):
        bfo.state_info(ds)
    for name in ("split", "report", "export", "sample"):
        props = operator_form(ds, f"@bubblefence/bubblefence/bubblefence_{name}")
        assert list(props) == ["refused"]
        assert "newer BubbleFence" in props["refused"]["error_message"]


def test_a_run_of_another_format_is_refused_not_overwritten(field_dataset):
    ds = field_dataset
    foreign = {"method": "bubblefence", "format": "someone-else"}
    runs.put_run(ds, bfo.RUN_KEY, foreign, {"meta": {}, "arrays": {}})
    assert bfo.state_info(ds) is None  # not ours: no state
    with pytest.raises(ValueError, match="not written by BubbleFence"):
        bfo.split(ds, embeddings_field="emb")
    assert runs.run_params(ds, bfo.RUN_KEY)["format"] == "someone-else"


def test_run_types_write_their_format_and_version():
    kind = runs.RunType("x_run", "x-format", 3, "x_version")
    assert kind.commit_key == "x_run_commit"
    assert kind.new_params(a=1) == {"method": "x_run", "format": "x-format", "x_version": 3, "a": 1}


def test_state_rebuilds_embeddings_from_the_field(field_dataset):
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    split_state, _ = bfo.load_state(ds)
    ids, vectors = ds.select(split_state.assignments()["id"].tolist(), ordered=True).values(
        ["id", "emb"]
    )
    expected = np.stack(vectors).astype(np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    rows = state.state_embeddings(split_state)
    np.testing.assert_allclose(rows, expected, atol=1e-6)
    # Rebuilt into a buffer with room: a round appends after them, without a copy.
    new = np.random.default_rng(3).normal(size=(20, rows.shape[1]))
    split_state.ingest(new, ids=[f"new{i}" for i in range(20)])
    assert state.state_embeddings(split_state).ctypes.data == rows.ctypes.data


def test_edited_embeddings_of_assigned_samples_are_refused(field_dataset):
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    before = splits_by_id(ds)
    edited = ds.first()
    edited["emb"] = np.asarray(edited["emb"])[::-1].copy()
    edited.save()
    add_embedded_samples(ds, 10, 3)
    with pytest.raises(ValueError, match="changed for 1 sample since"):
        bfo.split(ds, embeddings_field="emb")
    assert splits_by_id(ds) == {
        **before,
        **{i: None for i in ds.exists("split", False).values("id")},
    }
    assert not bfo.is_locked(ds)


@pytest.mark.parametrize("broken", [None, [0.5, 0.5]])
def test_a_lost_vector_names_the_ways_on_and_excluding_its_sample_lets_rounds_go_on(
    field_dataset, broken
):
    # Found by a hostile-input walk: the refusal offered only a reset (the whole split
    # lost) where excluding or deleting the one sample lets the next round run.
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    lost = ds.first()
    lost["emb"] = broken
    lost.save()
    add_embedded_samples(ds, 10, 3)
    with pytest.raises(
        ValueError, match="(lost or broke the vectors of|changed for) 1 sample"
    ) as refused:
        bfo.split(ds, embeddings_field="emb")
    assert "exclude them (bubblefence_plugin.fo.exclude(dataset.select(ids))" in str(refused.value)
    bfo.exclude(ds.select([lost.id]))
    assert bfo.split(ds, embeddings_field="emb")["n_assigned"] == 10


def test_a_split_dataset_travels_through_fiftyone_own_export_and_goes_on(
    field_dataset, fo_datasets, tmp_path
):
    """FiftyOne's own ``dataset.export`` as a FiftyOneDataset writes run results as JSON,
    which takes no bytes: with the arrays stored as raw npy bytes it failed
    (UnicodeDecodeError) and left a partial folder. As base64 text they travel, and the
    imported dataset's next round assigns only its new samples."""
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    bfo.report(ds, "split", "emb")
    ds.export(str(tmp_path / "out"), fo.types.FiftyOneDataset, export_media=False)
    back = fo.Dataset.from_dir(str(tmp_path / "out"), dataset_type=fo.types.FiftyOneDataset)
    fo_datasets.append(back)
    assert bfo.latest_report(back)["source"] == "split"
    before = splits_by_id(back)
    add_embedded_samples(back, 25, seed=9)
    summary = bfo.split(back)
    assert (summary["round"], summary["n_new"]) == (1, 25)
    assert all(splits_by_id(back)[i] == s for i, s in before.items())


def test_state_of_version_1_with_embeddings_inside_is_read(field_dataset):
    ds = field_dataset
    bfo.split(ds.limit(150), embeddings_field="emb")
    before = splits_by_id(ds)
    split_state, params = bfo.load_state(ds)
    meta, arrays = split_state.state_dict()  # version 1 stored exactly this, embeddings included
    params["state_version"] = 1
    # and as raw npy bytes, as every run did before base64 text
    raw = {k: runs.npy_bytes(runs.to_npy_text(v)) for k, v in arrays.items()}
    payload = {"meta": meta, "arrays": raw}
    state.STATE_RUN.put(ds, params, payload)
    summary = bfo.split(ds, embeddings_field="emb")
    assert summary["n_new"] == 50 and summary["n_forgotten"] == 0
    now = splits_by_id(ds)
    assert all(now[i] == s for i, s in before.items() if s is not None)
