"""Cuts along the twin graph: a component too large for either side, cut where it is thin.

A component larger than train can hold must be cut, and every twin pair the cut
separates leaks. A radial cut (`boundary`) holds out the members nearest one centre:
right for a blob, wrong for a chain. The frames of a video drift: consecutive frames
are twins, distant ones are not, so the video is one long thin component. A ball
around its middle cuts it at both ends, and a path that drifts leaves and re-enters a
ball many times, each crossing as many pairs as the chain is thick (a 9,000-frame
random walk cut radially crossed 118,496 pairs). Cut along the path, in one place.

**Order.** Members are ranked by hops in the graph of each member's `TWIN_GRAPH_K` most
similar twins, from either end of the component: the member farthest in hops from the
central one, and the member farthest from that (the double sweep of George and Liu's
pseudo-peripheral node finder), ties by similarity to the end, then by row. A prefix
of such an order is a piece grown from one end of the component. In a breadth-first
order every edge joins equal or adjacent levels, so a cut between levels crosses only
the edges between two levels: a few pairs for a chain, whatever its length.

**Counts.** The three orders, radial and from either end, are counted exactly in one pass
over the component's twin pairs (`prefix_crossings`: a `neighbors.CellIndex` search,
block by block); the caller keeps the order and cut with the fewest pairs per sample,
so a blob is still cut radially when that is cheaper. Memory: the component's rows
once, K edges per member and one block of similarities.

A *solid* component, inside a ball of radius tau / 2 (tau: the twin distance), has
every pair a twin: a cut of k members crosses k * (m - k) pairs in any order, so it is
counted without a search. Above `MAX_MEMBERS` the pass is not made: the caller counts
the radial cut on a band (`boundary.crossing_counts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import shortest_path

from .boundary import IMPOSSIBLE
from .neighbors import CellIndex, ranking_similarity, similarity_to_distance

# Twins kept per member for the graph the order follows: a chain of video frames has a
# handful of twins on each side, so its path is whole; a dense member keeps 8 of its
# many, enough to reach every level its neighbours reach, and m * 8 edges bound memory.
TWIN_GRAPH_K = 8
# Components up to this size are counted exactly: the pass over their twin pairs costs
# a few products per member in a chain, but up to m^2 in a broad dense component
# (20,000^2 x 512 is a few seconds on two cores); above, the radial band count decides.
MAX_MEMBERS = 20_000
# Candidate twins buffered per member before they are cut back to the K most similar.
BUFFER_FACTOR = 4


@dataclass
class Ordering:
    """Members in the order a cut takes them; `crossings[k]` the twin pairs between the
    first k and the rest, k = 0 .. m (exact)."""

    rows: np.ndarray
    crossings: np.ndarray
    radial: bool


def orderings(
    embeddings: np.ndarray,
    members: np.ndarray,
    centre_sims: np.ndarray,
    threshold: float,
    seed: int,
    group_of: np.ndarray | None = None,
) -> list[Ordering]:
    """The radial order of `members` (by `centre_sims`, most similar first, ties by row)
    and, unless the component is solid, the orders along its twin graph from either
    end, all counted. Empty above `MAX_MEMBERS` members.

    `group_of`: per member, its group (-1: none). A group must not be cut: each order
    keeps a group's members together from its first member on (`whole_groups`), and a
    cut inside a group counts as `IMPOSSIBLE` (`group_cuts`).
    """
    members = np.asarray(members, np.int64)
    m = len(members)
    radial = np.lexsort((members, -np.asarray(centre_sims, np.float64)))
    solid = is_solid(embeddings[members], threshold)
    if solid:
        orders = [radial]
    elif m > MAX_MEMBERS:
        return []
    else:
        index = CellIndex(np.ascontiguousarray(embeddings[members]), np.arange(m), threshold, seed)
        orders = [radial, *graph_orders(index, int(radial[0]))]
    if group_of is not None:
        orders = [whole_groups(order, group_of) for order in orders]
    counts = [_every_pair_crossed(m)] if solid else prefix_crossings(index, orders)
    if group_of is not None:
        counts = [
            np.where(group_cuts(group_of[order]), count, IMPOSSIBLE)
            for order, count in zip(orders, counts, strict=True)
        ]
    return [
        Ordering(members[order], count, radial=i == 0)
        for i, (order, count) in enumerate(zip(orders, counts, strict=True))
    ]


def whole_groups(order: np.ndarray, group_of: np.ndarray) -> np.ndarray:
    """`order` (positions into `group_of`) with each group's members moved up to its
    first member, the rest in order (-1: no group, a group of its own)."""
    codes = group_of[order]
    at = np.arange(len(order))
    grouped = codes >= 0
    _, first, inverse = np.unique(codes[grouped], return_index=True, return_inverse=True)
    key = at.copy()
    key[grouped] = at[grouped][first][inverse.reshape(-1)]
    return order[np.argsort(key, kind="stable")]


def group_cuts(codes: np.ndarray) -> np.ndarray:
    """Per cut k = 0 .. m of members in order with group `codes` (-1: none): whether it
    keeps every group on one side."""
    m = len(codes)
    grouped = np.flatnonzero(codes >= 0)
    _, inverse = np.unique(codes[grouped], return_inverse=True)
    inverse = inverse.reshape(-1)
    first = np.full(int(inverse.max()) + 1 if len(grouped) else 0, m)
    last = np.full(len(first), -1)
    np.minimum.at(first, inverse, grouped)
    np.maximum.at(last, inverse, grouped)
    inside = np.zeros(m + 2, np.int64)  # cuts first + 1 .. last split the group
    np.add.at(inside, first + 1, 1)
    np.add.at(inside, last + 1, -1)
    return np.cumsum(inside)[: m + 1] == 0


def is_solid(vectors: np.ndarray, threshold: float) -> bool:
    """Whether every pair of `vectors` (unit rows) is at or above `threshold`: they lie
    within tau / 2 of their mean (with a margin for float round-off)."""
    if len(vectors) < 2:
        return True
    mean = vectors.astype(np.float64).mean(axis=0)
    spread = np.sqrt(
        np.maximum(
            np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
            - 2.0 * (vectors.astype(np.float64) @ mean)
            + mean @ mean,
            0.0,
        )
    ).max()
    return bool(2.0 * spread <= similarity_to_distance(threshold) - 1e-6)


def graph_orders(index: CellIndex, start: int) -> list[np.ndarray]:
    """Positions of the index's rows ranked by hops from each end of the twin graph
    reached from `start`: the farthest row from `start`, then the farthest from that
    (module doc); ties by similarity to the end, then by position. Rows an end cannot
    reach come last.

    Both ends, because which is cheaper to cut from depends on the data: a video that
    starts in motion and ends on a still scene has few twins per frame at one end and
    hundreds at the other, and the graph's K edges per member make hops count frames,
    not how thick the chain is."""
    vectors = index.embeddings
    graph = twin_graph(index)
    orders = []
    source = start
    hops = shortest_path(graph, directed=False, unweighted=True, indices=source)
    for _ in range(2):
        source_sims = ranking_similarity(vectors, vectors[source])
        reached = np.where(np.isfinite(hops), hops, -1.0)
        end = int(np.lexsort((np.arange(len(hops)), source_sims, -reached))[0])
        hops = shortest_path(graph, directed=False, unweighted=True, indices=end)
        ranked = np.where(np.isfinite(hops), hops, len(hops))
        end_sims = ranking_similarity(vectors, vectors[end])
        orders.append(np.lexsort((np.arange(len(hops)), -end_sims, ranked)))
        source = end
    return orders


def twin_graph(index: CellIndex, k: int = TWIN_GRAPH_K) -> sparse.csr_matrix:
    """Each row of a self-join index linked to its k most similar twins (ties by
    position), symmetric, as a sparse matrix over positions."""
    m = len(index.rows)
    buffered: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    n_buffered = 0
    kept = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))
    for queries, base, hits in index.hits(index.embeddings):
        if hits.mask is not None:
            sims = np.where(hits.mask, hits.sims, -np.inf)
            sims[queries[:, None] == base[None, :]] = -np.inf
            width = min(k, sims.shape[1])
            top = np.argpartition(-sims, width - 1, axis=1)[:, :width]
            q = np.repeat(queries, width)
            b, s = base[top].ravel(), np.take_along_axis(sims, top, axis=1).ravel()
        else:
            q, b, s = queries[hits.i], base[hits.j], hits.sims
        real = (q != b) & np.isfinite(s)
        buffered.append((q[real], b[real], s[real].astype(np.float64)))
        n_buffered += int(np.sum(real))
        if n_buffered > BUFFER_FACTOR * k * m:
            kept = _top_per_row(kept, buffered, k)
            buffered, n_buffered = [], 0
    q, b, _ = _top_per_row(kept, buffered, k)
    graph = sparse.coo_matrix((np.ones(len(q), np.int8), (q, b)), shape=(m, m)).tocsr()
    return (graph + graph.T).tocsr()


def _top_per_row(
    kept: tuple[np.ndarray, np.ndarray, np.ndarray],
    buffered: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k most similar (ties: the smaller position) of each row's candidate twins."""
    q, b, s = (np.concatenate(parts) for parts in zip(kept, *buffered, strict=True))
    order = np.lexsort((b, -s, q))
    q, b, s = q[order], b[order], s[order]
    first = np.searchsorted(q, q, side="left")
    rank = np.arange(len(q)) - first
    keep = rank < k
    return q[keep], b[keep], s[keep]


