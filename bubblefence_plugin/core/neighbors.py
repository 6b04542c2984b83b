"""Exact similarity search on unit vectors without an N x N matrix.

Two tools serve every step that needs neighbours:

* blockwise matrix products (`iter_similarity_blocks`, `nearest`, `knn`), whose
  memory is one block of queries times the base, for queries that are few
  (anchor candidates) or for one pass of the audit;
* `CellIndex`, an exact range search for thresholds (near twins, duplicates): rows
  are grouped into cells around seeded centres, and a cell is visited for a query
  only when the triangle inequality lets it hold a row within the threshold
  (||q - c|| <= R_cell + tau); within a block, a PCA projection (which never
  lengthens a distance) rules out pairs before any full-dimension product. Memory
  is one block of queries times the visited cells, whatever the data: a dense
  cluster makes more cells, not bigger blocks.

Decisions never rest on the last bits of a BLAS product, whose summation order
changes with the thread count and the processor: `pairs_at_least` re-computes the
similarities within `DECISION_EPS` of a threshold in float64 with a fixed order
(`exact_similarity`), and rankings use `exact_similarity` rounded to `RANK_DECIMALS`
with ties broken by row index.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import numpy as np
from scipy.spatial import cKDTree

# Environment variable that fixes the BLAS thread count of a round (see `blas_threads`).
THREADS_VARIABLE = "BUBBLEFENCE_BLAS_THREADS"
# Rounds over fewer rows run on one thread: their products gain little from a second.
SMALL_ROUND = 10_000
# Window over which the idle cores are measured at the start of a round.
IDLE_WINDOW_S = 0.1
# Rows of queries per matrix product: 256 x 1M float32 similarities = 1 GiB, so
# callers with a large base pass a smaller block.
DEFAULT_BLOCK = 1024
# float32 products of unit vectors are off by a few 1e-7 at most (D <= 4096, with
# BLAS's blocked sums); within this margin of a threshold the float64 value decides.
DECISION_EPS = 1e-5
# Rankings compare float64 similarities rounded here: far below any real difference,
# far above float64 round-off, so the order is the same on every machine.
RANK_DECIMALS = 9
# Rows per cell of a `CellIndex`: products of a few hundred rows keep BLAS efficient,
# and the per-cell bookkeeping small beside them.
CELL_SIZE = 256
# Dimensions of the PCA projection in which rows are assigned to cells; the bounds
# that decide which cells to visit are computed in full dimension.
CELL_DIMS = 32
# Memory of one block of similarities in a `CellIndex` search (with the rows gathered
# for it, a few times this at peak).
SCAN_BYTES = 16 * 2**20
# Below this share of a block surviving the projected look, the survivors are computed
# pair by pair (float64) rather than the whole block by BLAS: gathering two rows per
# pair costs more than a BLAS product beyond a few in a thousand.
SPARSE_SHARE = 0.002
# Margin on squared projected distances, far above float32 cancellation (~1e-6).
PROJECTION_MARGIN = 1e-4


def blas_threads(n_rows: int) -> int:
    """Threads for the BLAS products of a round over `n_rows` samples:
    `BUBBLEFENCE_BLAS_THREADS` when set; one for small rounds; else the cores that are
    idle right now (measured over `IDLE_WINDOW_S`), at least one.

    OpenBLAS threads spin while they wait for each other: on a machine whose cores are
    taken by other work they wait for a core instead, and a round at 100k took 363 s
    with two threads against 43 s with one (issue 12). The idle cores are measured at
    the start of the round rather than read from the load average, which lags a minute
    and counts this process's own previous round. The split never depends on the
    count (`pairs_at_least`, `tests/test_determinism.py`), only the time does.
    """
    chosen = os.environ.get(THREADS_VARIABLE)
    if chosen:
        return max(1, int(chosen))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if cores == 1 or n_rows < SMALL_ROUND:
        return 1
    idle = _idle_cores(cores)
    return int(max(1, min(cores, round(idle))))


def _idle_cores(cores: int) -> float:
    """Cores idle over the last `IDLE_WINDOW_S` (Linux /proc/stat), else from the load."""
    try:
        first = _cpu_ticks()
        time.sleep(IDLE_WINDOW_S)
        second = _cpu_ticks()
    except (OSError, ValueError, IndexError):
        return cores - os.getloadavg()[0]
    total = sum(second) - sum(first)
    idle = (second[3] + second[4]) - (first[3] + first[4])  # idle + iowait
    machine = os.cpu_count() or cores
    return machine * idle / total if total > 0 else float(cores)


def _cpu_ticks() -> list[int]:
    with open("/proc/stat", encoding="ascii") as stat:
        return [int(v) for v in stat.readline().split()[1:9]]


def similarity_to_distance(similarity: np.ndarray | float) -> np.ndarray | float:
    """Euclidean distance between unit vectors with this cosine similarity."""
    return np.sqrt(np.maximum(2.0 - 2.0 * np.asarray(similarity, dtype=np.float64), 0.0))


def block_rows(n_base: int, budget_bytes: int = 256 * 2**20) -> int:
    """Query rows per block so that one block of similarities fits the budget."""
    return int(max(1, min(DEFAULT_BLOCK, budget_bytes // max(1, 4 * n_base))))


def iter_similarity_blocks(
    queries: np.ndarray, base: np.ndarray, block: int | None = None
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (query slice, queries[slice] @ base.T) block by block."""
    block = block or block_rows(len(base))
    for start in range(0, len(queries), block):
        rows = slice(start, min(start + block, len(queries)))
        yield rows, queries[rows] @ base.T


