"""Later rounds: bridges, the leaks they cost and the least any rule could cost (issue 11).

    .venv/bin/python bench/bench_bridges.py            # quick sizes (2.5k, 5k)
    .venv/bin/python bench/bench_bridges.py --full     # bench_quality's full sizes
    .venv/bin/python bench/bench_bridges.py closure_threshold=0.90   # any float knob
    .venv/bin/python bench/bench_bridges.py digits_rounds digits_5rounds   # these cases

The data and rounds are bench_quality's (`case_data`): `mixture_rounds`, `mixture_4rounds`
and `mixture_10rounds`, and `digits_rounds` and `digits_5rounds` (scikit-learn's digits,
the same size either way: dense real data, where most samples have a near twin). After
each later round, by brute force (blockwise products, float64 near 0.95):

* bridges: new samples with a near twin in earlier train and in earlier eval (one that
  does not leak yet), and the distinct eval twins they touch;
* contested components: components of the new samples (pairs >= 0.95 among them) with
  both; the eval samples this round made leak (earlier ones, new ones);
* the minimum: the fewest eval samples any assignment of the new samples can make leak,
  earlier samples fixed, quota ignored (a lower bound): a minimum vertex separator
  between earlier eval and earlier train through the new samples, by max-flow (each
  vertex split in two; a new sample or a clean eval sample costs 1, train cannot be cut;
  the contested components and their twins suffice);
* after the last round, `joint`: the same with every sample after round 0 counted as
  new, i.e. the fewest leaks with hindsight over all later rounds, round 0 fixed.

A script for measurement: it lists the twin pairs of each round (O(pairs) memory).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components, maximum_flow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_quality import case_data  # noqa: E402
from bubblefence_plugin import BubbleFence, BubbleFenceConfig  # noqa: E402
from bubblefence_plugin.core.neighbors import unit_rows  # noqa: E402

THRESHOLD = 0.95
CASES = ["mixture_rounds", "mixture_4rounds", "mixture_10rounds", "digits_rounds", "digits_5rounds"]
TRAIN, VALIDATION, TEST = 0, 1, 2


def twin_pairs(x, rows_a, rows_b, block=2048):
    """(i, j): rows with cosine >= THRESHOLD, i in rows_a, j in rows_b."""
    found_i, found_j = [], []
    base = x[rows_b]
    for start in range(0, len(rows_a), block):
        a = rows_a[start : start + block]
        sims = x[a] @ base.T
        i, j = np.nonzero(sims >= THRESHOLD - 1e-4)
        ok = sims[i, j] >= THRESHOLD + 1e-4
        near = np.flatnonzero(~ok)
        exact = np.einsum(
            "ij,ij->i", x[a[i[near]]].astype(np.float64), base[j[near]].astype(np.float64)
        )
        ok[near] = exact >= THRESHOLD
        found_i.append(a[i[ok]])
        found_j.append(rows_b[j[ok]])
    return np.concatenate(found_i), np.concatenate(found_j)


def leaking(x, split, kept):
    """Eval rows with a train row at >= THRESHOLD."""
    held = np.flatnonzero(kept & ((split == VALIDATION) | (split == TEST)))
    train = np.flatnonzero(kept & (split == TRAIN))
    if len(held) == 0 or len(train) == 0:
        return np.zeros(0, np.int64)
    return np.unique(twin_pairs(x, held, train)[0])


def min_leaks(new, clean_eval, train, pairs):
    """Minimum vertex separator between `clean_eval` and `train` through `new`."""
    nodes = np.unique(np.concatenate([new, clean_eval, train]))
    m, unbounded = len(nodes), 10**6
    source, sink = 2 * m, 2 * m + 1
    is_train = np.isin(nodes, train)
    k = np.arange(m)
    a, b = np.searchsorted(nodes, pairs[0]), np.searchsorted(nodes, pairs[1])
    held = np.searchsorted(nodes, clean_eval)
    trains = np.flatnonzero(is_train)
    tail = np.concatenate([2 * k, 2 * a + 1, 2 * b + 1, np.full(len(held), source), 2 * trains + 1])
    head = np.concatenate([2 * k + 1, 2 * b, 2 * a, 2 * held, np.full(len(trains), sink)])
    capacity = np.concatenate([np.where(is_train, unbounded, 1), np.full(len(tail) - m, unbounded)])
    graph = sparse.coo_matrix((capacity, (tail, head)), shape=(2 * m + 2, 2 * m + 2)).tocsr()
    graph.sum_duplicates()
    graph.data = np.minimum(graph.data, unbounded).astype(np.int32)
    return int(maximum_flow(graph, source, sink).flow_value)


def analyse(x, n, old_split, kept, before, after):
    """One later round: rows < len(old_split) are earlier (fixed), the rest new."""
    n_old = len(old_split)
    new = np.arange(n_old, n)
    new = new[kept[new]]
    i, j = twin_pairs(x, new, np.arange(n)[kept])
    i, j = i[i != j], j[i != j]
    is_old = j < n_old
    old_side = old_split[np.minimum(j, n_old - 1)]
    to_eval = is_old & (old_side != TRAIN)
    to_train = is_old & (old_side == TRAIN)
    to_clean = to_eval & ~np.isin(j, before)
    has_eval = np.isin(new, i[to_clean])
    has_train = np.isin(new, i[to_train])
    bridges = new[has_eval & has_train]
    position = np.searchsorted
    graph = sparse.coo_matrix(
        (np.ones(int((~is_old).sum())), (position(new, i[~is_old]), position(new, j[~is_old]))),
        shape=(len(new), len(new)),
    )
    _, comp = connected_components(graph, directed=False)
    touches_eval = np.zeros(comp.max() + 1, bool)
    touches_train = np.zeros(comp.max() + 1, bool)
    touches_eval[comp[position(new, i[to_clean])]] = True
    touches_train[comp[position(new, i[to_train])]] = True
    contested = np.flatnonzero(touches_eval & touches_train)
    rows = new[np.isin(comp, contested)]
    use = np.isin(i, rows) & ~(to_eval & ~to_clean) & (is_old | np.isin(j, rows))
    floor = (
        min_leaks(
            rows, np.unique(j[use & to_clean]), np.unique(j[use & to_train]), (i[use], j[use])
        )
        if len(rows)
        else 0
    )
    newly = np.setdiff1d(after, before)
    return {
        "new_kept": len(new),
        "bridges": len(bridges),
        "bridge_eval_twins": len(np.unique(j[to_clean & np.isin(i, bridges)])),
        "contested_components": len(contested),
        "contested_rows": len(rows),
        "new_leaks": len(newly),
        "earlier_eval_made_leak": int(np.sum(newly < n_old)),
        "new_eval_leaking": int(np.sum(newly >= n_old)),
        "minimum": floor,
    }


def run(name, quick, knobs):
    x, _, _, rounds = case_data(name, quick)
    unit = unit_rows(x)
    bf = BubbleFence(BubbleFenceConfig(eval_ratio=0.2, seed=0, **knobs))
    start, records = 0, []
    for r, size in enumerate(rounds):
        old_split, before = bf._split.copy(), None
        if r:
            before = leaking(unit[:start], old_split, bf._duplicate_of < 0)
        clock = time.perf_counter()
        bf.ingest(x[start : start + size], ids=np.arange(start, start + size))
        seconds = time.perf_counter() - clock
        start += size
        split, kept = bf._split, bf._duplicate_of < 0
        after = leaking(unit[:start], split, kept)
        n_eval = int(np.sum(kept & np.isin(split, [VALIDATION, TEST])))
        record = {"round": r, "leak@0.95": round(len(after) / n_eval, 4), "n_eval": n_eval}
        record["seconds"] = round(seconds, 2)
        if r == 0:
            split0, leak0 = split.copy(), after
        else:
            record.update(analyse(unit, start, old_split, kept, before, after))
            record["leaks_twins"] = bf.history[-1]["leaks_twins"]
        if r == len(rounds) - 1 and r > 1:
            record["joint"] = analyse(unit, start, split0, kept, leak0, after)
        records.append(record)
        print(name, json.dumps(record), flush=True)
    return records


def main():
    quick = "--full" not in sys.argv
    knobs = {k: float(v) for k, v in (a.split("=") for a in sys.argv[1:] if "=" in a)}
    names = [a for a in sys.argv[1:] if a in CASES] or CASES[:2]
    for name in names:
        run(name, quick, knobs)


if __name__ == "__main__":
    main()
