"""The near-twin graph's components, checked against brute force."""

import numpy as np
import pytest
from conftest import unit
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from test_neighbors import manifold_mixture, small_cells

from bubblefence_plugin.core import neighbors, twins
from bubblefence_plugin.core.neighbors import CellIndex
from bubblefence_plugin.core.twins import (
    UnionFind,
    _max_per_key,
    _present,
    twin_components,
    twin_votes,
)


def assert_same_components(truth: np.ndarray, got: np.ndarray) -> None:
    """The same partition (a bijection between the labellings), each of `got`'s labels
    the smallest member of its component."""
    pairs = set(zip(truth.tolist(), got.tolist(), strict=True))
    assert len(pairs) == len(set(truth.tolist())) == len(set(got.tolist()))
    for label_value in np.unique(got):
        assert label_value == np.flatnonzero(got == label_value).min()


@pytest.mark.parametrize("spread", [0.02, 0.15, 0.6])
def test_twin_components_equal_brute_force(spread):
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(12, 24))
    label = rng.integers(12, size=1200)
    x = unit(centres[label] + spread * rng.normal(size=(1200, 24)))
    x[1100:] = unit(x[0] + 0.001 * rng.normal(size=(100, 24)))  # a dense cell
    full = x @ x.T
    _, truth = connected_components(sparse.csr_matrix(full >= 0.95), directed=False)
    got = twin_components(x, np.arange(len(x)), 0.95, seed=3)
    # Same partition: a bijection between the two labellings.
    assert_same_components(truth, got)


def test_twin_components_of_a_subset_of_rows():
    rng = np.random.default_rng(5)
    x = unit(rng.normal(size=(50, 16)))
    x[30] = unit((x[12] + 0.01 * rng.normal(size=16))[None, :])[0]
    rows = np.arange(10, 50)
    got = twin_components(x, rows, 0.99, seed=0)
    assert got[20] == got[2] == 2  # positions of rows 30 and 12
    assert len(np.unique(got)) == len(rows) - 1


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("threshold", [0.92, 0.95])
def test_twin_components_over_many_groups_equal_brute_force(threshold, workers, monkeypatch):
    """Several subspace groups, strays and levels of cells; the cells merged on one
    thread and on several (`neighbors.ordered_map`)."""
    small_cells(monkeypatch)
    monkeypatch.setattr(neighbors, "search_workers", lambda: workers)
    x = manifold_mixture(7, n=2500)
    full = x.astype(np.float64) @ x.T.astype(np.float64)
    _, truth = connected_components(sparse.csr_matrix(full >= threshold), directed=False)
    got = twin_components(x, np.arange(len(x)), threshold, seed=1)
    assert_same_components(truth, got)
    assert 1 < len(set(got.tolist())) < len(x) // 2


@pytest.mark.parametrize("ordered", [True, False])
def test_max_per_key_equals_maximum_at(ordered):
    rng = np.random.default_rng(8)
    q_rows = rng.integers(0, 50, size=4000)
    q_rows = np.sort(q_rows) if ordered else q_rows
    classes = rng.integers(0, 3, size=4000)
    sims = rng.random(4000).astype(np.float32)
    key = q_rows * 3 + classes
    expected = np.full(60 * 3, -np.inf)
    np.maximum.at(expected, key, sims)
    assert np.array_equal(_max_per_key(key, q_rows, classes, sims, 60 * 3), expected)


@pytest.mark.parametrize("threshold", [0.9, 0.95])
def test_twin_votes_equal_brute_force(threshold, monkeypatch):
    """Counts per (query, class) and the most similar twin per class (ties: the smaller
    row), through whole blocks (the tight cluster) and pair lists alike; class -1 is
    not counted."""
    small_cells(monkeypatch)
    x = manifold_mixture(3, n=2400)
    x[1000:1010] = x[1010:1020]  # equal twins: the smaller row must win
    base = np.arange(0, 2000)
    queries = x[2000:]
    base_class = np.random.default_rng(3).integers(-1, 3, size=len(base))
    index = CellIndex(x, base, threshold, seed=2)
    assert any(h.mask is not None for _, _, h in index.hits(queries))
    assert any(h.mask is None for _, _, h in index.hits(queries))
    votes = twin_votes(x, queries, [(index, base_class)], 3)
    full = queries.astype(np.float64) @ x[base].astype(np.float64).T
    for c in range(3):
        twin = (full >= threshold) & (base_class == c)[None, :]
        assert np.array_equal(votes.count[:, c], twin.sum(axis=1))
        masked = np.where(twin, np.round(full, 9), -np.inf)
        best = np.where(twin.any(axis=1), masked.argmax(axis=1), -1)  # first maximum
        assert np.array_equal(votes.best[:, c], np.where(best >= 0, base[np.maximum(best, 0)], -1))


