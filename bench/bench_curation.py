"""Curation benchmark (issue 15): typicality and diverse picks against FiftyOne Brain.

    .venv/bin/python bench/bench_curation.py             # 100k x 512 clustered + digits
    .venv/bin/python bench/bench_curation.py --million   # adds typicality at 1M x 512

Per data set, in one run: our typicality for every sample against FiftyOne Brain's
`compute_uniqueness` on the same embeddings (seconds, peak RSS, Spearman correlation
between our outlier score 1 - typicality and the Brain's uniqueness), then a diverse
pick of 1,000 (on digits also of a tenth of the data) against a seeded random pick and the top
by Brain uniqueness: covering radius (largest cosine distance from any sample to the
pick) and the clusters with >= 1 % of the data that the pick reaches.

Clustered data (`make_clustered`): Zipf cluster sizes; the five largest clusters tight
(every pair at cosine >= 0.98, checked and printed), the rest broad or medium, each on
a low-dimensional manifold (real image embeddings have an intrinsic dimension far
below 512) plus isotropic noise; 2 % near-duplicates and 0.5 % isolated outliers.
Peak RSS is the process's high-water mark during the call (the matrix included); ours
runs before FiftyOne is imported, the Brain's after, and FiftyOne's own footprint is
part of the Brain's figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_core import append_results, peak_rss_mb, reset_peak_rss  # noqa: E402

from bubblefence_plugin.core.curation import (  # noqa: E402
    CurationRequest,
    covering_radius,
    select,
    typicality,
)

PICK = 1000
# The largest clusters are made tight (`make_clustered`): every pair at cosine >= 0.98.
TIGHT_CLUSTERS = 5
# Clusters smaller than this share of the data are not counted as "to be reached".
MIN_CLUSTER_SHARE = 0.01


def make_clustered(n: int, seed: int, d: int = 512, k: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows and their cluster (-1 for an outlier). See the module docstring."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, k + 1) ** 1.1
    n_outliers = int(0.005 * n)
    labels = rng.choice(k, size=n - n_outliers, p=weights / weights.sum())
    labels = np.concatenate([labels, np.full(n_outliers, -1)])
    centres = rng.normal(size=(k, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    dims = rng.integers(6, 17, size=k)
    # radius of the manifold part and of the isotropic noise, per cluster (unit centres)
    spread = rng.uniform(0.25, 0.7, size=k)
    noise = rng.uniform(0.1, 0.25, size=k)
    spread[:TIGHT_CLUSTERS], noise[:TIGHT_CLUSTERS] = 0.03, 0.02  # tight: the largest (Zipf order)
    x = np.empty((n, d), np.float32)
    for c in range(k):
        rows = np.flatnonzero(labels == c)
        basis, _ = np.linalg.qr(rng.normal(size=(d, dims[c])))
        coords = rng.normal(size=(len(rows), dims[c])) * spread[c] / np.sqrt(dims[c])
        iso = rng.normal(size=(len(rows), d)) * noise[c] / np.sqrt(d)
        x[rows] = centres[c] + coords @ basis.T + iso
    outliers = np.flatnonzero(labels == -1)
    x[outliers] = rng.normal(size=(len(outliers), d))
    # Disjoint pairs: a copy of a row that was itself overwritten would be no one's duplicate.
    twins = rng.choice(n - n_outliers, size=2 * int(0.02 * n), replace=False)
    originals, copies = twins[::2], twins[1::2]
    x[copies] = x[originals] + rng.normal(size=(len(copies), d)) * 0.01 / np.sqrt(d)
    labels[copies] = labels[originals]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def tight_check(x: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> str:
    """Smallest pairwise cosine inside each tight cluster (on up to 2,000 members)."""
    out = []
    for c in range(TIGHT_CLUSTERS):
        rows = np.flatnonzero(labels == c)
        rows = rng.choice(rows, size=min(2000, len(rows)), replace=False)
        out.append(f"{float((x[rows] @ x[rows].T).min()):.3f}")
    return ", ".join(out)


def clusters_reached(labels: np.ndarray, rows: np.ndarray) -> tuple[int, int]:
    """(clusters with >= 1 % of the data that `rows` touch, how many such clusters)."""
    names, counts = np.unique(labels[labels >= 0], return_counts=True)
    big = set(names[counts >= MIN_CLUSTER_SHARE * len(labels)].tolist())
    return len(big & set(labels[rows].tolist())), len(big)


def brain_uniqueness(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """FiftyOne Brain's uniqueness of each row: (scores, seconds, peak RSS MB)."""
    import fiftyone as fo
    import fiftyone.brain as fob

    ds = fo.Dataset()
    try:
        ds.add_samples([fo.Sample(filepath=f"/bench/{i}.jpg") for i in range(len(x))])
        reset_peak_rss()
        t = time.perf_counter()
        fob.compute_uniqueness(ds, embeddings=x, progress=False)
        seconds = time.perf_counter() - t
        peak = peak_rss_mb()
        return np.asarray(ds.values("uniqueness"), np.float64), seconds, peak
    finally:
        ds.delete()


