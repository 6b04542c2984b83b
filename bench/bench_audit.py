"""Split audit benchmark (issue 6): `metrics.audit` against FiftyOne Brain's compute_leaky_splits.

    PYTHONPATH=. .venv/bin/python bench/bench_audit.py
    PYTHONPATH=. .venv/bin/python bench/bench_audit.py --sizes 10000 --brain-sizes 10000 --no-save

Data: `bench_core.make_data` (clustered 512-d unit vectors, 3 % near-duplicates) with a
seeded random 0.8 / 0.1 / 0.1 split (the audit's cost depends on the sizes, not on how
the split was made; a random split of clustered data leaks a lot, which is the Brain's
hardest case too). Cases, each in its own subprocess so that peak memory is its own:

* ``audit``: `metrics.audit` as the operator runs it: leakage@(0.99, 0.95, 0.90) eval→train
  and validation↔test with at most 10,000 sampled queries per direction (each against the
  whole base), ratio, balance, label coverage, diversity, all of it also for the random
  baseline split;
* ``audit exact``: the same with every eval sample measured (``max_queries=None``);
* ``exact, Brain's meaning``: `metrics.cross_split_similarity(center=True)`, exactly the
  samples with a sample of another split within cosine distance 0.05 after centring;
* ``Brain``: ``compute_leaky_splits(dataset, "split", threshold=0.05, embeddings=array)``
  on a FiftyOne dataset of the same samples (creating the dataset is not timed; the
  embeddings are passed as an array, so no database read is timed either).

Seconds are wall time of the call; peak RSS is the process's high-water mark during the call
(reset after the data is built, so it includes the embedding matrix, but not mongod).
The Brain is run at growing sizes until one run exceeds ``--brain-budget`` seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("RESULTS.md")
THRESHOLD = 0.95  # cosine similarity; the Brain gets distance 1 - 0.95
RATIOS = (0.8, 0.1, 0.1)
MARKER = "BENCH_AUDIT_RESULT "  # the worker's result line (mongod may print to stdout too)


def _data(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_core import make_data

    x, labels = make_data(n, seed=0)
    rng = np.random.default_rng(1)
    split = rng.choice(["train", "validation", "test"], size=n, p=RATIOS)
    return x, labels, split


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM (Linux >= 4.0)


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(case: str, n: int) -> dict:
    """One timed case, in this (fresh) process."""
    x, labels, split = _data(n)
    out: dict = {"case": case, "n": n, "matrix_mb": x.nbytes / 2**20}
    if case == "brain":
        return _brain_worker(x, split, out)
    from bubblefence_plugin.core import metrics

    _reset_peak()
    clock = time.perf_counter()
    if case in ("audit", "audit_exact"):
        max_queries = metrics.DEFAULT_MAX_QUERIES if case == "audit" else None
        report = metrics.audit(x, split, labels, max_queries=max_queries, eval_ratio=0.2)
        k = report.thresholds.index(THRESHOLD)
        out["result"] = (
            f"leak@{THRESHOLD} eval→train {report.split.eval_train.fraction[k]:.4f}"
            f" ± {report.split.eval_train.stderr[k]:.4f}"
        )
    elif case == "cross":
        best = metrics.cross_split_similarity(x, split, center=True)
        out["leaks"] = int(np.sum(best >= THRESHOLD))
        out["result"] = f"{out['leaks']} samples with a cross-split neighbour"
    out["seconds"] = time.perf_counter() - clock
    out["peak_mb"] = _peak_mb()
    return out


def _brain_worker(x: np.ndarray, split: np.ndarray, out: dict) -> dict:
    # A throwaway database (BENCH_DB_DIR, made and removed by the parent) and no tracking.
    import fiftyone as fo
    import fiftyone.brain as fob

    ds = fo.Dataset()
    ds.add_samples(
        [fo.Sample(filepath=f"/bench/{i}.jpg", split=str(s)) for i, s in enumerate(split)]
    )
    _reset_peak()
    clock = time.perf_counter()
    index = fob.compute_leaky_splits(ds, splits="split", threshold=1.0 - THRESHOLD, embeddings=x)
    out["seconds"] = time.perf_counter() - clock
    out["peak_mb"] = _peak_mb()
    out["leaks"] = len(index.leak_ids)
    out["result"] = f"{out['leaks']} leak samples"
    ds.delete()
    return out


def run_case(case: str, n: int, budget: float | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", case, "--n", str(n)]
    db = tempfile.mkdtemp(prefix="bench-audit-db-")
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "FIFTYONE_DATABASE_DIR": db,
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_DATABASE_VALIDATION": "false",
        "FIFTYONE_SHOW_PROGRESS_BARS": "false",
    }
    env.pop("FIFTYONE_DATABASE_URI", None)
    # Own session: on timeout the whole group (the worker and its mongod) is stopped.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"case": case, "n": n, "timed_out": True, "budget": budget}
    finally:
        shutil.rmtree(db, ignore_errors=True)  # the worker has exited: mongod is stopped
    lines = [line for line in stdout.decode().splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        return {"case": case, "n": n, "failed": f"exit {proc.returncode}"}
    return json.loads(lines[-1][len(MARKER) :])


def brain_extrapolation(results: list[dict]) -> str | None:
    """Where the Brain was not run: its time at the largest audited size, extrapolated
    from the growth between its two largest completed runs (it grows about as N^2)."""
    done = sorted(
        (r["n"], r["seconds"]) for r in results if r["case"] == "brain" and "seconds" in r
    )
    audited = max((r["n"] for r in results if r["case"] == "audit"), default=0)
    if len(done) < 2 or audited <= done[-1][0]:
        return None
    (n1, t1), (n2, t2) = done[-2:]
    k = math.log(t2 / t1) / math.log(n2 / n1)
    estimate = t2 * (audited / n2) ** k
    return (
        f"The Brain was run up to {n2:,} samples: between {n1:,} and {n2:,} its time grew as "
        f"N^{k:.2f}, which puts {audited:,} samples at about {estimate:,.0f} s "
        f"({estimate / 3600:.1f} h), so it was not run there."
    )


LABELS = {
    "audit": "audit (10k sampled queries per direction)",
    "audit_exact": "audit, exact (every eval sample)",
    "cross": f"exact, Brain's meaning (distance {1 - THRESHOLD:.2f}, centred)",
    "brain": f"FiftyOne Brain compute_leaky_splits ({1 - THRESHOLD:.2f})",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 50_000, 100_000])
    parser.add_argument("--large", type=int, nargs="*", default=[1_000_000])
    parser.add_argument(
        "--brain-sizes", type=int, nargs="*", default=[10_000, 20_000, 50_000, 100_000]
    )
    parser.add_argument("--brain-budget", type=float, default=900.0)
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(MARKER + json.dumps(worker(args.worker, args.n)), flush=True)
        return

    results: list[dict] = []
    brain_stopped: dict | None = None
    for n in sorted(set(args.sizes) | set(args.brain_sizes) | set(args.large)):
        cases = ["audit"]
        if n not in args.large:
            cases += ["audit_exact", "cross"]
        if n in args.brain_sizes and brain_stopped is None:
            cases.append("brain")
        for case in cases:
            budget = args.brain_budget if case == "brain" else None
            r = run_case(case, n, budget)
            print(json.dumps(r), flush=True)
            results.append(r)
            if case == "brain" and ("timed_out" in r or "failed" in r):
                brain_stopped = r

    brain_seconds = {
        r["n"]: r["seconds"] for r in results if r["case"] == "brain" and "seconds" in r
    }
    lines = [
        "\n## Split audit vs FiftyOne Brain compute_leaky_splits "
        f"({time.strftime('%Y-%m-%d %H:%M')})\n",
        "`bench/bench_audit.py`; 2-core CPU; clustered 512-d data (`bench_core.make_data`), "
        "seeded random 0.8/0.1/0.1 split. Each case in its own process; peak RSS is the "
        "high-water mark during the call (embedding matrix included, mongod not). "
        "'Brain ÷ this' = Brain seconds at the same size divided by this case's seconds.\n",
        "| samples | case | seconds | peak RSS MB | matrix MB | Brain ÷ this | result |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if "seconds" not in r:
            why = f"stopped after {r['budget']:.0f} s" if r.get("timed_out") else r["failed"]
            lines.append(f"| {r['n']:,} | {LABELS[r['case']]} | {why} | | | | |")
            continue
        ratio = brain_seconds.get(r["n"])
        ratio_text = f"{ratio / r['seconds']:.1f}x" if ratio and r["case"] != "brain" else ""
        lines.append(
            f"| {r['n']:,} | {LABELS[r['case']]} | {r['seconds']:.1f} | {r['peak_mb']:.0f} | "
            f"{r['matrix_mb']:.0f} | {ratio_text} | {r.get('result', '')} |"
        )
    note = brain_extrapolation(results)
    if note:
        lines.append("\n" + note)
    if brain_stopped is not None:
        lines.append(
            f"\nThe Brain was not run above {brain_stopped['n']:,} samples: that run "
            + (
                f"passed the {brain_stopped['budget']:.0f} s budget."
                if brain_stopped.get("timed_out")
                else f"failed ({brain_stopped['failed']})."
            )
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_save:
        with RESULTS.open("a") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
