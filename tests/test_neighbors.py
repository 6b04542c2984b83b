"""Blockwise neighbour search, checked against brute force."""

import numpy as np
import pytest
from conftest import unit

from bubblefence_plugin.core.neighbors import CellIndex, knn, nearest


def test_knn_and_nearest_match_brute_force():
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(300, 16)))
    q = unit(rng.normal(size=(20, 16)))
    sims, idx = knn(q, x, 5, block=7)
    full = q @ x.T
    assert np.array_equal(idx, np.argsort(-full, axis=1)[:, :5])
    best_sim, best_idx = nearest(q, x, block=3)
    assert np.array_equal(best_idx, full.argmax(1))
    assert np.allclose(best_sim, full.max(1))


@pytest.mark.parametrize("threshold", [0.95, 0.9999])
def test_cell_index_finds_every_pair_within_the_threshold(threshold):
    rng = np.random.default_rng(1)
    x = unit(rng.normal(size=(1500, 32)))
    x[200:260] = unit(x[:60] + 0.001 * rng.normal(size=(60, 32)))
    x[900:1400] = unit(x[5] + 0.02 * rng.normal(size=(500, 32)))  # a tight cluster
    index = CellIndex(x, np.arange(len(x)), threshold, seed=0)
    assert len(index) > 1
    seen = set()
    for q, b, _ in index.pairs(x):
        seen |= set(zip(q.tolist(), b.tolist(), strict=True))
    full = x @ x.T
    truth = set(zip(*np.nonzero(full >= threshold), strict=True))
    truth = {(int(a), int(b)) for a, b in truth}
    assert seen == truth
    assert len(truth) > (500 * 500 if threshold < 0.99 else len(x) + 60)
