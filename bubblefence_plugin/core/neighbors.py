"""Exact similarity search on unit vectors without an N x N matrix.

Two tools serve every step that needs neighbours:

* blockwise matrix products (`iter_similarity_blocks`, `nearest`, `knn`), whose
  memory is one block of queries times the base, for queries that are few
  (anchor candidates) or for one pass of the audit;
* `CellIndex`, an exact range search for thresholds (near twins, duplicates, the
  closure margin): rows are split into cells in full dimension, and each top-level
  group keeps the subspace that best holds its members. A cell is visited for a query
  only when the triangle inequality and the query's residual off the cell's subspace
  let it hold a row within the threshold, and within a block one product of the
  subspace coordinates (plus the residual) bounds every similarity from above before
  any full-dimension product. Memory is one block of queries times the visited cells,
  whatever the data: a dense cluster makes more cells, not bigger blocks. A block of
  queries tests whole groups before their cells; a self-join (`own_pairs`) computes
  each pair once; an index is extended with a later round's rows (`extended`) rather
  than built again.

Decisions never rest on the last bits of a BLAS product, whose summation order
changes with the thread count and the processor: `pairs_at_least` re-computes the
similarities within `DECISION_EPS` of a threshold in float64 with a fixed order
(`exact_similarity`), and rankings use `exact_similarity` rounded to `RANK_DECIMALS`
with ties broken by row index.
"""

from __future__ import annotations

import collections
import copy
import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from scipy import linalg, sparse
from threadpoolctl import ThreadpoolController

T = TypeVar("T")
R = TypeVar("R")

# Environment variable that fixes the BLAS thread count of a round (see `blas_threads`).
THREADS_VARIABLE = "BUBBLEFENCE_BLAS_THREADS"
# Results each thread of `ordered_map` may compute ahead of its caller: enough that a
# thread rarely waits for the caller, few enough to bound what they hold.
AHEAD_PER_WORKER = 2
# Rounds over fewer rows run on one thread: their products gain little from a second.
SMALL_ROUND = 10_000
# Window over which the idle cores are measured at the start of a round.
IDLE_WINDOW_S = 0.1
# Rows per step of a pass over every row (normalising, projecting, measuring radii):
# temporaries of the whole matrix's size would double peak memory, and steps of a few
# MB reuse the same memory (at 65,536 rows each step's 128 MB gathers were mapped
# anew, ~0.6 s of page faults apiece on this project's VMs; bench/RESULTS.md).
ROW_STEP = 4096
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
# A cell that new rows grew past this many times `CELL_SIZE` (`CellIndex.extended`) is
# split again: up to twice the size, a cell's products stay the size BLAS likes.
GROWN_CELL = 2
# Parts a group of rows is split among per level of a `CellIndex`: at 1M rows, two
# levels of products with 64 seeds (about 1 s) reach cells of `CELL_SIZE`.
CELL_FANOUT = 64
# Rows of a group the seeds are drawn from: k-means++ is sequential, so its cost is
# this times the fan-out; a sample this size gives every cluster of a few % a seed.
SEED_SAMPLE = 4096
# Dimensions of a group's subspace (`CellIndex`): real embeddings and the benchmark
# mixtures have an intrinsic dimension of 8-16 per cluster, so 32 axes leave members
# only noise as residual.
CELL_DIMS = 32
# Rows a group's subspace is fitted on: the eigenvectors of their Gram matrix take a
# few ms, and a few hundred rows find the axes of a cluster of intrinsic dimension 16.
AXES_SAMPLE = 256
# Eigenvalues of that Gram matrix, in float32, below this share of the largest are
# rounding (float32 keeps about 7 digits): their eigenvectors are left out as axes.
AXIS_EIGEN_FLOOR = 1e-6
# Rows of a product of rows with seeds: a few MB of temporaries.
PRODUCT_ROWS = 4096
# Queries searched together: they share their nearest cell, so the cells they reach
# overlap, and their products are large enough for BLAS.
QUERY_GROUP = 256
# A row farther than this off its group's subspace is a stray of another cluster
# (`CellIndex._fit_groups`): in-cluster residuals of the benchmark mixtures are
# 0.05-0.1, other clusters' about 1, and the bound rules a cell out for a query whose
# residual exceeds the cell's largest by tau (0.32 at cosine 0.95, 0.45 at 0.90).
STRAY_RESIDUAL = 0.4
# Passes that regroup strays: each pass leaves the rows of clusters too small to get a
# seed in the last; the final pass keeps what is left, bound or not.
STRAY_PASSES = 3
# |P x|^2 of a float32 unit row is off by well under 1e-6, so sqrt(1 - |P x|^2 + this)
# bounds the residual |x - P x| from above, and exceeds it by at most 1e-3.
RESIDUAL_EPS = 1e-6
# Rows per step of `exact_similarity`: two float64 copies of 8,192 x 512 are 64 MB.
EXACT_ROWS = 8192
# What a residual computed for a cell centre may exceed the true one by (`_residual_bound`
# adds sqrt(RESIDUAL_EPS); the float32 projection is off by as much again), with room.
CENTRE_RESIDUAL_SLACK = 3 * np.sqrt(RESIDUAL_EPS)
# Memory of one block of similarities in `knn` (the block of query rows: a few hundred
# against the 10,000-20,000 rows of a LID reference or a map's placed samples).
KNN_BLOCK_BYTES = 16 * 2**20
# Memory of one block of similarities in a `CellIndex` search (with the rows gathered
# for it, a few times this at peak).
SCAN_BYTES = 16 * 2**20
# Below this share of a block surviving the projected look, the survivors are computed
# pair by pair (float64) rather than the whole block by BLAS: gathering two rows per
# pair costs more than a BLAS product beyond a few in a thousand.
SPARSE_SHARE = 0.002
# Share of a block the subspace bound must leave for `CellIndex.hits` to hand the block
# over whole: inside a tight cluster every pair is a twin, and a mask costs one pass
# where a pair list costs several per pair.
WHOLE_SHARE = 0.25


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


@functools.cache
def _thread_pools() -> ThreadpoolController:
    """The process's thread pools, found once: finding them reads every loaded
    library's name (about 2 ms), and some steps build hundreds of small indexes a
    round. numpy's BLAS, the one `one_blas_thread` limits, is loaded before this module."""
    return ThreadpoolController()


def one_blas_thread() -> Any:
    """A context in which numpy's BLAS runs on one thread: small products and solvers
    run several times slower on two, whose threads spin waiting for each other."""
    return _thread_pools().limit(limits=1, user_api="blas")


def search_workers() -> int:
    """Threads a search spreads its query groups over (`ordered_map`): the threads numpy's
    BLAS may use now (a round sets them, `blas_threads`), each then running its
    products on one. OpenBLAS's own threads split each product, small ones badly: a
    round at 200k took 66 s of CPU for 35.5 s on two (bench/RESULTS.md, 2026-12-06)."""
    counts = [pool["num_threads"] for pool in _thread_pools().select(user_api="blas").info()]
    return max(1, min(counts, default=1))


