"""The leak graph: which samples are near twins, and the components they form.

Two kept samples are *near twins* when their cosine similarity reaches the leak
threshold. A split leaks through every twin pair it puts on both sides of the
train/eval line (or of validation/test), so the connected components of the twin
graph are the units a leak-free split moves: whole, or cut and counted.

Components are found exactly, with memory O(N * D + N) whatever the data:

* rows are grouped into the cells of a `neighbors.CellIndex`;
* a cell whose radius is at most tau / 2 (tau: the twin distance) is *dense*: any two
  of its members are twins, so it is one component without a single product (the
  dense-cell argument of grid- and tree-based DBSCAN). Tight clusters, bursts and
  near-duplicate frames are the cheap case;
* other cells are compared with themselves, then with every cell within reach
  (||c_A - c_B|| <= R_A + R_B + tau), one block of products at a time, and the
  twin pairs of each block are merged into a union-find at once; no pair list is
  ever kept;
* a pair of cells that are each *solid* (all members in one component) and already
  in the same component is skipped: in dense data, once a region has merged, the
  rest of its cell pairs cost nothing.

A union-find root is always the smallest row of its component, so the labels do not
depend on the order in which pairs were found.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .neighbors import (
    DECISION_EPS,
    RANK_DECIMALS,
    SCAN_BYTES,
    CellIndex,
    exact_similarity,
    ordered_map,
)


class UnionFind:
    """Union-find over n items whose roots are the smallest item of each set.

    Safe for threads (`_merge_cells` merges on several): unions take a lock; a `find`
    does not, as a root it returns, read while another thread merges, is still an
    ancestor of its items (a stale root only costs a caller work it could have skipped),
    and its path compression writes only items that are not roots, which no union writes.
    """

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        self._lock = threading.Lock()

    def find(self, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        roots = self.parent[items]
        while True:
            up = self.parent[roots]
            if np.array_equal(up, roots):
                break
            roots = up
        # Path compression for what was asked; a root's own entry is left alone, or it
        # could undo a union another thread just made.
        below = roots != items
        self.parent[items[below]] = roots[below]
        return roots

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge the sets of a[i] and b[i] for every i, in one vectorised step.

        The roots involved are labelled by their components in rounds of hooking (each
        edge hangs its larger label's root under the smaller) and shortcutting (every
        label to its root), then each root points at its component's smallest root.
        Plain numpy on the few roots a block touches: scipy's `connected_components`
        cost about 0.4 ms a call in checks and conversions, a tenth of the 1M round's
        components."""
        with self._lock:
            self._union(a, b)

    def _union(self, a: np.ndarray, b: np.ndarray) -> None:
        ra, rb = self.find(a), self.find(b)
        differ = ra != rb
        if not differ.any():
            return
        ra, rb = ra[differ], rb[differ]
        nodes, inverse = np.unique(np.concatenate([ra, rb]), return_inverse=True)
        u, v = inverse[: len(ra)], inverse[len(ra) :]
        label = np.arange(len(nodes))  # nodes ascend: the smallest label is the smallest root
        while True:
            lu, lv = label[u], label[v]
            if np.array_equal(lu, lv):
                break
            np.minimum.at(label, np.maximum(lu, lv), np.minimum(lu, lv))
            while True:
                up = label[label]
                if np.array_equal(up, label):
                    break
                label = up
        self.parent[nodes] = nodes[label]  # roots only: a valid union

    def labels(self) -> np.ndarray:
        """Root of every item."""
        return self.find(np.arange(len(self.parent)))


def twin_components(
    embeddings: np.ndarray,
    rows: np.ndarray,
    threshold: float,
    seed: int,
    links: tuple[np.ndarray, np.ndarray] | None = None,
    index: CellIndex | None = None,
) -> np.ndarray:
    """Component of every row of `embeddings[rows]` in the twin graph at `threshold`.

    Returns, per position in `rows`, the smallest position of its component. `links`
    (two arrays of positions) are extra edges: the members of a group are one unit.
    `index`: an index over exactly `rows` (at any threshold) to search, else one is built.
    """
    rows = np.asarray(rows, dtype=np.int64)
    found = UnionFind(len(rows))
    if links is not None and len(links[0]):
        found.union(*links)
    if len(rows) < 2:
        return found.labels()
    if index is None:
        index = CellIndex(embeddings, rows, threshold, seed)
    elif not np.array_equal(index.rows, rows):
        raise ValueError("twin_components: the index must hold exactly `rows`")
    _merge_cells(index.at(threshold), found)
    return found.labels()