def secs(value: float) -> str:
    """Seconds with two decimals below 10 s (digits run in milliseconds)."""
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def run_case(
    name: str,
    x: np.ndarray,
    labels: np.ndarray,
    picks: tuple[int, ...],
    lines: list[str],
    seed: int,
) -> None:
    print(f"== {name}: {x.shape[0]:,} x {x.shape[1]}")
    matrix_mb = x.nbytes / 2**20
    reset_peak_rss()
    t = time.perf_counter()
    typ = typicality(x, seed=seed)
    ours_s = time.perf_counter() - t
    ours_mb = peak_rss_mb()
    print(f"typicality {ours_s:.1f} s, peak {ours_mb:.0f} MB")

    uniq, brain_s, brain_mb = brain_uniqueness(x)
    print(f"Brain uniqueness {brain_s:.1f} s, peak {brain_mb:.0f} MB")
    rho = float(spearmanr(1.0 - typ, uniq).statistic)
    by_brain = np.lexsort((np.arange(len(x)), -uniq))

    lines.append(
        f"| {name} | {len(x):,} | typicality (ours, exact k=10) | {secs(ours_s)} | {ours_mb:.0f} "
        f"| {matrix_mb:.1f} | {brain_s / ours_s:.1f}x | Spearman(1 - typicality, Brain) {rho:.3f} |"
    )
    lines.append(
        f"| {name} | {len(x):,} | FiftyOne Brain compute_uniqueness | {secs(brain_s)} | "
        f"{brain_mb:.0f} | {matrix_mb:.1f} |  | |"
    )
    for pick in picks:
        t = time.perf_counter()
        diverse = select(x, CurationRequest({"diverse": 1.0}, count=pick, seed=seed)).rows
        diverse_s = time.perf_counter() - t
        random_rows = np.random.default_rng(seed).choice(len(x), size=pick, replace=False)
        compare_picks(name, x, labels, pick, diverse, diverse_s, random_rows, by_brain, lines)


def compare_picks(
    name: str,
    x: np.ndarray,
    labels: np.ndarray,
    pick: int,
    diverse: np.ndarray,
    diverse_s: float,
    random_rows: np.ndarray,
    by_brain: np.ndarray,
    lines: list[str],
) -> None:
    """Covering radius and clusters reached: our diverse pick, random, Brain's top."""
    for label, rows, seconds in (
        (f"diverse {pick:,} (ours, k-center)", diverse, secs(diverse_s)),
        (f"random {pick:,} (seeded)", random_rows, ""),
        (f"top {pick:,} by Brain uniqueness", by_brain[:pick], ""),
    ):
        reached, n_big = clusters_reached(labels, rows)
        radius = covering_radius(x, x[rows])
        lines.append(
            f"| {name} | {len(x):,} | {label} | {seconds} |  |  |  | covering radius "
            f"{radius:.3f}; clusters >= 1 % reached {reached}/{n_big} |"
        )
        print(lines[-1])