def ordered_map(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """fn(item) for every item, in the items' order, on `search_workers` threads with one
    BLAS thread each, at most `AHEAD_PER_WORKER` results a thread computed ahead of the
    caller; on one thread, lazily, here. Results come in order whatever the threads'
    timing, so a caller's outcome never depends on them."""
    workers = search_workers()
    if workers == 1:
        yield from map(fn, items)
        return
    with one_blas_thread(), ThreadPoolExecutor(workers) as pool:
        pending: collections.deque[Future[R]] = collections.deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) > AHEAD_PER_WORKER * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # the caller stopped early, or a call failed
                future.cancel()


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
    """Yield (query slice, queries[slice] @ base.T) block by block.

    Every block is written into one buffer, valid until the next block: a fresh block
    each time has its pages mapped anew, which on this project's 2-core VMs cost
    about as much as the product (0.6 s per 128 MB; bench/RESULTS.md).
    """
    block = block or block_rows(len(base))
    out = np.empty((min(block, len(queries)), len(base)), np.result_type(queries, base))
    for start in range(0, len(queries), block):
        rows = slice(start, min(start + block, len(queries)))
        sims = out[: rows.stop - rows.start]
        np.matmul(queries[rows], base.T, out=sims)
        yield rows, sims


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
    k_eff = _k_within(k, base, exclude_self)
    out_sim = np.empty((len(queries), k_eff), dtype=np.float32)
    out_idx = np.empty((len(queries), k_eff), dtype=np.int64)
    if k_eff == 0:
        return out_sim, out_idx
    for rows, negated in _negated_blocks(queries, base, exclude_self, block):
        part = np.argpartition(negated, k_eff - 1, axis=1)[:, :k_eff]
        part_sims = -np.take_along_axis(negated, part, axis=1)
        # Ties broken by index so the order does not depend on the BLAS in use.
        order = np.lexsort((part, -part_sims), axis=1)
        out_idx[rows] = np.take_along_axis(part, order, axis=1)
        out_sim[rows] = np.take_along_axis(part_sims, order, axis=1)
    return out_sim, out_idx


def knn_similarities(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    *,
    exclude_self: np.ndarray | None = None,
    block: int | None = None,
) -> np.ndarray:
    """The similarities `knn` returns, without the indices: for callers that need no
    neighbour's identity (LID), a partition of values alone, about twice as fast as one
    that carries an index. The same values, in the same order."""
    k_eff = _k_within(k, base, exclude_self)
    out = np.empty((len(queries), k_eff), dtype=np.float32)
    if k_eff == 0:
        return out
    for rows, negated in _negated_blocks(queries, base, exclude_self, block):
        out[rows] = -np.sort(np.partition(negated, k_eff - 1, axis=1)[:, :k_eff], axis=1)
    return out


def _k_within(k: int, base: np.ndarray, exclude_self: np.ndarray | None) -> int:
    """k capped at what the base can give (less the query itself where it is there)."""
    return int(max(0, min(k, len(base) - (1 if exclude_self is not None else 0))))


