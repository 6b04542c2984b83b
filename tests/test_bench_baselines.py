"""The benchmark's baselines are what bench/RESULTS.md says they are: the oracle held to
stability (`bench_quality.stable_oracle_split`), checked against brute force."""

import numpy as np
import pytest
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from bench.bench_quality import EVAL_RATIO, mixture, oracle_split, stable_oracle_split

THRESHOLD = 0.95


def with_bridges(x: np.ndarray, labels: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray]:
    """`x` and a last row per eval-train pair of round 0 at cosine 0.81-0.95: their
    normalised midpoint, a near twin of both (cosine sqrt((1 + c) / 2) >= 0.95)."""
    held = oracle_split(x[:first], labels[:first], THRESHOLD) != "train"
    sims = x[:first][held] @ x[:first][~held].T
    e, t = np.nonzero((sims >= 0.81) & (sims < THRESHOLD))
    e, t = np.flatnonzero(held)[e[:8]], np.flatnonzero(~held)[t[:8]]
    mid = x[e] + x[t]
    mid /= np.linalg.norm(mid, axis=1, keepdims=True)
    return np.vstack([x, mid.astype(x.dtype)]), np.r_[labels, labels[e]]


@pytest.mark.parametrize("seed", [0, 1])
def test_the_oracle_in_rounds_moves_no_sample_and_follows_twins(seed):
    x, labels = mixture(900, seed=seed)
    x, labels = with_bridges(x, labels, first=300)
    rounds = [300, 150, len(x) - 450]
    split = stable_oracle_split(x, labels, rounds, THRESHOLD)
    twins = x @ x.T >= THRESHOLD
    held = split != "train"
    assert np.array_equal(split[:300], oracle_split(x[:300], labels[:300], THRESHOLD))
    start = 300
    for size in rounds[1:]:
        new, old = np.arange(start, start + size), np.arange(start)
        _, comp = connected_components(sparse.csr_matrix(twins[np.ix_(new, new)]))
        contested = 0
        for c in np.unique(comp):
            members = new[comp == c]
            assert len(set(split[members])) == 1, "a new component straddles the line"
            to_old = twins[np.ix_(members, old)]
            in_eval, in_train = to_old[:, held[old]].any(), to_old[:, ~held[old]].any()
            if in_eval != in_train:  # bound to one side only: it takes that side
                assert held[members[0]] == in_eval
            elif in_eval:  # both: the side that makes fewer eval samples leak, ties train
                contested += 1
                leaks_if_eval = int(to_old[:, ~held[old]].any(axis=1).sum())
                leaks_if_train = int(to_old[:, held[old]].any(axis=0).sum())
                assert held[members[0]] == (leaks_if_train > leaks_if_eval)
        assert contested > 0 or size == 150  # the bridges come in the last round
        start += size
        assert abs(held[:start].mean() - EVAL_RATIO) <= 0.01 * EVAL_RATIO + 1 / start
