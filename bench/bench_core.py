"""Core split benchmark (issue 2, SPEC 5): seconds, peak RSS, quality, against a random split.

    .venv/bin/python bench/bench_core.py            # 50k in one round, then 3 rounds of 10k
    .venv/bin/python bench/bench_core.py --million  # adds 1M in one round + a 10k round on it
    .venv/bin/python bench/bench_core.py --state 200000  # only: a 10k round on a 200k state
    .venv/bin/python bench/bench_core.py --sweep 300000:1,300000:5  # only: these rounds

The 10k round on a large state is also run on that state saved to a file and loaded
back, as the CLI and a dataset's run start from it.

Data: clustered 512-d unit vectors (clusters on 8-d manifolds, unequal sizes and
spreads; the largest clusters tight, pairwise cosine about 0.99, until they hold 20 %
of the samples) with a few % near-duplicates; one structureless case (isotropic
Gaussian rows: every bubble holds one sample); one of 20k near-identical copies (all
duplicates of the first); one of a burst first (50k frames of one scene), then 50k
varied rows with more frames of it. Leakage is measured on a seeded sample of
at most 2,000 eval rows against all train rows (blockwise, exact per sampled row).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bubblefence_plugin import BubbleFence, BubbleFenceConfig  # noqa: E402
from bubblefence_plugin.core.metrics import leakage  # noqa: E402
from bubblefence_plugin.core.neighbors import nearest  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"


def make_data(n: int, seed: int, d: int = 512, k: int = 50) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)).astype(np.float32) * 3
    labels = rng.choice(k, size=n, p=rng.dirichlet(np.full(k, 0.7)))
    basis = rng.normal(size=(k, 8, d)).astype(np.float32)
    spread = rng.uniform(0.5, 2.0, size=k).astype(np.float32)
    # The largest clusters are tight (bursts, frames, product shots: pairwise cosine
    # about 0.99, only the 0.3 noise around the centre) until they hold >= 20 %.
    sizes = np.bincount(labels, minlength=k)
    by_size = np.argsort(-sizes, kind="stable")
    tight = by_size[: int(np.searchsorted(np.cumsum(sizes[by_size]), 0.2 * n)) + 1]
    spread[tight] = 0.0
    x = np.empty((n, d), np.float32)
    for start in range(0, n, 65536):
        sl = slice(start, min(start + 65536, n))
        lab = labels[sl]
        coords = rng.normal(size=(len(lab), 8)).astype(np.float32) * spread[lab, None]
        x[sl] = centres[lab] + np.einsum("ij,ijd->id", coords, basis[lab])
        x[sl] += 0.3 * rng.normal(size=(len(lab), d)).astype(np.float32)
    # 3 % of the rows copy another row (disjoint pairs: a copy of a row that was itself
    # overwritten would be no one's duplicate) plus noise, cosine about 0.99998.
    twins = rng.choice(n, size=2 * int(0.03 * n), replace=False)
    originals, copies = twins[::2], twins[1::2]
    x[copies] = x[originals] + 0.02 * rng.normal(size=(len(copies), d)).astype(np.float32)
    for start in range(0, n, 65536):
        block = x[start : start + 65536]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return x, labels


def structureless(n: int, seed: int, d: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic Gaussian unit rows, one label: no cluster and no near twin, pairwise
    cosine about 0, so a bubble's ball (at most `max_radius`, cosine distance 0.5) holds
    its centre alone and eval is one singleton bubble per sample held out."""
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, np.zeros(n, np.int64)


