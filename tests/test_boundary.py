"""Where a bubble's edge may cut: crossing counts against brute force."""

import numpy as np
import pytest
from conftest import unit

from bubblefence_plugin.core.boundary import (
    IMPOSSIBLE,
    best_cut,
    crossing_counts,
    cut_radius,
    least_crossed_cut,
)


def _ranked_cluster(seed: int, n: int = 600):
    """Samples on a few tight blobs, ranked by similarity to the first one."""
    rng = np.random.default_rng(seed)
    blobs = rng.normal(size=(12, 32))
    x = unit(blobs[rng.integers(0, 12, n)] * 3 + rng.normal(size=(n, 32)))
    sims = x @ x[0]
    order = np.lexsort((np.arange(n), -sims))
    return x, order, sims[order]


def _brute_counts(x, ranked, k_lo, k_hi, threshold):
    s = x[ranked] @ x[ranked].T >= threshold
    return [int(s[:k, k:].sum()) for k in range(k_lo, k_hi + 1)]


def test_crossing_counts_find_the_gap():
    # Ranked by similarity to the centre (row 0); rows 2 and 3 are near twins.
    rng = np.random.default_rng(5)
    centre = unit(rng.normal(size=(1, 64)))[0]
    other = unit(rng.normal(size=(1, 64)))[0]
    other -= (other @ centre) * centre
    other /= np.linalg.norm(other)
    angles = np.array([0.0, 0.3, 0.6, 0.62, 1.2])
    x = np.stack([np.cos(a) * centre + np.sin(a) * other for a in angles]).astype(np.float32)
    sims = x @ centre
    counts = crossing_counts(x, np.arange(5), sims, 1, 5, 0.95)
    brute = [sum(x[i] @ x[j] >= 0.95 for i in range(k) for j in range(k, 5)) for k in range(1, 6)]
    assert counts.tolist() == brute
    k, crossed = best_cut(counts, 1, preferred_k=3, allow_crossing=False)
    assert crossed == 0 and k in (2, 4)
    assert 1 - sims[k - 1] < cut_radius(sims, k) < 1 - sims[min(k, 4)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_band_counts_exact_or_sampled_lower_bounds(seed):
    x, ranked, sims = _ranked_cluster(seed)
    brute = np.array(_brute_counts(x, ranked, 5, 300, 0.9))
    exact = crossing_counts(x, ranked, sims, 5, 300, 0.9)
    possible = exact < IMPOSSIBLE
    assert exact[possible].tolist() == brute[possible].tolist()
    sampled = crossing_counts(
        x, ranked, sims, 5, 300, 0.9, max_band=64, rng=np.random.default_rng(0)
    )
    assert (sampled[possible] <= brute[possible]).all() and sampled[possible].sum() > 0
    again = crossing_counts(x, ranked, sims, 5, 300, 0.9, max_band=64, rng=np.random.default_rng(0))
    assert sampled.tolist() == again.tolist()


def test_least_crossed_cut_is_per_sample_inside():
    # Cuts k = 1..5: totals grow with the bubble, the rate per sample falls then rises.
    crossings = np.array([1, 1, 2, IMPOSSIBLE, 40])
    assert least_crossed_cut(crossings, 1, preferred_k=1) == (2, 1)
    # Equal rates (1/1 = 2/2 = 3/3): the one nearest the preferred cut.
    assert least_crossed_cut(np.array([1, 2, 3, 9]), 1, preferred_k=4) == (3, 3)
    assert least_crossed_cut(np.full(3, IMPOSSIBLE), 1, preferred_k=2) is None


def test_cut_between_equal_samples_is_impossible():
    x = unit(np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
    sims = x @ x[0]
    counts = crossing_counts(x, np.arange(3), sims, 1, 3, 0.999)
    assert counts[1] == IMPOSSIBLE
    assert best_cut(counts[1:2], 2, 2, allow_crossing=True) is None
