"""Exact similarity search on unit vectors without an N x N matrix.

Two tools serve every step that needs neighbours:

* blockwise matrix products (`iter_similarity_blocks`, `nearest`, `knn`), whose
  memory is one block of queries times the base, for queries that are few
  (anchor candidates) or for one pass of the audit;
* `pairs_within`, an exact range search for tight thresholds (deduplication) that
  prunes with a PCA projection: an orthonormal projection never lengthens a
  distance, so every true pair is also a pair in the projected space, where a
  k-d tree finds them in O(N log N). The survivors are checked in full dimension.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy.spatial import cKDTree

# Rows of queries per matrix product: 256 x 1M float32 similarities = 1 GiB, so
# callers with a large base pass a smaller block.
DEFAULT_BLOCK = 1024


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


def pairs_within(
    queries: np.ndarray,
    base: np.ndarray,
    min_similarity: float,
    projection: np.ndarray,
    *,
    base_rows: np.ndarray | None = None,
    same_set: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query, base) pair with cosine similarity >= min_similarity, exactly.

    `projection` is an orthonormal (p, D) matrix (PCA components). The base is
    `base[base_rows]` (all of `base` when None) and base indices are positions in
    it. With `same_set=True` the queries are the base and each pair is reported
    once, as (i, j) with i > j. Returns (query index, base index, similarity).
    """
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    n_base = len(base) if base_rows is None else len(base_rows)
    if len(queries) == 0 or n_base == 0:
        return empty
    radius = float(similarity_to_distance(min_similarity))
    # A float32 round-off margin: a pair lost here would be a missed duplicate.
    radius = radius * (1 + 1e-3) + 1e-5
    base_tree = cKDTree(project_rows(base, base_rows, projection))
    if same_set:
        pairs = base_tree.query_pairs(radius, output_type="ndarray")
        if len(pairs) == 0:
            return empty
        q_idx = pairs.max(axis=1).astype(np.int64)
        b_idx = pairs.min(axis=1).astype(np.int64)
    else:
        hits = cKDTree(queries @ projection.T).query_ball_tree(base_tree, radius)
        lengths = np.fromiter((len(h) for h in hits), dtype=np.int64, count=len(hits))
        if lengths.sum() == 0:
            return empty
        q_idx = np.repeat(np.arange(len(queries)), lengths)
        b_idx = np.fromiter((j for h in hits for j in h), dtype=np.int64, count=lengths.sum())
    base_vectors = base[b_idx] if base_rows is None else base[base_rows[b_idx]]
    sims = np.einsum("ij,ij->i", queries[q_idx], base_vectors)
    keep = sims >= min_similarity
    return q_idx[keep], b_idx[keep], sims[keep].astype(np.float32)
