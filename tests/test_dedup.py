"""Duplicates: the earliest kept twin, across rounds and within a batch."""

import numpy as np
from conftest import unit

from bubblefence_plugin.core.dedup import find_duplicates


def test_dedup_across_rounds_and_within_batch_in_order():
    rng = np.random.default_rng(2)
    old = unit(rng.normal(size=(50, 24)))
    new = unit(rng.normal(size=(10, 24)))
    new[3] = old[7]  # duplicate of an earlier round
    new[6] = new[1]  # duplicate of an earlier row of this batch
    new[8] = new[6]  # chain: its kept original is row 1, not the duplicate row 6
    result = find_duplicates(new, old, np.arange(50), 50, 0.9999, seed=0)
    expected = np.full(10, -1)
    expected[[3, 6, 8]] = [7, 51, 51]
    assert np.array_equal(result.duplicate_of, expected)


def test_class_aware_dedup_keeps_twins_with_other_labels():
    rng = np.random.default_rng(3)
    new = unit(rng.normal(size=(4, 8)))
    new[2] = new[0]
    labels = np.array(["cat", "dog", "bird", "dog"])
    result = find_duplicates(
        new,
        np.empty((0, 8), np.float32),
        np.empty(0, np.int64),
        0,
        0.9999,
        0,
        new_labels=labels,
        kept_labels=np.empty(0, str),
    )
    assert not result.is_duplicate.any()


def brute_force_duplicates(x: np.ndarray, threshold: float) -> np.ndarray:
    """Rows in input order: a row is a duplicate of the earliest kept row before it at the
    threshold (float64), else kept."""
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    duplicate_of = np.full(len(x), -1)
    for i in range(len(x)):
        partners = np.flatnonzero((sims[i, :i] >= threshold) & (duplicate_of[:i] < 0))
        if len(partners):
            duplicate_of[i] = partners[0]
    return duplicate_of


def test_blobs_of_copies_match_brute_force_and_hold_a_bounded_list(monkeypatch):
    """Blobs of copies (every pair a duplicate pair), chains and singles, in cells and
    query groups of 16 rows so that a copy meets many blocks: the result is the brute
    force's, and the partners held between cuts stay within `HELD_PER_QUERY` + 1 times
    `CANDIDATES` per row, however many blocks a copy meets (a blob of 20,000 held 1.4 GB
    before; here 36,986 entries for 1,400 rows without the cuts). Two candidates a row
    instead of 16: the rows whose candidates were all duplicates take the exact fallback.
    """
    from bubblefence_plugin.core import dedup, neighbors

    monkeypatch.setattr(neighbors, "CELL_SIZE", 16)
    monkeypatch.setattr(neighbors, "QUERY_GROUP", 16)
    monkeypatch.setattr(dedup, "HELD_PER_QUERY", 1)
    monkeypatch.setattr(dedup, "CANDIDATES", 2)  # and the exact fallback behind them
    rng = np.random.default_rng(4)
    blobs = rng.normal(size=(2, 32))[rng.integers(0, 2, 1100)] + 1e-3 * rng.normal(size=(1100, 32))
    chain = np.cumsum(0.004 * rng.normal(size=(200, 32)), axis=0) + rng.normal(size=32)
    x = unit(np.vstack([blobs, chain, rng.normal(size=(100, 32))])[rng.permutation(1400)])
    held = []
    cut_back = dedup._cut_back

    def recorded(queries, bases):
        held.append(sum(len(q) for q in queries))
        return cut_back(queries, bases)

    monkeypatch.setattr(dedup, "_cut_back", recorded)
    empty = np.empty(0, np.int64)
    result = find_duplicates(x, x, empty, 0, 0.9999, seed=0)
    assert np.array_equal(result.duplicate_of, brute_force_duplicates(x, 0.9999))
    assert result.is_duplicate.sum() > 1000  # the blobs
    assert len(held) > 2 and max(held) <= (1 + 1) * dedup.CANDIDATES * len(x)


def test_a_batch_dense_with_copies_goes_in_chunks_and_never_pairs_its_blob(monkeypatch):
    """A batch whose rows have many partners (`BLOB_PARTNERS`) is resolved in chunks of
    input order, each against the kept rows before it first: the result is the brute
    force's, with labels too, and the pairs handled stay under 20 per row (the one
    self-join handles 1.2 million here, every pair of the blob)."""
    from bubblefence_plugin.core import dedup

    monkeypatch.setattr(dedup, "FIRST_CHUNK", 64)
    monkeypatch.setattr(dedup, "BLOB_PARTNERS", 8)
    monkeypatch.setattr(dedup, "QUERY_ROWS", 100)  # a chunk searches in slices
    rng = np.random.default_rng(7)
    blob = rng.normal(size=32) + 1e-3 * rng.normal(size=(1500, 32))
    chain = np.cumsum(0.004 * rng.normal(size=(200, 32)), axis=0) + rng.normal(size=32)
    x = unit(np.vstack([blob, chain, rng.normal(size=(300, 32))])[rng.permutation(2000)])
    chunked, handled = [], []
    in_chunks, first_per_query = dedup._in_chunks, dedup._first_per_query
    monkeypatch.setattr(dedup, "_in_chunks", lambda *a: chunked.append(1) or in_chunks(*a))

    def counted(q, b):
        handled.append(len(q))
        return first_per_query(q, b)

    monkeypatch.setattr(dedup, "_first_per_query", counted)
    empty = np.empty(0, np.int64)
    result = find_duplicates(x, x, empty, 0, 0.9999, seed=0)
    assert chunked
    assert np.array_equal(result.duplicate_of, brute_force_duplicates(x, 0.9999))
    assert result.is_duplicate.sum() >= 1499  # the blob
    assert sum(handled) < 20 * len(x)
    labels = rng.choice(np.array(["cat", "dog"]), len(x))
    aware = find_duplicates(
        x, x, empty, 0, 0.9999, seed=0, new_labels=labels, kept_labels=np.empty(0, str)
    )
    expected = np.concatenate(
        [brute_force_by_label(x, labels, label, 0.9999) for label in ("cat", "dog")]
    )
    order = np.concatenate([np.flatnonzero(labels == label) for label in ("cat", "dog")])
    assert np.array_equal(aware.duplicate_of[order], expected)


def brute_force_by_label(x: np.ndarray, labels: np.ndarray, label: str, threshold: float):
    """`brute_force_duplicates` among the rows of one label, as rows of the whole batch."""
    rows = np.flatnonzero(labels == label)
    found = brute_force_duplicates(x[rows], threshold)
    return np.where(found >= 0, rows[np.maximum(found, 0)], -1)
