"""Blockwise neighbour search, checked against brute force."""

import numpy as np
import pytest
from conftest import unit

import bubblefence_plugin.core.neighbors as nb
from bubblefence_plugin.core.neighbors import (
    ROW_STEP,
    CellIndex,
    _bound_coords,
    gathered_similarities,
    knn,
    knn_similarities,
    nearest,
    subspace_axes,
)


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


@pytest.mark.parametrize("k", [1, 5, 299, 400])
def test_knn_similarities_are_knns_without_the_indices(k):
    """The same values in the same order, with ties (copied rows), a query's own row
    left out, and k capped at what the base gives."""
    rng = np.random.default_rng(1)
    x = unit(rng.normal(size=(300, 16)))
    x[150:170] = x[100:120]
    rows = np.arange(0, 300, 7)
    own = np.where(rows % 2 == 0, rows, -1)
    sims, _ = knn(x[rows], x, k, exclude_self=own, block=5)
    got = knn_similarities(x[rows], x, k, exclude_self=own, block=5)
    assert got.shape == sims.shape == (len(rows), min(k, 299))
    assert np.array_equal(got, sims)


def test_gathered_similarities_match_the_product_over_several_steps():
    rng = np.random.default_rng(2)
    x = unit(rng.normal(size=(2 * ROW_STEP + 100, 8)).astype(np.float32))
    rows = rng.permutation(len(x))[: ROW_STEP + 50]
    np.testing.assert_allclose(gathered_similarities(x, rows, x[3]), x[rows] @ x[3], atol=1e-6)
    assert gathered_similarities(x, rows[:0], x[3]).shape == (0,)


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


def manifold_mixture(seed, n=3000, d=64):
    """Clusters on 3-d manifolds of Zipf sizes (the smallest get no seed of their own:
    strays), one tight cluster, exact duplicates; unit rows, float32."""
    rng = np.random.default_rng(seed)
    k = 24
    weights = 1.0 / np.arange(1, k + 1) ** 1.2
    label = rng.choice(k, size=n, p=weights / weights.sum())
    centres = rng.normal(size=(k, d)) * 2
    basis = rng.normal(size=(k, 3, d))
    spread = rng.uniform(0.3, 1.5, size=k)
    spread[0] = 0.0  # the largest cluster is tight
    coords = rng.normal(size=(n, 3)) * spread[label, None]
    x = centres[label] + np.einsum("ij,ijd->id", coords, basis[label])
    x += 0.05 * rng.normal(size=(n, d))
    x[-40:] = x[:40]  # exact copies
    return unit(x)


def small_cells(monkeypatch) -> None:
    """Small cells, a small fan-out and few axes: several levels of cells, several
    groups and the stray passes on a few thousand rows."""
    monkeypatch.setattr(nb, "CELL_SIZE", 24)
    monkeypatch.setattr(nb, "CELL_FANOUT", 6)
    monkeypatch.setattr(nb, "SEED_SAMPLE", 200)
    monkeypatch.setattr(nb, "AXES_SAMPLE", 48)
    monkeypatch.setattr(nb, "CELL_DIMS", 6)


@pytest.mark.parametrize("seed", range(3))
def test_cell_index_with_many_groups_and_strays_matches_brute_force(seed, monkeypatch):
    """Every threshold, searched through `at` on one index, finds exactly the pairs of a
    float64 brute force."""
    small_cells(monkeypatch)
    x = manifold_mixture(seed)
    base = np.arange(0, len(x), 2)  # the index holds every other row; all rows query
    index = CellIndex(x, base, 0.95, seed=seed)
    assert len(index.axes) > 6 and len(index) > len(base) // 24
    assert index.coords[:, -1].max() > nb.STRAY_RESIDUAL  # strays kept by the last pass
    full = x.astype(np.float64) @ x[base].astype(np.float64).T
    for threshold in (0.9, 0.95, 0.99):
        found = set()
        for q, b, sims in index.at(threshold).pairs(x):
            assert np.all(sims >= threshold - 1e-5)
            found |= set(zip(q.tolist(), b.tolist(), strict=True))
        truth = {(int(a), int(b)) for a, b in zip(*np.nonzero(full >= threshold), strict=True)}
        assert found == truth
        assert len(truth) > len(x)


