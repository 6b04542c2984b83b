"""Local intrinsic dimension and the radius it gives."""

import numpy as np
import pytest

from bubblefence_plugin.core.config import BubbleFenceConfig
from bubblefence_plugin.core.density import LidReference, adaptive_radius, lid_mle


def test_lid_mle_recovers_dimension_of_uniform_cube():
    rng = np.random.default_rng(4)
    for dim in (2, 5):
        pts = rng.uniform(size=(20000, dim))
        d = np.linalg.norm(pts[:200, None] - pts[None], axis=2)
        d.sort(axis=1)
        lid = lid_mle(d[:, 1:21])
        assert abs(np.median(lid) - dim) < 0.35 * dim


def test_lid_mle_degenerate_rows_are_nan():
    assert np.isnan(lid_mle(np.zeros((1, 5)))).all()
    assert np.isnan(lid_mle(np.ones((1, 1)))).all()


def test_adaptive_radius_is_small_where_dense_and_clamped():
    cfg = BubbleFenceConfig()
    dense = 1 - np.linspace(0.001, 0.01, 20)
    sparse = 1 - np.linspace(0.01, 0.1, 20)
    r_dense = adaptive_radius(dense, 5.0, 100, cfg)
    r_sparse = adaptive_radius(sparse, 5.0, 100, cfg)
    assert cfg.min_radius <= r_dense < r_sparse <= cfg.max_radius
    assert adaptive_radius(sparse, 5.0, 10**9, cfg) == cfg.max_radius
    fixed = BubbleFenceConfig(radius_mode="fixed", base_radius=0.07)
    assert adaptive_radius(sparse, 5.0, 100, fixed) == pytest.approx(0.07)


def test_lid_against_a_reference_matches_brute_force_in_and_out_of_it():
    """A row of the reference has its neighbours among the others; a row outside it,
    among all of them. The reference's rows may come in any order."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 12)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = rng.permutation(np.arange(0, 300, 2))
    reference = LidReference.of(x, rows)
    assert np.array_equal(reference.rows, np.arange(0, 300, 2))
    queries = np.array([0, 1, 150, 151, 299])
    k = 8
    found = reference.lid(x, queries, k)
    for q, lid in zip(queries, found, strict=True):
        others = reference.rows[reference.rows != q]
        sims = np.sort(x[others].astype(np.float64) @ x[q].astype(np.float64))[::-1][:k]
        d = np.sqrt(np.maximum(2.0 - 2.0 * sims, 0.0))
        assert lid == pytest.approx(-1.0 / np.mean(np.log(d / d[-1])), rel=1e-3)


def test_lid_against_a_reference_is_estimated_once_per_row_and_k(monkeypatch):
    """Candidate streams of one round ask for the same rows: each row is estimated once
    per k, and a repeated or overlapping request gives the first answers back."""
    from bubblefence_plugin.core import density

    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 10)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    reference = LidReference.of(x, np.arange(0, 200, 3))
    row_11_alone = LidReference.of(x, reference.rows).lid(x, np.array([11]), 6)[0]
    asked = []
    search = density.knn_similarities
    monkeypatch.setattr(
        density,
        "knn_similarities",
        lambda q, *a, **kw: asked.append(len(q)) or search(q, *a, **kw),
    )
    first = reference.lid(x, np.array([5, 7, 9]), 6)
    again = reference.lid(x, np.array([9, 11, 5, 5]), 6)
    other_k = reference.lid(x, np.array([5]), 4)
    assert asked == [3, 1, 1]  # row 11 new; k = 4 estimated apart
    assert again.tolist() == [first[2], row_11_alone, first[0], first[0]]
    assert other_k[0] != first[0]