def copies(n: int, seed: int, d: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """One image's near-identical copies (a static camera's frames): pairwise cosine about
    0.99997, above the dedup threshold, so all but the first are its duplicates, and
    every pair of the dedup self-join is a hit."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1, d)) + 0.005 * rng.normal(size=(n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x, np.zeros(n, np.int64)


def burst_first(n: int, seed: int, d: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """A burst first, then varied data: the first half of the rows are frames of one
    scene (a tight cluster, pairwise cosine about 0.99), the second half a fifth more
    frames of it among `make_data`'s clusters, shuffled. Fed in two halves, the first
    round sees the burst alone (its regions' join distance tiny, its cluster cut
    between train and eval); the second brings rows far from every region, and new
    members with thousands of eval twins each."""
    rng = np.random.default_rng(seed)
    n_burst = n // 2 + n // 10
    centre = rng.normal(size=d).astype(np.float32)
    centre /= np.linalg.norm(centre)
    burst = centre + np.float32(0.1 / np.sqrt(d)) * rng.normal(size=(n_burst, d)).astype(np.float32)
    burst /= np.linalg.norm(burst, axis=1, keepdims=True)
    rest, labels = make_data(n - n_burst, seed)
    second = np.vstack([burst[n // 2 :], rest])
    second_labels = np.concatenate([np.full(n_burst - n // 2, -1), labels])
    order = rng.permutation(len(second))
    x = np.vstack([burst[: n // 2], second[order]])
    all_labels = np.concatenate([np.full(n // 2, -1), second_labels[order]])
    return x, np.where(all_labels < 0, labels.max() + 1, all_labels)


def square_crop(image: Any, rng: np.random.Generator, low: float, high: float) -> Any:
    """A random square crop of a PIL ``image``, its side ``low``-``high`` of the shorter
    side, resized to 224 px: one photo seen as several, for the benchmarks on real photos."""
    w, h = image.size
    side = int(min(w, h) * rng.uniform(low, high))
    left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    return image.crop((left, top, left + side, top + side)).resize((224, 224))


def append_results(lines: list[str]) -> None:
    """Appends a benchmark's table to RESULTS.md, with the load it ran under."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines.append(f"\nLoad average (1, 5, 15 min) at the end: {load} on {os.cpu_count()} cores.\n")
    print(lines[-1])
    with RESULTS.open("a") as fh:
        fh.write("\n".join(lines) + "\n")


def reset_peak_rss() -> None:
    """Restart the kernel's high-water mark of this process's RSS (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """RSS high-water mark since the last `reset_peak_rss`, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quality(x, split, labels, rng) -> dict:
    ev = np.flatnonzero(np.isin(split, ("validation", "test")))
    sample = np.sort(rng.choice(ev, size=min(2000, len(ev)), replace=False))
    keep = np.zeros(len(split), bool)
    keep[sample] = True
    keep |= split == "train"
    leak = leakage(x[keep], split[keep], (0.99, 0.95))
    counts = np.bincount(labels, minlength=labels.max() + 1)
    big = np.flatnonzero(counts >= 20)
    covered = len(np.intersect1d(np.unique(labels[ev]), big))
    n_val = int(np.sum(split == "validation"))
    return {
        "eval_share": len(ev) / max(int(np.sum(split != "duplicate")), 1),
        "val_share": n_val / max(len(ev), 1),
        "leak99": leak[0.99],
        "leak95": leak[0.95],
        "coverage": f"{covered}/{len(big)}",
    }


def run(
    name: str,
    batches: list[int],
    seed: int,
    lines: list[str],
    from_file: bool = False,
    data=make_data,
) -> list[float]:
    """One case: rounds of these sizes of `data`; appends its table row, returns the
    seconds per round. ``from_file``: the last round is run again on the state saved
    before it and loaded back, as the CLI and a dataset's run start (`reloaded_round`)."""
    x, labels = data(sum(batches), seed)
    bf = BubbleFence(BubbleFenceConfig(seed=seed))
    start, seconds, peaks = 0, [], []
    with tempfile.TemporaryDirectory() as folder:
        saved = Path(folder) / "state.npz"
        for size in batches:
            if from_file and start + size == len(x):
                bf.save(saved)
            reset_peak_rss()
            t = time.perf_counter()
            bf.ingest(x[start : start + size])
            seconds.append(time.perf_counter() - t)
            peaks.append(peak_rss_mb())
            start += size
        split = bf.assignments()["split"].to_numpy()
        rng = np.random.default_rng(seed)
        ours = quality(x, split, labels, rng)
        random_split = np.where(rng.random(len(x)) < 0.2, "validation", "train").astype(object)
        base = quality(x, random_split, labels, rng)
        stages = " / ".join(
            ", ".join(f"{name} {sec:.1f}" for name, sec in record["seconds"].items() if sec >= 0.05)
            for record in bf.history
        )
        row = (
            f"| {name} | {' + '.join(f'{s:.2f}' for s in seconds)} | {max(peaks):.0f} | "
            f"{x.nbytes / 2**20:.0f} | {len(bf._anchors)} | {ours['eval_share']:.3f} | "
            f"{ours['val_share']:.3f} | {ours['leak99']:.4f} / {base['leak99']:.4f} | "
            f"{ours['leak95']:.4f} / {base['leak95']:.4f} | {ours['coverage']} / "
            f"{base['coverage']} | {stages} |"
        )
        print(row, flush=True)
        lines.append(row)
        if from_file:
            expected = bf.assignments()
            del bf  # only the loaded state in memory, as in a fresh process
            lines.append(reloaded_round(saved, x[len(x) - batches[-1] :], expected))
    return seconds


def reloaded_round(saved: Path, batch: np.ndarray, expected: pd.DataFrame) -> str:
    """The line for the last round run again on the state loaded from ``saved``."""
    reset_peak_rss()
    t = time.perf_counter()
    bf = BubbleFence.load(saved)
    load_seconds = time.perf_counter() - t
    t = time.perf_counter()
    bf.ingest(batch)
    round_seconds = time.perf_counter() - t
    stages = ", ".join(f"{k} {v:.1f}" for k, v in bf.history[-1]["seconds"].items() if v >= 0.05)
    line = (
        f"\nThe last round again, on the state saved before it and loaded back (as the "
        f"CLI and a dataset's run start): loading {load_seconds:.2f} s, the round "
        f"{round_seconds:.2f} s ({stages}), peak RSS {peak_rss_mb():.0f} MB (with the "
        f"caller's data), the same split as in memory: "
        f"{'yes' if bf.assignments().equals(expected) else 'NO'}.\n"
    )
    print(line, flush=True)
    return line


def later_round(n_state: int, lines: list[str]) -> None:
    """A 10k round on a state of `n_state`, and the exact 1-NN pass it is compared with."""
    seconds = run(f"{n_state // 1000}k state + 10k round", [n_state, 10_000], 2, lines, True)
    x, _ = make_data(n_state + 10_000, 2)
    t = time.perf_counter()
    nearest(x[n_state:], x[:n_state])
    baseline = time.perf_counter() - t
    line = (
        f"\nBaseline in the same process: an exact blockwise 1-NN pass of the 10k new rows "
        f"over the {n_state:,} earlier ones took {baseline:.2f} s; the 10k round "
        f"{seconds[-1]:.2f} s ({seconds[-1] / baseline:.2f}x).\n"
    )
    print(line)
    lines.append(line)


def _sizes_and_seeds(text: str) -> list[tuple[int, int]]:
    """ "300000:1,300000:5" -> [(300000, 1), (300000, 5)]."""
    try:
        pairs = [tuple(int(v) for v in item.split(":")) for item in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or p[0] < 1 or p[1] < 0 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected SIZE:SEED pairs like 300000:1, got {text!r}")
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--million", action="store_true")
    parser.add_argument(
        "--state",
        type=int,
        help="only this case: a state of this many samples (one round), then a 10k round, "
        "beside an exact blockwise 1-NN pass of the 10k new rows over the state",
    )
    parser.add_argument(
        "--sweep",
        type=_sizes_and_seeds,
        help="only these cases, one round each: comma-separated SIZE:SEED pairs of the "
        "same generator (e.g. 300000:1,300000:5), to look for sizes and seeds where a "
        "figure breaks (the validation share came to 0.77 at 300k, seed 1)",
    )
    args = parser.parse_args()
    lines = [
        f"\n## Core split, clustered 512-d ({time.strftime('%Y-%m-%d %H:%M')})\n",
        "`bench/bench_core.py`; 2-core CPU. Peak RSS: the process's high-water mark "
        "during the rounds (reset before each), so it includes the caller's copy of the "
        "data. Leakage (on a seeded sample of 2,000 eval rows against all train rows) and "
        "label coverage: ours / a seeded random split at eval 0.2, measured in the same "
        "run.\n",
        "| case | seconds per round | peak RSS MB | matrix MB | anchors | eval share | "
        "val/(val+test) | leak@0.99 | leak@0.95 | label coverage | stages of each round (s, "
        "those of 0.05 s or more) |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    print("\n".join(lines))
    if args.state:
        later_round(args.state, lines)
        append_results(lines)
        return
    if args.sweep:
        for size, seed in args.sweep:
            run(f"{size // 1000}k, seed {seed}, one round", [size], seed, lines)
        append_results(lines)
        return
    run("50k, one round", [50_000], 0, lines)
    run("30k in 3 rounds of 10k", [10_000] * 3, 1, lines)
    run("20k structureless, one round", [20_000], 3, lines, data=structureless)
    run("20k copies of one image, one round", [20_000], 4, lines, data=copies)
    run("100k: a burst of 50k, then 50k varied", [50_000, 50_000], 5, lines, data=burst_first)
    if args.million:
        run("1M one round + 10k round", [1_000_000, 10_000], 2, lines, from_file=True)
    append_results(lines)


if __name__ == "__main__":
    main()