def prefix_crossings(index: CellIndex, orders: list[np.ndarray]) -> list[np.ndarray]:
    """For each order (a permutation of the index's positions): the twin pairs between
    its first k and the rest, for every k = 0 .. m, exactly, in one pass."""
    m = len(index.rows)
    positions = []
    for order in orders:
        position = np.empty(m, np.int64)
        position[order] = np.arange(m)
        positions.append(position)
    diffs = [np.zeros(m + 2, np.int64) for _ in orders]
    for queries, base, hits in index.hits(index.embeddings):
        for position, diff in zip(positions, diffs, strict=True):
            # A pair at positions a < b is cut by every k with a < k <= b; each pair is
            # found from both ends, and counted from its earlier one.
            if hits.mask is not None:
                a, b = position[queries], position[base]
                earlier = hits.mask & (a[:, None] < b[None, :])
                diff += np.bincount(a + 1, earlier.sum(axis=1), minlength=m + 2).astype(np.int64)
                diff -= np.bincount(b + 1, earlier.sum(axis=0), minlength=m + 2).astype(np.int64)
            else:
                a, b = position[queries[hits.i]], position[base[hits.j]]
                a, b = a[a < b], b[a < b]
                diff += np.bincount(a + 1, minlength=m + 2)
                diff -= np.bincount(b + 1, minlength=m + 2)
    return [np.cumsum(diff)[: m + 1] for diff in diffs]


def crossings_along(
    embeddings: np.ndarray, ordered_rows: np.ndarray, threshold: float, seed: int
) -> np.ndarray:
    """`prefix_crossings` of rows in the given order, for every k = 0 .. len(rows)."""
    m = len(ordered_rows)
    vectors = np.ascontiguousarray(embeddings[ordered_rows])
    if is_solid(vectors, threshold):
        return _every_pair_crossed(m)
    index = CellIndex(vectors, np.arange(m), threshold, seed)
    return prefix_crossings(index, [np.arange(m)])[0]


def _every_pair_crossed(m: int) -> np.ndarray:
    """Crossings of every cut k = 0 .. m when every pair is a twin: k * (m - k)."""
    k = np.arange(m + 1, dtype=np.int64)
    return k * (m - k)
