"""Local intrinsic dimension and the radius it gives."""

import numpy as np
import pytest

from bubblefence_plugin.core.config import BubbleFenceConfig
from bubblefence_plugin.core.density import adaptive_radius, lid_mle


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
