"""The same split at any BLAS thread count and on any BLAS kernel (issue 12): decisions
near a threshold and rankings never rest on the last bits of a product, whose summation
order changes with the number of threads and with the machine's vector instructions."""

import os
import subprocess
import sys
from pathlib import Path

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


# OpenBLAS's kernels for plain SSE3 and for AVX2: what machines without and with AVX2
# run. Their float32 products differ in the last bits (checked below, or skipped).
KERNELS = ("Prescott", "Haswell")
PRODUCT = """
import hashlib, numpy as np
x = np.random.default_rng(0).normal(size=(500, 96)).astype(np.float32)
print(hashlib.sha256((x @ x.T).tobytes()).hexdigest())
"""
SPLIT = """
import hashlib, sys
import numpy as np
sys.path.insert(0, "tests")
from test_determinism import near_ties
from bubblefence_plugin import BubbleFence, BubbleFenceConfig
x = near_ties()
bf = BubbleFence(BubbleFenceConfig(seed=3))
for part in (slice(0, 2000), slice(2000, None)):
    bf.ingest(x[part], labels=np.arange(len(x))[part] % 7)
frame = bf.assignments()[["split", "anchor_id", "shell", "duplicate_of"]]
print(hashlib.sha256(frame.to_csv().encode()).hexdigest())
"""


def _with_kernel(kernel: str, code: str) -> str:
    env = {**os.environ, "OPENBLAS_CORETYPE": kernel}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_same_split_on_any_blas_kernel():
    """Machines differ in their BLAS kernels, whose products differ in the last bits:
    the split does not (same data, config and seed, any machine)."""
    if len({_with_kernel(k, PRODUCT) for k in KERNELS}) == 1:
        pytest.skip("this BLAS does not switch kernels by OPENBLAS_CORETYPE")
    assert len({_with_kernel(k, SPLIT) for k in KERNELS}) == 1
