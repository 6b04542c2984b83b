"""Later rounds: does the closure margin (closure_threshold, 0.93) hold? (issue 11)

    .venv/bin/python bench/bench_margin.py            # quick sizes (2.5k, 5k)
    .venv/bin/python bench/bench_margin.py --full     # bench_quality's full sizes
    .venv/bin/python bench/bench_margin.py closure_threshold=0.90   # any float knob

bench_quality's `mixture_rounds` (seed 2) and `mixture_4rounds` (seed 3), no labels. Per
later round, by brute force (blockwise products):

* new eval samples held out by this round's bubbles (`grown`) and those that followed
  earlier samples (bound to a twin, inside an earlier bubble, or eval's margin): their
  best cosine to *earlier* train, binned at 0.90 / 0.93 / 0.95;
* new train samples: their best cosine to earlier eval, binned;
* bridges (new samples with a 0.95 twin in earlier train and in earlier eval that does
  not leak yet): their eval twins by how and in which round those were assigned, and
  the eval twins' best cosine to earlier train.

A script for measurement: it lists the twin pairs of each round (O(pairs) memory).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_bridges import leaking, round_data, twin_pairs  # noqa: E402
from bubblefence_plugin import BubbleFence, BubbleFenceConfig  # noqa: E402
from bubblefence_plugin.core.neighbors import unit_rows  # noqa: E402

TRAIN, VALIDATION, TEST = 0, 1, 2
BINS = (0.90, 0.93, 0.95)


def best(x, q, b, block=2048):
    out = np.full(len(q), -np.inf)
    if len(q) == 0 or len(b) == 0:
        return out
    base = x[b]
    for s in range(0, len(q), block):
        out[s : s + block] = (x[q[s : s + block]] @ base.T).max(axis=1)
    return out


def binned(sims):
    edges = (-np.inf, *BINS, np.inf)
    names = ("<0.90", "0.90-0.93", "0.93-0.95", ">=0.95")
    counts = np.histogram(sims, bins=edges)[0]
    return {n: int(c) for n, c in zip(names, counts, strict=True)}


def run(name, quick, knobs):
    x, rounds = round_data(name, quick)
    n = len(x)
    unit = unit_rows(x)
    bf = BubbleFence(BubbleFenceConfig(eval_ratio=0.2, seed=0, **knobs))
    start = 0
    # per row: how it was assigned: 0 round-0 bubble, 1 later new bubble, 2 followed
    how = np.full(n, -1)
    for r, size in enumerate(rounds):
        n_old = start
        old_split = bf._split.copy()
        kept_old = bf._duplicate_of < 0
        before = leaking(unit[:start], old_split, kept_old) if r else None
        bf.ingest(x[start : start + size], ids=np.arange(start, start + size))
        start += size
        split, kept = bf._split, bf._duplicate_of < 0
        new = np.arange(n_old, start)
        new = new[kept[new]]
        held = np.isin(split, [VALIDATION, TEST])
        anchor_round = bf._anchors.round[np.maximum(bf._anchor, 0)]
        grown = held & (bf._anchor >= 0) & (anchor_round == r)
        how[new[grown[new]]] = 0 if r == 0 else 1
        how[new[(held & ~grown)[new]]] = 2
        after = leaking(unit[:start], split, kept)
        n_eval = int(np.sum(kept & held))
        rec = {"round": r, "leak@0.95": round(len(after) / n_eval, 4), "n_eval": n_eval}
        if r:
            old_train = np.flatnonzero(kept_old & (old_split == TRAIN))
            old_eval = np.flatnonzero(kept_old & np.isin(old_split, [VALIDATION, TEST]))
            new_grown = new[grown[new]]
            new_follow = new[(held & ~grown)[new]]
            new_train = new[split[new] == TRAIN]
            rec["grown_eval_vs_old_train"] = binned(best(unit, new_grown, old_train))
            rec["follow_eval_vs_old_train"] = binned(best(unit, new_follow, old_train))
            rec["new_train_vs_old_eval"] = binned(best(unit, new_train, old_eval))
            # Bridges: new rows with a twin in old train and in old clean eval.
            i, j = twin_pairs(unit, new, np.arange(n_old)[kept_old[:n_old]])
            to_train = old_split[j] == TRAIN
            to_clean = ~to_train & ~np.isin(j, before)
            bridges = np.intersect1d(i[to_train], i[to_clean])
            e = np.unique(j[to_clean & np.isin(i, bridges)])
            rounds_e = bf._round[e]
            rec["bridges"] = len(bridges)
            rec["bridge_eval_twins"] = len(e)
            rec["bridge_eval_by_how"] = {
                k: int(np.sum(how[e] == v))
                for k, v in (("round0_bubble", 0), ("later_bubble", 1), ("followed", 2))
            }
            rec["bridge_eval_round"] = np.bincount(rounds_e, minlength=r).tolist()
            t = np.unique(j[to_train & np.isin(i, bridges)])
            rec["bridge_train_round"] = np.bincount(bf._round[t], minlength=r).tolist()
            # How close each bridge's eval twins were to any train at the time it was split.
            rec["bridge_eval_best_train_now_old"] = binned(best(unit, e, old_train))
        print(name, json.dumps(rec), flush=True)


def main():
    quick = "--full" not in sys.argv
    knobs = {k: float(v) for k, v in (a.split("=") for a in sys.argv[1:] if "=" in a)}
    names = [a for a in sys.argv[1:] if a.startswith("mixture")] or [
        "mixture_rounds",
        "mixture_4rounds",
    ]
    for name in names:
        run(name, quick, knobs)


if __name__ == "__main__":
    main()