def test_twin_votes_rank_only_the_classes_asked_for(monkeypatch):
    """Counts for every class, whatever is ranked; the most similar twin of the ranked
    classes as when all are, none of the others: cells wholly within the threshold of a
    query (a tight cluster's) are counted without a product."""
    small_cells(monkeypatch)
    x = manifold_mixture(3, n=2400)
    base, queries = np.arange(0, 2000), x[2000:]
    base_class = np.random.default_rng(3).integers(-1, 3, size=len(base))
    index = CellIndex(x, base, 0.95, seed=2)
    assert any(h.every for _, _, h in index.hits(queries, whole_cells=True))
    every = twin_votes(x, queries, [(index, base_class)], 3)
    some = twin_votes(x, queries, [(index, base_class)], 3, ranked=(1, 2))
    none = twin_votes(x, queries, [(index, base_class)], 3, ranked=())
    for votes in (some, none):
        assert np.array_equal(votes.count, every.count)
    assert np.array_equal(some.best[:, 1:], every.best[:, 1:])
    assert np.array_equal(some.best_sim[:, 1:], every.best_sim[:, 1:])
    assert (some.best[:, 0] == -1).all() and (none.best == -1).all()
    assert (every.best[:, 0] >= 0).any()


def test_a_whole_block_without_twins_of_a_class_changes_nothing_of_it():
    """A class whose columns hold no twin of any row of a whole block: zero counts, no
    best twin (the case a later round meets when a class's rows lie just out of reach)."""
    from bubblefence_plugin.core.twins import TwinVotes

    x = unit(np.random.default_rng(0).normal(size=(6, 8)))
    votes = TwinVotes.empty(2, 2)
    sims = (x[:2] @ x[2:].T).astype(np.float32)
    mask = np.array([[True, False, False, False], [False, False, False, False]])
    votes.add_whole(x, x[:2], np.array([0, 1]), np.arange(2, 6), np.array([0, 1, 1, 1]), sims, mask)
    assert votes.count.tolist() == [[1, 0], [0, 0]]
    assert votes.best.tolist() == [[2, -1], [-1, -1]]


def test_blocks_skip_pairs_already_in_one_component(monkeypatch):
    """A broad region that merges into one component, with isolated outliers among its
    members: the outliers' cells are never wholly in one component, so their blocks are
    computed, but only for the rows still apart. The components stay brute force's."""
    small_cells(monkeypatch)
    rng = np.random.default_rng(0)
    region = rng.normal(size=(2, 32))
    x = rng.normal(size=32) * 2 + (0.6 * rng.normal(size=(2000, 2))) @ region
    x = unit(x + 0.05 * rng.normal(size=(2000, 32)))
    outliers = rng.choice(len(x), 100, replace=False)
    x[outliers] = unit(x[outliers] + 0.3 * rng.normal(size=(100, 32)))
    asked, computed = [], []
    merge_block, block_pairs = twins._merge_block, CellIndex.block_pairs

    def counting_merge_block(index, found, left, right, left_coords=None):
        asked.append(len(left) * len(right))
        return merge_block(index, found, left, right, left_coords)

    def counting_block_pairs(self, left, right, left_coords=None):
        computed.append(len(left) * len(right))
        return block_pairs(self, left, right, left_coords)

    monkeypatch.setattr(twins, "_merge_block", counting_merge_block)
    monkeypatch.setattr(CellIndex, "block_pairs", counting_block_pairs)
    got = twin_components(x, np.arange(len(x)), 0.92, seed=1)
    full = x.astype(np.float64) @ x.T.astype(np.float64)
    _, truth = connected_components(sparse.csr_matrix(full >= 0.92), directed=False)
    assert_same_components(truth, got)
    assert len(set(got.tolist())) == 101
    assert sum(computed) < 0.75 * sum(asked)  # 0.59 measured; 1.0 without the skip


@pytest.mark.parametrize("seed", range(4))
def test_union_find_equals_connected_components(seed):
    """Unions in blocks (long chains, stars, repeats), each set's root its smallest
    item, against scipy's components of all the edges at once."""
    rng = np.random.default_rng(seed)
    n = 500
    chain = rng.permutation(n)
    a = np.concatenate([chain[:199], rng.integers(n, size=60), np.full(40, 7)])
    b = np.concatenate([chain[1:200], rng.integers(n, size=60), rng.integers(n, size=40)])
    found = UnionFind(n)
    for start in range(0, len(a), 37):
        found.union(a[start : start + 37], b[start : start + 37])
    graph = sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, truth = connected_components(graph, directed=False)
    got = found.labels()
    assert_same_components(truth, got)


def test_union_find_merged_from_several_threads_equals_connected_components():
    """Unions from four threads at once, with finds between them (path compression
    writing while others merge), end in the components of all the edges."""
    import threading

    rng = np.random.default_rng(11)
    n = 20_000
    a, b = rng.integers(n, size=(2, 18_000))
    graph = sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, truth = connected_components(graph, directed=False)
    probes = [np.random.default_rng(part).integers(n, size=5_000) for part in range(4)]
    for _ in range(3):
        found = UnionFind(n)

        def merge(part: int, found: UnionFind = found) -> None:
            for start in range(part * 50, len(a), 200):
                found.union(a[start : start + 50], b[start : start + 50])
                found.find(probes[part])

        threads = [threading.Thread(target=merge, args=(part,)) for part in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert_same_components(truth, found.labels())


def test_present_classes_equal_unique():
    rng = np.random.default_rng(0)
    classes = rng.choice([0, 3, 7], size=1000)
    assert np.array_equal(_present(classes), np.unique(classes))
    assert np.array_equal(_present(np.array([5])), [5])
    assert len(_present(np.zeros(0, np.int64))) == 0