def test_the_subspace_bound_never_underestimates_a_similarity():
    """[P q, |r_q|] . [P x, |r_x|] >= q . x for unit rows, whatever the subspace."""
    rng = np.random.default_rng(5)
    x = manifold_mixture(5, n=600)
    for dims in (1, 4, 16):
        axes = subspace_axes(x[rng.choice(len(x), 50, replace=False)], dims)
        assert np.allclose(axes @ axes.T, np.eye(len(axes)), atol=1e-5)
        coords = _bound_coords(x @ axes.T)
        bound = coords.astype(np.float64) @ coords.T.astype(np.float64)
        exact = x.astype(np.float64) @ x.T.astype(np.float64)
        assert np.all(bound >= exact - 1e-6)


def test_subspace_axes_hold_rows_of_a_low_dimensional_subspace_and_only_its_rank():
    """The top eigenpairs, solved in float32, still find a subspace the rows lie in
    (residuals at rounding level) and leave out the axes of rounding-level eigenvalues:
    copies of one row get one axis."""
    rng = np.random.default_rng(9)
    basis = np.linalg.qr(rng.normal(size=(256, 8)))[0].T
    x = (rng.normal(size=(300, 8)) @ basis).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    axes = subspace_axes(x[:256], 32)
    assert len(axes) == 8
    assert np.allclose(axes @ axes.T, np.eye(8), atol=1e-5)
    residual = x - (x @ axes.T) @ axes
    assert np.linalg.norm(residual, axis=1).max() < 1e-3
    assert len(subspace_axes(np.repeat(x[:1], 40, axis=0), 32)) == 1


def test_upper_bounds_cover_every_row_and_never_underestimate(monkeypatch):
    """`upper_bounds` lists every position of the index once, group after group, and
    bounds every query's float64 similarity to it from above (within float32 error),
    strays of the last pass included."""
    small_cells(monkeypatch)
    x = manifold_mixture(1)
    base = np.arange(1, len(x), 2)
    index = CellIndex(x, base, 0.95, seed=1)
    assert index.coords[:, -1].max() > nb.STRAY_RESIDUAL
    positions, bounds = index.upper_bounds(x)
    assert np.array_equal(np.sort(positions), np.arange(len(base)))
    assert np.all(np.diff(index.group[positions]) >= 0)
    exact = x.astype(np.float64) @ x[base[positions]].astype(np.float64).T
    assert bounds.shape == exact.shape
    assert np.all(bounds >= exact - 1e-6)
    # Tight where the neighbours are: a row's bound to itself is about 1.
    own = np.searchsorted(base, np.arange(1, len(x), 2))
    at = np.argsort(positions)[own]
    assert np.allclose(bounds[np.arange(1, len(x), 2), at], 1.0, atol=1e-3)


def test_group_coords_are_each_groups_bound_coordinates(monkeypatch):
    """One fused product gives what each group's own projection gives, and the
    residuals `group_residuals` tests; `block_pairs` finds the same pairs with them."""
    small_cells(monkeypatch)
    x = manifold_mixture(2)
    index = CellIndex(x, np.arange(len(x)), 0.9, seed=2)
    groups = np.array([0, 3, len(index.axes) - 1])
    vectors = x[:40]
    coords = index.group_coords(vectors, groups)
    assert coords.shape == (3, 40, index.coords.shape[1])
    for at, g in enumerate(groups):
        own = _bound_coords(vectors @ index.axes[g].T)
        assert np.allclose(coords[at], own, atol=1e-6)
    assert np.allclose(index.group_residuals(vectors, groups), coords[:, :, -1].T)
    right = np.flatnonzero(np.isin(index.group, groups))
    given = dict(zip(groups.tolist(), coords, strict=True))
    with_coords = index.block_pairs(vectors, right, given)
    without = index.block_pairs(vectors, right)
    assert len(with_coords[0]) > 0
    for a, b in zip(with_coords[:2], without[:2], strict=True):
        assert np.array_equal(a, b)


