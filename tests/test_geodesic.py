"""Cuts along the twin graph (core/geodesic.py): exact prefix counts against brute
force, the order a chain of video frames is cut in, and solid components."""

import numpy as np
import pytest
from conftest import unit

from bubblefence_plugin.core.boundary import IMPOSSIBLE
from bubblefence_plugin.core.geodesic import (
    MAX_MEMBERS,
    crossings_along,
    graph_orders,
    group_cuts,
    is_solid,
    orderings,
    prefix_crossings,
    twin_graph,
    whole_groups,
)
from bubblefence_plugin.core.neighbors import CellIndex

THRESHOLD = 0.95


def frames(n, d=64, seed=0, step=0.15):
    """A video: a walk on the sphere whose consecutive frames are at cosine ~1 - step^2/2,
    so each frame has a few twins on either side and distant frames none."""
    rng = np.random.default_rng(seed)
    walk = np.empty((n, d))
    walk[0] = unit(rng.normal(size=(1, d)))[0]
    for t in range(1, n):
        walk[t] = unit((walk[t - 1] + step / np.sqrt(d) * rng.normal(size=d))[None, :])[0]
    return walk.astype(np.float32)


def brute_prefix_counts(x, order, threshold=THRESHOLD):
    twins = x[order].astype(np.float64) @ x[order].T.astype(np.float64) >= threshold
    return [int(twins[:k, k:].sum()) for k in range(len(order) + 1)]


