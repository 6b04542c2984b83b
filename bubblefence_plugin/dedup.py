"""Step 2: near-duplicates across everything ingested so far.

A new sample whose cosine similarity to an earlier *kept* sample (an earlier
round, or earlier in this batch in input order) reaches the threshold is a
duplicate of the most similar such sample. Pairs come from the exact range search
of `neighbors.pairs_within`; only rows that take part in a pair are visited in
order, so the cost is near-linear in N.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .neighbors import pairs_within


@dataclass
class DedupResult:
    """Per new row: the global row of its kept original (-1 when kept) and their similarity."""

    duplicate_of: np.ndarray
    similarity: np.ndarray

    @property
    def is_duplicate(self) -> np.ndarray:
        return self.duplicate_of >= 0


def find_duplicates(
    new: np.ndarray,
    embeddings: np.ndarray,
    kept_rows: np.ndarray,
    first_new_row: int,
    threshold: float,
    projection: np.ndarray,
    *,
    new_labels: np.ndarray | None = None,
    kept_labels: np.ndarray | None = None,
) -> DedupResult:
    """Mark rows of `new` that duplicate a kept earlier row.

    `embeddings[kept_rows]` are the kept rows of earlier rounds; new row i has
    global row `first_new_row + i`. With labels (class-aware mode),
    twins whose labels differ are not duplicates.
    """
    n = len(new)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    similarity = np.zeros(n, dtype=np.float32)

    # Against earlier rounds: every hit is final, the old rows are kept.
    q, b, s = pairs_within(new, embeddings, threshold, projection, base_rows=kept_rows)
    if kept_labels is not None and new_labels is not None:
        same = new_labels[q] == kept_labels[b]
        q, b, s = q[same], b[same], s[same]
    if len(q):
        # Most similar first, then the earliest row, so the choice is deterministic.
        order = np.lexsort((kept_rows[b], -s, q))
        q, b, s = q[order], b[order], s[order]
        first = np.r_[True, q[1:] != q[:-1]]
        duplicate_of[q[first]] = kept_rows[b[first]]
        similarity[q[first]] = s[first]

    # Within the batch: a row is a duplicate only of an earlier row that was kept,
    # so the rows that take part in a pair are resolved in input order.
    later, earlier, s = pairs_within(new, new, threshold, projection, same_set=True)
    if new_labels is not None:
        same = new_labels[later] == new_labels[earlier]
        later, earlier, s = later[same], earlier[same], s[same]
    if len(later):
        order = np.lexsort((earlier, -s, later))
        later, earlier, s = later[order], earlier[order], s[order]
        starts = np.flatnonzero(np.r_[True, later[1:] != later[:-1]])
        ends = np.r_[starts[1:], len(later)]
        for start, end in zip(starts, ends, strict=True):
            row = later[start]
            if duplicate_of[row] >= 0:
                continue
            for j in range(start, end):
                if duplicate_of[earlier[j]] < 0:
                    duplicate_of[row] = first_new_row + earlier[j]
                    similarity[row] = s[j]
                    break
    return DedupResult(duplicate_of=duplicate_of, similarity=similarity)