def test_group_balls_hold_their_members_and_reach_misses_no_cell(monkeypatch):
    """Every member lies within its group's ball, and `reachable` keeps every cell that
    holds a row within the threshold of a query (brute force), though it tests cells
    only of the groups that pass."""
    small_cells(monkeypatch)
    x = manifold_mixture(7)
    index = CellIndex(x, np.arange(len(x)), 0.95, seed=7)
    to_centre = 1.0 - np.einsum(
        "ij,ij->i", x.astype(np.float64), index.group_centres[index.group].astype(np.float64)
    )
    assert np.all(np.sqrt(2 * np.maximum(to_centre, 0)) <= index.group_radius[index.group] + 1e-6)
    queries = x[index.group == index.group[0]]  # one group: a block of `pairs`
    cells, reach, _ = index.at(0.9).reachable(queries)
    assert np.all(np.diff(cells) > 0) and len(cells) < len(index)  # some groups skipped
    full = queries.astype(np.float64) @ x.T.astype(np.float64)
    q, rows = np.nonzero(full >= 0.9)
    needed = {(int(a), int(c)) for a, c in zip(q, index.cell[rows], strict=True)}
    kept = {(int(a), int(cells[c])) for a, c in zip(*np.nonzero(reach), strict=True)}
    assert needed <= kept


def test_an_extended_index_matches_brute_force(monkeypatch):
    """An index built on some rows and extended twice (`CellIndex.extended`) with rows of
    clusters it was not fitted on finds exactly the pairs of a float64 brute force, and
    splits the cells the new rows grew past `GROWN_CELL`."""
    small_cells(monkeypatch)
    x = manifold_mixture(11)
    rng = np.random.default_rng(11)
    first = np.sort(rng.choice(len(x), 1200, replace=False))
    rest = np.setdiff1d(np.arange(len(x)), first)
    index = CellIndex(x, first, 0.95, seed=11)
    for added in np.array_split(rest, 2):
        index = index.extended(x, added, seed=11)
    assert index.built_rows == len(first) and len(index.rows) == len(x)
    assert np.diff(index.bounds).max() <= nb.GROWN_CELL * nb.CELL_SIZE
    assert np.all(np.diff(index.group_of_cell) >= 0)
    base = index.rows
    full = x.astype(np.float64) @ x[base].astype(np.float64).T
    for threshold in (0.9, 0.95, 0.99):
        found = set()
        for q, b, _ in index.at(threshold).pairs(x):
            found |= set(zip(q.tolist(), b.tolist(), strict=True))
        truth = {(int(a), int(b)) for a, b in zip(*np.nonzero(full >= threshold), strict=True)}
        assert found == truth and len(truth) > len(x)


@pytest.mark.parametrize("threshold", [0.95, 0.9999])
def test_own_pairs_yield_every_pair_once_computing_each_once(threshold, monkeypatch):
    """The self-join (`own_pairs`) yields exactly the ordered pairs of a brute force, each
    once, self-pairs included, though a pair of two cells is computed from one side; over
    some rows of the array, those rows' pairs, by position."""
    small_cells(monkeypatch)
    x = manifold_mixture(9)
    x[100:140] = x[140:180] + 1e-4  # near-duplicates in other cells
    x = unit(x)
    index = CellIndex(x, np.arange(len(x)), threshold, seed=9)
    found = [
        (int(a), int(b)) for q, b_pos, _ in index.own_pairs() for a, b in zip(q, b_pos, strict=True)
    ]
    full = x.astype(np.float64) @ x.T.astype(np.float64)
    truth = {(int(a), int(b)) for a, b in zip(*np.nonzero(full >= threshold), strict=True)}
    assert len(found) == len(set(found)) and set(found) == truth
    assert len(truth) > len(x)
    rows = np.flatnonzero(np.arange(len(x)) % 3 != 1)  # the near-duplicates among them
    index = CellIndex(x, rows, threshold, seed=9)
    found = [
        (int(rows[a]), int(rows[b]))
        for q, b_pos, _ in index.own_pairs()
        for a, b in zip(q, b_pos, strict=True)
    ]
    kept = np.isin(np.arange(len(x)), rows)
    assert len(found) == len(set(found))
    assert set(found) == {(a, b) for a, b in truth if kept[a] and kept[b]}


