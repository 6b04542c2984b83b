"""The split on a FiftyOne dataset: what the database side adds to the core.

    .venv/bin/python bench/bench_dataset.py               # 20k samples, then 100k
    .venv/bin/python bench/bench_dataset.py --n 20000     # one size

For each size: a dataset with a precomputed 512-d embeddings field (clustered data of
`bench_core.make_data`) in a throwaway database; `split` on 10/11 of it, a second
round on the rest, a run with nothing new; and, as the baseline in the same process,
the core alone (`BubbleFence.ingest`) on the same arrays. The ratio is dataset / core.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

_TMP = tempfile.mkdtemp(prefix="bubblefence-bench-")
os.environ["FIFTYONE_DATABASE_DIR"] = os.path.join(_TMP, "db")
os.environ.pop("FIFTYONE_DATABASE_URI", None)
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_SHOW_PROGRESS_BARS"] = "false"
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import fiftyone as fo  # noqa: E402
from bench_core import append_results, make_data, peak_rss_mb, reset_peak_rss  # noqa: E402

import bubblefence_plugin.fo as bfo  # noqa: E402
from bubblefence_plugin import BubbleFence, BubbleFenceConfig  # noqa: E402
from bubblefence_plugin.fo.embeddings import read_vectors  # noqa: E402


def timed(fn):
    reset_peak_rss()
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start, peak_rss_mb()


def run(n: int, lines: list[str]) -> None:
    n_first = n * 10 // 11
    x, _ = make_data(n, 3)
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=f"/bench/{i}.jpg") for i in range(n_first)])
    ds.set_values("emb", list(x[:n_first]))

    _, s0, m0 = timed(lambda: bfo.split(ds, embeddings_field="emb"))
    ds.add_samples([fo.Sample(filepath=f"/bench/{i}.jpg") for i in range(n_first, n)])
    ds.exists("emb", False).set_values("emb", list(x[n_first:]))
    _, s1, m1 = timed(lambda: bfo.split(ds, embeddings_field="emb"))
    _, s2, m2 = timed(lambda: bfo.split(ds, embeddings_field="emb"))
    # Every round reads the whole field back (the state's rows and the new ones):
    # FiftyOne's own decoding of it against `read_vectors`, on the same samples.
    _, fo_read, _ = timed(lambda: ds.values(["id", "emb"]))
    _, our_read, _ = timed(lambda: read_vectors(ds, "emb"))

    core = BubbleFence(BubbleFenceConfig())
    _, c0, _ = timed(lambda: core.ingest(x[:n_first]))
    _, c1, _ = timed(lambda: core.ingest(x[n_first:]))
    ds.delete()
    row = (
        f"| {n:,} | {n_first:,} + {n - n_first:,} | {s0:.1f} + {s1:.1f} | {s2:.1f} | "
        f"{c0:.1f} + {c1:.1f} | {s0 / c0:.1f}x + {s1 / c1:.1f}x | {max(m0, m1, m2):.0f} | "
        f"{fo_read:.1f} / {our_read:.1f} |"
    )
    print(row, flush=True)
    lines.append(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, action="append", help="dataset sizes")
    sizes = parser.parse_args().n or [20_000, 100_000]
    lines = [
        f"\n## Split on a FiftyOne dataset, 512-d field ({time.strftime('%Y-%m-%d %H:%M')})\n",
        "`bench/bench_dataset.py`; 2-core CPU, throwaway database. Rounds: 10/11 of the "
        "samples, then the rest; then a run with nothing new. Core: `BubbleFence.ingest` "
        "on the same arrays in the same process. Peak RSS: this process (not mongod), "
        "high-water mark over the three dataset runs. Field read: every vector of the "
        "field read back, by FiftyOne's `values` / by `embeddings.read_vectors` (what "
        "the rounds use).\n",
        "| samples | rounds | dataset s | nothing new s | core s | dataset / core | peak RSS MB "
        "| field read s |",
        "|---:|---|---|---:|---|---|---:|---|",
    ]
    print("\n".join(lines), flush=True)
    for n in sizes:
        run(n, lines)
    append_results(lines)


if __name__ == "__main__":
    main()
