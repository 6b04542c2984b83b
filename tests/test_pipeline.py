"""Invariants of whole BubbleFence rounds on generated clustered data (SPEC 2 and 4)."""

import numpy as np
import pytest

from bubblefence_plugin import BubbleFence, BubbleFenceConfig
from bubblefence_plugin.assign import INNER_VAL
from bubblefence_plugin.metrics import leakage


def clustered(n, rng, d=64, k=25, twins=0.05):
    """Clusters on 5-d manifolds with unequal sizes and spreads, plus near-twin pairs."""
    centres = rng.normal(size=(k, d)) * 3
    sizes = rng.dirichlet(np.full(k, 0.7))
    labels = rng.choice(k, size=n, p=sizes)
    basis = rng.normal(size=(k, 5, d))
    spread = rng.uniform(0.5, 2.0, size=k)
    x = centres[labels] + spread[labels, None] * np.einsum(
        "ij,ijd->id", rng.normal(size=(n, 5)), basis[labels]
    )
    x += 0.3 * rng.normal(size=(n, d))
    n_twins = int(twins * n)
    src = rng.choice(n, n_twins, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), n_twins, replace=False)
    x[dst] = x[src] + 0.05 * rng.normal(size=(n_twins, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def check_geometry(bf):
    """No train sample inside a bubble; every eval sample inside its bubble, right shell."""
    a = bf.assignments()
    x = bf._embeddings
    table = bf._anchors
    kept = a["duplicate_of"].isna().to_numpy()
    dist = 1 - x @ table.centres.T
    inside_any = (dist <= table.radius).any(axis=1)
    train = (a["split"] == "train").to_numpy() & kept
    assert not (train & inside_any).any()
    ev = np.flatnonzero(a["split"].isin(["validation", "test"]).to_numpy() & kept)
    anchor = a["anchor_id"].to_numpy()[ev]
    d = dist[ev, anchor]
    assert (d <= table.radius[anchor]).all()
    inner = d < table.inner_radius[anchor]
    val_inner = table.layout[anchor] == INNER_VAL
    expected = np.where(inner == val_inner, "validation", "test")
    assert (a["split"].to_numpy()[ev] == expected).all()


@pytest.mark.parametrize("seed, n, d", [(0, 3000, 64), (1, 2000, 32), (2, 1500, 128)])
def test_one_round_invariants(seed, n, d):
    rng = np.random.default_rng(seed)
    x, _ = clustered(n, rng, d=d)
    cfg = BubbleFenceConfig(seed=seed)
    bf = BubbleFence(cfg)
    bf.ingest(x)
    s = bf.summary()
    assert abs(s["eval_share"] - cfg.eval_ratio) <= cfg.eval_tolerance
    assert abs(s["validation_share_of_eval"] - cfg.validation_ratio) <= 0.05
    check_geometry(bf)


@pytest.mark.parametrize(
    "knobs",
    [
        {"qmc_sequence": "halton"},
        {"snap_strategy": "nearest"},
        {"anchor_method": "random"},
        {"anchor_method": "kmeans"},
        {"shell_layout": "random"},
        {"shell_layout": "inner_test"},
    ],
)
def test_every_placement_and_layout_keeps_the_invariants(knobs):
    rng = np.random.default_rng(11)
    x, _ = clustered(2500, rng)
    cfg = BubbleFenceConfig(seed=11, **knobs)
    bf = BubbleFence(cfg)
    for batch in np.array_split(x, [1800]):
        bf.ingest(batch)
        s = bf.summary()
        assert abs(s["eval_share"] - cfg.eval_ratio) <= cfg.eval_tolerance
        assert abs(s["validation_share_of_eval"] - cfg.validation_ratio) <= 0.05
    check_geometry(bf)
    layouts = set(bf.anchors["layout"])
    expected = {"random": {"inner_val", "inner_test"}}.get(cfg.shell_layout, {cfg.shell_layout})
    assert layouts == expected
    again = BubbleFence(cfg)
    for batch in np.array_split(x, [1800]):
        again.ingest(batch)
    assert (again.assignments()["split"] == bf.assignments()["split"]).all()


def test_rounds_stable_on_target_with_batch_floor():
    rng = np.random.default_rng(3)
    x, _ = clustered(4000, rng)
    cfg = BubbleFenceConfig(seed=3)
    bf = BubbleFence(cfg)
    sizes = [1500, 200, 900, 50, 1350]
    start, before = 0, None
    for size in sizes:
        r = bf.ingest(x[start : start + size])
        start += size
        a = bf.assignments()
        if before is not None:
            assert (a["split"].iloc[: len(before)].to_numpy() == before).all()
        before = a["split"].to_numpy()
        kept = r.duplicate_of == None  # noqa: E711
        held = np.isin(r.split[kept], ["validation", "test"]).sum()
        assert held >= np.ceil(cfg.min_eval_per_batch * kept.sum())
        assert abs(bf.summary()["eval_share"] - cfg.eval_ratio) <= cfg.eval_tolerance
    check_geometry(bf)


def test_deterministic_and_identical_after_save_load(tmp_path):
    rng = np.random.default_rng(4)
    x, _ = clustered(2500, rng)
    a, b = BubbleFence(BubbleFenceConfig(seed=9)), BubbleFence(BubbleFenceConfig(seed=9))
    a.ingest(x[:1500])
    b.ingest(x[:1500])
    b.save(tmp_path / "state.npz")
    b = BubbleFence.load(tmp_path / "state.npz")
    a.ingest(x[1500:])
    b.ingest(x[1500:])
    assert a.assignments().equals(b.assignments())


def test_duplicates_across_rounds_never_straddle():
    rng = np.random.default_rng(5)
    x, _ = clustered(1500, rng)
    bf = BubbleFence(BubbleFenceConfig(seed=5, dedup_policy="follow"))
    bf.ingest(x[:1000])
    r = bf.ingest(np.vstack([x[1000:], x[:50]]))
    assert list(r.duplicate_of[-50:]) == list(range(50))
    first = bf.assignments().set_index("id")["split"]
    assert (r.split[-50:] == first.loc[list(range(50))].to_numpy()).all()


def test_leakage_far_below_random_split():
    rng = np.random.default_rng(6)
    x, _ = clustered(3000, rng, twins=0.15)
    bf = BubbleFence(BubbleFenceConfig(seed=6))
    r = bf.ingest(x)
    ours = leakage(x, r.split)
    random_split = np.where(rng.random(len(x)) < 0.2, "validation", "train")
    theirs = leakage(x, random_split)
    assert ours[0.99] == 0
    assert ours[0.95] < 0.25 * theirs[0.95]


@pytest.mark.parametrize(
    "embeddings, match",
    [
        (np.array([[1.0, np.nan], [1.0, 0.0]]), r"rows \[0\]"),
        (np.array([[0.0, 0.0], [1.0, 0.0]]), "zero"),
        (np.empty((0, 2)), "empty"),
        (np.ones(3), "2-D"),
    ],
)
def test_bad_input_named(embeddings, match):
    with pytest.raises(ValueError, match=match):
        BubbleFence().ingest(embeddings)


def test_dimension_change_refused():
    bf = BubbleFence()
    bf.ingest(np.eye(4)[:3] + 0.1)
    with pytest.raises(ValueError, match="dimension 5"):
        bf.ingest(np.ones((2, 5)))


@pytest.mark.parametrize(
    "x",
    [
        np.ones((30, 8)),  # all identical
        np.random.default_rng(0).normal(size=(3, 8)),  # fewer samples than k
        np.c_[np.random.default_rng(1).normal(size=(200, 6)), np.ones((200, 2))],  # constant dims
    ],
)
def test_degenerate_data_does_not_crash(x):
    bf = BubbleFence()
    r = bf.ingest(x)
    assert len(r.split) == len(x)
    r2 = bf.ingest(x)  # a round made only of duplicates
    assert (r2.split == "duplicate").all()


def test_a_failed_round_leaves_the_state_as_it_was():
    rng = np.random.default_rng(21)
    x, _ = clustered(1500, rng)
    bf, clean = BubbleFence(BubbleFenceConfig(seed=21)), BubbleFence(BubbleFenceConfig(seed=21))
    for model in (bf, clean):
        model.ingest(x[:1000])
    before = bf.state_dict()[1]
    bad = x[1000:1200].copy()
    bad[150] = np.nan
    with pytest.raises(ValueError, match=r"rows \[150\] contain NaN"):
        bf.ingest(bad)
    after = bf.state_dict()[1]
    assert all(np.array_equal(before[k], after[k]) for k in before)
    # The rows the failed round wrote into spare capacity are not part of anything.
    for model in (bf, clean):
        model.ingest(x[1000:])
    assert bf.assignments().equals(clean.assignments())
    np.testing.assert_array_equal(bf._embeddings, clean._embeddings)


def test_a_single_tight_bubble_still_gets_validation_and_test():
    # Two blobs of near twins (every pair within a blob above the leak threshold): the
    # quota takes the small blob whole, and its only leak-free inner cuts would leave a
    # shell empty, giving a split without validation or without test.
    rng = np.random.default_rng(8)
    small = rng.normal(size=32) * 5 + 0.5 * rng.normal(size=(40, 32))
    large = rng.normal(size=32) * 5 + 0.5 * rng.normal(size=(160, 32))
    x = np.vstack([small, large])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert (x[:40] @ x[:40].T).min() > 0.95
    bf = BubbleFence(BubbleFenceConfig(seed=8))
    r = bf.ingest(x)
    counts = bf.summary()["counts"]
    assert counts["validation"] + counts["test"] == 40
    # Balanced at validation_ratio, and the round reports the near pairs it cut.
    assert counts["validation"] == 20 and counts["test"] == 20
    assert r.stats["cut_pairs"] > 0
    check_geometry(bf)