@pytest.mark.parametrize("workers", [1, 2])
def test_reduced_searches_on_threads_yield_the_serial_blocks_in_order(workers, monkeypatch):
    """`own_pairs` and `pairs` with a reduce, on one thread and on two (`ordered_map`),
    yield each block's reduction in the order the serial search yields the blocks (the
    same pairs; the float32 similarities to within a few units in their last place, as
    a product on one BLAS thread and on two may differ)."""
    small_cells(monkeypatch)
    monkeypatch.setattr(nb, "search_workers", lambda: workers)
    monkeypatch.setattr(nb, "QUERY_GROUP", 16)  # many groups, so the threads interleave
    x = manifold_mixture(9)
    x[100:140] = x[140:180] + 1e-4
    x = unit(x)
    index = CellIndex(x, np.arange(len(x)), 0.95, seed=9)

    def summary(q, b, sims):
        return q.tolist(), b.tolist(), sims

    def same(found, serial):
        return len(found) == len(serial) and all(
            f[:2] == s[:2] and np.allclose(f[2], s[2], rtol=0, atol=nb.DECISION_EPS)
            for f, s in zip(found, serial, strict=True)
        )

    serial = [summary(*block) for block in index.own_pairs()]
    assert same(list(index.own_pairs(reduce=summary)), serial) and len(serial) > 16
    queries = x[::3]
    serial = [summary(*block) for block in index.pairs(queries)]
    assert same(list(index.pairs(queries, reduce=summary)), serial) and len(serial) > 8


def test_ordered_map_keeps_order_stops_early_and_raises(monkeypatch):
    """Results come in the items' order however long each takes; a caller that stops
    early leaves no call running on; a failing call raises in the caller."""
    import threading
    import time

    monkeypatch.setattr(nb, "search_workers", lambda: 2)

    def slow_for_even(i):
        time.sleep(0.02 if i % 2 == 0 else 0.0)
        return i * i

    assert list(nb.ordered_map(slow_for_even, range(12))) == [i * i for i in range(12)]
    started = []

    def record(i):
        started.append(i)
        return i

    for value in nb.ordered_map(record, range(1000)):
        if value == 3:
            break
    settled = len(started)
    time.sleep(0.05)
    assert len(started) == settled <= 3 + 1 + nb.AHEAD_PER_WORKER * 2 + 2
    assert threading.active_count() < 10

    def fail_at_five(i):
        if i == 5:
            raise ValueError("five")
        return i

    with pytest.raises(ValueError, match="five"):
        list(nb.ordered_map(fail_at_five, range(10)))


def test_a_restored_index_finds_every_pair_and_refuses_what_does_not_fit(monkeypatch):
    """An index rebuilt from its structure (`CellIndex.restored`) over the same rows
    finds exactly the pairs, at another threshold too; a structure that does not fit
    the embeddings gives None, never a wrong index."""
    small_cells(monkeypatch)
    x = manifold_mixture(2, n=1500)
    rows = np.arange(0, 1500, 2)
    fitted = CellIndex(x, rows, 0.95, seed=3)
    structure = fitted.structure()
    restored = CellIndex.restored(x, structure, 0.9)
    assert np.array_equal(restored.cell, fitted.cell) and len(restored) == len(fitted)
    full = x[rows].astype(np.float64) @ x[rows].T.astype(np.float64)
    for index, threshold in ((restored, 0.9), (restored.at(0.95), 0.95)):
        found = np.zeros_like(full, dtype=bool)
        for q, b, _ in index.pairs(x[rows]):
            found[q, b] = True
        assert np.array_equal(found, full >= threshold)
    n_cells = len(structure["group_of_cell"])
    broken = {
        "another dimension": (x[:, :32], {}),
        "rows past the embeddings": (x[:1000], {}),
        "rows out of order": (x, {"rows": rows[::-1].copy()}),
        "an empty cell": (x, {"cell": np.where(structure["cell"] == 0, 1, structure["cell"])}),
        "a cell of no group": (x, {"cell": structure["cell"] + n_cells}),
        "axes of other groups": (x, {"axes": structure["axes"][:-1]}),
        "no rows built on": (x, {"built_rows": np.array([0])}),
    }
    for name, (vectors, change) in broken.items():
        assert CellIndex.restored(vectors, {**structure, **change}, 0.9) is None, name


