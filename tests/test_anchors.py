"""Where bubbles are tried (core/anchors.py): the PCA basis, the subsample, and the
candidate stream, checked by hand or against brute force on small arrays."""

import numpy as np
import pytest
from conftest import clustered_embeddings, unit

from bubblefence_plugin.core import anchors
from bubblefence_plugin.core.anchors import (
    FIT_SAMPLE,
    CandidateStream,
    Projection,
    fit_projection,
    subsample,
)
from bubblefence_plugin.core.config import BubbleFenceConfig
from bubblefence_plugin.core.density import LidReference


def _stream(seed=1, n=200, pool_step=2, expected=4, **knobs):
    """A stream over every other row of 200 clustered samples (16-d)."""
    x = clustered_embeddings(n, 16, seed=0)
    pool = np.arange(0, n, pool_step)
    rng = np.random.default_rng(seed)
    config = BubbleFenceConfig(**knobs)
    projection = fit_projection(x, config.pca_dims, rng, rows=pool)
    reference = LidReference.of(x, np.arange(n))
    return CandidateStream(x, pool, projection, reference, config, rng, expected), x, pool


def _drain(stream, n):
    batches = []
    while len(batch := stream.next_batch(n)):
        batches.append(batch)
        assert len(batches) < 1000, "the stream never ran dry"
    return batches


# --------------------------------------------------------------------------- subsample


def test_subsample_keeps_everything_up_to_the_limit():
    rng = np.random.default_rng(0)
    assert subsample(5, 5, rng).tolist() == [0, 1, 2, 3, 4]
    assert subsample(3, 10, rng).tolist() == [0, 1, 2]
    assert subsample(0, 10, rng).tolist() == []


def test_subsample_above_the_limit_is_sorted_distinct_and_seeded():
    a = subsample(1000, 37, np.random.default_rng(4))
    b = subsample(1000, 37, np.random.default_rng(4))
    assert a.tolist() == b.tolist()
    assert len(a) == 37 and len(np.unique(a)) == 37
    assert (np.diff(a) > 0).all() and a.min() >= 0 and a.max() < 1000


# --------------------------------------------------------------------------- projection


def test_projection_is_the_pca_of_the_rows_it_is_fitted_on():
    rng = np.random.default_rng(3)
    # Axes of clearly different variance, so the principal axes are well defined.
    x = rng.normal(size=(300, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.2]) + 1.0
    rows = np.arange(0, 300, 3)
    p = fit_projection(x, 3, np.random.default_rng(0), rows=rows)
    assert p.components.shape == (3, 6) and p.mean.shape == (6,)
    assert np.allclose(p.mean, x[rows].mean(axis=0), atol=1e-5)
    assert np.allclose(p.components @ p.components.T, np.eye(3), atol=1e-5)
    # Brute force: the top eigenvectors of the covariance, up to sign.
    values, vectors = np.linalg.eigh(np.cov(x[rows].T))
    top = vectors[:, np.argsort(-values)[:3]]
    assert np.allclose(np.abs(p.components @ top), np.eye(3), atol=1e-4)
    # transform: (x - mean) @ components.T, of the given rows or of all rows.
    expected = (x[rows[:7]] - p.mean) @ p.components.T
    assert np.allclose(p.transform(x, rows[:7]), expected, atol=1e-4)
    assert np.allclose(p.transform(x), (x - p.mean) @ p.components.T, atol=1e-4)
    # Fitted on rows, or on the same rows gathered first: the same basis.
    q = fit_projection(x[rows], 3, np.random.default_rng(0))
    assert np.allclose(p.components, q.components) and np.allclose(p.mean, q.mean)


