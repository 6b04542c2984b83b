"""Unit tests of the core steps that have landed: config, neighbours, dedup, LID, boundary."""

import numpy as np
import pytest
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from bubblefence_plugin.core.boundary import (
    IMPOSSIBLE,
    best_cut,
    crossing_counts,
    cut_radius,
    least_crossed_cut,
)
from bubblefence_plugin.core.bubbles import (
    INNER,
    OUTER,
    TEST,
    VALIDATION,
    AnchorTable,
    assign_to_bubbles,
    shell_split,
)
from bubblefence_plugin.core.config import BubbleFenceConfig
from bubblefence_plugin.core.dedup import find_duplicates
from bubblefence_plugin.core.density import adaptive_radius, lid_mle
from bubblefence_plugin.core.neighbors import CellIndex, knn, nearest
from bubblefence_plugin.core.twins import twin_components


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"eval_ratio": 0.0}, "eval_ratio"),
        ({"eval_ratio": 1.5}, "eval_ratio"),
        ({"validation_ratio": -0.1}, "validation_ratio"),
        ({"shell_layout": "middle"}, "shell_layout"),
        ({"anchor_method": "grid"}, "anchor_method"),
        ({"lid_k": 1}, "lid_k"),
        ({"min_radius": 0.6, "max_radius": 0.5}, "min_radius"),
    ],
)
def test_config_rejects_bad_values_by_name(kwargs, word):
    with pytest.raises(ValueError, match=word):
        BubbleFenceConfig(**kwargs)


def test_config_reads_reference_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "dataset_splits:\n  eval_ratio: 0.25\n  train_ratio: 0.75\n"
        "nested_shells:\n  shell_configuration: inner_val\n"
        "anchor_placement:\n  qmc_sequence: halton\n  method: QMC\n"
        "random_seed:\n  random_seed: 7\n"
        "visualization:\n  dpi: 300\n"
    )
    with pytest.warns(UserWarning, match="visualization.dpi"):
        cfg = BubbleFenceConfig.from_yaml(path)
    assert (cfg.eval_ratio, cfg.shell_layout, cfg.qmc_sequence, cfg.seed) == (
        0.25,
        "inner_val",
        "halton",
        7,
    )
    assert BubbleFenceConfig.from_dict(cfg.to_dict()) == cfg


def test_knn_and_nearest_match_brute_force():
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(300, 16)))
    q = unit(rng.normal(size=(20, 16)))
    sims, idx = knn(q, x, 5, block=7)
    full = q @ x.T
    assert np.array_equal(idx, np.argsort(-full, axis=1)[:, :5])
    best_sim, best_idx = nearest(q, x, block=3)
    assert np.array_equal(best_idx, full.argmax(1))
    assert np.allclose(best_sim, full.max(1))


@pytest.mark.parametrize("threshold", [0.95, 0.9999])
def test_cell_index_finds_every_pair_within_the_threshold(threshold):
    rng = np.random.default_rng(1)
    x = unit(rng.normal(size=(1500, 32)))
    x[200:260] = unit(x[:60] + 0.001 * rng.normal(size=(60, 32)))
    x[900:1400] = unit(x[5] + 0.02 * rng.normal(size=(500, 32)))  # a tight cluster
    index = CellIndex(x, np.arange(len(x)), threshold, seed=0)
    assert len(index) > 1
    seen = set()
    for q, b, _ in index.pairs(x):
        seen |= set(zip(q.tolist(), b.tolist(), strict=True))
    full = x @ x.T
    truth = set(zip(*np.nonzero(full >= threshold), strict=True))
    truth = {(int(a), int(b)) for a, b in truth}
    assert seen == truth
    assert len(truth) > (500 * 500 if threshold < 0.99 else len(x) + 60)


@pytest.mark.parametrize("spread", [0.02, 0.15, 0.6])
def test_twin_components_equal_brute_force(spread):
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(12, 24))
    label = rng.integers(12, size=1200)
    x = unit(centres[label] + spread * rng.normal(size=(1200, 24)))
    x[1100:] = unit(x[0] + 0.001 * rng.normal(size=(100, 24)))  # a dense cell
    full = x @ x.T
    _, truth = connected_components(sparse.csr_matrix(full >= 0.95), directed=False)
    got = twin_components(x, np.arange(len(x)), 0.95, seed=3)
    # Same partition: a bijection between the two labellings.
    pairs = set(zip(truth.tolist(), got.tolist(), strict=True))
    assert len(pairs) == len(set(truth.tolist())) == len(set(got.tolist()))
    # Labels are the smallest member of each component.
    for label_value in np.unique(got):
        assert label_value == np.flatnonzero(got == label_value).min()


def test_twin_components_of_a_subset_of_rows():
    rng = np.random.default_rng(5)
    x = unit(rng.normal(size=(50, 16)))
    x[30] = unit((x[12] + 0.01 * rng.normal(size=16))[None, :])[0]
    rows = np.arange(10, 50)
    got = twin_components(x, rows, 0.99, seed=0)
    assert got[20] == got[2] == 2  # positions of rows 30 and 12
    assert len(np.unique(got)) == len(rows) - 1


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


def test_lid_mle_recovers_dimension_of_uniform_cube():
    rng = np.random.default_rng(4)
    for dim in (2, 5):
        pts = rng.uniform(size=(20000, dim))
        d = np.linalg.norm(pts[:200, None] - pts[None], axis=2)
        d.sort(axis=1)
        lid = lid_mle(d[:, 1:21])
        assert abs(np.median(lid) - dim) < 0.35 * dim


