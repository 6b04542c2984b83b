"""BLAS threads on a quiet and a busy machine (issue 12): one core round per setting.

    .venv/bin/python bench/bench_threads.py            # 50k and 100k
    .venv/bin/python bench/bench_threads.py --quick    # 10k and 20k

Each round runs in its own process on `bench_core`'s clustered 512-d data, with the
BLAS thread count fixed through `BUBBLEFENCE_BLAS_THREADS` (1 or 2) or chosen by
`neighbors.blas_threads` ("auto": the cores idle at the start of the round). "Busy" is the same with
one busy-loop neighbour per core, started before and stopped after. A round still
running after `--limit` seconds is stopped and reported as such. The splits of every
setting are compared: they must be identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_core import append_results  # noqa: E402
from bubblefence_plugin.core.neighbors import THREADS_VARIABLE  # noqa: E402

SETTINGS = ("1", "2", "auto")


def one_round(n: int) -> dict:
    import numpy as np

    from bench.bench_core import make_data, peak_rss_mb, reset_peak_rss
    from bubblefence_plugin import BubbleFence, BubbleFenceConfig
    from bubblefence_plugin.core.neighbors import blas_threads

    x, _ = make_data(n, seed=5)
    threads = blas_threads(n)
    reset_peak_rss()  # the round's peak, not the data generator's
    clock = time.perf_counter()
    bf = BubbleFence(BubbleFenceConfig(seed=5))
    bf.ingest(x)
    seconds = time.perf_counter() - clock
    split = bf.assignments()["split"].to_numpy().astype(str)
    digest = hashlib.sha256("\n".join(split).encode()).hexdigest()[:12]
    return {
        "seconds": seconds,
        "threads": threads,
        "peak_mb": peak_rss_mb(),
        "split": digest,
        "eval": float(np.isin(split, ["validation", "test"]).mean()),
    }


def run_setting(n: int, setting: str, limit: int) -> dict:
    env = dict(os.environ)
    env.pop(THREADS_VARIABLE, None)
    if setting != "auto":
        env[THREADS_VARIABLE] = setting
    cmd = [sys.executable, __file__, "--round", str(n)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"seconds": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--limit", type=int, default=240, help="seconds before a round is stopped")
    parser.add_argument("--round", type=int, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.round:
        print(json.dumps(one_round(args.round)))
        return
    sizes = (10_000, 20_000) if args.quick else (50_000, 100_000)
    rows = []
    for state in ("quiet", "busy"):
        neighbours = []
        if state == "busy":
            loop = "while True: pass"
            neighbours = [
                subprocess.Popen([sys.executable, "-c", loop]) for _ in range(os.cpu_count() or 1)
            ]
            time.sleep(20)  # let the load average see them
        try:
            for n in sizes:
                for setting in SETTINGS:
                    load = os.getloadavg()[0]
                    result = run_setting(n, setting, args.limit)
                    rows.append(
                        {"state": state, "n": n, "setting": setting, "load": load, **result}
                    )
                    print(rows[-1], flush=True)
        finally:
            for process in neighbours:
                process.kill()
                process.wait()
    digests = {r["split"] for r in rows if r.get("split")}
    lines = [
        f"\n## BLAS threads on a quiet and a busy machine ({time.strftime('%Y-%m-%d %H:%M')})\n",
        "`bench/bench_threads.py`; 2-core CPU; `bench_core` data; one round per process. "
        "Busy: one busy-loop neighbour per core. `auto`: `neighbors.blas_threads` (the "
        f"cores idle at the start of the round). A round past {args.limit} s was stopped.\n",
        "| machine | samples | threads | load at start | BLAS threads used | seconds "
        "| peak RSS MB |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        seconds = f"{r['seconds']:.1f}" if r.get("seconds") else f"> {args.limit} (stopped)"
        lines.append(
            f"| {r['state']} | {r['n']:,} | {r['setting']} | {r['load']:.1f} | "
            f"{r.get('threads', '-')} | {seconds} | {r.get('peak_mb', 0):.0f} |"
        )
    same = "identical" if len(digests) <= len(sizes) else "NOT identical"
    lines.append(f"\nSplits per size across settings: {same} ({len(digests)} digests).")
    print("\n".join(lines))
    append_results(lines)


if __name__ == "__main__":
    main()