def _negated_blocks(
    queries: np.ndarray,
    base: np.ndarray,
    exclude_self: np.ndarray | None,
    block: int | None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(query rows, negated similarities to the base) block by block, each query's own
    base row at +inf: the k smallest are the k most similar."""
    # Blocks of `KNN_BLOCK_BYTES`: `argpartition` returns an int64 index of the whole
    # block, twice its size (at 1,024 x 20,000 a fresh 164 MB per block).
    block = block or block_rows(len(base), KNN_BLOCK_BYTES)
    for rows, sims in iter_similarity_blocks(queries, base, block):
        if exclude_self is not None:
            own = exclude_self[rows]
            has_own = own >= 0
            sims[np.flatnonzero(has_own), own[has_own]] = -np.inf
        np.negative(sims, out=sims)  # in place
        yield rows, sims


def project_rows(
    embeddings: np.ndarray, rows: np.ndarray | None, projection: np.ndarray
) -> np.ndarray:
    """embeddings[rows] @ projection.T, computed block by block so no row copy is made."""
    n = len(embeddings) if rows is None else len(rows)
    out = np.empty((n, projection.shape[0]), dtype=np.float32)
    for start in range(0, n, ROW_STEP):
        stop = min(start + ROW_STEP, n)
        chunk = embeddings[start:stop] if rows is None else embeddings[rows[start:stop]]
        out[start:stop] = chunk @ projection.T
    return out


def gathered_similarities(
    embeddings: np.ndarray, rows: np.ndarray, vector: np.ndarray
) -> np.ndarray:
    """embeddings[rows] @ vector, `ROW_STEP` rows at a time: the rows a candidate
    bubble's bound admits can be a quarter of the matrix, 512 MB gathered at once at 1M."""
    out = np.empty(len(rows), np.result_type(embeddings, vector))
    for start in range(0, len(rows), ROW_STEP):
        out[start : start + ROW_STEP] = embeddings[rows[start : start + ROW_STEP]] @ vector
    return out


def exact_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise a[i] . b[i] in float64, summed in a fixed order (no BLAS): reproducible.

    Rows are converted a step at a time: float64 copies of a whole tight cluster (every
    member against its bubble's centre) would cost four times its float32 rows.
    """
    out = np.empty(len(a), np.float64)
    for start in range(0, len(a), EXACT_ROWS):
        step = slice(start, start + EXACT_ROWS)
        out[step] = np.einsum("ij,ij->i", a[step].astype(np.float64), b[step].astype(np.float64))
    return out


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


def at_least(sims: np.ndarray, threshold: float, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """`sims >= threshold` as a mask, decided as `pairs_at_least` does: for blocks where
    most entries are hits, whose pair lists would cost more than the block."""
    mask = sims >= threshold
    near = (sims >= threshold - DECISION_EPS) & (sims < threshold + DECISION_EPS)
    i, j = np.nonzero(near)
    if len(i):
        rows, row_at = np.unique(i, return_inverse=True)
        cols, col_at = np.unique(j, return_inverse=True)
        mask[i, j] = exact_block(left[rows], right[cols])[row_at, col_at] >= threshold
    return mask


def subspace_axes(sample: np.ndarray, n_components: int) -> np.ndarray:
    """(p, D) orthonormal axes of the subspace that best holds a sample of rows (its top
    right singular vectors, not centred: the mean direction is part of what members
    share), from the eigenvectors of the sample's Gram matrix, which is small.

    Any orthonormal basis keeps the bounds of `CellIndex` exact; the best-fitting one
    leaves members the smallest residuals, and so rules the most pairs out.
    """
    x = sample.astype(np.float64)
    n = len(x)
    p = min(n_components, x.shape[1], n)
    # Only the top p eigenpairs, in float32: 2.7x faster than all of them in float64
    # (256 rows, 32 axes), and any error in them costs tightness, never exactness.
    gram = (x @ x.T).astype(np.float32)
    values, vectors = linalg.eigh(gram, subset_by_index=[n - p, n - 1], driver="evr")
    top = np.argsort(-values, kind="stable")
    # Below float32's resolution of the largest eigenvalue an eigenvector is noise.
    top = top[values[top] > AXIS_EIGEN_FLOOR * max(float(values.max()), 1e-30)]
    # Orthonormal to working precision whatever the eigen-solver left.
    axes, _ = np.linalg.qr(x.T @ vectors[:, top].astype(np.float64))
    return axes.T.astype(np.float32)


def plus_plus_seeds(sample: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next seed drawn with probability ~ distance^2 to the chosen,
    so that a small, distant cluster gets a seed of its own. Returns (k, D) float32."""
    first = int(rng.integers(len(sample)))
    seeds = [sample[first]]
    # One matrix-vector product per seed: on two BLAS threads several times slower.
    with one_blas_thread():
        closest = 2.0 - 2.0 * (sample @ sample[first]).astype(np.float64)
        for _ in range(1, k):
            weights = np.maximum(closest, 0.0)
            total = weights.sum()
            pick = (
                int(rng.choice(len(sample), p=weights / total))
                if total > 0
                else int(rng.integers(len(sample)))
            )
            seeds.append(sample[pick])
            closest = np.minimum(closest, 2.0 - 2.0 * (sample @ sample[pick]).astype(np.float64))
    return np.vstack(seeds).astype(np.float32)


def _split(
    embeddings: np.ndarray,
    rows: np.ndarray,
    group: np.ndarray,
    rng: np.random.Generator,
    spread: bool,
) -> list[np.ndarray]:
    """`group` (positions in `rows`) split among up to `CELL_FANOUT` seeds, each row going
    to its most similar seed; parts in seed order, empty ones left out.

    `spread`: k-means++ seeds (on a sample of the group), so that every cluster of the
    data gets a seed, for the top-level split; else seeded random rows, enough within
    a group that holds one cluster (k-means++ is sequential: 0.2 ms a seed).
    """
    parts = min(-(-len(group) // CELL_SIZE), CELL_FANOUT)
    if spread:
        sample = group
        if len(group) > SEED_SAMPLE:
            sample = np.sort(rng.choice(group, SEED_SAMPLE, replace=False))
        seeds = plus_plus_seeds(embeddings[rows[sample]], parts, rng)
    else:
        seeds = embeddings[rows[np.sort(rng.choice(group, parts, replace=False))]]
    part = np.empty(len(group), np.int64)
    for start in range(0, len(group), PRODUCT_ROWS):
        block = group[start : start + PRODUCT_ROWS]
        part[start : start + len(block)] = np.argmax(embeddings[rows[block]] @ seeds.T, axis=1)
    if np.all(part == part[0]):
        # Rows no seed tells apart (copies of one vector): cut by position.
        part = np.arange(len(group)) // CELL_SIZE
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(part.max() + 2))
    edges = zip(bounds[:-1], bounds[1:], strict=True)
    return [group[order[a:b]] for a, b in edges if b > a]


def _cells_of(
    embeddings: np.ndarray, rows: np.ndarray, members: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """`members` (positions in `rows`) split (`_split`) until every part holds at most
    `CELL_SIZE` rows: the cells of one group."""
    cells = []
    todo = [members]
    while todo:
        part = todo.pop()
        if len(part) <= CELL_SIZE:
            cells.append(part)
        else:
            todo.extend(reversed(_split(embeddings, rows, part, rng, spread=False)))
    return cells


class CellIndex:
    """An exact range search over `embeddings[rows]` at a similarity threshold.

    Two unit vectors are within the threshold t when their distance is at most
    tau = sqrt(2 - 2t). Two bounds rule out almost every pair before a full-dimension
    product, each exact:

    * **cells**: rows are split among `CELL_FANOUT` seeds in full dimension (k-means++
      at the top, random rows below), the parts again, down to cells of about
      `CELL_SIZE` rows. A cell keeps its centre
      c (the members' normalised mean) and radius R; a query q can have a neighbour in
      it only if ||q - c|| <= R + tau (triangle inequality).
    * **subspaces**: each top-level part (a *group*: at 1M rows about 16k) keeps the
      `CELL_DIMS` axes that best hold its members, and each member its coordinates P x
      and residual r_x = x - P x. For any q, q . x = P q . P x + r_q . r_x
      <= P q . P x + |r_q| |r_x|: one product of `CELL_DIMS` + 1 coordinates bounds the
      similarity (`_bound_coords`). Real embeddings lie near a low-dimensional
      manifold, so within a group residuals are small and the bound is nearly the
      similarity; a query from another cluster has a large residual, and a whole cell
      is ruled out at once when ||q - x|| >= |r_q| - max |r_x| > tau. A broad cluster,
      whose cells all reach each other, is where the triangle inequality fails and
      this bound does the work.

    The cells do not depend on the threshold: `at` searches the same index at
    another one, so one index serves every step of a round that searches the same rows.
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
        if len(self.rows) == 0:
            raise ValueError("a CellIndex needs at least one row")
        self.threshold = float(threshold)
        self.tau = float(similarity_to_distance(threshold))
        rng = np.random.default_rng(seed)
        groups = self._fit_groups(rng)
        cells: list[np.ndarray] = []
        cell_group: list[int] = []
        for g, members in enumerate(groups):
            for part in _cells_of(embeddings, self.rows, members, rng):
                cells.append(part)
                cell_group.append(g)
        self.group_of_cell = np.asarray(cell_group, np.int64)
        self.cell = np.empty(len(self.rows), np.int64)
        for c, members in enumerate(cells):
            self.cell[members] = c
        self.built_rows = len(self.rows)
        self._measure_cells()

    def extended(self, embeddings: np.ndarray, new_rows: np.ndarray, seed: int) -> CellIndex:
        """This index over `embeddings` (the same rows at the same places: an array that
        grew) with `new_rows` added, without fitting groups and cells again.

        A new row joins the cell with the nearest centre, in the subspace of that
        cell's group; a cell grown past `GROWN_CELL` times `CELL_SIZE` rows is split
        again (`_cells_of`), and every cell's centre, radius and residual are measured
        anew, so both bounds stay exact. Cells fitted on earlier rows hold a new
        cluster's rows loosely (large residuals, wide cells): callers build a fresh index
        once the added rows are a large share of it (`built_rows`, `REBUILD_SHARE`).
        """
        index = copy.copy(self)
        index.embeddings = embeddings
        new_rows = np.asarray(new_rows, np.int64)
        if len(new_rows) == 0:
            return index
        nearest = np.empty(len(new_rows), np.int64)
        for start in range(0, len(new_rows), PRODUCT_ROWS):
            vectors = embeddings[new_rows[start : start + PRODUCT_ROWS]]
            nearest[start : start + len(vectors)] = np.argmax(vectors @ self.centres.T, axis=1)
        new_group = self.group_of_cell[nearest]
        new_coords = np.empty((len(new_rows), self.coords.shape[1]), np.float32)
        for g in np.unique(new_group):
            joining = np.flatnonzero(new_group == g)
            projected = project_rows(embeddings, new_rows[joining], self.axes[g])
            new_coords[joining] = _bound_coords(projected)
        index.rows = np.concatenate([self.rows, new_rows])
        index.group = np.concatenate([self.group, new_group])
        index.coords = np.concatenate([self.coords, new_coords])
        cell = np.concatenate([self.cell, nearest])
        group_of_cell = list(self.group_of_cell)
        rng = np.random.default_rng([seed, len(index.rows)])
        by_cell = np.argsort(cell, kind="stable")
        bounds = np.searchsorted(cell[by_cell], np.arange(len(group_of_cell) + 1))
        for c in np.flatnonzero(np.diff(bounds) > GROWN_CELL * CELL_SIZE):
            parts = _cells_of(embeddings, index.rows, by_cell[bounds[c] : bounds[c + 1]], rng)
            for part in parts[1:]:
                cell[part] = len(group_of_cell)
                group_of_cell.append(group_of_cell[c])
        # A group's cells stay a run (`reachable`): number them group by group again.
        by_group = np.argsort(group_of_cell, kind="stable")
        renumbered = np.empty(len(by_group), np.int64)
        renumbered[by_group] = np.arange(len(by_group))
        index.cell = renumbered[cell]
        index.group_of_cell = np.asarray(group_of_cell, np.int64)[by_group]
        index._measure_cells()
        return index

    def structure(self) -> dict[str, np.ndarray]:
        """What rebuilds this index without fitting it again (`restored`): its rows,
        each row's cell, each cell's group, the groups' axes (one row per axis) and
        the rows it was built on."""
        return {
            "rows": self.rows,
            "cell": self.cell,
            "group_of_cell": self.group_of_cell,
            "axes": self.axes.reshape(-1, self.axes.shape[2]),
            "built_rows": np.array([self.built_rows], np.int64),
        }

    @staticmethod
    def structure_without(
        structure: Mapping[str, np.ndarray], new_row: np.ndarray
    ) -> dict[str, np.ndarray] | None:
        """`structure` after rows were dropped and the rest renumbered: `new_row[r]` is
        row r's new number, -1 where it was dropped. Cells and groups left empty go, the
        others keep their members and axes (any cells and axes keep the bounds exact);
        None when no row is left or the structure is malformed."""
        found = _structure_arrays(structure)
        if found is None or found[0][-1] >= len(new_row):
            return None
        rows, cell, group_of_cell, axes, built = found
        keep = new_row[rows] >= 0
        if not keep.any():
            return None
        p = len(axes) // (int(group_of_cell.max()) + 1)  # axes per group
        cells, cell = np.unique(cell[keep], return_inverse=True)
        groups, group_of_cell = np.unique(group_of_cell[cells], return_inverse=True)
        axes = axes.reshape(-1, p, axes.shape[1])[groups].reshape(-1, axes.shape[1])
        return {
            "rows": new_row[rows[keep]],
            "cell": cell.reshape(-1),
            "group_of_cell": group_of_cell.reshape(-1),
            "axes": axes,
            "built_rows": np.array([min(built, int(keep.sum()))], np.int64),
        }

    @classmethod
    def restored(
        cls, embeddings: np.ndarray, structure: Mapping[str, np.ndarray], threshold: float
    ) -> CellIndex | None:
        """The index of `structure` (`CellIndex.structure`) over `embeddings`, its rows'
        coordinates and its cells' centres and radii measured afresh: any cells and any
        orthonormal axes keep the bounds exact, so the search finds the same pairs as a
        fitted index. None where the structure does not fit these embeddings (then a
        caller builds one): fitting the groups and cells is most of a build (7.4 s of
        one at 1M rows, where measuring takes 2.7 s).
        """
        found = _structure_arrays(structure)
        if found is None:
            return None
        rows, cell, group_of_cell, axes, built = found
        dim = embeddings.shape[1]
        p = min(CELL_DIMS, dim)
        n_groups = int(group_of_cell.max()) + 1
        if rows[-1] >= len(embeddings) or axes.shape != (n_groups * p, dim):
            return None
        index = cls.__new__(cls)
        index.embeddings = embeddings
        index.rows = rows
        index.threshold = float(threshold)
        index.tau = float(similarity_to_distance(threshold))
        index.axes = axes.astype(np.float32).reshape(n_groups, p, dim)
        index.cell = cell
        index.group_of_cell = group_of_cell
        index.group = group_of_cell[cell]
        index.built_rows = built
        index.coords = np.empty((len(rows), p + 1), np.float32)
        for g in np.unique(index.group):
            members = np.flatnonzero(index.group == g)
            projected = project_rows(embeddings, rows[members], index.axes[g])
            index.coords[members] = _bound_coords(projected)
        index._measure_cells()
        return index

    def _measure_cells(self) -> None:
        """The cells' member order, centres, radii and largest residuals, and the groups'
        balls, from `cell` (per position) and `group_of_cell`."""
        cell = self.cell
        n_cells = len(self.group_of_cell)
        self.order = np.lexsort((np.arange(len(cell)), cell))  # positions, grouped by cell
        self.bounds = np.searchsorted(cell[self.order], np.arange(n_cells + 1))
        self.centres = self._mean_directions()
        self.radius = np.zeros(n_cells)
        for start in range(0, len(cell), ROW_STEP):
            part = slice(start, start + ROW_STEP)
            own = np.einsum(
                "ij,ij->i",
                self.embeddings[self.rows[part]],
                self.centres[cell[part]],
                dtype=np.float32,
            )
            # A float32 similarity is within DECISION_EPS of the true one, so the
            # distance of `own - DECISION_EPS` bounds the true distance from above: a
            # radius rounded down could hide a member from a query.
            np.maximum.at(self.radius, cell[part], similarity_to_distance(own - DECISION_EPS))
        # The largest member residual per cell: a cell, unlike a whole group, rarely
        # holds a stray of another cluster, whose residual would loosen the bound.
        self.cell_residual = np.zeros(n_cells)
        np.maximum.at(self.cell_residual, cell, self.coords[:, -1])
        self._fit_group_balls()
        self._centre_residual: np.ndarray | None = None  # `_centre_residuals`, when asked
        self._grouped: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # `upper_bounds`

    def _fit_group_balls(self) -> None:
        """Each group's ball, tested before its cells (`reachable`): the normalised sum of
        its cells' centres weighted by size, and the largest distance from it to a member
        bounded through the cells (||x - C|| <= ||c - C|| + R_c), so no pass over the rows."""
        n_groups = len(self.axes)
        sizes = np.diff(self.bounds).astype(np.float64)
        sums = np.zeros((n_groups, self.embeddings.shape[1]))
        np.add.at(sums, self.group_of_cell, self.centres * sizes[:, None])
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        # Any unit vector is a valid centre: the radius below is measured from it.
        first_cell = np.searchsorted(self.group_of_cell, np.arange(n_groups))
        fallback = self.centres[np.minimum(first_cell, len(self.centres) - 1)]
        centres = np.where(norms > 0, sums / np.where(norms > 0, norms, 1.0), fallback)
        self.group_centres = centres.astype(np.float32)
        own = np.einsum("ij,ij->i", self.centres, self.group_centres[self.group_of_cell])
        reach = similarity_to_distance(own - DECISION_EPS) + self.radius
        self.group_radius = np.zeros(n_groups)
        np.maximum.at(self.group_radius, self.group_of_cell, reach)
        self.group_cell_residual = np.zeros(n_groups)
        np.maximum.at(self.group_cell_residual, self.group_of_cell, self.cell_residual)

    def _fit_groups(self, rng: np.random.Generator) -> list[np.ndarray]:
        """The groups (positions), with each group's axes and each row's coordinates and
        residual in its group's axes.

        Rows are split among seeds (`_split`) and each part gets its subspace. A row
        farther than `STRAY_RESIDUAL` off its part's subspace (a member of a small
        cluster that no seed fell in) would loosen the bound of every cell it joins: it
        leaves the part, and the strays are grouped again among themselves, up to
        `STRAY_PASSES` times; the last pass keeps every row it is given, and so does
        the pass after one whose rows were mostly strays.
        """
        n = len(self.rows)
        p = min(CELL_DIMS, self.embeddings.shape[1])
        self.coords = np.empty((n, p + 1), np.float32)
        groups: list[np.ndarray] = []
        axes_of: list[np.ndarray] = []
        pending = np.arange(n)
        # Products and solvers this small run several times slower on two threads.
        with one_blas_thread():
            final = False
            for attempt in range(STRAY_PASSES):
                final = final or attempt == STRAY_PASSES - 1
                strays = []
                for part in self._parts(pending, rng):
                    axes, coords, residual = self._fit_part(part, rng)
                    keep = np.ones(len(part), bool) if final else residual <= STRAY_RESIDUAL
                    if keep.any():
                        groups.append(part[keep])
                        axes_of.append(axes)
                        self.coords[part[keep]] = coords[keep]
                    strays.append(part[~keep])
                # Data of a high intrinsic dimension leaves most rows off any 32 axes:
                # when most rows were strays, the next pass keeps them all.
                final = sum(map(len, strays)) > len(pending) / 2
                pending = np.concatenate(strays)
                if len(pending) == 0:
                    break
        self.axes = np.stack(axes_of)
        self.group = np.empty(n, np.int64)
        for g, members in enumerate(groups):
            self.group[members] = g
        return groups

    def _parts(self, positions: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """The top-level split of `positions` among k-means++ seeds (one part if small)."""
        if len(positions) <= CELL_SIZE:
            return [positions]
        return _split(self.embeddings, self.rows, np.sort(positions), rng, spread=True)

    def _fit_part(
        self, part: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(axes, bound coordinates, residuals) of the positions `part` in their own
        subspace (`_bound_coords`)."""
        p = self.coords.shape[1] - 1
        sample = part
        if len(part) > AXES_SAMPLE:
            sample = np.sort(rng.choice(part, AXES_SAMPLE, replace=False))
        axes = np.zeros((p, self.embeddings.shape[1]), np.float32)
        fitted = subspace_axes(self.embeddings[self.rows[sample]], p)
        axes[: len(fitted)] = fitted
        coords = _bound_coords(project_rows(self.embeddings, self.rows[part], axes))
        return axes, coords, coords[:, -1]

    def _mean_directions(self) -> np.ndarray:
        """Each cell's normalised member mean (its first member where the mean is 0)."""
        n_cells = len(self.bounds) - 1
        # A sparse membership matrix sums each cell's rows in a fixed order (no BLAS),
        # reading each row once: several times faster than `reduceat` over gathered rows.
        membership = sparse.csr_matrix(
            (np.ones(len(self.rows), np.float32), (self.cell, self.rows)),
            shape=(n_cells, len(self.embeddings)),
        )
        sums = (membership @ self.embeddings).astype(np.float64)
        norms = np.linalg.norm(sums, axis=1)
        first = self.embeddings[self.rows[self.order[self.bounds[:-1]]]]
        scale = np.where(norms > 0, norms, 1.0)[:, None]
        return np.where(norms[:, None] > 0, sums / scale, first).astype(np.float32)

    def at(self, threshold: float) -> CellIndex:
        """The same cells searched at another threshold."""
        view = copy.copy(self)
        view.threshold = float(threshold)
        view.tau = float(similarity_to_distance(threshold))
        return view

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def members(self, cell: int) -> np.ndarray:
        """Positions (in `rows`) of a cell's members, ascending."""
        return self.order[self.bounds[cell] : self.bounds[cell + 1]]

    def centre_distances(self, vectors: np.ndarray, cells: np.ndarray | None = None) -> np.ndarray:
        """(len(vectors), len(cells)) distances to the cell centres, float64; all cells
        by default."""
        centres = self.centres if cells is None else self.centres[cells]
        return similarity_to_distance(vectors @ centres.T)

    def group_residuals(self, vectors: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """(len(vectors), len(groups)) residual of each vector off each group's subspace
        (bounded from above, `RESIDUAL_EPS`); all groups by default."""
        return self.group_coords(vectors, groups)[:, :, -1].T

    def group_coords(self, vectors: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """(len(groups), len(vectors), `CELL_DIMS` + 1) bound coordinates of each vector
        in each group's subspace (`_bound_coords`), in one product; all groups by
        default. A caller that tests residuals and then searches the same groups
        passes them on to `block_pairs` rather than projecting twice."""
        axes = self.axes if groups is None else self.axes[groups]
        n_groups, p, dim = axes.shape
        coords = (vectors @ axes.reshape(n_groups * p, dim).T).reshape(len(vectors), n_groups, p)
        coords = coords.transpose(1, 0, 2)
        residual = _residual_bound(np.einsum("gip,gip->gi", coords, coords))
        return np.concatenate([coords, residual[:, :, None]], axis=2).astype(np.float32)

    def within_residual_reach(self, residual: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """Whether a row whose residual off the subspace of each cell's group is at
        least `residual` can be within the threshold of a member of each of `cells`:
        ||q - x|| >= |r_q| - |r_x| (class docstring)."""
        # Residuals are bounds from above, a query's by at most sqrt(RESIDUAL_EPS).
        return residual - self.cell_residual[cells] - np.sqrt(RESIDUAL_EPS) <= self.tau

    def reachable(
        self, vectors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        """(cells, reach, projected): the cells that can hold a row within the threshold
        of any of `vectors`, ascending, (len(vectors), len(cells)) bool per vector (both
        bounds of the class docstring), and the vectors' bound coordinates in the
        subspace of each group of those cells (`group_coords`), for `block_pairs`.

        Groups are tested first, by their ball and by the vectors' residuals off their
        subspace, and only the cells of groups that pass are tested one by one: a block of
        queries from one cluster meets a few groups' cells, not every cell of the index.
        """
        # The float32 products can be off by a few 1e-7: widen the tests by as much.
        to_group = similarity_to_distance(vectors @ self.group_centres.T)
        near_group = to_group <= self.group_radius + self.tau + 1e-4
        groups = np.flatnonzero(near_group.any(axis=0))
        coords = self.group_coords(vectors, groups)
        residual = coords[:, :, -1].T
        slack = residual - self.group_cell_residual[groups] - np.sqrt(RESIDUAL_EPS)
        groups_ok = near_group[:, groups] & (slack <= self.tau)
        keep = groups_ok.any(axis=0)
        groups, residual, groups_ok = groups[keep], residual[:, keep], groups_ok[:, keep]
        projected = dict(zip(groups.tolist(), coords[keep], strict=True))
        # Cells are numbered group by group (`__init__`), so a group's cells are a run.
        first = np.searchsorted(self.group_of_cell, groups)
        last = np.searchsorted(self.group_of_cell, groups, side="right")
        cells = np.concatenate([np.arange(a, b) for a, b in zip(first, last, strict=True)] or [[]])
        cells = cells.astype(np.int64)
        at_group = np.repeat(np.arange(len(groups)), last - first)
        near = self.centre_distances(vectors, cells) <= self.radius[cells] + self.tau + 1e-4
        reach = near & groups_ok[:, at_group]
        reach &= self.within_residual_reach(residual[:, at_group], cells)
        return cells, reach, projected

    def cells_within(self, vectors: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """(len(vectors), len(cells)) whether every member of each cell is within the
        threshold of each vector: ||q - c|| + R <= tau (triangle inequality), the
        distance to the centre bounded from above, as the radii are (`DECISION_EPS`)."""
        farthest = similarity_to_distance(vectors @ self.centres[cells].T - DECISION_EPS)
        return farthest + self.radius[cells] <= self.tau

    def _reachable_from_cells(
        self, vectors: np.ndarray, own_cells: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        """`reachable` for rows of this index in a self-join (`own_pairs`): `own_cells`
        their cells, only cells numbered from the first of them on.

        The cells are chosen by the queries' own cells first: another cell can hold a
        partner of a member of cell c only if their centres are within both radii and
        tau, and if the member's residual off the other cell's subspace, at least c's
        centre's less c's radius (a residual moves by at most the distance moved), is
        within tau of the other cell's largest. Each query then meets those cells alone.
        """
        mine = np.unique(own_cells)
        later = np.arange(int(mine[0]), len(self))
        gap = similarity_to_distance(self.centres[mine] @ self.centres[later].T)
        near = gap <= self.radius[mine, None] + self.radius[later] + self.tau + 1e-4
        lowest = self.member_residual_floor(mine, self.group_of_cell[later])
        near &= lowest - self.cell_residual[later] <= self.tau
        cells = later[near.any(axis=0)]
        reach = self.centre_distances(vectors, cells) <= self.radius[cells] + self.tau + 1e-4
        # Only the groups of cells some query reaches are projected on: at a high
        # threshold (duplicates) most cells near the queries' cells are out of reach.
        reached = reach.any(axis=0)
        cells, reach = cells[reached], reach[:, reached]
        groups, at_group = np.unique(self.group_of_cell[cells], return_inverse=True)
        coords = self.group_coords(vectors, groups)
        reach &= self.within_residual_reach(coords[at_group.reshape(-1), :, -1].T, cells)
        return cells, reach, dict(zip(groups.tolist(), coords, strict=True))

    def member_residual_floor(self, cells: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """(len(cells), len(groups)): no member of each cell lies nearer than this to
        each group's subspace: the cell centre's residual less the cell's radius (a
        residual moves by at most the distance moved). No product: the centres'
        residuals are computed once per set of cells."""
        centre_residual = self._centre_residuals()[cells][:, groups]
        return centre_residual - self.radius[cells, None] - CENTRE_RESIDUAL_SLACK

    def _centre_residuals(self) -> np.ndarray:
        """(n_cells, n_groups) residual of each cell centre off each group's subspace,
        computed once per set of cells (`_measure_cells` clears it)."""
        if self._centre_residual is None:
            self._centre_residual = np.vstack(
                [
                    self.group_residuals(self.centres[start : start + PRODUCT_ROWS // 4])
                    for start in range(0, len(self.centres), PRODUCT_ROWS // 4)
                ]
            )
        return self._centre_residual

    def upper_bounds(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, bounds): every position of the index, group after group, and the
        (len(queries), len(positions)) upper bounds of each query's similarity to the row
        there (the subspace bound of the class docstring, float32: off by ~1e-6, so
        compare with a `DECISION_EPS` margin).

        For searches whose threshold is not known in advance (a bubble's radius follows
        from its centre's nearest neighbours, `grow`): a pair costs `CELL_DIMS` + 1
        products instead of D, and the bound is nearly the similarity among a group's
        own members, where the neighbours are.
        """
        if self._grouped is None:
            positions = np.argsort(self.group, kind="stable")
            starts = np.searchsorted(self.group[positions], np.arange(len(self.axes) + 1))
            # In group order once, so each query block reads the coordinates in one sweep.
            self._grouped = (positions, starts, self.coords[positions])
        positions, starts, coords = self._grouped
        bounds = np.empty((len(queries), len(positions)), np.float32)
        present = np.flatnonzero(np.diff(starts))
        # The queries' coordinates in every group at once: one product, not one a group.
        projected = self.group_coords(queries, present)
        for g, query_coords in zip(present.tolist(), projected, strict=True):
            span = slice(starts[g], starts[g + 1])
            bounds[:, span] = query_coords @ coords[span].T
        return positions, bounds

    def pairs(
        self,
        queries: np.ndarray,
        reduce: Callable[[np.ndarray, np.ndarray, np.ndarray], Any] | None = None,
    ) -> Iterator[Any]:
        """Yield (query indices, base positions, similarities) blocks holding every pair
        of a query and a row of the index at or above the threshold, exactly once,
        decided exactly. The similarities are float32 products (float64 where the pair
        was computed alone): good for ranking, not for deciding near ties.

        `reduce`: as in `own_pairs`, its results yielded instead, the query groups
        searched on `search_workers` threads.
        """
        yield from self._by_group(
            self._query_groups(queries), lambda group, _: self._group_pairs(queries, group), reduce
        )

    def _group_pairs(
        self, queries: np.ndarray, group: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`pairs`' blocks for one group of queries."""
        for q, part, projected, _ in self._group_blocks(queries, group, None):
            i, j, sims = self.block_pairs(queries[q], part, projected)
            yield q[i], part[j], sims

    def own_pairs(
        self, reduce: Callable[[np.ndarray, np.ndarray, np.ndarray], Any] | None = None
    ) -> Iterator[Any]:
        """`pairs` of the index's rows among themselves, as (query positions, base
        positions, similarities), each pair's product computed once: the queries of a
        cell meet only the cells numbered from theirs on, and a pair of two cells is
        yielded both ways (every bound is symmetric, so the later cell's queries would
        have found it too).

        `reduce`: called on each block where it is found, its results yielded instead, in
        the same order; the query groups are then searched on `search_workers` threads
        (`ordered_map`). What a reduce keeps of a block is what those threads hold ahead
        of the caller: unreduced, a group of a tight cluster's queries can hold hundreds
        of MB of pairs, so without one the blocks stream one by one on this thread."""
        yield from self._by_group(self._query_groups(None), self._own_group_pairs, reduce)

    @staticmethod
    def _by_group(
        groups: Iterable[tuple[np.ndarray, np.ndarray | None]],
        blocks_of: Callable[[np.ndarray, np.ndarray | None], Iterator[Any]],
        reduce: Callable[[np.ndarray, np.ndarray, np.ndarray], Any] | None,
    ) -> Iterator[Any]:
        """The blocks of every group of queries (`blocks_of(group, own cells)`), in order:
        one by one on this thread without `reduce`; with it, each reduced where it is
        found, the groups on the search's threads (`ordered_map`)."""
        if reduce is None:
            for group, own_cells in groups:
                yield from blocks_of(group, own_cells)
            return

        def reduced(item: tuple[np.ndarray, np.ndarray | None]) -> list[Any]:
            return [reduce(*block) for block in blocks_of(*item)]

        for results in ordered_map(reduced, groups):
            yield from results

    def _own_group_pairs(
        self, group: np.ndarray, own_cells: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`own_pairs`' blocks for one group of the index's rows."""
        for q, part, projected, _ in self._group_blocks(None, group, own_cells):
            i, j, sims = self.block_pairs(self.embeddings[self.rows[q]], part, projected)
            q, b = q[i], part[j]
            q_cell, b_cell = self.cell[q], self.cell[b]
            ahead = b_cell >= q_cell
            q, b, sims, across = q[ahead], b[ahead], sims[ahead], (b_cell > q_cell)[ahead]
            yield (
                np.concatenate([q, b[across]]),
                np.concatenate([b, q[across]]),
                np.concatenate([sims, sims[across]]),
            )

    def reaches_beyond(self, queries: np.ndarray, inside: np.ndarray) -> bool:
        """Whether some query is within the threshold of a row of the index that
        `inside` (a bool per row of the embeddings) does not flag; stops at the first
        such pair. Flagged rows leave each block before its products, so queries from a
        tight cluster cost their cell tests, not their pairs among themselves."""
        for q, part, projected, _ in self._scan(queries):
            part = part[~inside[self.rows[part]]]
            if len(part) and len(self.block_pairs(queries[q], part, projected)[0]):
                return True
        return False

    def hits(
        self, queries: np.ndarray, whole_cells: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray, BlockHits]]:
        """`pairs`, but a block in which most pairs may reach the threshold comes whole
        (`BlockHits.mask`): yields (query indices, base positions, hits). For callers
        that reduce per query (counts, maxima), where a new member of a tight cluster has
        as many twins as the cluster has members and pair lists would cost more than
        the products. With `whole_cells`, the cells that lie wholly within the
        threshold of a query come in blocks of their own, uncomputed
        (`BlockHits.every`): a caller that counts needs no product for them."""
        for q, part, projected, every in self._scan(queries, whole_cells=whole_cells):
            if every:
                yield q, part, BlockHits(every=True)
            else:
                yield q, part, self._block_hits(queries[q], part, True, projected)

    def _scan(
        self, queries: np.ndarray, whole_cells: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray, dict[int, np.ndarray], bool]]:
        """(query indices, base positions, projected, every): blocks that together hold
        every pair of a query and a row within the threshold once, each block's
        positions in one group, and the queries' bound coordinates in that group's
        subspace, by group (`block_pairs`), computed once for the residual test that
        chose the cells. `every` is False, except with `whole_cells`: the cells wholly
        within the threshold of a query (`cells_within`) then come apart, each pair of
        such a block a twin (`every` True, `projected` empty).

        Queries are taken in groups that share their nearest cell (`_query_groups`), so
        that the cells they reach overlap; each group's block holds only the queries that
        reach its cells, and is split over its base rows to stay within `SCAN_BYTES`
        (`_group_blocks`). A self-join (`own_pairs`) takes the index's rows grouped by
        their own cells instead, each group meeting only the cells numbered from its
        first query's cell on.
        """
        for group, nearest_cell in self._query_groups(queries):
            yield from self._group_blocks(queries, group, nearest_cell, whole_cells)

    def _query_groups(
        self, queries: np.ndarray | None
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(query indices, their own cells or None) of each group of up to `QUERY_GROUP`
        queries that share their nearest cell; `queries` None: the index's own rows,
        grouped by their own cells."""
        n_queries = len(self.rows) if queries is None else len(queries)
        if n_queries == 0:
            return
        nearest_cell = self.cell if queries is None else None
        if nearest_cell is None:
            # Every query against every centre: at 1M rows a third of a self-join's
            # search, which its own cells make free.
            nearest_cell = np.empty(n_queries, dtype=np.int64)
            for rows, sims in iter_similarity_blocks(queries, self.centres):
                nearest_cell[rows] = np.argmax(sims, axis=1)
        order = np.lexsort((np.arange(n_queries), nearest_cell))
        for start in range(0, len(order), QUERY_GROUP):
            group = np.sort(order[start : start + QUERY_GROUP])
            yield group, (nearest_cell[group] if queries is None else None)

    def _group_blocks(
        self,
        queries: np.ndarray | None,
        group: np.ndarray,
        own_cells: np.ndarray | None,
        whole_cells: bool = False,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, dict[int, np.ndarray], bool]]:
        """`_scan`'s blocks for one group of queries (`own_cells`: their own cells, for a
        self-join)."""
        if own_cells is not None:
            found = self._reachable_from_cells(self.embeddings[self.rows[group]], own_cells)
        else:
            found = self.reachable(queries[group])
        cells, reach, projected = found
        if whole_cells:
            within, reach = self._apart_within(queries[group], cells, reach)
            yield from self._within_blocks(group, cells, within)
        used = reach.any(axis=0)
        cells, reach = cells[used], reach[:, used]
        # Cells of one subspace group share its projection of the queries.
        for g in np.unique(self.group_of_cell[cells]).tolist():
            mine = np.flatnonzero(self.group_of_cell[cells] == g)
            asking_at = np.flatnonzero(reach[:, mine].any(axis=1))
            asking = group[asking_at]
            own = {g: projected[g][asking_at]}
            base = np.concatenate([self.members(c) for c in cells[mine]])
            step = max(1, SCAN_BYTES // (4 * max(len(asking), self.embeddings.shape[1])))
            for b0 in range(0, len(base), step):
                yield asking, base[b0 : b0 + step], own, False

    def _apart_within(
        self, vectors: np.ndarray, cells: np.ndarray, reach: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(within, reach): of the (vector, cell) pairs in `reach`, those that come in
        blocks of wholly-within cells, and those left to the blocks by group.

        A cell wholly within a vector's threshold stays in the group's block where
        that block holds both anyway (the vector asks for another cell of the group that
        is not within, and some vector asks for this one): each pair is searched once.
        """
        within = reach & self.cells_within(vectors, cells)
        rest = reach & ~within
        _, at_group = np.unique(self.group_of_cell[cells], return_inverse=True)
        at_group = at_group.reshape(-1)
        asks = np.zeros((len(vectors), int(at_group.max(initial=-1)) + 1), bool)
        rows, cols = np.nonzero(rest)
        asks[rows, at_group[cols]] = True
        within &= ~(rest.any(axis=0)[None, :] & asks[:, at_group])
        return within, reach & ~within

    def _within_blocks(
        self, group: np.ndarray, cells: np.ndarray, within: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray, dict[int, np.ndarray], bool]]:
        """`_scan`'s blocks of cells wholly within the threshold of queries `group`
        (`within`: per query, per cell): the cells within reach of every query in one
        block (a tight cluster's, as a rule), the others one by one."""
        everyone = within.all(axis=0)
        if everyone.any():
            base = np.concatenate([self.members(c) for c in cells[everyone]])
            yield group, base, {}, True
        for k in np.flatnonzero(within.any(axis=0) & ~everyone):
            yield group[within[:, k]], self.members(cells[k]), {}, True

    def block_pairs(
        self,
        left: np.ndarray,
        right: np.ndarray,
        left_coords: Mapping[int, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(i, j, similarity) with left[i] . (row at position right[j]) >= threshold, exactly.

        The subspace bound (class docstring) is a product in `CELL_DIMS` + 1 dimensions,
        15 times cheaper than the full one at D = 512, and rules pairs out first; when
        few remain only they are computed, in float64, else the block is computed in
        full and `pairs_at_least` decides. `left_coords`: `left`'s bound coordinates in
        some groups' subspaces (`group_coords`), by group.
        """
        hits = self._block_hits(left, right, whole=False, left_coords=left_coords)
        return hits.i, hits.j, hits.sims

    def _block_hits(
        self,
        left: np.ndarray,
        right: np.ndarray,
        whole: bool,
        left_coords: Mapping[int, np.ndarray] | None = None,
    ) -> BlockHits:
        """`block_pairs`, over the groups of `right`; with `whole`, a block of one group
        that the bound leaves at least `WHOLE_SHARE` of comes whole (`BlockHits.mask`)."""
        known = left_coords or {}
        groups = self.group[right]
        if groups.min() == groups.max():
            g = int(groups[0])
            return self._group_hits(left, right, g, whole, known.get(g))
        found = []
        # Columns by group in one sort (stable: each group's in their order here).
        by_group = np.argsort(groups, kind="stable")
        ordered = groups[by_group]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        for start, end in zip(
            starts.tolist(), np.r_[starts[1:], len(ordered)].tolist(), strict=True
        ):
            g, cols = int(ordered[start]), by_group[start:end]
            hits = self._group_hits(left, right[cols], g, False, known.get(g))
            found.append((hits.i, cols[hits.j], hits.sims))
        i, j, sims = (np.concatenate(parts) for parts in zip(*found, strict=True))
        return BlockHits(i, j, sims)

    def _group_hits(
        self,
        left: np.ndarray,
        right: np.ndarray,
        group: int,
        whole: bool,
        left_coords: np.ndarray | None = None,
    ) -> BlockHits:
        """`_block_hits` for base positions `right` that all belong to one group."""
        if left_coords is None:
            left_coords = _bound_coords(left @ self.axes[group].T)
        bound = left_coords @ self.coords[right].T
        # The bound is a float32 product, off by ~1e-6: DECISION_EPS covers it. Rows
        # with no candidate are dropped by their maximum first: at a high threshold
        # (duplicates) most blocks have none, and one pass beats a full `nonzero`.
        hit_rows = np.flatnonzero(bound.max(axis=1) >= self.threshold - DECISION_EPS)
        right_vectors_of = self.rows[right]
        if len(hit_rows) == len(bound):
            candidates = bound >= self.threshold - DECISION_EPS
            if whole and np.count_nonzero(candidates) >= WHOLE_SHARE * bound.size:
                right_vectors = self.embeddings[right_vectors_of]
                block = left @ right_vectors.T
                return BlockHits(
                    sims=block, mask=at_least(block, self.threshold, left, right_vectors)
                )
            i, j = np.nonzero(candidates)
        else:
            i, j = np.nonzero(bound[hit_rows] >= self.threshold - DECISION_EPS)
            i = hit_rows[i]
        if len(i) <= SPARSE_SHARE * bound.size:
            sims = exact_similarity(left[i], self.embeddings[right_vectors_of[j]])
            keep = sims >= self.threshold
            return BlockHits(i[keep], j[keep], sims[keep])
        right_vectors = self.embeddings[right_vectors_of]
        block = left @ right_vectors.T
        i, j = pairs_at_least(block, self.threshold, left, right_vectors)
        return BlockHits(i, j, block[i, j])


@dataclass
class BlockHits:
    """The pairs at or above the threshold in one block of a search: as pairs (row `i`
    of the block's queries, column `j` of its base rows, similarity `sims`), or whole:
    `sims` the block's float32 similarities and `mask` where they reach the threshold,
    decided exactly (`at_least`), with `i` and `j` None; or `every` pair of the block
    (cells wholly within the threshold, `CellIndex.cells_within`), nothing computed."""

    i: np.ndarray | None = None
    j: np.ndarray | None = None
    sims: np.ndarray | None = None
    mask: np.ndarray | None = None
    every: bool = False


def _structure_arrays(
    structure: Mapping[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int] | None:
    """(rows, cell, group_of_cell, axes, built_rows) of an index's structure
    (`CellIndex.structure`), checked for what holds whatever the embeddings: rows
    ascending, every cell of a group and not empty, groups numbered in order, as many
    axes for each group; None where it is malformed (a damaged or foreign state)."""
    rows = np.asarray(structure.get("rows", ()))
    cell = np.asarray(structure.get("cell", ()))
    group_of_cell = np.asarray(structure.get("group_of_cell", ()))
    axes = np.asarray(structure.get("axes", np.zeros((0, 0))))
    built = np.asarray(structure.get("built_rows", ()))
    if not (
        rows.ndim == cell.ndim == group_of_cell.ndim == built.ndim == 1
        and len(rows) == len(cell) > 0
        and len(group_of_cell) > 0
        and len(built) == 1
        and all(a.dtype.kind in "iu" for a in (rows, cell, group_of_cell, built))
        and axes.ndim == 2
        and axes.dtype.kind == "f"
    ):
        return None
    n_groups = int(group_of_cell.max()) + 1
    if not (
        rows[0] >= 0
        and np.all(np.diff(rows) > 0)
        and group_of_cell.min() >= 0
        and np.all(np.diff(group_of_cell) >= 0)
        and len(axes) > 0
        and len(axes) % n_groups == 0
        and cell.min() >= 0
        and cell.max() < len(group_of_cell)
        and np.all(np.bincount(cell, minlength=len(group_of_cell)) > 0)
        and 0 < int(built[0]) <= len(rows)
    ):
        return None
    as_int = (a.astype(np.int64) for a in (rows, cell, group_of_cell))
    return (*as_int, axes, int(built[0]))


def _residual_bound(projected_norm2: np.ndarray) -> np.ndarray:
    """An upper bound on |x - P x| of unit rows from |P x|^2 (Pythagoras, `RESIDUAL_EPS`)."""
    return np.sqrt(np.maximum(1.0 - projected_norm2, 0.0) + RESIDUAL_EPS)


def _bound_coords(projected: np.ndarray) -> np.ndarray:
    """Rows [P x, |x - P x|] (the residual bounded from above): for unit q and x,
    q . x = P q . P x + r_q . r_x <= P q . P x + |r_q| |r_x| (Cauchy-Schwarz), which is
    the product of their bound coordinates."""
    norm2 = np.einsum("ij,ij->i", projected, projected)
    return np.hstack([projected, _residual_bound(norm2)[:, None]]).astype(np.float32)


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

# Rows whose norm is this close to 1 count as unit already (embedding models and
# FiftyOne's own fields store float32 vectors normalised to about 1e-7).
UNIT_NORM_TOLERANCE = 1e-3


# Row magnitudes (largest |value|) whose float32 squares, summed over up to ~10^5
# dimensions, neither overflow (3.4e38) nor fall below the normal floats (1.2e-38).
SAFE_MAGNITUDE = (1e-15, 1e15)


def unit_rows(
    embeddings: np.ndarray, out: np.ndarray | None = None, name: str = "embeddings"
) -> np.ndarray:
    """float32 rows scaled to unit length, as the state stores them (into `out` if given).

    Raises ValueError naming the rows that are not finite or are zero vectors.
    """
    x = np.asarray(embeddings)
    if x.dtype.kind in "USV":
        raise ValueError(f"{name} must hold numbers, got an array of {x.dtype}")
    if x.dtype == object:
        # Numbers in an object array (a mixed DataFrame's values) are taken; anything
        # else is named here, not by numpy's "could not convert string to float".
        try:
            x = x.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must hold numbers only ({e})") from None
    out = np.empty(x.shape, np.float32) if out is None else out
    for start in range(0, len(x), ROW_STEP):
        given = x[start : start + ROW_STEP]
        bad = np.flatnonzero(~np.isfinite(given).all(axis=1))
        if len(bad):
            rows = (start + bad[:10]).tolist()
            raise ValueError(f"{name} rows {rows} contain NaN or inf")
        # In float64: |int8(-128)| is -128 in int8.
        largest = (
            np.max(np.abs(given, dtype=np.float64), axis=1) if given.size else np.zeros(len(given))
        )
        zero = np.flatnonzero(largest == 0)
        if len(zero):
            raise ValueError(f"{name} rows {(start + zero[:10]).tolist()} are zero vectors")
        # A row of values outside `SAFE_MAGNITUDE` is first divided by its largest
        # |value|, in its own dtype: float32 squares of such values overflow or lose their
        # digits, which made rows zero or not unit (and ordinary rows their duplicates).
        # Other rows are taken as they are (divided by 1: the same floats as ever).
        low, high = SAFE_MAGNITUDE
        scale = np.where((largest < low) | (largest > high), largest, 1)
        block = out[start : start + ROW_STEP]
        block[...] = given / scale[:, None].astype(np.result_type(given.dtype, np.float32))
        block /= np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]
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
    for start in range(0, len(x), ROW_STEP):
        block = x[start : start + ROW_STEP]
        # float32 sums are accurate to ~1e-5 here, far inside the tolerance, and need no
        # float64 copy of the block (fresh pages of 268 MB cost ~1 s at 100k rows).
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        # NaN fails the comparison too, and `unit_rows` names the rows.
        if not np.all(np.abs(norms - 1.0) <= UNIT_NORM_TOLERANCE):
            return unit_rows(x, name=name)
    return x
