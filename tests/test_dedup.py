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