def test_an_index_structure_without_some_rows_still_finds_every_pair(monkeypatch):
    """Rows dropped (a whole cell and a whole group among them) and the rest renumbered:
    the structure left restores an index over the rows left that finds exactly their
    pairs; a structure pointing past the renumbering, or with nothing left, gives None."""
    small_cells(monkeypatch)
    x = manifold_mixture(4, n=1500)
    rows = np.arange(0, 1500, 2)
    fitted = CellIndex(x, rows, 0.95, seed=5)
    gone = np.zeros(len(x), bool)
    gone[rows[fitted.members(0)]] = True  # a whole cell
    gone[rows[fitted.group == fitted.group.max()]] = True  # a whole group
    gone[np.random.default_rng(0).choice(len(x), 300, replace=False)] = True
    new_row = np.where(gone, -1, np.cumsum(~gone) - 1)
    left = CellIndex.structure_without(fitted.structure(), new_row)
    assert len(left["group_of_cell"]) < len(fitted) and len(left["axes"]) < len(
        fitted.structure()["axes"]
    )
    x_left = x[~gone]
    restored = CellIndex.restored(x_left, left, 0.95)
    kept = left["rows"]
    full = x_left[kept].astype(np.float64) @ x_left[kept].T.astype(np.float64)
    found = np.zeros_like(full, dtype=bool)
    for q, b, _ in restored.pairs(x_left[kept]):
        found[q, b] = True
    assert np.array_equal(found, full >= 0.95)
    assert CellIndex.structure_without(fitted.structure(), new_row[:100]) is None
    assert CellIndex.structure_without(fitted.structure(), np.full(len(x), -1)) is None


@pytest.mark.parametrize("threshold", [0.9, 0.95])
def test_hits_with_whole_cells_yield_every_pair_once(threshold, monkeypatch):
    """Cells wholly within a query's threshold come uncomputed (`BlockHits.every`), the
    rest as without them: together every pair within the threshold, each once,
    including the pairs of a wholly-within cell kept in its group's block."""
    small_cells(monkeypatch)
    x = manifold_mixture(5, n=2400)
    base, queries = np.arange(2000), x[2000:]
    index = CellIndex(x, base, threshold, seed=1)
    found, kinds, kept_in_block = [], set(), 0
    for q, part, hits in index.hits(queries, whole_cells=True):
        if hits.every:
            kinds.add("every")
            qi, bi = np.repeat(q, len(part)), np.tile(part, len(q))
            assert index.cells_within(queries[q], np.unique(index.cell[part])).all()
        else:
            if hits.mask is not None:
                i, j = np.nonzero(hits.mask)
            else:
                i, j = hits.i, hits.j
            qi, bi = q[i], part[j]
            kinds.add("computed")
            cells = index.cell[bi]
            kept_in_block += sum(
                bool(index.cells_within(queries[[a]], np.array([c]))[0, 0])
                for a, c in zip(qi.tolist(), cells.tolist(), strict=True)
            )
        found.append(qi * len(base) + bi)  # base positions are its rows here
    found = np.concatenate(found)
    full = queries.astype(np.float64) @ x[base].astype(np.float64).T
    qi, bi = np.nonzero(full >= threshold)
    assert len(found) == len(np.unique(found))
    assert np.array_equal(np.sort(found), qi * len(base) + bi)
    assert kinds == {"every", "computed"}
    assert kept_in_block > 0