def nearest(
    queries: np.ndarray, base: np.ndarray, block: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Most similar base row for every query: (similarity, index); (-inf, -1) on an empty base."""
    best_sim = np.full(len(queries), -np.inf, dtype=np.float32)
    best_idx = np.full(len(queries), -1, dtype=np.int64)
    if len(base) == 0:
        return best_sim, best_idx
    for rows, sims in iter_similarity_blocks(queries, base, block):
        idx = np.argmax(sims, axis=1)
        best_idx[rows] = idx
        best_sim[rows] = sims[np.arange(len(idx)), idx]
    return best_sim, best_idx


def knn(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    *,
    exclude_self: np.ndarray | None = None,
    block: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k most similar base rows per query, most similar first: (similarities, indices).

    `exclude_self[i]` is the base row of query i itself (or -1), left out of its list.
    k is capped at what the base can give.
    """
    k_eff = int(min(k, len(base) - (1 if exclude_self is not None else 0)))
    if k_eff <= 0:
        return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
    out_sim = np.empty((len(queries), k_eff), dtype=np.float32)
    out_idx = np.empty((len(queries), k_eff), dtype=np.int64)
    for rows, sims in iter_similarity_blocks(queries, base, block):
        if exclude_self is not None:
            own = exclude_self[rows]
            has_own = own >= 0
            sims[np.flatnonzero(has_own), own[has_own]] = -np.inf
        part = np.argpartition(-sims, k_eff - 1, axis=1)[:, :k_eff]
        part_sims = np.take_along_axis(sims, part, axis=1)
        # Ties broken by index so the order does not depend on the BLAS in use.
        order = np.lexsort((part, -part_sims), axis=1)
        out_idx[rows] = np.take_along_axis(part, order, axis=1)
        out_sim[rows] = np.take_along_axis(part_sims, order, axis=1)
    return out_sim, out_idx


def project_rows(
    embeddings: np.ndarray, rows: np.ndarray | None, projection: np.ndarray
) -> np.ndarray:
    """embeddings[rows] @ projection.T, computed block by block so no row copy is made."""
    n = len(embeddings) if rows is None else len(rows)
    out = np.empty((n, projection.shape[0]), dtype=np.float32)
    step = 65_536
    for start in range(0, n, step):
        stop = min(start + step, n)
        chunk = embeddings[start:stop] if rows is None else embeddings[rows[start:stop]]
        out[start:stop] = chunk @ projection.T
    return out


def exact_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise a[i] . b[i] in float64, summed in a fixed order (no BLAS): reproducible."""
    return np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64))


def ranking_similarity(vectors: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Similarities of `vectors` to `centre` for ranking: float64, fixed order, rounded."""
    sims = exact_similarity(vectors, np.broadcast_to(centre, vectors.shape))
    return np.round(sims, RANK_DECIMALS)


def exact_block(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """left @ right.T in float64: off by ~1e-16, far below any decision's margin."""
    return left.astype(np.float64) @ right.astype(np.float64).T


def pairs_at_least(
    sims: np.ndarray, threshold: float, left: np.ndarray, right: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) where `sims[i, j] >= threshold`, entries near the threshold decided in float64.

    `sims[i, j]` is a float32 product of `left[i]` and `right[j]`; the entries within
    `DECISION_EPS` of the threshold are re-computed in float64 (`exact_block` over the
    rows and columns that hold them), so the answer does not depend on BLAS. One pass
    over the block: its hits are few next to its size, whatever the data.
    """
    i, j = np.nonzero(sims >= threshold - DECISION_EPS)
    near = np.flatnonzero(sims[i, j] < threshold + DECISION_EPS)
    if len(near):
        rows, row_at = np.unique(i[near], return_inverse=True)
        cols, col_at = np.unique(j[near], return_inverse=True)
        exact = exact_block(left[rows], right[cols])
        keep = np.ones(len(i), bool)
        keep[near] = exact[row_at, col_at] >= threshold
        i, j = i[keep], j[keep]
    return i, j


def principal_axes(sample: np.ndarray, n_components: int) -> np.ndarray:
    """(p, D) orthonormal principal axes of a sample of rows, signs fixed (largest entry > 0).

    Used only to group rows into cells, so any orthonormal basis would be correct;
    the principal one makes cells compact.
    """
    x = sample.astype(np.float64) - sample.mean(axis=0, dtype=np.float64)
    p = int(min(n_components, x.shape[0], x.shape[1]))
    _, vectors = np.linalg.eigh(x.T @ x)
    axes = vectors[:, ::-1][:, :p].T
    signs = np.sign(axes[np.arange(p), np.argmax(np.abs(axes), axis=1)])
    return (axes * np.where(signs == 0, 1.0, signs)[:, None]).astype(np.float32)


class CellIndex:
    """An exact range search over `embeddings[rows]` for one similarity threshold.

    Rows are grouped into cells around seeded centres (real rows), assigned in a PCA
    projection. A cell keeps its centre c and radius R (the largest distance of a
    member to c, in full dimension). Two unit vectors are within the threshold t when
    their distance is at most tau = sqrt(2 - 2t); a query q can have such a
    neighbour in a cell only if ||q - c|| <= R + tau (triangle inequality), so
    only those cells are visited. Exact: every pair within the threshold is seen.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        rows: np.ndarray,
        threshold: float,
        seed: int,
    ) -> None:
        self.embeddings = embeddings
        self.rows = np.asarray(rows, dtype=np.int64)
        self.threshold = float(threshold)
        self.tau = float(similarity_to_distance(threshold))
        n = len(self.rows)
        rng = np.random.default_rng(seed)
        n_cells = max(1, -(-n // CELL_SIZE))
        sample = embeddings[self.rows[np.sort(rng.choice(n, min(n, 20_000), replace=False))]]
        axes = principal_axes(sample, CELL_DIMS) if n > 1 else np.eye(1, embeddings.shape[1])
        self.axes = axes.astype(np.float32)
        projected = project_rows(embeddings, self.rows, self.axes)
        self.projected = projected
        self.projected_norm2 = np.einsum("ij,ij->i", projected, projected)
        centre_positions = np.sort(rng.choice(n, n_cells, replace=False))
        _, cell = cKDTree(projected[centre_positions]).query(projected)
        cell = np.asarray(cell, dtype=np.int64)
        order = np.lexsort((np.arange(n), cell))
        self.order = order  # positions in `rows`, grouped by cell
        self.bounds = np.searchsorted(cell[order], np.arange(n_cells + 1))
        self.centres = embeddings[self.rows[centre_positions]]
        own = exact_similarity(embeddings[self.rows], self.centres[cell])
        # A little margin: a radius rounded down could hide a member from a query.
        distance = similarity_to_distance(own) + 1e-6
        self.radius = np.zeros(n_cells)
        np.maximum.at(self.radius, cell, distance)
        self.cell = cell

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def members(self, cell: int) -> np.ndarray:
        """Positions (in `rows`) of a cell's members, ascending."""
        return self.order[self.bounds[cell] : self.bounds[cell + 1]]

    def centre_distances(self, vectors: np.ndarray) -> np.ndarray:
        """(len(vectors), n_cells) distances to the cell centres, float64."""
        return similarity_to_distance(vectors @ self.centres.T)

    def reachable(self, vectors: np.ndarray) -> np.ndarray:
        """Cells that can hold a row within the threshold of any of `vectors`."""
        # The float32 product can be off by a few 1e-7: widen the test by as much.
        slack = self.radius + self.tau + 1e-4
        return np.flatnonzero((self.centre_distances(vectors) <= slack).any(axis=0))

    def pairs(self, queries: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (query indices, base positions, similarities) blocks holding every pair
        of a query and a row of the index at or above the threshold, exactly once,
        decided exactly. The similarities are float32 products (float64 where the pair
        was computed alone): good for ranking, not for deciding near ties.

        Queries are taken in groups that share their nearest cell, so that the cells
        they reach overlap; a group's block is split over its base rows to stay within
        `SCAN_BYTES`.
        """
        if len(queries) == 0 or len(self.rows) == 0:
            return
        nearest_cell = np.empty(len(queries), dtype=np.int64)
        for rows, sims in iter_similarity_blocks(queries, self.centres):
            nearest_cell[rows] = np.argmax(sims, axis=1)
        order = np.lexsort((np.arange(len(queries)), nearest_cell))
        projected = queries @ self.axes.T
        for start in range(0, len(order), DEFAULT_BLOCK // 4):
            group = np.sort(order[start : start + DEFAULT_BLOCK // 4])
            cells = self.reachable(queries[group])
            if len(cells) == 0:
                continue
            base = np.concatenate([self.members(c) for c in cells])
            step = max(1, SCAN_BYTES // (4 * max(len(group), self.embeddings.shape[1])))
            for b0 in range(0, len(base), step):
                part = base[b0 : b0 + step]
                i, j, sims = self.block_pairs(queries[group], projected[group], part)
                yield group[i], part[j], sims

    def block_pairs(
        self, left: np.ndarray, left_projected: np.ndarray, right: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(i, j, similarity) with left[i] . (row at position right[j]) >= threshold, exactly.

        The projected distance never exceeds the true one, so a first look in the
        `CELL_DIMS`-d projection (a product 16 times cheaper at D = 512) rules pairs out;
        when few remain (duplicates, tight thresholds) only they are computed, in
        float64, else the block is computed in full and `pairs_at_least` decides.
        """
        right_projected = self.projected[right]
        # ||a - b||^2 = |a|^2 + |b|^2 - 2 a.b, in place: one block of float32.
        distance2 = left_projected @ right_projected.T
        distance2 *= -2.0
        distance2 += np.einsum("ij,ij->i", left_projected, left_projected)[:, None]
        distance2 += self.projected_norm2[right][None, :]
        # The expanded square loses ~1e-6 to cancellation: an absolute margin covers it.
        i, j = np.nonzero(distance2 <= self.tau**2 + PROJECTION_MARGIN)
        right_vectors_of = self.rows[right]
        if len(i) <= SPARSE_SHARE * distance2.size:
            sims = exact_similarity(left[i], self.embeddings[right_vectors_of[j]])
            keep = sims >= self.threshold
            return i[keep], j[keep], sims[keep]
        right_vectors = self.embeddings[right_vectors_of]
        block = left @ right_vectors.T
        i, j = pairs_at_least(block, self.threshold, left, right_vectors)
        return i, j, block[i, j]


def nearest_centre(vectors: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Most similar centre per vector, decided the same way on every machine.

    Returns (index, similarity). A vector whose two best centres are within
    `DECISION_EPS` in the float32 product is re-decided in float64 (`exact_similarity`),
    ties to the smaller index.
    """
    index = np.zeros(len(vectors), dtype=np.int64)
    best = np.full(len(vectors), -np.inf)
    if len(centres) == 0:
        return np.full(len(vectors), -1, np.int64), best
    for rows, sims in iter_similarity_blocks(vectors, centres):
        top = np.argmax(sims, axis=1)
        index[rows] = top
        best[rows] = sims[np.arange(len(top)), top]
        if len(centres) > 1:
            ordered = -np.partition(-sims, 1, axis=1)[:, :2]
            close = np.flatnonzero(ordered[:, 0] - ordered[:, 1] < DECISION_EPS)
            if len(close):
                # Only the centres within the margin of the best can win.
                i, c = np.nonzero(sims[close] >= ordered[close, :1] - DECISION_EPS)
                row = rows.start + close[i]
                exact = np.round(exact_similarity(vectors[row], centres[c]), RANK_DECIMALS)
                order = np.lexsort((c, -exact, row))  # per row: most similar, then smaller
                first = order[np.r_[True, row[order][1:] != row[order][:-1]]]
                index[row[first]] = c[first]
                best[row[first]] = exact[first]
    return index, best


# --------------------------------------------------------------------------- unit rows

# Rows normalised per step: whole-matrix temporaries would double peak memory.
NORMALISE_BLOCK = 65_536
# Rows whose norm is this close to 1 count as unit already (embedding models and
# FiftyOne's own fields store float32 vectors normalised to about 1e-7).
UNIT_NORM_TOLERANCE = 1e-3


def unit_rows(
    embeddings: np.ndarray, out: np.ndarray | None = None, name: str = "embeddings"
) -> np.ndarray:
    """float32 rows scaled to unit length, as the state stores them (into `out` if given).

    Raises ValueError naming the rows that are not finite or are zero vectors.
    """
    x = np.asarray(embeddings)
    out = np.empty(x.shape, np.float32) if out is None else out
    for start in range(0, len(x), NORMALISE_BLOCK):
        block = out[start : start + NORMALISE_BLOCK]
        block[...] = x[start : start + NORMALISE_BLOCK]
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if len(bad):
            rows = (start + bad[:10]).tolist()
            raise ValueError(f"{name} rows {rows} contain NaN or inf")
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        zero = np.flatnonzero(norms == 0)
        if len(zero):
            raise ValueError(f"{name} rows {(start + zero[:10]).tolist()} are zero vectors")
        block /= norms[:, None]
    return out


def as_unit_rows(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """float32 unit rows of a 2-D numeric array, copied only when not unit already.

    For readers (audit, curation) that take arrays from users: rows within
    `UNIT_NORM_TOLERANCE` of unit length are used as they are, others are normalised
    (`unit_rows`); rows that are zero or not finite are refused by number.
    """
    x = np.asarray(x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(
            f"{name} must be a numeric 2-D array (n, d), got shape {x.shape}, dtype {x.dtype}"
        )
    x = x.astype(np.float32, copy=False)
    for start in range(0, len(x), NORMALISE_BLOCK):
        block = x[start : start + NORMALISE_BLOCK].astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        # NaN fails the comparison too, and `unit_rows` names the rows.
        if not np.all(np.abs(norms - 1.0) <= UNIT_NORM_TOLERANCE):
            return unit_rows(x, name=name)
    return x