def _merge_cells(index: CellIndex, found: UnionFind) -> None:
    tau = index.tau
    n_cells = len(index)
    dense = 2 * index.radius <= tau
    for cell in np.flatnonzero(dense):
        members = index.members(cell)
        found.union(members[1:], np.full(len(members) - 1, members[0]))

    def merge_within(cell: int) -> None:
        members = index.members(cell)
        _merge_block(index, found, members, members)

    for _ in ordered_map(merge_within, np.flatnonzero(~dense).tolist()):
        pass
    solid = dense.copy()
    solid[~dense] = _solid(index, found, np.flatnonzero(~dense))
    representative = index.order[index.bounds[:-1]]

    def merge_with_later_cells(cell: int) -> None:
        others = np.arange(cell + 1, n_cells)
        gap = index.centre_distances(index.centres[cell][None, :])[0, cell + 1 :]
        reach = gap <= index.radius[cell] + index.radius[others] + tau + 1e-4
        others, gap = others[reach], gap[reach]
        if len(others) == 0:
            return
        roots = found.find(representative[others])
        own_root = found.find(representative[[cell]])[0]
        settled = solid[cell] & solid[others] & (roots == own_root)
        others, gap = others[~settled], gap[~settled]
        if len(others) == 0:
            return
        # Cells of other clusters: first the floor under the members' residuals off
        # their subspace that the cell's centre gives, free, then the members' own.
        floor = index.member_residual_floor(np.array([cell]), index.group_of_cell[others])[0]
        near = index.within_residual_reach(floor, others)
        others, gap = others[near], gap[near]
        if len(others) == 0:
            return
        members = index.members(cell)
        groups, group_at = np.unique(index.group_of_cell[others], return_inverse=True)
        coords = index.group_coords(index.embeddings[index.rows[members]], groups)
        lowest = coords[:, :, -1].min(axis=1)
        near = index.within_residual_reach(lowest[group_at], others)
        others, gap = others[near], gap[near]
        if len(others) == 0:
            return
        # Cells that lie wholly within the twin distance of each other need no product.
        whole = gap + index.radius[cell] + index.radius[others] + 1e-4 <= tau
        for other in others[whole]:
            theirs = index.members(other)
            found.union(theirs, np.full(len(theirs), members[0]))
            found.union(members, np.full(len(members), theirs[0]))
        rest = others[~whole]
        if len(rest):
            base = np.concatenate([index.members(o) for o in rest])
            projected = dict(zip(groups.tolist(), coords, strict=True))
            _merge_block(index, found, members, base, projected)
        unsettled = np.append(others, cell)
        unsettled = unsettled[~solid[unsettled]]
        if len(unsettled):
            solid[unsettled] = _solid(index, found, unsettled)

    # Each cell meets the cells numbered after it, on the search's threads (its own
    # rows above too): the components do not depend on the order pairs are merged in,
    # and what a cell reads of the others' merges (roots, `solid`) only lets it skip
    # pairs that join nothing.
    for _ in ordered_map(merge_with_later_cells, range(n_cells - 1)):
        pass


def _merge_block(
    index: CellIndex,
    found: UnionFind,
    left: np.ndarray,
    right: np.ndarray,
    left_coords: dict[int, np.ndarray] | None = None,
) -> None:
    """Union every twin pair between positions `left` and `right` that joins two
    components (`left_coords`: their bound coordinates by group,
    `CellIndex.group_coords`).

    A pair already inside one component adds nothing, so its product is skipped: the
    left rows of their commonest component meet only the right rows outside it, and
    the other left rows meet all of them. Once a region has merged, a block between
    its cells shrinks to the few rows still apart (the outliers of a broad cluster).
    """
    left_roots = found.find(left)
    roots, counts = np.unique(left_roots, return_counts=True)
    common = roots[np.argmax(counts)]
    inside = left_roots == common
    apart = found.find(right) != common
    _merge_pairs(index, found, left, inside, right[apart], left_coords)
    if not inside.all():
        _merge_pairs(index, found, left, ~inside, right, left_coords)