@pytest.mark.parametrize("seed", range(2))
def test_reaches_beyond_answers_as_brute_force_does(seed, monkeypatch):
    """Whether a set of queries has a neighbour at the threshold outside the rows flagged
    inside: the same answer as the float64 products, for clusters as they are (tight,
    broad, strays) and with their outer members flagged or not."""
    small_cells(monkeypatch)
    x = manifold_mixture(seed)
    base = np.arange(0, len(x), 2)
    full = x.astype(np.float64) @ x[base].astype(np.float64).T
    index = CellIndex(x, base, 0.95, seed=seed)
    rng = np.random.default_rng(seed)
    answers = set()
    for threshold in (0.8, 0.95):
        searched = index.at(threshold)
        for _ in range(12):
            queries = np.sort(rng.choice(len(x), int(rng.integers(1, 60)), replace=False))
            inside = np.zeros(len(x), bool)
            # Flag everything the queries reach but a few: the answer hangs on those few.
            reached = np.flatnonzero((full[queries] >= threshold).any(axis=0))
            left_out = rng.choice(
                reached, min(len(reached), int(rng.integers(0, 3))), replace=False
            )
            inside[base[np.setdiff1d(reached, left_out)]] = True
            truth = bool((full[queries][:, ~inside[base]] >= threshold).any())
            assert searched.reaches_beyond(x[queries], inside) == truth
            answers.add(truth)
    assert answers == {True, False}


@pytest.mark.parametrize("magnitude", [1e-40, 1e-22, 1e20, 1e30])
def test_unit_rows_of_any_magnitude_are_the_rows_directions(magnitude):
    # float32 squares of such values overflow or lose their digits: the rows became zero
    # or not unit, and a split took ordinary rows for their duplicates.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 64))
    expected = x / np.linalg.norm(x, axis=1, keepdims=True)
    dtype = np.float64 if magnitude > 3e38 / 64 or magnitude < 1e-38 else np.float32
    scaled = (x * magnitude).astype(dtype)
    found = nb.unit_rows(scaled)
    assert found.dtype == np.float32
    np.testing.assert_allclose(found, expected, atol=1e-5)


def test_unit_rows_of_ordinary_magnitudes_are_unchanged_floats():
    x = unit(np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32) * 3)
    before = x / np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # the float path as ever
    np.testing.assert_array_equal(nb.unit_rows(x), before)


def test_a_split_keeps_rows_of_extreme_magnitude_apart_from_ordinary_ones():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 32)).astype(np.float32)
    x[:100] *= 1e-22
    from bubblefence_plugin import BubbleFence, BubbleFenceConfig

    bf = BubbleFence(BubbleFenceConfig(seed=0))
    bf.ingest(x)
    assert (bf.assignments()["split"] != "duplicate").all()


def test_unit_rows_of_integer_minima_and_object_arrays():
    # |int8(-128)| is -128 in int8; a mixed DataFrame's values come as an object array.
    np.testing.assert_array_equal(nb.unit_rows(np.array([[-128, 0, 0]], np.int8)), [[-1, 0, 0]])
    found = nb.unit_rows(np.array([[-128, -128]], np.int8))
    np.testing.assert_allclose(found, [[-(0.5**0.5), -(0.5**0.5)]], rtol=1e-6)
    np.testing.assert_allclose(nb.unit_rows(np.array([[3.0, 4]], object)), [[0.6, 0.8]])
    # Words are named as such, not by numpy's conversion error.
    with pytest.raises(ValueError, match=r"embeddings must hold numbers only \(could not"):
        nb.unit_rows(np.array([[3.0, "x"]], object))
    with pytest.raises(ValueError, match="must hold numbers, got an array of <U1"):
        nb.unit_rows(np.array([["1", "2"]]))