def self_index(x, seed=0):
    return CellIndex(x, np.arange(len(x)), THRESHOLD, seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefix_crossings_are_exact_for_any_order(seed):
    # Tight blobs (whole blocks of twins: the index hands them over as masks) and a
    # chain (pair lists), in a random order and a sorted one.
    rng = np.random.default_rng(seed)
    blobs = rng.normal(size=(6, 32))
    tight = unit(blobs[rng.integers(0, 6, 500)] * 8 + rng.normal(size=(500, 32)))
    x = np.vstack([tight, frames(300, d=32, seed=seed)]).astype(np.float32)
    orders = [rng.permutation(len(x)), np.argsort(x[:, 0], kind="stable")]
    counts = prefix_crossings(self_index(x, seed), orders)
    for order, count in zip(orders, counts, strict=True):
        assert count.tolist() == brute_prefix_counts(x, order)
    assert max(c.max() for c in counts) > 0


def test_a_chain_shuffled_is_ordered_along_itself_from_either_end():
    x = frames(400)
    shuffle = np.random.default_rng(1).permutation(len(x))
    first, second = graph_orders(self_index(x[shuffle]), start=0)
    for order in (first, second):
        time = shuffle[order]  # the frame index of each position
        # From one end to the other: each position's frame a few frames from the last.
        assert min(time[0], len(x) - 1 - time[0]) <= 3
        assert np.abs(np.diff(time)).max() <= 12  # within two levels of about 5 frames
        assert abs(time[-1] - time[0]) >= len(x) - 8
    assert (shuffle[first[0]] < 200) != (shuffle[second[0]] < 200)  # the two ends


def test_the_cheaper_end_is_cut_from():
    # A video that slows down: few twins per frame at its start, many at its end. The
    # graph's K edges make hops count frames, so the far end from the middle may be
    # either; both are counted, and the cut starts at the thin end.
    rng = np.random.default_rng(7)
    d, n = 48, 900
    steps = 0.17 / np.sqrt(d) * rng.normal(size=(n, d))
    walk = unit(rng.normal(size=(1, d)) / np.sqrt(d) + np.cumsum(steps, axis=0))
    centre_sims = walk.astype(np.float64) @ walk[n // 3].astype(np.float64)
    orderings_found = orderings(walk, np.arange(n), centre_sims, THRESHOLD, seed=0)
    radial, *along = orderings_found
    assert radial.radial and len(along) == 2 and not any(o.radial for o in along)
    starts = sorted(int(o.rows[0]) for o in along)
    assert starts[0] <= 3 and starts[1] >= n - 4
    thin = min(along, key=lambda o: o.crossings[50])
    assert thin.rows[0] <= 3
    assert thin.crossings[50] < min(o.crossings[50] for o in orderings_found if o is not thin)


def test_a_chain_cut_along_it_crosses_a_window_not_a_ball():
    # The radial cut around the middle frame cuts the chain at two places; the cut
    # along it at one, however far the cut is from the end.
    x = frames(600, seed=3)
    members = np.arange(len(x))
    centre_sims = x.astype(np.float64) @ x[300].astype(np.float64)
    radial, along, _ = orderings(x, members, centre_sims, THRESHOLD, seed=0)
    assert radial.radial and not along.radial
    for ordering in (radial, along):
        assert ordering.crossings.tolist() == brute_prefix_counts(x, ordering.rows)
    window = np.sum(x @ x[300] >= THRESHOLD)  # twins of one frame, itself included
    assert along.crossings[100:500].max() <= window**2 / 2
    assert (along.crossings[100:500] < radial.crossings[100:500]).mean() > 0.9


def test_twin_graph_keeps_the_k_most_similar_twins_both_ways():
    x = frames(200, seed=4)
    graph = twin_graph(self_index(x), k=3)
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    rows, cols = graph.nonzero()
    assert (sims[rows, cols] >= THRESHOLD).all() and (graph != graph.T).nnz == 0
    for row in range(len(x)):
        twins = np.flatnonzero(sims[row] >= THRESHOLD)
        best = twins[np.argsort(-sims[row, twins], kind="stable")[:3]]
        assert set(best) <= set(graph[row].indices)


def test_a_solid_component_is_counted_without_a_search():
    rng = np.random.default_rng(5)
    centre = rng.normal(size=48)
    x = unit(centre + 0.02 * np.linalg.norm(centre) / np.sqrt(48) * rng.normal(size=(300, 48)))
    x = x.astype(np.float32)
    assert is_solid(x, THRESHOLD)
    (only,) = orderings(x, np.arange(300), x @ x[0], THRESHOLD, seed=0)
    assert only.radial and only.crossings.tolist() == brute_prefix_counts(x, only.rows)
    assert not is_solid(frames(100), THRESHOLD)
    # Solid means every pair is a twin: a pair below the threshold is never solid.
    pair = unit(np.array([[1.0, 0.0], [np.cos(0.33), np.sin(0.33)]])).astype(np.float32)
    assert (pair[0] @ pair[1] < THRESHOLD) and not is_solid(pair, THRESHOLD)


def test_crossings_along_match_brute_force_and_large_components_are_left_to_the_band():
    x = frames(250, seed=6)
    order = np.random.default_rng(2).permutation(len(x))
    assert crossings_along(x, order, THRESHOLD, seed=0).tolist() == brute_prefix_counts(x, order)
    big = np.zeros((MAX_MEMBERS + 1, 4), np.float32)
    big[:, 0] = 1.0
    big[1::2, 1] = 1.0  # two far points, repeated: not solid
    big /= np.linalg.norm(big, axis=1, keepdims=True)
    assert orderings(big, np.arange(len(big)), big[:, 0], THRESHOLD, seed=0) == []


def test_whole_groups_gathers_each_group_at_its_first_member():
    group_of = np.array([7, -1, 3, 7, -1, 3, 7])
    order = np.array([4, 2, 0, 1, 5, 3, 6])  # positions into group_of
    moved = whole_groups(order, group_of)
    assert moved.tolist() == [4, 2, 5, 0, 3, 6, 1]  # -1, 3 3, 7 7 7, -1
    assert whole_groups(moved, group_of).tolist() == moved.tolist()  # idempotent
    # Cuts k = 0 .. 7 of that order: never inside the 3s (positions 1-2) or the 7s (3-5).
    assert group_cuts(group_of[moved]).tolist() == [1, 1, 0, 1, 0, 0, 1, 1]
    # Any order: a cut is allowed iff no group has members on both sides.
    codes = group_of[order]
    expected = [
        all(not (g in codes[:k] and g in codes[k:]) for g in (3, 7)) for k in range(len(codes) + 1)
    ]
    assert group_cuts(codes).tolist() == expected


@pytest.mark.parametrize("seed", [0, 1])
def test_orderings_never_cut_a_group_and_count_the_rest_exactly(seed):
    rng = np.random.default_rng(seed)
    x = frames(300, seed=seed)
    group_of = np.where(rng.random(300) < 0.7, rng.integers(0, 40, 300), -1)
    members = np.arange(300)
    sims = x @ x[150]
    for ordering in orderings(x, members, sims, THRESHOLD, seed, group_of):
        position = {row: i for i, row in enumerate(ordering.rows.tolist())}
        for g in np.unique(group_of[group_of >= 0]):
            at = sorted(position[r] for r in np.flatnonzero(group_of == g))
            assert at == list(range(at[0], at[0] + len(at)))  # contiguous
        allowed = group_cuts(group_of[ordering.rows])
        brute = np.array(brute_prefix_counts(x, ordering.rows))
        assert np.array_equal(ordering.crossings[allowed], brute[allowed])
        assert (ordering.crossings[~allowed] == IMPOSSIBLE).all() and (~allowed).any()