def test_wide_embeddings_are_projected_by_the_same_axes_found_faster(monkeypatch):
    # Wider than EXACT_PCA_MAX_DIM, a seeded randomized SVD: the same leading axes (to
    # sign) where their variances stand apart, the same basis for the same seed.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 40)) * np.r_[[6.0, 4.0, 3.0], np.full(37, 0.5)]
    exact = fit_projection(x, 3, np.random.default_rng(0))
    monkeypatch.setattr(anchors, "EXACT_PCA_MAX_DIM", 39)
    fast = fit_projection(x, 3, np.random.default_rng(0))
    assert np.allclose(np.abs(fast.components @ exact.components.T), np.eye(3), atol=1e-3)
    again = fit_projection(x, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(again.components, fast.components)


def test_projection_dimensions_are_capped_by_the_data():
    x = unit(np.random.default_rng(1).normal(size=(4, 6)))
    assert fit_projection(x, 8, np.random.default_rng(0)).components.shape == (4, 6)
    assert fit_projection(x[:, :3], 8, np.random.default_rng(0)).components.shape == (3, 3)


def test_projection_of_identical_rows_is_an_identity_basis():
    x = np.tile(unit(np.array([[1.0, 2.0, 2.0]])), (5, 1))
    p = fit_projection(x, 2, np.random.default_rng(0))
    assert np.allclose(p.components, np.eye(2, 3))
    assert np.allclose(p.mean, x[0])
    assert np.allclose(p.transform(x), 0.0)


def test_projection_above_fit_sample_is_fitted_on_the_seeded_subsample():
    x = np.random.default_rng(2).normal(size=(FIT_SAMPLE + 50, 3)).astype(np.float32)
    p = fit_projection(x, 2, np.random.default_rng(9))
    picked = subsample(len(x), FIT_SAMPLE, np.random.default_rng(9))
    assert np.allclose(p.mean, x[picked].astype(np.float64).mean(axis=0), atol=1e-6)
    assert not np.allclose(p.mean, x.astype(np.float64).mean(axis=0), atol=1e-6)


# --------------------------------------------------------------------------- the stream


@pytest.mark.parametrize(
    "knobs",
    [
        {},
        {"qmc_sequence": "halton"},
        {"snap_strategy": "nearest"},
        {"anchor_method": "random"},
    ],
)
def test_stream_proposes_every_pool_row_once_then_runs_dry(knobs):
    stream, _, pool = _stream(**knobs)
    batches = _drain(stream, 7)
    positions = np.concatenate(batches)
    # Never a repeat; the quasi-random phase is followed by the rest of the pool.
    assert sorted(positions.tolist()) == list(range(len(pool)))
    assert set(stream.rows(positions).tolist()) == set(pool.tolist())
    assert len(stream.next_batch(7)) == 0 and len(stream.next_batch(7)) == 0


def test_random_stream_is_a_seeded_permutation_in_batches_of_n():
    stream, _, pool = _stream(anchor_method="random")
    batches = _drain(stream, 7)
    assert [len(b) for b in batches] == [7] * 14 + [2]  # 100 pool rows
    again, _, _ = _stream(anchor_method="random")
    assert np.concatenate(batches).tolist() == np.concatenate(_drain(again, 7)).tolist()


def test_kmeans_stream_proposes_distinct_snapped_centroids_only():
    stream, _, pool = _stream(anchor_method="kmeans", expected=5)
    batches = _drain(stream, 3)
    positions = np.concatenate(batches)
    assert all(len(b) <= 3 for b in batches)
    # One proposal per k-means centroid at most (2 * expected of them), none repeated.
    assert 1 <= len(positions) <= 10
    assert len(np.unique(positions)) == len(positions)
    assert positions.min() >= 0 and positions.max() < len(pool)


@pytest.mark.parametrize("method", ["qmc", "random", "kmeans"])
def test_stream_is_deterministic_for_a_seed(method):
    a, _, _ = _stream(seed=5, anchor_method=method)
    b, _, _ = _stream(seed=5, anchor_method=method)
    first = [x.tolist() for x in _drain(a, 5)]
    assert first == [x.tolist() for x in _drain(b, 5)]
    if method != "kmeans":  # k-means may settle on the same centroids for any seed
        c, _, _ = _stream(seed=6, anchor_method=method)
        assert first != [x.tolist() for x in _drain(c, 5)]


def test_restart_proposes_the_whole_pool_again():
    stream, _, pool = _stream()
    _drain(stream, 16)
    stream.restart()
    again = np.concatenate(_drain(stream, 16))
    assert sorted(again.tolist()) == list(range(len(pool)))


def test_a_pool_of_one_proposes_it_once():
    x = clustered_embeddings(20, 16, seed=0)
    rng = np.random.default_rng(0)
    config = BubbleFenceConfig()
    pool = np.array([7])
    projection = fit_projection(x, config.pca_dims, rng, rows=pool)
    stream = CandidateStream(x, pool, projection, LidReference.of(x, np.arange(20)), config, rng, 1)
    assert stream.next_batch(4).tolist() == [0]
    assert stream.rows(np.array([0])).tolist() == [7]
    assert len(stream.next_batch(4)) == 0


# --------------------------------------------------------------------------- snapping


def _points_near_pool(stream, seed=0, n=40):
    rng = np.random.default_rng(seed)
    base = stream._points[rng.integers(len(stream._points), size=n)]
    return base + 0.05 * rng.normal(size=base.shape)


def _k_nearest(points, pool_points, k):
    d = np.linalg.norm(points[:, None, :] - pool_points[None, :, :], axis=2)
    return np.argsort(d, axis=1, kind="stable")[:, :k], d


def test_nearest_snapping_is_the_brute_force_nearest_pool_row():
    stream, _, _ = _stream(snap_strategy="nearest")
    points = _points_near_pool(stream)
    _, d = _k_nearest(points, stream._points, 1)
    assert stream._snap(points).tolist() == d.argmin(axis=1).tolist()


def test_lid_weighted_snapping_picks_among_the_k_nearest():
    stream, _, _ = _stream(lid_snap_k=5)
    points = _points_near_pool(stream)
    picked = stream._snap(points)
    nearest, d = _k_nearest(points, stream._points, 5)
    assert all(p in row for p, row in zip(picked.tolist(), nearest.tolist(), strict=True))
    # Not always the nearest: the 1/LID weights spread the picks over the k.
    assert (picked != d.argmin(axis=1)).any()


def test_lid_weighted_snapping_favours_the_lowest_lid():
    stream, _, _ = _stream(lid_snap_k=5)
    points = _points_near_pool(stream, seed=3)
    nearest, _ = _k_nearest(points, stream._points, 5)
    favourite = int(nearest[0, 2])  # third nearest to the first point
    stream._lid[:] = 1e6
    stream._lid[favourite] = 1e-6  # weight 1e6 against 1e-6 for every other
    picked = stream._snap(points)
    has = (nearest == favourite).any(axis=1)
    assert (picked[has] == favourite).all()
    assert (picked[~has] != favourite).all()


def test_snapping_fills_lid_from_the_reference_rows_by_brute_force():
    stream, x, pool = _stream(lid_snap_k=3)
    config = BubbleFenceConfig()
    stream._snap(_points_near_pool(stream, n=5))
    filled = np.flatnonzero(~np.isnan(stream._lid))
    assert 3 <= len(filled) <= 15
    for position in filled:
        row = pool[position]
        sims = np.delete(x.astype(np.float64) @ x[row].astype(np.float64), row)
        d = np.sqrt(np.maximum(2.0 - 2.0 * np.sort(sims)[::-1][: config.lid_k], 0.0))
        lid = -1.0 / np.mean(np.log(d / d[-1]))
        assert stream._lid[position] == pytest.approx(lid, rel=1e-3)


def test_projection_dataclass_transforms_a_subset_of_rows():
    p = Projection(np.eye(2, 3, dtype=np.float32), np.array([1.0, 0.0, 0.0], np.float32))
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    assert p.transform(x, np.array([1])).tolist() == [[3.0, 5.0]]
