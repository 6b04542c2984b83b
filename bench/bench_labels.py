"""Label-aware quota and group constraints (issue 7): coverage, shares, leakage, cost.

    PYTHONPATH=. .venv/bin/python bench/bench_labels.py            # 10k one round, 30k in 3 rounds
    PYTHONPATH=. .venv/bin/python bench/bench_labels.py --n 50000  # a bigger single round too

Data: `bench_core.make_data` (clustered 512-d unit vectors, 50 clusters of very unequal
size, a few % near-duplicates); the cluster is the label. Groups (for the "+ groups" rows)
are compact sub-clusters of a label, as the frames of a video would be: each label's
samples go to the nearest of a few seeds drawn among them, giving groups of 1 to a few
hundred samples. Every row splits the same data with the same seed:

* **random**: a seeded random split at the same eval ratio;
* **labels off**: `label_aware=False` (labels given, used for reporting only);
* **labels on**: the default `label_aware=True`;
* **labels on + groups**: also a group per sample;
* **labels on + scattered groups**: groups of 7 samples drawn at random instead, as a
  patient's or a shop's images need not look alike: they tie the twin components of
  many clusters together, into one component too large for either side.

Coverage counts labels with >= 20 samples present in eval, validation and test.
Share error is |eval share of a label - eval_ratio| over those labels. Leakage@t is exact
(`metrics.leakage`, every eval row against every train row). Seconds are per round;
"x labels off" is the time relative to the labels-off run of the same case.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
from bench_core import make_data

from bubblefence_plugin import BubbleFence, BubbleFenceConfig
from bubblefence_plugin.core.metrics import group_violations, leakage

RESULTS = Path(__file__).with_name("RESULTS.md")
MIN_LABEL_COUNT = 20
THRESHOLDS = (0.99, 0.95)
# Samples per scattered group (the "+ scattered groups" rows).
SCATTERED_GROUP_SIZE = 7


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compact_groups(x: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """Per sample, a group id: the nearest of ~n/8 seeds of its own label (at least one)."""
    rng = np.random.default_rng(seed)
    groups = np.empty(len(x), dtype=object)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        seeds = rng.choice(rows, size=max(1, len(rows) // 8), replace=False)
        nearest = np.argmax(x[rows] @ x[seeds].T, axis=1)
        groups[rows] = [f"{label}-{k}" for k in nearest]
    return groups


def scattered_groups(n: int, seed: int, size: int = SCATTERED_GROUP_SIZE) -> np.ndarray:
    """Groups of `size` samples drawn at random, whatever they show: the images of one
    patient or one shop, which need not look alike."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(n) // size).astype(str).astype(object)


def quality(x, split, labels, groups, eval_ratio) -> dict:
    kept = split != "duplicate"
    leak = leakage(x[kept], split[kept], THRESHOLDS)
    names, counts = np.unique(labels[kept], return_counts=True)
    eligible = names[counts >= MIN_LABEL_COUNT]
    covered, errors = {}, []
    for part, values in (
        ("eval", ("validation", "test")),
        ("val", ("validation",)),
        ("test", ("test",)),
    ):
        present = np.unique(labels[kept & np.isin(split, values)])
        covered[part] = len(np.intersect1d(present, eligible))
    for label in eligible:
        rows = kept & (labels == label)
        errors.append(abs(np.isin(split[rows], ("validation", "test")).mean() - eval_ratio))
    n_eval = int(np.isin(split, ("validation", "test")).sum())
    return {
        "eval_share": n_eval / int(kept.sum()),
        "val_share": int((split == "validation").sum()) / max(n_eval, 1),
        "coverage": f"{covered['eval']} / {covered['val']} / {covered['test']} of {len(eligible)}",
        "share_error": f"{np.max(errors):.3f} / {np.mean(errors):.3f}",
        "leak99": leak[0.99],
        "leak95": leak[0.95],
        "violations": "-" if groups is None else str(group_violations(split, groups).n_violations),
    }


def run_case(name, x, labels, batches, seed, lines) -> None:
    groups_all = compact_groups(x, labels, seed)
    sizes = np.unique(groups_all, return_counts=True)[1]
    print(
        f"# {name}: {len(x)} rows, {len(np.unique(labels))} labels, {len(sizes)} groups "
        f"of {sizes.min()} to {sizes.max()}",
        flush=True,
    )
    rng = np.random.default_rng(seed)
    random_split = np.where(rng.random(len(x)) < 0.2, "validation", "train").astype(object)
    random_split[(random_split == "validation") & (rng.random(len(x)) < 0.5)] = "test"
    rows = [("random", None, None, quality(x, random_split, labels, None, 0.2))]
    baseline = None
    for variant, aware, group_of in (
        ("labels off", False, None),
        ("labels on", True, None),
        ("labels on + groups", True, groups_all),
        ("labels on + scattered groups", True, scattered_groups(len(x), seed)),
    ):
        bf = BubbleFence(BubbleFenceConfig(seed=seed, label_aware=aware))
        start, seconds = 0, []
        for size in batches:
            part = slice(start, start + size)
            groups = None if group_of is None else group_of[part]
            t = time.perf_counter()
            bf.ingest(x[part], labels=labels[part], groups=groups)
            seconds.append(time.perf_counter() - t)
            start += size
        split = bf.assignments()["split"].to_numpy().astype(object)
        total = sum(seconds)
        baseline = baseline or total
        measured = quality(x, split, labels, group_of, 0.2)
        rows.append((variant, seconds, total / baseline, measured))
    for variant, seconds, ratio, m in rows:
        line = (
            f"| {name} | {variant} | "
            f"{' + '.join(f'{s:.2f}' for s in seconds) if seconds else '-'} | "
            f"{f'{ratio:.2f}' if ratio else '-'} | {m['eval_share']:.3f} | {m['val_share']:.3f} | "
            f"{m['coverage']} | {m['share_error']} | {m['leak99']:.4f} | {m['leak95']:.4f} | "
            f"{m['violations']} |"
        )
        print(line, flush=True)
        lines.append(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=0, help="add a single round of this size")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the cases (a try run)")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    small = int(10_000 * args.scale)
    load = os.getloadavg()
    lines = [
        f"\n## Labels and groups, clustered 512-d ({time.strftime('%Y-%m-%d %H:%M')})\n",
        "`bench/bench_labels.py`; 2-core CPU, load average before the run "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min). Labels = the 50 "
        "clusters of `make_data` (very unequal sizes); groups = compact sub-clusters of a "
        "label. Coverage: labels with >= 20 samples in eval / validation / test. Share "
        "error: |eval share of a label - 0.2|, max / mean over those labels. Leakage exact. "
        "Peak RSS of the process at the end: see the last line.\n",
        "| case | variant | seconds per round | x labels off | eval share | "
        "val/(val+test) | label coverage | share error max / mean | leak@0.99 | leak@0.95 | "
        "group violations |",
        "|---|---|---|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    x, labels = make_data(small, 0)
    run_case(f"{small // 1000}k, one round", x, labels, [small], 0, lines)
    x, labels = make_data(3 * small, 1)
    run_case(
        f"{3 * small // 1000}k in 3 rounds of {small // 1000}k", x, labels, [small] * 3, 1, lines
    )
    if args.n:
        x, labels = make_data(args.n, 2)
        run_case(f"{args.n // 1000}k, one round", x, labels, [args.n], 2, lines)
    load = os.getloadavg()
    lines.append(
        f"\nPeak RSS of the benchmark process: {peak_rss_mb():.0f} MB. Load average after "
        f"the run: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}."
    )
    print(lines[-1])
    if not args.no_record:
        with RESULTS.open("a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
