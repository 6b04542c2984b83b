"""The same split at any BLAS thread count (issue 12): decisions near a threshold and
rankings never rest on the last bits of a product, whose summation order changes with
the number of threads."""

import os

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from bubblefence_plugin import BubbleFence, BubbleFenceConfig
from bubblefence_plugin.core import pipeline
from bubblefence_plugin.core.neighbors import THREADS_VARIABLE, blas_threads


def near_ties(seed: int = 0, n: int = 3000, d: int = 96) -> np.ndarray:
    """Data full of near ties: coordinates on a coarse grid (many equal similarities),
    pairs placed right at the leak and dedup thresholds, exact copies, a tight cluster."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=(n, d)) * 2) / 2
    x[: n // 4] = x[0] + np.round(rng.normal(size=(n // 4, d)) * 4) / 40  # a tight cluster
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for threshold, start in ((0.95, n // 4), (0.9999, n // 3)):
        # Partners at exactly `threshold` cosine from their source row.
        rows = np.arange(start, start + 60)
        other = rng.normal(size=(60, d))
        other -= np.einsum("ij,ij->i", other, x[rows])[:, None] * x[rows]
        other /= np.linalg.norm(other, axis=1, keepdims=True)
        angle = np.arccos(threshold)
        x[rows + 100] = np.cos(angle) * x[rows] + np.sin(angle) * other
    x[n // 2 : n // 2 + 40] = x[n // 2 + 40 : n // 2 + 80]  # exact copies
    return x.astype(np.float32)


def split_with(threads: int, x: np.ndarray, labels: np.ndarray, monkeypatch) -> np.ndarray:
    monkeypatch.setenv(THREADS_VARIABLE, str(threads))
    bf = BubbleFence(BubbleFenceConfig(seed=3))
    for part in (slice(0, 2000), slice(2000, None)):
        bf.ingest(x[part], labels=labels[part])
    frame = bf.assignments()
    return frame[["split", "anchor_id", "shell", "duplicate_of"]].to_numpy()


def test_a_round_runs_on_the_chosen_thread_count(monkeypatch):
    seen = []
    monkeypatch.setenv(THREADS_VARIABLE, "1")
    monkeypatch.setattr(pipeline, "threadpool_limits", _recording(seen))
    BubbleFence().ingest(near_ties(n=600))
    assert seen == [1]
    monkeypatch.delenv(THREADS_VARIABLE)
    assert blas_threads(100) == 1  # small rounds: one thread
    assert 1 <= blas_threads(1_000_000) <= (os.cpu_count() or 1)


@pytest.mark.parametrize("threads", [2, 8])
def test_same_split_at_any_thread_count(threads, monkeypatch):
    x = near_ties()
    labels = np.arange(len(x)) % 7
    reference = split_with(1, x, labels, monkeypatch)
    assert np.array_equal(split_with(threads, x, labels, monkeypatch), reference)


def _recording(seen: list):
    def limits(limits=None, user_api=None):
        seen.append(limits)
        return threadpool_limits(limits=limits, user_api=user_api)

    return limits
