"""Sharded embedding on two real ``fiftyone delegated launch`` workers.

The test starts its own mongod (free 127.0.0.1 port, its own dbpath) and points
``FIFTYONE_DATABASE_URI`` at it for two worker processes and for a scenario process
(this file run as a script): conftest removed that variable from the test session,
and FiftyOne reads its database settings once, at import, so the isolated parts run
in subprocesses. Everything the test starts is stopped in ``finally``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.fiftyone

N_IMAGES = 40
N_SHARDS = 4
N_WORKERS = 2
START_TIMEOUT_S = 30  # mongod and the workers' FiftyOne import on a loaded 2-core machine
SCENARIO_TIMEOUT_S = 120  # hard bound; the scenario itself waits at most WAIT_S
WAIT_S = 75  # for the four shards: torch import and model load in each worker dominate
WORKER_BANNER = "Delegated operation service running"


def _fiftyone_dir() -> Path:
    spec = importlib.util.find_spec("fiftyone")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("fiftyone is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    # Own session: the whole process group can be stopped by this process's id.
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=log.parent,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def _wait_for(check, what: str, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not check():
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                raise AssertionError(f"{what}: process exited early:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            tails = "\n".join(log.read_text()[-2000:] for log in logs)
            raise AssertionError(f"{what} not ready after {START_TIMEOUT_S} s:\n{tails}")
        time.sleep(0.2)


def _mongod_ready(port: int) -> bool:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client = MongoClient(f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=500)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def test_four_shards_on_two_delegated_workers(tmp_path: Path, tiny_clip_dir: str) -> None:
    # Here, not at module level: the scenario runs this file as a script, and conftest
    # would remove the isolated database's URI from its environment.
    from conftest import ROOT, write_images

    images = tmp_path / "images"
    write_images(images, N_IMAGES, seed=3)
    port = _free_port()
    (tmp_path / "db").mkdir()
    env = {
        **os.environ,
        "FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{port}",
        "PYTHONPATH": str(ROOT),
    }
    mongod_log = tmp_path / "mongod.out"
    mongod = _start(
        [
            str(_fiftyone_dir() / "db" / "bin" / "mongod"),
            "--dbpath",
            str(tmp_path / "db"),
            "--port",
            str(port),
            "--bind_ip",
            "127.0.0.1",
            "--nounixsocket",
        ],
        mongod_log,
        env,
    )
    workers: list[subprocess.Popen] = []
    try:
        _wait_for(lambda: _mongod_ready(port), "mongod", [mongod], [mongod_log])
        cli = str(Path(sys.executable).parent / "fiftyone")
        worker_logs = [tmp_path / f"worker{k}.log" for k in range(N_WORKERS)]
        workers = [_start([cli, "delegated", "launch"], log, env) for log in worker_logs]
        _wait_for(
            lambda: all(WORKER_BANNER in log.read_text() for log in worker_logs),
            "delegated workers",
            workers,
            worker_logs,
        )
        out = tmp_path / "scenario.json"
        run = subprocess.run(
            [sys.executable, __file__, tiny_clip_dir, str(images), str(out)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=SCENARIO_TIMEOUT_S,
        )
        logs = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in worker_logs)
        assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-5000:]}\n{logs}"
        result = json.loads(out.read_text())
    finally:
        for w in workers:
            _stop(w, signal.SIGINT)  # the worker's loop exits on KeyboardInterrupt
        _stop(mongod, signal.SIGTERM)

    shards = result["shards"]
    assert sorted(s["state"] for s in shards) == ["completed"] * N_SHARDS, shards
    assert sorted(s["shard_index"] for s in shards) == list(range(N_SHARDS))
    # Every shard embedded exactly its part of the hash partition, nothing else.
    for s in shards:
        assert s["n_todo"] == s["n_written"] == result["partition_sizes"][s["shard_index"]]
    assert sum(s["n_written"] for s in shards) == N_IMAGES
    assert result["n_embedded_samples"] == N_IMAGES
    assert result["max_abs_diff_to_local"] < 1e-5  # the same vectors as embedding here
    # Each operation ran exactly once, on one of the workers. Which worker takes which
    # shard is the queue's business: a fast worker may take all four, so it is only shown.
    runs = {
        op: [k for k, log in enumerate(worker_logs) if op in log.read_text()]
        for op in result["ids"]
    }
    assert all(len(ran_on) == 1 for ran_on in runs.values()), runs
    print("shards per worker:", {k: sum(r == [k] for r in runs.values()) for k in range(N_WORKERS)})
    # The split then runs on what the shards wrote, embedding nothing itself.
    split = result["split"]
    assert split["n_embedded"] == 0 and split["n_errors"] == 0
    assert sum(split["counts_total"].values()) == N_IMAGES
    assert split["counts_total"]["validation"] + split["counts_total"]["test"] > 0


def _scenario(model: str, images: str, out: str) -> None:
    """Runs inside the isolated database: queue, wait, check, split; writes a JSON summary."""
    import fiftyone as fo
    import numpy as np
    from bson import ObjectId
    from fiftyone.operators.delegated import DelegatedOperationService

    import bubblefence_plugin.fo as bfo
    from bubblefence_plugin.fo import shards as bfs

    paths = sorted(str(p) for p in Path(images).iterdir())
    ds = fo.Dataset("bubblefence-delegated-test", persistent=True)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    ids = bfs.queue_shards(ds, N_SHARDS, model=model)
    bfs.wait_for_shards(ds, poll_s=0.5, stall_s=WAIT_S, start_s=WAIT_S)
    service = DelegatedOperationService()
    shards = []
    for op_id in ids:
        doc = service.get(ObjectId(op_id))
        result = (doc.result.result or {}) if doc.result else {}
        report = result.get("result") or {}
        shards.append(
            {
                "state": str(doc.run_state),
                "error": doc.result.error if doc.result else None,
                "shard_index": report.get("shard_index"),
                "n_todo": report.get("n_todo"),
                "n_written": report.get("n_written"),
            }
        )
    ds.reload()  # the workers added the embeddings field
    all_ids, fps, vectors = ds.values(["id", "filepath", bfo.EMBEDDING_FIELD])
    have = [v is not None for v in vectors]
    sizes = np.bincount(bfs.shard_of(all_ids, N_SHARDS), minlength=N_SHARDS)
    local = bfo.get_embedder(model).embed_paths(fps)
    stored = np.stack([v for v in vectors if v is not None]) if all(have) else None
    diff = float(np.abs(stored - local.embeddings).max()) if stored is not None else 1.0
    summary = bfo.split(ds, model_name=model)
    Path(out).write_text(
        json.dumps(
            {
                "ids": ids,
                "shards": shards,
                "partition_sizes": sizes.tolist(),
                "n_embedded_samples": int(sum(have)),
                "max_abs_diff_to_local": diff,
                "split": {
                    k: summary[k] for k in ("n_embedded", "n_errors", "counts_total", "message")
                },
            }
        )
    )


if __name__ == "__main__":
    _scenario(*sys.argv[1:4])
