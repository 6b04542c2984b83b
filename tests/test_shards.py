"""Sharded embedding: partition, idempotence, resume, write-once, operator and split form."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, operator_form, operator_requests

pytestmark = pytest.mark.fiftyone

fo = pytest.importorskip("fiftyone")
foo = pytest.importorskip("fiftyone.operators")
bfo = pytest.importorskip("bubblefence_plugin.fo")
bfs = pytest.importorskip("bubblefence_plugin.fo.shards")

from fiftyone.operators.delegated import DelegatedOperationService  # noqa: E402
from fiftyone.operators.executor import ExecutionError  # noqa: E402

from bubblefence_plugin import BubbleFenceConfig  # noqa: E402

EMBED = bfs.EMBED_OPERATOR
SPLIT = "@bubblefence/bubblefence/bubblefence_split"
FIELD = bfo.EMBEDDING_FIELD


def _ids(n: int, seed: int = 0) -> list[str]:
    """ObjectId-like hex strings (24 hex digits), seeded."""
    rng = np.random.default_rng(seed)
    return ["".join(f"{b:02x}" for b in rng.integers(0, 256, 12)) for _ in range(n)]


@pytest.fixture
def image_dataset(image_factory, fo_datasets):
    ds = fo.Dataset()
    fo_datasets.append(ds)
    ds.add_samples([fo.Sample(filepath=p) for p in image_factory(24, seed=5)])
    return ds


def _vectors(ds, field=FIELD) -> dict[str, np.ndarray | None]:
    return dict(zip(*ds.values(["id", field]), strict=True))


# --------------------------------------------------------------------------- partition


def test_shard_of_is_a_balanced_partition_independent_of_order():
    ids = _ids(20_000)
    for n in (1, 3, 8):
        shard = bfs.shard_of(ids, n)
        assert shard.min() >= 0 and shard.max() < n
        counts = np.bincount(shard, minlength=n)
        expected = len(ids) / n
        assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))  # 5 sigma
        # A sample's shard depends on its id only: any order, any subset agrees.
        perm = np.random.default_rng(n).permutation(len(ids))
        assert (bfs.shard_of([ids[i] for i in perm], n) == shard[perm]).all()
        assert (bfs.shard_of(ids[:100], n) == shard[:100]).all()


def test_shard_of_is_the_same_in_another_process_with_another_hash_seed():
    ids = _ids(500, seed=1)
    code = (
        "import sys, json; from bubblefence_plugin.fo.shards import shard_of; "
        "ids = json.load(sys.stdin); print(json.dumps(shard_of(ids, 7).tolist()))"
    )
    import json

    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(ids),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == bfs.shard_of(ids, 7).tolist()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_shards": 0}, "num_shards"),
        ({"num_shards": 2, "shard_index": 2}, "shard_index"),
        ({"shard_index": -1}, "shard_index"),
        ({"num_shards": True}, "num_shards"),
        ({"embeddings_field": "filepath"}, "embeddings_field"),
        ({"embeddings_field": "split"}, "embeddings_field"),
        ({"embeddings_field": "a.b"}, "embeddings_field"),
        ({"batch_size": 0}, "batch_size"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"model": ""}, "model"),
    ],
)
def test_bad_parameters_are_named_before_anything_is_written(image_dataset, kwargs, name):
    fields = set(image_dataset.get_field_schema())
    with pytest.raises(ValueError, match=name):
        bfs.embed(image_dataset, **{"model": "unused", **kwargs})
    assert set(image_dataset.get_field_schema()) == fields


def test_a_non_vector_field_is_refused(image_dataset):
    image_dataset.add_sample_field("clip", fo.StringField)
    with pytest.raises(ValueError, match="clip"):
        bfs.embed(image_dataset, model="unused", embeddings_field="clip")


# --------------------------------------------------------------------------- embedding


def test_shards_embed_each_sample_once_and_match_one_run(image_dataset, tiny_clip_dir):
    ds = image_dataset
    n = 3
    reports = [
        bfs.embed(ds, model=tiny_clip_dir, num_shards=n, shard_index=i, chunk_size=5)
        for i in range(n)
    ]
    ids = ds.values("id")
    sizes = np.bincount(bfs.shard_of(ids, n), minlength=n)
    assert [r.n_todo for r in reports] == sizes.tolist()
    assert [r.n_written for r in reports] == sizes.tolist()
    assert sum(r.n_written for r in reports) == len(ds)
    stored = _vectors(ds)
    assert all(v is not None for v in stored.values())
    # The same vectors as one embedder over all files: the sharding changed nothing.
    local = bfo.get_embedder(tiny_clip_dir).embed_paths(ds.values("filepath"))
    np.testing.assert_allclose(np.stack([stored[i] for i in ids]), local.embeddings, atol=1e-6)
    assert ds.get_field(FIELD).info == {"model_name": tiny_clip_dir, "dim": local.dim}
    # Idempotent: a rerun finds nothing to do and changes nothing.
    again = bfs.embed(ds, model=tiny_clip_dir, num_shards=n, shard_index=1)
    assert again.n_todo == 0 and again.n_written == 0
    assert all((_vectors(ds)[i] == stored[i]).all() for i in ids)


def test_killed_shard_resumes_where_it_stopped(image_dataset, tiny_clip_dir):
    ds = image_dataset
    chunk, k = 4, 2

    class Killed(Exception):
        pass

    def kill_after_k_chunks(fraction, label):
        if label.startswith("Embedded") and int(label.split()[1].split("/")[0]) >= k * chunk:
            raise Killed

    with pytest.raises(Killed):
        bfs.embed(ds, model=tiny_clip_dir, chunk_size=chunk, progress=kill_after_k_chunks)
    first = {i: v for i, v in _vectors(ds).items() if v is not None}
    assert len(first) == k * chunk  # the chunks written before the kill are kept
    rest = bfs.embed(ds, model=tiny_clip_dir, chunk_size=chunk)
    assert rest.n_todo == rest.n_written == len(ds) - k * chunk
    after = _vectors(ds)
    assert all(v is not None for v in after.values())
    assert all((after[i] == v).all() for i, v in first.items())  # never re-embedded


def test_a_sample_written_meanwhile_is_never_replaced(image_dataset, tiny_clip_dir):
    ds = image_dataset
    marker = np.full(16, 0.25, dtype=np.float32)
    taken: list[str] = []

    def other_writer(fraction, label):
        # After the first chunk, "another shard" writes one sample this run still plans to.
        if label.startswith("Embedded") and not taken:
            sid = ds.exists(FIELD, False).first().id
            ds.select(sid).set_values(FIELD, [marker])
            taken.append(sid)

    report = bfs.embed(ds, model=tiny_clip_dir, chunk_size=6, progress=other_writer)
    assert report.n_todo == len(ds)
    assert report.n_written == len(ds) - 1
    assert (ds[taken[0]][FIELD] == marker).all()


def test_failed_images_get_errors_and_are_retried(image_dataset, tiny_clip_dir, tmp_path):
    ds = image_dataset
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    ds.add_sample(fo.Sample(filepath=str(bad)))
    report = bfs.embed(ds, model=tiny_clip_dir)
    assert report.n_errors == 1 and report.n_written == len(ds) - 1
    sample = ds.one(fo.ViewField("filepath") == str(bad))
    assert sample[bfo.ERROR_FIELD] and sample[FIELD] is None
    assert list(report.errors) == [str(bad)]  # by file, as a user finds it
    assert ds.exists(bfo.ERROR_FIELD).count() == 1
    again = bfs.embed(ds, model=tiny_clip_dir)
    assert again.n_todo == 1 and again.n_errors == 1 and again.n_written == 0


# --------------------------------------------------------------------------- operators


def test_queued_shards_run_by_the_delegation_service(image_dataset, tiny_clip_dir):
    ds = image_dataset
    result = foo.get_operator(EMBED)(ds, model_name=tiny_clip_dir, num_shards=3, queue=True)
    ids = operator_requests(result)["show_output"][0]["results"]["summary"]
    pending = bfs.pending_shards(ds)
    assert sorted(p.shard_index for p in pending) == [0, 1, 2]
    assert all(p.id in ids and p.state == "queued" for p in pending)
    with pytest.raises(ValueError, match="still queued or running"):
        bfs.queue_shards(ds, 2, model=tiny_clip_dir)
    service = DelegatedOperationService()
    runs = service.execute_queued_operations(operator=EMBED, dataset_name=ds.name)
    assert len(runs) == 3 and all(r.error is None for r in runs)
    written = [r.result["result"]["n_written"] for r in runs]
    assert sum(written) == len(ds) == ds.exists(FIELD).count()
    assert bfs.pending_shards(ds) == []


def test_queueing_from_the_form_ignores_the_hidden_shard_index(image_dataset, tiny_clip_dir):
    """Found by a tester: the form opens on "Embed here" with Shard index 0; switched to
    "Queue shards for workers" it hides that input, but the App still sends it, and the
    run refused it as unknown: queueing from the App could never run."""
    ds = image_dataset
    params = {"mode": "queue", "model_name": tiny_clip_dir, "embeddings_field": FIELD}
    params.update(num_shards=2, shard_index=0)
    result = foo.execute_operator(EMBED, ctx={"dataset": ds, "params": params})
    assert result.error is None
    assert sorted(p.shard_index for p in bfs.pending_shards(ds)) == [0, 1]
    for pending in bfs.pending_shards(ds):
        DelegatedOperationService().delete_operation(pending.id)  # leave no queue behind


def test_embed_operator_here_reports_progress(image_dataset, tiny_clip_dir):
    ds = image_dataset
    op = foo.get_operator(EMBED)
    result = op(ds, model_name=tiny_clip_dir, num_shards=2, shard_index=1)
    requests = operator_requests(result)
    progress = [p["progress"] for p in requests["set_progress"]]
    assert progress == sorted(progress) and progress[-1] == 1.0
    expected = int((bfs.shard_of(ds.values("id"), 2) == 1).sum())
    assert ds.exists(FIELD).count() == expected
    assert "embedded" in requests["notify"][0]["message"]
    with pytest.raises(ExecutionError, match="shard_index|below"):
        op(ds, model_name=tiny_clip_dir, num_shards=2, shard_index=2)


def _form(ds, params, uri=SPLIT):
    return operator_form(ds, uri, params)


def test_embed_defaults_to_the_model_the_field_holds(image_dataset, tiny_clip_dir):
    # Found by a stress test: the form offered CLIP beside a field of another model's
    # vectors, and the run then loaded CLIP only to refuse it.
    ds = image_dataset
    assert _form(ds, {}, EMBED)["model_name"]["default"] == BubbleFenceConfig().model_name
    bfs.embed(ds, model=tiny_clip_dir, num_shards=2, shard_index=0)
    assert _form(ds, {}, EMBED)["model_name"]["default"] == tiny_clip_dir
    foo.get_operator(EMBED)(ds, num_shards=2, shard_index=1)  # no model named
    assert ds.exists(FIELD).count() == len(ds)


def test_split_offers_to_wait_or_split_what_is_embedded(image_dataset, tiny_clip_dir):
    ds = image_dataset
    assert "while_embedding" not in _form(ds, {"model_name": tiny_clip_dir})
    bfs.embed(ds, model=tiny_clip_dir, num_shards=2, shard_index=0)
    embedded = set(ds.exists(FIELD).values("id"))
    bfs.queue_shards(ds, 2, model=tiny_clip_dir)
    props = _form(ds, {"model_name": tiny_clip_dir})
    assert "while_embedding" in props and "shards_notice" in props
    assert f"{len(ds) - len(embedded)} samples still lack" in str(props["shards_notice"])
    # None running: no worker may take them, so waiting is not the default (a tester's
    # split waited in the App for the lock's 15 minutes).
    assert "worker running?" in str(props["shards_notice"])
    assert props["while_embedding"]["default"] == "embedded"

    params = {"model_name": tiny_clip_dir, "while_embedding": "embedded"}
    # Only what is embedded, where nothing is: said so (it read "the target view is
    # empty (0 samples)", found by a tester).
    not_embedded = ds.exists(FIELD, False)
    with pytest.raises(ExecutionError, match=r"none of the \d+ samples of the target has"):
        foo.execute_operator(SPLIT, ctx={"view": not_embedded, "params": params})
    foo.execute_operator(SPLIT, ctx={"dataset": ds, "params": params})
    assert set(ds.exists("split").values("id")) == embedded  # nothing embedded by the split
    assert ds.exists(FIELD).count() == len(embedded)

    # "wait": delegated, so a worker (here the service in-process) runs the queued
    # shards first; the split waits for them, then splits the rest.
    params["while_embedding"] = "wait"
    foo.execute_operator(SPLIT, ctx={"dataset": ds, "params": params, "request_delegation": True})
    service = DelegatedOperationService()
    service.execute_queued_operations(operator=EMBED, dataset_name=ds.name)
    runs = service.execute_queued_operations(operator=SPLIT, dataset_name=ds.name)
    assert len(runs) == 1 and runs[0].error is None
    assert runs[0].result["result"]["n_embedded"] == 0
    assert ds.exists("split").count() == len(ds)


def test_a_split_from_python_or_the_shell_refuses_while_shards_embed(image_dataset, tiny_clip_dir):
    # Found by a README audit: from the shell, a split ignored the queued shards and
    # embedded every sample itself, with the default model rather than the shards' own.
    from bubblefence_plugin.cli import main

    ds = image_dataset
    bfs.embed(ds, model=tiny_clip_dir, num_shards=2, shard_index=0)
    embedded = ds.exists(FIELD).count()
    bfs.queue_shards(ds, 2, model=tiny_clip_dir)
    with pytest.raises(ValueError, match=r"still lack 'bubblefence_embedding' while 2 embedding"):
        bfo.split(ds, model_name=tiny_clip_dir)
    assert main(["split", "--dataset", ds.name, "--model", tiny_clip_dir]) == 2
    assert not ds.has_field("split") and ds.exists(FIELD).count() == embedded
    # What the message offers: the samples embedded so far.
    summary = bfo.split(ds.exists(FIELD), model_name=tiny_clip_dir)
    assert summary["n_assigned"] == embedded and summary["n_embedded"] == 0


def test_waiting_ends_when_the_shards_are_done_and_stalls_are_reported(
    image_dataset, tiny_clip_dir
):
    ds = image_dataset
    bfs.queue_shards(ds, 2, model=tiny_clip_dir)
    waiting = bfs.iter_wait_for_shards(ds, poll_s=0)
    assert "Waiting for 2 embedding shards (0 running)" in next(waiting).label
    stalled = bfs.iter_wait_for_shards(ds, poll_s=0, stall_s=0)
    next(stalled)
    with pytest.raises(TimeoutError, match="fiftyone delegated fail"):
        next(stalled)
    # No shard ever started: no worker takes them, said within `start_s` rather than
    # after the lock's 15 minutes (found by a tester, in the App).
    unstarted = bfs.iter_wait_for_shards(ds, poll_s=0, start_s=0)
    with pytest.raises(TimeoutError, match="none of the 2 embedding shards .* started in 0 s"):
        next(unstarted)
    DelegatedOperationService().execute_queued_operations(operator=EMBED, dataset_name=ds.name)
    with pytest.raises(StopIteration):
        next(waiting)
    assert ds.exists(FIELD).count() == len(ds)
