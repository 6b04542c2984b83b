"""Seeded random rounds: data shapes, knobs, round sizes, labels and groups drawn at
random, each case held to the invariants of every round (`conftest.check_invariants`),
to stability, to determinism and to a save / load round trip.

A longer run of such draws found three defects that no hand-made case had: a crash
when a new member of a train group arrived before any bubble existed, and `cut_pairs`
off after the groups' votes moved samples or after a radial cut through groups that
the votes then undid. Of the seeds below, eight failed before (2 and 48 with the
crash, 10, 23, 28, 56, 57 and 58 with a count), all with groups; seeds 0-399 pass now.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import check_invariants

from bubblefence_plugin import BubbleFence, BubbleFenceConfig

SHAPES = ("clustered", "tight", "duplicates", "arc", "plane", "scaled", "one_point")
# Knob values drawn from, each within its declared range (`core.config.KNOBS`).
KNOB_VALUES = {
    "eval_ratio": (0.05, 0.1, 0.2, 0.3, 0.5),
    "validation_ratio": (0.0, 0.2, 0.5, 0.8, 1.0),
    "min_eval_per_batch": (0.0, 0.1, 0.3),
    "shell_layout": ("random", "inner_val", "inner_test"),
    "dedup_threshold": (0.99, 0.999, 0.99999),
    "anchor_method": ("qmc", "random", "kmeans"),
    "snap_strategy": ("nearest", "lid_weighted"),
    "radius_mode": ("adaptive", "fixed"),
    "leak_threshold": (0.8, 0.9, 0.95, 0.99),
    "lid_k": (3, 5, 20, 50),
    "pca_dims": (1, 2, 8, 64),
    "dedup_enabled": (False,),
}


def random_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one of `SHAPES`, 1 to 2,500 of them in 2 to 200 dimensions, float32 or
    float64, with a label per row (the shape's cluster or part)."""
    shape = rng.choice(SHAPES)
    n = int(rng.choice([1, 2, 5, 30, 200, 800, 2500]))
    d = int(rng.choice([2, 3, 8, 64, 200]))
    if shape == "clustered":
        k = int(rng.integers(1, 30))
        labels = rng.integers(0, k, n)
        centres, basis = rng.normal(size=(k, d)) * 3, rng.normal(size=(k, 3, d))
        x = centres[labels] + np.einsum("ij,ijd->id", rng.normal(size=(n, 3)), basis[labels])
        x += 0.3 * rng.normal(size=(n, d))
    elif shape == "tight":  # bursts: pairwise cosine about 0.99998
        labels = rng.integers(0, 3, n)
        x = rng.normal(size=(3, d))[labels] + 0.01 * rng.normal(size=(n, d))
    elif shape == "duplicates":  # copies a millionth apart
        base = rng.normal(size=(max(1, n // 4), d))
        labels = rng.integers(0, len(base), n)
        x = base[labels] + 1e-6 * rng.normal(size=(n, d))
    elif shape == "arc":  # a chain, as the frames of a video
        t = np.sort(rng.uniform(0, 1, n))
        labels = (t * 5).astype(int)
        x = np.c_[np.cos(t), np.sin(t), 1e-3 * rng.normal(size=(n, max(d - 2, 0)))]
    elif shape == "plane":
        x = rng.normal(size=(n, 2))
        labels = (x[:, 0] > 0).astype(int)
    elif shape == "scaled":  # norms over many orders of magnitude
        x = rng.normal(size=(n, d)) * rng.lognormal(0, 3, size=(n, 1))
        labels = rng.integers(0, 4, n)
    else:  # every row the same point
        x, labels = np.tile(rng.normal(size=(1, d)), (n, 1)), np.zeros(n, int)
    return x.astype(rng.choice([np.float32, np.float64])), labels.astype(str)


def random_case(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x, labels = random_data(rng)
    knobs = {k: v[rng.integers(len(v))] for k, v in KNOB_VALUES.items() if rng.random() < 0.25}
    knobs = {k: v.item() if isinstance(v, np.generic) else v for k, v in knobs.items()}
    n = len(x)
    n_cuts = min(int(rng.integers(0, 4)), n - 1)
    cuts = np.sort(rng.choice(np.arange(1, n), n_cuts, replace=False)) if n_cuts else []
    groups = (np.arange(n) // int(rng.integers(1, 8))).astype(str)
    return {
        "x": x,
        "labels": labels if rng.random() < 0.4 else None,
        "groups": groups if rng.random() < 0.4 else None,
        "rounds": np.split(np.arange(n), cuts),
        "config": BubbleFenceConfig(seed=int(rng.integers(1000)), **knobs),
    }


def run_case(case: dict) -> BubbleFence:
    """Every round of `case`, checking after each that no earlier sample moved."""
    bf = BubbleFence(case["config"])
    before = None
    for part in case["rounds"]:
        extra = {k: case[k][part] for k in ("labels", "groups") if case[k] is not None}
        bf.ingest(case["x"][part], ids=part, **extra)
        now = bf.assignments()
        if before is not None:
            assert (now["split"].to_numpy()[: len(before)] == before).all()
        before = now["split"].to_numpy()
    return bf


@pytest.mark.parametrize("seed", range(60))
def test_random_rounds_keep_every_invariant(seed, tmp_path):
    case = random_case(seed)
    bf = run_case(case)
    check_invariants(bf)
    assert bf.assignments()["split"].isin(["train", "validation", "test", "duplicate"]).all()
    again = run_case(case)
    assert again.assignments().equals(bf.assignments())
    bf.save(tmp_path / "state.npz")
    assert BubbleFence.load(tmp_path / "state.npz").assignments().equals(bf.assignments())