def _merge_pairs(
    index: CellIndex,
    found: UnionFind,
    left: np.ndarray,
    chosen: np.ndarray,
    right: np.ndarray,
    left_coords: dict[int, np.ndarray] | None,
) -> None:
    """Union every twin pair between positions `left[chosen]` and `right`, block by block."""
    if not chosen.any() or len(right) == 0:
        return
    whole = chosen.all()  # a solid cell's rows: their coordinates as they are
    left = left if whole else left[chosen]
    coords = left_coords
    if left_coords is not None and not whole:
        coords = {g: c[chosen] for g, c in left_coords.items()}
    step = max(1, SCAN_BYTES // (4 * max(len(left), index.embeddings.shape[1])))
    left_vectors = index.embeddings[index.rows[left]]
    for start in range(0, len(right), step):
        part = right[start : start + step]
        i, j, _ = index.block_pairs(left_vectors, part, coords)
        if len(i):
            found.union(left[i], part[j])


def _solid(index: CellIndex, found: UnionFind, cells: np.ndarray) -> np.ndarray:
    """Whether all members of each of `cells` are in one component, in one `find`."""
    if len(cells) == 0:
        return np.zeros(0, bool)
    sizes = index.bounds[cells + 1] - index.bounds[cells]
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    roots = found.find(np.concatenate([index.members(c) for c in cells]))
    return np.logical_and.reduceat(roots == np.repeat(roots[starts], sizes), starts)


@dataclass
class TwinVotes:
    """For each query: how many twins it has per class, and its most similar twin per
    class, for the classes `ranked` (None: every class; the others' stay -1, -inf)."""

    count: np.ndarray  # (n_queries, n_classes) int64
    best: np.ndarray  # (n_queries, n_classes) base row, -1 without a twin of that class
    best_sim: np.ndarray  # (n_queries, n_classes) float64, -inf without a twin
    ranked: np.ndarray | None = None  # (n_classes,) bool

    @classmethod
    def empty(
        cls, n_queries: int, n_classes: int, ranked: Sequence[int] | None = None
    ) -> TwinVotes:
        is_ranked = None
        if ranked is not None:
            is_ranked = np.zeros(n_classes, bool)
            is_ranked[list(ranked)] = True
        return cls(
            count=np.zeros((n_queries, n_classes), np.int64),
            best=np.full((n_queries, n_classes), -1, np.int64),
            best_sim=np.full((n_queries, n_classes), -np.inf),
            ranked=is_ranked,
        )

    def add(
        self,
        embeddings: np.ndarray,
        queries: np.ndarray,
        q_rows: np.ndarray,
        b_rows: np.ndarray,
        classes: np.ndarray,
        sims: np.ndarray,
    ) -> None:
        """Count one block of twin pairs (query index, base row, its class, float32
        similarity) and keep each (query, class)'s most similar twin."""
        n, n_classes = self.count.shape
        key = q_rows * n_classes + classes
        self.count += np.bincount(key, minlength=n * n_classes).reshape(n, n_classes)
        self._keep_best(embeddings, queries, q_rows, b_rows, classes, sims)

    def add_whole(
        self,
        embeddings: np.ndarray,
        queries: np.ndarray,
        q_rows: np.ndarray,
        b_rows: np.ndarray,
        classes: np.ndarray,
        sims: np.ndarray,
        mask: np.ndarray,
    ) -> None:
        """Count a whole block: its rows' queries `q_rows` (distinct), its columns' base
        rows and classes, its float32 similarities and `mask`, the pairs that are twins.
        Per class, a count and a maximum per row replace a list of pairs; only the pairs
        within `DECISION_EPS` of a row's maximum go on to `_keep_best`."""
        for c in _present(classes):
            cols = np.flatnonzero(classes == c)
            hit = mask[:, cols]
            self.count[q_rows, c] += np.count_nonzero(hit, axis=1)
            if self._ranks(c):
                self._keep_best_of_block(
                    embeddings, queries, q_rows, b_rows[cols], c, sims[:, cols], hit
                )

    def add_every(
        self,
        embeddings: np.ndarray,
        queries: np.ndarray,
        q_rows: np.ndarray,
        b_rows: np.ndarray,
        classes: np.ndarray,
    ) -> None:
        """Count a block whose every pair is a twin (`BlockHits.every`): queries
        `q_rows` (distinct), base rows `b_rows` of these classes. The counts need no
        product; only the columns of ranked classes are multiplied, for the best twin,
        a few rows at a time (`SCAN_BYTES`)."""
        n_classes = self.count.shape[1]
        self.count[q_rows] += np.bincount(classes[classes >= 0], minlength=n_classes)
        step = max(1, SCAN_BYTES // (4 * len(q_rows)))
        vectors = None
        for c in _present(classes[classes >= 0]):
            if not self._ranks(c):
                continue
            vectors = queries[q_rows] if vectors is None else vectors
            cols = np.flatnonzero(classes == c)
            for start in range(0, len(cols), step):
                part = b_rows[cols[start : start + step]]
                sims = vectors @ embeddings[part].T
                self._keep_best_of_block(embeddings, queries, q_rows, part, c, sims, None)

    def _ranks(self, c: int) -> bool:
        return self.ranked is None or bool(self.ranked[c])

    def _keep_best_of_block(
        self,
        embeddings: np.ndarray,
        queries: np.ndarray,
        q_rows: np.ndarray,
        b_rows: np.ndarray,
        c: int,
        sims: np.ndarray,
        hit: np.ndarray | None,
    ) -> None:
        """`_keep_best` for a block of class `c`: per row, the twins (`hit`; None: every
        pair) within `DECISION_EPS` of its largest float32 similarity, where that reaches
        the best kept so far within `DECISION_EPS` (`_keep_best` would turn them away: a
        new member of a tight cluster meets its eval members in hundreds of blocks, and
        re-computing each block's best was most of a later round's twin stage)."""
        masked = sims if hit is None else np.where(hit, sims, -np.inf)
        top = masked.max(axis=1)
        held = self.best_sim[q_rows, c]
        rows = np.flatnonzero((top > -np.inf) & (top >= held - DECISION_EPS))
        i, j = np.nonzero(masked[rows] >= top[rows, None] - DECISION_EPS)
        i = rows[i]
        self._keep_best(
            embeddings, queries, q_rows[i], b_rows[j], np.full(len(i), c, np.int64), masked[i, j]
        )

    def _keep_best(
        self,
        embeddings: np.ndarray,
        queries: np.ndarray,
        q_rows: np.ndarray,
        b_rows: np.ndarray,
        classes: np.ndarray,
        sims: np.ndarray,
    ) -> None:
        """Keep each (query, class)'s most similar twin among these pairs and the best so
        far (ties: the smaller row); ranked classes only."""
        if self.ranked is not None:
            keep = self.ranked[classes]
            q_rows, b_rows, classes, sims = q_rows[keep], b_rows[keep], classes[keep], sims[keep]
        if len(q_rows) == 0:
            return
        n, n_classes = self.count.shape
        key = q_rows * n_classes + classes
        # The float32 products rank, and only the pairs within DECISION_EPS of each best
        # are re-computed, so memory stays per block.
        top = _max_per_key(key, q_rows, classes, sims, n * n_classes)
        # A pair below the best kept within DECISION_EPS cannot be the most similar: its
        # exact similarity is below that best (float32 errors are far smaller).
        held = self.best_sim.reshape(-1)[key]
        close = np.flatnonzero((sims >= top[key] - DECISION_EPS) & (sims >= held - DECISION_EPS))
        if len(close) == 0:
            return
        q_rows, classes, b_rows = q_rows[close], classes[close], b_rows[close]
        exact = np.round(exact_similarity(queries[q_rows], embeddings[b_rows]), RANK_DECIMALS)
        order = np.lexsort((b_rows, -exact, classes, q_rows))
        q_rows, classes, exact, b_rows = q_rows[order], classes[order], exact[order], b_rows[order]
        first = np.r_[True, (q_rows[1:] != q_rows[:-1]) | (classes[1:] != classes[:-1])]
        q_rows, classes, exact, b_rows = q_rows[first], classes[first], exact[first], b_rows[first]
        held = self.best_sim[q_rows, classes]
        better = (exact > held) | ((exact == held) & (b_rows < self.best[q_rows, classes]))
        self.best_sim[q_rows[better], classes[better]] = exact[better]
        self.best[q_rows[better], classes[better]] = b_rows[better]


def _present(classes: np.ndarray) -> np.ndarray:
    """The classes (small non-negative codes) that occur, ascending: a count per code,
    where `np.unique` would hash or sort the millions of pairs a new member of a tight
    cluster has (1.4 s of a 10k round's 14 s twin stage at 1M)."""
    return np.flatnonzero(np.bincount(classes)) if len(classes) else np.zeros(0, np.int64)


def _max_per_key(
    key: np.ndarray, q_rows: np.ndarray, classes: np.ndarray, sims: np.ndarray, size: int
) -> np.ndarray:
    """The largest of `sims` per key (-inf where none), key = query * n_classes + class.

    A search yields its queries in ascending order, so per class the pairs of one query
    are a run, and a maximum per run (`reduceat`) replaces `np.maximum.at`, which costs
    several times more per pair (a new member of a tight cluster has as many twins as
    the cluster has members).
    """
    top = np.full(size, -np.inf)
    if np.any(q_rows[1:] < q_rows[:-1]):
        np.maximum.at(top, key, sims)
        return top
    for c in _present(classes):
        mine = np.flatnonzero(classes == c)
        runs = np.flatnonzero(np.r_[True, q_rows[mine][1:] != q_rows[mine][:-1]])
        top[key[mine[runs]]] = np.maximum.reduceat(sims[mine], runs)
    return top


def twin_votes(
    embeddings: np.ndarray,
    queries: np.ndarray,
    searches: Sequence[tuple[CellIndex, np.ndarray]],
    n_classes: int,
    ranked: Sequence[int] | None = None,
) -> TwinVotes:
    """Twins of `queries` (vectors) among the rows of the indexes, counted per class,
    and the most similar twin of each class in `ranked` (None: every class).

    Each search is an index and the class of each of its positions (0..n_classes-1,
    e.g. a split code; -1: not counted); the indexes hold disjoint rows. Ties between
    equally similar twins go to the smaller row. Cells wholly within the threshold of a
    query are counted without a product (`CellIndex.hits`): a new member of a tight
    train cluster costs no product with its members unless train is ranked.
    """
    votes = TwinVotes.empty(len(queries), n_classes, ranked)
    for index, base_class in searches:
        for q, part, hits in index.hits(queries, whole_cells=True):
            if hits.every:
                classes = base_class[part]
                votes.add_every(embeddings, queries, q, index.rows[part], classes)
                continue
            if hits.mask is not None:
                classes = base_class[part]
                sims, mask = hits.sims, hits.mask
                if np.any(classes < 0):
                    counted = np.flatnonzero(classes >= 0)
                    part, classes = part[counted], classes[counted]
                    sims, mask = sims[:, counted], mask[:, counted]
                votes.add_whole(embeddings, queries, q, index.rows[part], classes, sims, mask)
                continue
            q_rows, b_pos, sims = q[hits.i], part[hits.j], hits.sims
            classes = base_class[b_pos]
            counted = classes >= 0
            if counted.any():
                votes.add(
                    embeddings,
                    queries,
                    q_rows[counted],
                    index.rows[b_pos[counted]],
                    classes[counted],
                    sims[counted],
                )
    return votes


def pairs_between(
    embeddings: np.ndarray, a: np.ndarray, b: np.ndarray, threshold: float, seed: int
) -> int:
    """Twin pairs between rows `a` and rows `b` (disjoint), counted exactly: a search of
    `a` over an index of `b` that counts cells wholly within the threshold without a
    product (`twin_votes`, nothing ranked), so a tight cluster costs no product."""
    if len(a) == 0 or len(b) == 0:
        return 0
    index = CellIndex(embeddings, b, threshold, seed)
    votes = twin_votes(embeddings, embeddings[a], [(index, np.zeros(len(b), np.int64))], 1, ())
    return int(votes.count.sum())
