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

A batch dense with copies (`BLOB_PARTNERS`) goes in chunks of input order instead, each
against the kept rows of the chunks before it first, then within itself: a copy finds
the blob's kept row among a few, and the blob's pairs among themselves are never formed.
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
# A batch whose rows have more partners than this each, on average (a blob of copies: a
# static camera's frames), is resolved in chunks of input order, each chunk against the
# kept rows before it first: a copy then meets the blob's one kept row instead of every
# other copy, and the self-join's pairs, quadratic in the blob, are never formed (20,000
# copies of one image, every pair a hit: 15.6 -> 0.6 s). The chunks build about three
# indexes' worth of cells where the self-join builds one, which costs more than the
# pairs below about a thousand partners per row (30 random batches of 3-11k rows with
# blobs, by hand: chunks slower in all 8 below 250 partners, faster in 14 of the 16
# above 600). Both give the same duplicates (110 such batches, by hand).
BLOB_PARTNERS = 64 * CANDIDATES
# Rows sampled to estimate a batch's partners per row: a blob of a few % of the batch
# shows in it, and the probe costs its rows' searches alone.
PROBE_ROWS = 256
# Queries per search of the earlier chunks' kept rows: the rows copied for it stay
# bounded (128 MB at 512-d), and a cell of the index still meets many of them at once.
QUERY_ROWS = 65_536
# The first chunk's rows; each later chunk holds as many as all before it, so a chunk and
# the kept rows it meets are of one size and there are about log2(n / FIRST_CHUNK).
FIRST_CHUNK = 2048


@dataclass
class DedupResult:
    """Per new row: the global row of its kept original, -1 when the row is kept.

    `batch_index`: the index the batch was searched with (over every row of `new`, by
    position), for a caller that searches the batch's kept rows next
    (`CellIndex.restored` keeps its cells); None where the batch was searched in chunks.
    """

    duplicate_of: np.ndarray
    batch_index: CellIndex | None = None

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
    if n < 2:
        return DedupResult(duplicate_of)
    index = CellIndex(new, np.arange(n), threshold, seed)
    if n > FIRST_CHUNK and _partners_per_row(index, new, seed) > BLOB_PARTNERS:
        _in_chunks(new, duplicate_of, first_new_row, threshold, seed, new_labels)
        return DedupResult(duplicate_of)
    _in_order(index, new, duplicate_of, first_new_row, threshold, new_labels)
    return DedupResult(duplicate_of, batch_index=index)


def _partners_per_row(index: CellIndex, new: np.ndarray, seed: int) -> float:
    """The batch's mean number of partners at the threshold per row, on a seeded sample of
    `PROBE_ROWS` rows (itself not counted)."""
    n = len(new)
    sample = np.sort(np.random.default_rng(seed).choice(n, min(n, PROBE_ROWS), replace=False))
    found = 0
    for _, _, hits in index.hits(new[sample]):
        found += int(hits.mask.sum()) if hits.mask is not None else len(hits.i)
    return (found - len(sample)) / len(sample)


def _in_chunks(
    new: np.ndarray,
    duplicate_of: np.ndarray,
    first_new_row: int,
    threshold: float,
    seed: int,
    labels: np.ndarray | None,
) -> None:
    """`_in_order` over chunks of the batch in input order, each against the kept rows of
    the chunks before it first (`BLOB_PARTNERS`); a chunk as large as all before it."""
    kept = np.empty(0, np.int64)
    start, size = 0, FIRST_CHUNK
    while start < len(new):
        todo = np.arange(start, min(len(new), start + size))
        todo = todo[duplicate_of[todo] < 0]
        if len(kept) and len(todo):
            # Every row of an earlier chunk is earlier, and its kept rows are final.
            earlier = CellIndex(new, kept, threshold, seed)
            for part in np.array_split(todo, -(-len(todo) // QUERY_ROWS)):
                query, base = _earliest(
                    earlier,
                    new[part],
                    None if labels is None else labels[part],
                    None if labels is None else labels[kept],
                    before=None,
                )
                first = np.r_[True, query[1:] != query[:-1]] if len(query) else np.empty(0, bool)
                duplicate_of[part[query[first]]] = first_new_row + kept[base[first]]
            todo = todo[duplicate_of[todo] < 0]
        if len(todo) > 1:
            index = CellIndex(new, todo, threshold, seed)
            _in_order(index, new, duplicate_of, first_new_row, threshold, labels)
        kept = np.concatenate([kept, todo[duplicate_of[todo] < 0]])
        start += size
        size = start


def _in_order(
    index: CellIndex,
    new: np.ndarray,
    duplicate_of: np.ndarray,
    first_new_row: int,
    threshold: float,
    labels: np.ndarray | None,
) -> None:
    """The rows of `index` (rows of the batch `new`, ascending) against each other, in
    input order, in place: a row is a duplicate of its earliest kept partner among them,
    found among its `CANDIDATES` earliest partners or, when those were all duplicates, by
    the exact fallback over every earlier kept row of the batch."""
    rows = index.rows
    own_labels = None if labels is None else labels[rows]
    later, earlier = _earliest(index, None, own_labels, own_labels, before=np.arange(len(rows)))
    if len(later) == 0:
        return
    starts = np.flatnonzero(np.r_[True, later[1:] != later[:-1]])
    ends = np.r_[starts[1:], len(later)]
    for start, end in zip(starts, ends, strict=True):
        row = int(rows[later[start]])
        if duplicate_of[row] >= 0:
            continue
        partners = rows[earlier[start:end]]
        kept = partners[duplicate_of[partners] < 0]
        if len(kept):
            duplicate_of[row] = first_new_row + int(kept[0])
        elif end - start == CANDIDATES:
            original = _earliest_kept(new, row, duplicate_of, threshold, labels)
            if original >= 0:
                duplicate_of[row] = first_new_row + original


def _earliest(
    index: CellIndex,
    queries: np.ndarray | None,
    query_labels: np.ndarray | None,
    base_labels: np.ndarray | None,
    before: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(query, base position) of each query's `CANDIDATES` earliest partners at the
    threshold, sorted by query then position. `before[q]`: only positions below it, for
    the index's own rows as queries (`queries` None; `CellIndex.own_pairs`: each product
    once)."""
    queries_out, bases_out, held = [], [], 0
    # Partners held before they are cut back to `CANDIDATES` per query: in a blob of
    # copies a query meets every cell of the blob, and its 16 from each piled up (20,000
    # copies of one image: a 1.3 GB peak for a 39 MB matrix).
    most = HELD_PER_QUERY * CANDIDATES * (len(index.rows) if queries is None else len(queries))

    def earliest_of_block(
        q: np.ndarray, b: np.ndarray, _: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        keep = np.ones(len(q), bool)
        if before is not None:
            keep &= b < before[q]
        if query_labels is not None and base_labels is not None:
            keep &= query_labels[q] == base_labels[b]
        return _first_per_query(q[keep], b[keep])

    # Each block is cut back where it is found, on the search's threads.
    if before is None:
        found = index.pairs(queries, reduce=earliest_of_block)
    else:
        found = index.own_pairs(reduce=earliest_of_block)
    for q, b in found:
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
