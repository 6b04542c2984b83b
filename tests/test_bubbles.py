"""The bubble table: membership by relative distance, and the two shells."""

import numpy as np
import pytest
from conftest import unit

from bubblefence_plugin.core.bubbles import (
    INNER,
    OUTER,
    RADIUS_MARGIN,
    TEST,
    VALIDATION,
    AnchorTable,
    assign_to_bubbles,
    clear_of_train,
    shell_split,
)
from bubblefence_plugin.core.neighbors import CellIndex


@pytest.mark.parametrize("block", [None, 1, 3])
def test_assign_to_bubbles_nearest_relative_centre_and_shells(block):
    centres = unit(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    table = AnchorTable(
        centres=centres,
        centre_row=np.array([0, 1]),
        radius=np.array([0.5, 0.5]),
        inner_radius=np.array([0.1, 0.1]),
        layout=np.array([0, 1], np.int8),
        lid=np.array([2.0, 2.0]),
        round=np.array([0, 0], np.int32),
        n_captured=np.array([3, 3]),
        cut_pairs=np.array([0, 0]),
    )
    pts = unit(np.array([[1.0, 0.01, 0], [1.0, 0.9, 0], [0, 0, 1.0], [0.1, 1.0, 0]]))
    anchor, shell = assign_to_bubbles(pts, table, block=block)
    assert anchor.tolist() == [0, 0, -1, 1]
    assert shell.tolist() == [INNER, OUTER, 0, INNER]
    split = shell_split(table.layout[[0, 0, 1]], shell[[0, 1, 3]])
    assert split.tolist() == [VALIDATION, TEST, TEST]


def _table(centres: np.ndarray, radius: np.ndarray, inner_radius: np.ndarray) -> AnchorTable:
    n = len(radius)
    return AnchorTable(
        centres=centres.astype(np.float32),
        centre_row=np.arange(n),
        radius=radius,
        inner_radius=inner_radius,
        layout=np.zeros(n, np.int8),
        lid=np.full(n, 2.0),
        round=np.zeros(n, np.int32),
        n_captured=np.ones(n, np.int64),
        cut_pairs=np.zeros(n, np.int64),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clear_of_train_matches_brute_force(seed):
    """Each ball ends just before its most similar train sample inside it, found in two
    disjoint indexes; balls already clear, and inner shells within them, are kept."""
    rng = np.random.default_rng(seed)
    clusters = rng.normal(size=(12, 16)) + 0.25 * rng.normal(size=(600, 12, 16))
    x = unit(clusters.reshape(-1, 16)).astype(np.float32)
    kept = np.flatnonzero(rng.random(len(x)) < 0.9)
    parts = [kept[: len(kept) // 3], kept[len(kept) // 3 :]]
    indexes = [CellIndex(x, part, 0.95, seed=seed) for part in parts]
    is_train = rng.random(len(x)) < 0.6
    centre_rows = rng.choice(kept, 40, replace=False)
    radius = np.r_[rng.uniform(0.0, 0.6, 38), RADIUS_MARGIN, 2.0]
    inner = np.where(rng.random(40) < 0.3, -1.0, radius * rng.uniform(0.2, 1.5, 40))
    table = _table(x[centre_rows], radius, inner)

    got, got_inner = clear_of_train(table, x, indexes, is_train)

    train = kept[is_train[kept]]
    x64 = x.astype(np.float64)
    distance = 1.0 - x64[centre_rows] @ x64[train].T
    nearest = np.where(distance <= radius[:, None], distance, np.inf).min(axis=1)
    want = np.where(
        np.isfinite(nearest) & (radius > RADIUS_MARGIN),
        np.maximum(nearest - RADIUS_MARGIN, RADIUS_MARGIN),
        radius,
    )
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.isfinite(nearest).sum() >= 10  # balls that held train samples were shrunk
    assert not (distance <= got[:, None] - 1e-5).any()  # no train sample inside a ball
    np.testing.assert_array_equal(got_inner, np.minimum(inner, got))
    np.testing.assert_array_equal(table.radius, radius)  # the table itself is not changed