def tight_pair_floor(x: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """Seconds to compute every pair inside the tight clusters once, and the pairs.

    The floor under any exact k-nearest-neighbour search of this data on this machine:
    inside a tight cluster no bound rules a member out (module docstring), so each of
    these products is needed at least once. Plain blocked products over the upper
    triangle, nothing kept: no search, no bookkeeping.
    """
    block = 4096
    n_pairs = 0
    t = time.perf_counter()
    for cluster in range(TIGHT_CLUSTERS):
        members = x[labels == cluster]
        m = len(members)
        n_pairs += m * (m - 1) // 2
        for start in range(0, m, block):
            rows = members[start : start + block]
            for col in range(start, m, 4 * block):
                rows @ members[col : col + 4 * block].T
    return time.perf_counter() - t, n_pairs


def run_million(lines: list[str], seed: int) -> None:
    x, labels = make_clustered(1_000_000, seed)
    matrix_mb = x.nbytes / 2**20
    print(f"== 1M: matrix {matrix_mb:.0f} MB")
    reset_peak_rss()
    t = time.perf_counter()
    typicality(x, seed=seed)
    seconds = time.perf_counter() - t
    peak = peak_rss_mb()
    lines.append(
        f"| clustered | 1,000,000 | typicality (ours, exact k=10) | {secs(seconds)} | {peak:.0f} | "
        f"{matrix_mb:.0f} |  | peak / matrix {peak / matrix_mb:.2f}x |"
    )
    print(lines[-1])
    floor_s, n_pairs = tight_pair_floor(x, labels)
    sizes = ", ".join(f"{int((labels == c).sum()):,}" for c in range(TIGHT_CLUSTERS))
    lines.append(
        f"| clustered | 1,000,000 | floor: each pair inside the {TIGHT_CLUSTERS} tight clusters "
        f"once, plain products | {secs(floor_s)} |  |  |  | {n_pairs:.2e} pairs (clusters of "
        f"{sizes}); ours / floor {seconds / floor_s:.2f}x |"
    )
    print(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="clustered rows (default 100k)")
    parser.add_argument("--million", action="store_true", help="also typicality at 1M x 512")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    load_start = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    x, labels = make_clustered(args.n, args.seed)
    tight = tight_check(x, labels, np.random.default_rng(args.seed))
    print(f"tight clusters: min pairwise cosine {tight}")
    stamp = time.strftime("%Y-%m-%d %H:%M")
    lines = [
        f"\n## Curation: typicality and diverse picks vs FiftyOne Brain ({stamp})",
        "",
        f"`bench/bench_curation.py{' --million' if args.million else ''}`; {os.cpu_count()}-core "
        f"CPU, load average at the start {load_start}, process niceness {os.nice(0)} (below 0: "
        "ahead of other jobs on the machine). Clustered 512-d data: Zipf sizes over "
        "120 clusters on 6-16-d manifolds plus noise, 2 % near-duplicates, 0.5 % isolated "
        f"outliers; the five largest clusters tight (smallest pairwise cosine {tight}). "
        "Digits: scikit-learn's 1,797 8x8 digits (64-d pixels, L2-normalised), clusters = "
        "the 10 classes. Peak RSS is the process high-water mark during the call, the "
        "matrix included (ours before FiftyOne is imported). 'Brain ÷ ours' = Brain "
        "seconds / our seconds.",
        "",
        "| data | samples | case | seconds | peak RSS MB | matrix MB | Brain ÷ ours | result |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    run_case("clustered", x, labels, (PICK,), lines, args.seed)
    del x
    if args.million:
        run_million(lines, args.seed)
    from sklearn.datasets import load_digits

    digits = load_digits()
    d = digits.data.astype(np.float32)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    # 1,000 is 56 % of the digits: a tenth of them is shown too.
    run_case("digits", d, digits.target, (len(d) // 10, PICK), lines, args.seed)
    append_results(lines)


if __name__ == "__main__":
    main()
