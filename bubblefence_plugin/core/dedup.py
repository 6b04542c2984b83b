"""Step 2: near-duplicates across everything ingested so far.

A new sample whose cosine similarity to an earlier *kept* sample (an earlier
round, or earlier in this batch in input order) reaches the threshold is a
duplicate; its original is the earliest such kept sample (the smallest row). The
earliest rather than the most similar: the choice then rests only on threshold
decisions, which `neighbors.pairs_at_least` makes the same on every machine, and in a
blob of near-identical copies every copy points at the blob's first sample.

Pairs come from the exact range search of `neighbors.CellIndex`, and no list of all
pairs is ever held (in a blob of a thousand copies every pair is a duplicate pair):
each new row keeps its `CANDIDATES` earliest partners, rows are resolved in input
order, and a row none of whose candidates was kept is checked against every earlier
kept row (exact, and rare: a blob's first copy is every later copy's candidate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .neighbors import CellIndex, pairs_at_least

# Earlier partners remembered per new row, the earliest first.
CANDIDATES = 16
# Partners held per query, in units of `CANDIDATES`, before they are cut back to
# `CANDIDATES` each: memory O(N), whatever the density, and a cut every few blocks.
HELD_PER_QUERY = 4


@dataclass
class DedupResult:
    """Per new row: the global row of its kept original, -1 when the row is kept."""

    duplicate_of: np.ndarray

    @property
    def is_duplicate(self) -> np.ndarray:
        return self.duplicate_of >= 0


def find_duplicates(
    new: np.ndarray,
    embeddings: np.ndarray,
    kept_rows: np.ndarray,
    first_new_row: int,
    threshold: float,
    seed: int,
    *,
    new_labels: np.ndarray | None = None,
    kept_labels: np.ndarray | None = None,
    kept_index: CellIndex | None = None,
) -> DedupResult:
    """Mark rows of `new` that duplicate a kept earlier row.

    `embeddings[kept_rows]` are the kept rows of earlier rounds (ascending); new row i
    has global row `first_new_row + i`. With labels (class-aware mode), twins whose
    labels differ are not duplicates. `kept_index`: an index over `kept_rows` (at any
    threshold) that the round shares with its other steps; built here when not given.
    """
    n = len(new)
    duplicate_of = np.full(n, -1, dtype=np.int64)

    # Against earlier rounds: every hit is final, the old rows are kept.
    if len(kept_rows):
        if kept_index is None:
            kept_index = CellIndex(embeddings, kept_rows, threshold, seed)
        index = kept_index.at(threshold)
        query, base = _earliest(index, new, new_labels, kept_labels, before=None)
        first = np.r_[True, query[1:] != query[:-1]] if len(query) else np.empty(0, bool)
        duplicate_of[query[first]] = kept_rows[base[first]]

    # Within the batch, in input order: a row is a duplicate only of a kept earlier row.
    index = CellIndex(new, np.arange(n), threshold, seed)
    later, earlier = _earliest(index, new, new_labels, new_labels, before=np.arange(n))
    if len(later) == 0:
        return DedupResult(duplicate_of)
    starts = np.flatnonzero(np.r_[True, later[1:] != later[:-1]])
    ends = np.r_[starts[1:], len(later)]
    for start, end in zip(starts, ends, strict=True):
        row = int(later[start])
        if duplicate_of[row] >= 0:
            continue
        partners = earlier[start:end]
        kept = partners[duplicate_of[partners] < 0]
        if len(kept):
            duplicate_of[row] = first_new_row + int(kept[0])
        elif end - start == CANDIDATES:
            original = _earliest_kept(new, row, duplicate_of, threshold, new_labels)
            if original >= 0:
                duplicate_of[row] = first_new_row + original
    return DedupResult(duplicate_of)


def _earliest(
    index: CellIndex,
    queries: np.ndarray,
    query_labels: np.ndarray | None,
    base_labels: np.ndarray | None,
    before: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(query, base position) of each query's `CANDIDATES` earliest partners at the
    threshold, sorted by query then position. `before[q]`: only positions below it, for
    queries that are the index's own rows (`CellIndex.own_pairs`: each product once)."""
    queries_out, bases_out, held = [], [], 0
    # Partners held before they are cut back to `CANDIDATES` per query: in a blob of
    # copies a query meets every cell of the blob, and its 16 from each piled up (20,000
    # copies of one image: a 1.3 GB peak for a 39 MB matrix).
    most = HELD_PER_QUERY * CANDIDATES * len(queries)
    found = index.pairs(queries) if before is None else index.own_pairs()
    for q, b, _ in found:
        keep = np.ones(len(q), bool)
        if before is not None:
            keep &= b < before[q]
        if query_labels is not None and base_labels is not None:
            keep &= query_labels[q] == base_labels[b]
        q, b = _first_per_query(q[keep], b[keep])
        queries_out.append(q)
        bases_out.append(b)
        held += len(q)
        if held > most:
            q, b = _cut_back(queries_out, bases_out)
            queries_out, bases_out, held = [q], [b], len(q)
    if not queries_out:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return _cut_back(queries_out, bases_out)


def _cut_back(queries: list[np.ndarray], bases: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of these lists, cut back to each query's `CANDIDATES` earliest."""
    return _first_per_query(np.concatenate(queries), np.concatenate(bases))


def _first_per_query(q: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(q) == 0:
        return q, b
    # One sort of one int64 key (query, then position): in a blob of copies every pair is
    # a hit, and sorting them by two keys took half of dedup's time.
    span = int(b.max()) + 1
    q, b = np.divmod(np.sort(q.astype(np.int64) * span + b), span)
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
    rank = np.arange(len(q)) - np.repeat(starts, np.diff(np.r_[starts, len(q)]))
    keep = rank < CANDIDATES
    return q[keep], b[keep]


def _earliest_kept(
    new: np.ndarray,
    row: int,
    duplicate_of: np.ndarray,
    threshold: float,
    labels: np.ndarray | None,
) -> int:
    """Exact fallback for a row whose remembered partners were all duplicates."""
    earlier = np.flatnonzero(duplicate_of[:row] < 0)
    if labels is not None:
        earlier = earlier[labels[earlier] == labels[row]]
    if len(earlier) == 0:
        return -1
    sims = (new[earlier] @ new[row])[None, :]
    _, hits = pairs_at_least(sims, threshold, new[[row]], new[earlier])
    return int(earlier[hits[0]]) if len(hits) else -1