def test_lid_mle_degenerate_rows_are_nan():
    assert np.isnan(lid_mle(np.zeros((1, 5)))).all()
    assert np.isnan(lid_mle(np.ones((1, 1)))).all()


def test_adaptive_radius_is_small_where_dense_and_clamped():
    cfg = BubbleFenceConfig()
    dense = 1 - np.linspace(0.001, 0.01, 20)
    sparse = 1 - np.linspace(0.01, 0.1, 20)
    r_dense = adaptive_radius(dense, 5.0, 100, cfg)
    r_sparse = adaptive_radius(sparse, 5.0, 100, cfg)
    assert cfg.min_radius <= r_dense < r_sparse <= cfg.max_radius
    assert adaptive_radius(sparse, 5.0, 10**9, cfg) == cfg.max_radius
    fixed = BubbleFenceConfig(radius_mode="fixed", base_radius=0.07)
    assert adaptive_radius(sparse, 5.0, 100, fixed) == pytest.approx(0.07)


def test_crossing_counts_find_the_gap():
    # Ranked by similarity to the centre (row 0); rows 2 and 3 are near twins.
    rng = np.random.default_rng(5)
    centre = unit(rng.normal(size=(1, 64)))[0]
    other = unit(rng.normal(size=(1, 64)))[0]
    other -= (other @ centre) * centre
    other /= np.linalg.norm(other)
    angles = np.array([0.0, 0.3, 0.6, 0.62, 1.2])
    x = np.stack([np.cos(a) * centre + np.sin(a) * other for a in angles]).astype(np.float32)
    sims = x @ centre
    counts = crossing_counts(x, np.arange(5), sims, 1, 5, 0.95)
    brute = [sum(x[i] @ x[j] >= 0.95 for i in range(k) for j in range(k, 5)) for k in range(1, 6)]
    assert counts.tolist() == brute
    k, crossed = best_cut(counts, 1, preferred_k=3, allow_crossing=False)
    assert crossed == 0 and k in (2, 4)
    assert 1 - sims[k - 1] < cut_radius(sims, k) < 1 - sims[min(k, 4)]


def _ranked_cluster(seed: int, n: int = 600):
    """Samples on a few tight blobs, ranked by similarity to the first one."""
    rng = np.random.default_rng(seed)
    blobs = rng.normal(size=(12, 32))
    x = unit(blobs[rng.integers(0, 12, n)] * 3 + rng.normal(size=(n, 32)))
    sims = x @ x[0]
    order = np.lexsort((np.arange(n), -sims))
    return x, order, sims[order]


def _brute_counts(x, ranked, k_lo, k_hi, threshold):
    s = x[ranked] @ x[ranked].T >= threshold
    return [int(s[:k, k:].sum()) for k in range(k_lo, k_hi + 1)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_band_counts_exact_or_sampled_lower_bounds(seed):
    x, ranked, sims = _ranked_cluster(seed)
    brute = np.array(_brute_counts(x, ranked, 5, 300, 0.9))
    exact = crossing_counts(x, ranked, sims, 5, 300, 0.9)
    possible = exact < IMPOSSIBLE
    assert exact[possible].tolist() == brute[possible].tolist()
    sampled = crossing_counts(
        x, ranked, sims, 5, 300, 0.9, max_band=64, rng=np.random.default_rng(0)
    )
    assert (sampled[possible] <= brute[possible]).all() and sampled[possible].sum() > 0
    again = crossing_counts(x, ranked, sims, 5, 300, 0.9, max_band=64, rng=np.random.default_rng(0))
    assert sampled.tolist() == again.tolist()


def test_least_crossed_cut_is_per_sample_inside():
    # Cuts k = 1..5: totals grow with the bubble, the rate per sample falls then rises.
    crossings = np.array([1, 1, 2, IMPOSSIBLE, 40])
    assert least_crossed_cut(crossings, 1, preferred_k=1) == (2, 1)
    # Equal rates (1/1 = 2/2 = 3/3): the one nearest the preferred cut.
    assert least_crossed_cut(np.array([1, 2, 3, 9]), 1, preferred_k=4) == (3, 3)
    assert least_crossed_cut(np.full(3, IMPOSSIBLE), 1, preferred_k=2) is None


def test_cut_between_equal_samples_is_impossible():
    x = unit(np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
    sims = x @ x[0]
    counts = crossing_counts(x, np.arange(3), sims, 1, 3, 0.999)
    assert counts[1] == IMPOSSIBLE
    assert best_cut(counts[1:2], 2, 2, allow_crossing=True) is None


def test_assign_to_bubbles_nearest_relative_centre_and_shells():
    centres = unit(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    table = AnchorTable(
        centres=centres,
        centre_row=np.array([0, 1]),
        radius=np.array([0.5, 0.5]),
        inner_radius=np.array([0.1, 0.1]),
        layout=np.array([0, 1], np.int8),
        lid=np.array([2.0, 2.0]),
        round=np.array([0, 0], np.int32),
        n_captured=np.array([3, 3]),
        cut_pairs=np.array([0, 0]),
    )
    pts = unit(np.array([[1.0, 0.01, 0], [1.0, 0.9, 0], [0, 0, 1.0], [0.1, 1.0, 0]]))
    anchor, shell = assign_to_bubbles(pts, table)
    assert anchor.tolist() == [0, 0, -1, 1]
    assert shell.tolist() == [INNER, OUTER, 0, INNER]
    split = shell_split(table.layout[[0, 0, 1]], shell[[0, 1, 3]])
    assert split.tolist() == [VALIDATION, TEST, TEST]
