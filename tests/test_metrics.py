"""Every audit measure (SPEC 4) on hand-built cases whose answers are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import unit

from bubblefence_plugin.core import metrics
from bubblefence_plugin.core.metrics import (
    audit,
    cross_split_similarity,
    diversity,
    diversity_from_covariance,
    eval_train_leakage,
    group_violations,
    label_coverage,
    leakage,
    random_split_like,
    ratio_error,
    stability,
    val_test_balance,
    validation_test_leakage,
)


def at_cosine(base, other, c):
    """The unit vector at cosine c from unit `base`, in the plane of base and `other`."""
    return c * np.asarray(base) + math.sqrt(1 - c * c) * np.asarray(other)


E = np.eye(4)


@pytest.fixture
def hand_built():
    """Train e1, e2; eval rows at cosine 1, 0.96, 0.92 and 0 from their nearest train row."""
    rows = [
        (E[0], "train"),
        (E[1], "train"),
        (E[0], "validation"),  # 1.0 to e1
        (at_cosine(E[1], E[2], 0.96), "test"),  # 0.96 to e2
        (at_cosine(E[0], E[3], 0.92), "validation"),  # 0.92 to e1
        (E[2] * 0.6 + E[3] * -0.8, "test"),  # 0 to both train rows
        (E[0], "duplicate"),  # on neither side
        (E[1], None),  # no split: on neither side
    ]
    x = unit([r[0] for r in rows])
    split = np.asarray([r[1] for r in rows], dtype=object)
    return x, split


def test_eval_train_leakage_known_shares_and_distribution(hand_built):
    x, split = hand_built
    result = eval_train_leakage(x, split)
    assert result.fraction == pytest.approx([0.25, 0.5, 0.75])
    assert result.count == [1, 2, 3]
    assert result.stderr == [0.0, 0.0, 0.0] and not result.sampled
    assert (result.n_population, result.n_queries, result.n_base) == (4, 4, 2)
    assert result.similarity["mean"] == pytest.approx((1 + 0.96 + 0.92 + 0) / 4, abs=1e-6)
    assert result.similarity["p50"] == pytest.approx(0.94, abs=1e-6)
    assert result.similarity["max"] == pytest.approx(1.0, abs=1e-6)
    assert sum(result.histogram["counts"]) == 4
    assert result.histogram["counts"][0] == 1  # the orthogonal row, similarity 0
    assert result.at(0.95) == pytest.approx(0.5)
    assert leakage(x, split) == pytest.approx({0.99: 0.25, 0.95: 0.5, 0.90: 0.75})


def test_exact_copies_leak_at_one_and_no_similarity_exceeds_one():
    # Found by a stress test: float32 products put copies at 1.0000002 or 0.9999999, so
    # leak@1.0 counted 1 of 2 copies and the report's maximum was above 1.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 512)).astype(np.float32)
    x[50:] = x[:10]  # eval rows 50..59 copy train rows 0..9
    split = np.array(["train"] * 40 + ["validation"] * 20)
    result = eval_train_leakage(x, split, thresholds=(1.0,))
    assert result.count == [10] and result.similarity["max"] == 1.0
    assert leakage(x, split, thresholds=(1.0,)) == {1.0: 0.5}


def test_validation_test_leakage_pools_both_directions():
    # validation: v1, v2; test: t1 at cosine 0.97 from v1; v2 orthogonal to t1.
    v1, v2 = E[0], E[2]
    t1 = at_cosine(E[0], E[1], 0.97)
    x = unit([v1, v2, t1, E[3]])
    split = np.asarray(["validation", "validation", "test", "train"], dtype=object)
    result = validation_test_leakage(x, split)
    # v1 -> t1: 0.97, v2 -> t1: 0, t1 -> v1: 0.97. Pooled over 3 queries.
    assert result.n_population == 3
    assert result.fraction == pytest.approx([0.0, 2 / 3, 2 / 3])
    assert result.n_base == 3


def test_leakage_undefined_without_a_side():
    x = unit(np.eye(3))
    assert eval_train_leakage(x, ["validation", "test", "duplicate"]) is None
    assert validation_test_leakage(x, ["train", "validation", "validation"]) is None
    assert leakage(x, ["validation", "test", "duplicate"]) == {0.99: 0.0, 0.95: 0.0, 0.90: 0.0}


def test_blockwise_equals_brute_force(monkeypatch):
    rng = np.random.default_rng(3)
    x = unit(rng.normal(size=(300, 8)))
    split = rng.choice(
        ["train", "validation", "test", "duplicate"], size=300, p=[0.6, 0.15, 0.15, 0.1]
    )
    monkeypatch.setattr(metrics, "BASE_CHUNK", 17)  # many base chunks, uneven last one
    result = eval_train_leakage(x, split, thresholds=(0.9, 0.7, 0.5))
    is_eval = np.isin(split, ["validation", "test"])
    brute = (x[is_eval] @ x[split == "train"].T).max(axis=1)
    for t, share in zip((0.9, 0.7, 0.5), result.fraction, strict=True):
        assert share == pytest.approx(np.mean(brute >= t))
    assert result.similarity["mean"] == pytest.approx(brute.mean(), abs=1e-6)
    assert result.similarity["p95"] == pytest.approx(np.percentile(brute, 95), abs=1e-6)


def test_eval_train_pairs_name_each_measured_eval_rows_nearest_train_row(monkeypatch):
    rng = np.random.default_rng(8)
    x = unit(rng.normal(size=(300, 8)))
    split = rng.choice(["train", "validation", "test", "duplicate"], 300, p=[0.6, 0.15, 0.15, 0.1])
    monkeypatch.setattr(metrics, "BASE_CHUNK", 23)  # the nearest row found across chunks
    report = audit(x, split, max_queries=None)
    pairs = report.eval_train_pairs
    train = np.flatnonzero(split == "train")
    eval_rows = np.flatnonzero(np.isin(split, ["validation", "test"]))
    assert sorted(pairs.query_rows.tolist()) == eval_rows.tolist()
    similarity = x[pairs.query_rows] @ x[train].T
    assert pairs.base_rows.tolist() == train[similarity.argmax(axis=1)].tolist()
    assert pairs.similarity == pytest.approx(similarity.max(axis=1), abs=1e-6)
    assert (np.diff(pairs.similarity) <= 0).all()  # most similar first
    above = pairs.at_least(0.5)
    assert (
        above.similarity.min() >= 0.5 and len(above.query_rows) == (pairs.similarity >= 0.5).sum()
    )
    assert "eval_train_pairs" not in report.to_dict()  # per-row arrays stay out of the dict
    sampled = audit(x, split, max_queries=10).eval_train_pairs
    assert len(sampled.query_rows) == 10 and set(sampled.query_rows) <= set(eval_rows)


def test_sampled_queries_are_seeded_and_estimate_the_exact_share():
    rng = np.random.default_rng(4)
    x = unit(rng.normal(size=(4000, 6)))
    split = np.where(rng.random(4000) < 0.5, "train", "validation")
    exact = eval_train_leakage(x, split, thresholds=(0.95,))
    a = eval_train_leakage(x, split, thresholds=(0.95,), max_queries=400, seed=1)
    b = eval_train_leakage(x, split, thresholds=(0.95,), max_queries=400, seed=1)
    assert a == b
    assert a.sampled and a.n_queries == 400 and a.n_population == exact.n_population
    assert 0 < a.stderr[0] < 0.05
    assert abs(a.fraction[0] - exact.fraction[0]) < 4 * a.stderr[0]
    assert a.count[0] == round(a.fraction[0] * a.n_population)


def test_ratio_and_balance():
    split = ["train"] * 14 + ["validation"] * 2 + ["test"] * 4 + ["duplicate"] * 5
    assert ratio_error(split, 0.2) == pytest.approx(abs(6 / 20 - 0.2))
    assert val_test_balance(split) == pytest.approx(2 / 6)
    assert val_test_balance(["train", "duplicate"]) is None
    assert metrics.counts(split) == {"train": 14, "validation": 2, "test": 4, "other": 5}


def test_label_coverage_counts_labels_with_enough_samples():
    labels = ["A"] * 25 + ["B"] * 30 + ["C"] * 10 + ["D"] * 20 + ["A"] * 3
    split = (
        ["train"] * 20
        + ["validation"] * 5  # A: 20 train, 5 validation
        + ["train"] * 30  # B: train only
        + ["test"] * 10  # C: below min_count
        + ["test"] * 10
        + ["validation"] * 10  # D: both eval splits
        + ["duplicate"] * 3  # A duplicates: not counted
    )
    result = label_coverage(split, labels, min_count=20)
    assert result.n_labels == 4 and result.n_eligible == 3
    assert result.covered == {"train": 2, "validation": 2, "test": 1, "eval": 2}
    assert result.missing_from_eval == ["B"]
    assert result.missing_from_validation == ["B"]
    assert result.missing_from_test == ["A", "B"]
    assert label_coverage(split, labels, min_count=26).n_eligible == 1  # only B


def test_label_coverage_of_label_sets_counts_each_label_of_a_row():
    # Detections-like rows: "person" on every row, "dog" only on train rows, "cat" on
    # train and test rows; a row without labels and a duplicate row take no part.
    split = ["train"] * 30 + ["validation"] * 10 + ["test"] * 10 + ["train", "duplicate"]
    labels = (
        [["person", "dog"]] * 20
        + [["person", "cat"]] * 10
        + [["person"]] * 10
        + [("cat", "person", "cat")] * 10  # repeats count once per row
        + [[], ["dog"] * 3]
    )
    result = label_coverage(split, labels, min_count=20)
    assert (result.n_labels, result.n_eligible) == (3, 3)  # cat 20, dog 20, person 50 rows
    assert result.covered == {"train": 3, "validation": 1, "test": 2, "eval": 2}
    assert result.missing_from_eval == ["dog"]
    assert result.missing_from_validation == ["cat", "dog"]
    assert result.missing_from_test == ["dog"]


def test_group_violations():
    split = ["train", "validation", "train", "train", "test", "validation", "duplicate", "train"]
    groups = ["g1", "g1", "g2", "g2", "g3", "g3", "g4", "g4"]
    result = group_violations(split, groups)
    # g1 straddles train/eval; g3 is eval only; g4's eval side is a duplicate: no violation.
    assert (result.n_groups, result.n_violations, result.n_samples) == (4, 1, 2)
    assert result.examples == ["g1"]
    assert group_violations(["train", "test"], [None, None]).n_groups == 0


def test_stability_joins_on_ids():
    before_ids = ["a", "b", "c", "d", "f"]
    before = ["train", "test", "validation", "duplicate", "train"]
    after_ids = ["b", "a", "c", "e"]
    after = ["test", "train", None, "train"]
    result = stability(before_ids, before, after_ids, after)
    # d had no role; f is gone; c lost its role.
    assert (result.n_before, result.n_compared, result.n_missing) == (4, 3, 1)
    assert result.n_unchanged == 2
    assert result.share_unchanged == pytest.approx(2 / 3)
    assert result.changes == {"validation->none": 1}
    same = stability(before_ids, before, before_ids, before)
    assert same.share_unchanged == 1.0 and same.changes == {}
    # c was excluded on purpose: not a change, counted apart (found by a lifecycle fuzz).
    excluded = stability(before_ids, before, after_ids, after, left_out=["c", "zz"])
    assert (excluded.n_compared, excluded.n_left_out, excluded.changes) == (2, 1, {})
    assert excluded.share_unchanged == 1.0 and excluded.n_missing == 1
    # Marked but still in the split (a hand tag not applied yet): compared as any other.
    pending = stability(before_ids, before, after_ids, after, left_out=["a"])
    assert (pending.n_compared, pending.n_left_out) == (3, 0)
    with pytest.raises(ValueError, match="repeated"):
        stability(["a", "a"], ["train", "test"], ["a"], ["train"])


def test_diversity_known_spectra():
    rng = np.random.default_rng(5)
    d = 32
    iso = diversity(rng.normal(size=(20_000, d)))  # unit rows: isotropic on the sphere
    assert iso.score > 0.95 and iso.effective_rank_norm > 0.95
    assert iso.participation_ratio_norm > 0.9
    v = unit(rng.normal(size=(1, d)))[0]
    line = np.outer(rng.choice([-1.0, 1.0], size=500), v)  # rank-1 covariance
    flat = diversity(line)
    assert flat.effective_rank == pytest.approx(1.0, abs=1e-4)
    assert flat.participation_ratio == pytest.approx(1.0, abs=1e-4)
    assert flat.score == pytest.approx(1 / d, abs=1e-4) and flat.score < 0.05
    cross = diversity(unit(np.vstack([np.eye(d)[:2], -np.eye(d)[:2]] * 50)))  # ±e1, ±e2
    assert cross.effective_rank == pytest.approx(
        2.0
    ) and cross.participation_ratio == pytest.approx(2.0)
    same = diversity(np.tile(unit([[1.0, 2.0, 3.0]]), (10, 1)))
    assert same.score == 0.0
    assert diversity(unit([[1.0, 0.0]])) is None


def test_diversity_formula_on_a_given_spectrum():
    result = diversity_from_covariance(np.diag([4.0, 1.0, 1.0, 0.0]), n=100)
    p = np.array([4, 1, 1]) / 6
    assert result.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert result.participation_ratio == pytest.approx(36 / 18)
    assert result.score == pytest.approx(
        math.sqrt(result.effective_rank / 4 * result.participation_ratio / 4)
    )


def test_random_split_like_keeps_counts_and_other_rows():
    split = np.asarray(["train"] * 70 + ["validation"] * 10 + ["test"] * 15 + ["duplicate"] * 5)
    a, b = random_split_like(split, seed=1), random_split_like(split, seed=1)
    assert (a == b).all() and not (a == random_split_like(split, seed=2)).all()
    assert metrics.counts(a) == metrics.counts(split)
    assert (a[-5:] == "duplicate").all()


def test_cross_split_similarity_with_and_without_centring():
    rng = np.random.default_rng(6)
    x = unit(rng.normal(size=(60, 5)) + 2.0)  # a large shared mean, as real embeddings have
    split = rng.choice(["train", "validation", "test"], size=60)
    split[:3] = "duplicate"
    raw = cross_split_similarity(x, split)
    centred = cross_split_similarity(x, split, center=True)
    assert np.isnan(raw[:3]).all() and np.isnan(centred[:3]).all()
    c = x[3:] - x[3:].mean(axis=0)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    for k, role in enumerate(split[3:]):
        other = split[3:] != role
        assert raw[3 + k] == pytest.approx((x[3:][other] @ x[3 + k]).max(), abs=1e-5)
        assert centred[3 + k] == pytest.approx((c[other] @ c[k]).max(), abs=1e-5)
    assert np.nanmean(raw) > np.nanmean(centred)  # centring spreads the cloud


def test_audit_report_end_to_end():
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(5, 16))
    labels = rng.integers(0, 5, 1000)
    x = centres[labels] + 0.3 * rng.normal(size=(1000, 16))  # not normalised: audit does it
    # A "bubble" split: all of cluster 0 and 1 held out (no label coverage, little leakage).
    split = np.where(labels == 0, "validation", np.where(labels == 1, "test", "train"))
    groups = [f"{c}-{i % 7}" for i, c in enumerate(labels)]  # groups inside clusters
    ids = [f"s{i}" for i in range(1000)]
    report = audit(
        x,
        split,
        labels,
        groups,
        ids=ids,
        previous=(ids, split),
        eval_ratio=0.4,
        validation_ratio=0.5,
        max_queries=None,
        seed=3,
    )
    ours, base = report.split, report.baseline
    assert ours.counts == base.counts  # same ratios, exactly
    assert ours.ratio_error == pytest.approx(abs(ours.eval_share - 0.4))
    assert ours.eval_train.at(0.9) < base.eval_train.at(0.9)
    assert ours.coverage.covered["eval"] == 2 and base.coverage.covered["eval"] == 5
    assert ours.groups.n_violations == 0 and base.groups.n_violations == 35
    assert report.stability.share_unchanged == 1.0
    assert set(ours.diversity) == {"train", "validation", "test", "eval", "all"}
    assert ours.diversity["all"].score == pytest.approx(base.diversity["all"].score)
    data = report.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["split"]["eval_train"]["thresholds"] == [0.99, 0.95, 0.9]
    again = audit(x, split, labels, groups, eval_ratio=0.4, validation_ratio=0.5, seed=3)
    assert again.baseline.eval_train == base.eval_train  # seeded: same baseline
    prenormalised = audit(unit(x), split, max_queries=None, seed=3)
    assert prenormalised.split.eval_train.fraction == ours.eval_train.fraction


def test_iter_audit_reports_progress_in_order_and_returns_the_report(monkeypatch):
    from bubblefence_plugin.core.progress import Progress, drive

    monkeypatch.setattr(metrics, "BASE_CHUNK", 50)  # several events per leakage direction
    rng = np.random.default_rng(5)
    x = unit(rng.normal(size=(400, 8)))
    split = rng.choice(["train", "validation", "test"], size=400, p=[0.6, 0.2, 0.2])
    events = []
    steps = metrics.iter_audit(x, split, max_queries=None)
    report = drive(steps, lambda fraction, label: events.append(Progress(fraction, label)))
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and 0.0 <= fractions[0] and fractions[-1] == 1.0
    assert any(e.label.startswith("random:") for e in events)  # the baseline's half
    assert report.split.counts == audit(x, split, max_queries=None).split.counts


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"thresholds": (1.5,)}, "thresholds"),
        ({"thresholds": ()}, "thresholds"),
        ({"eval_ratio": 1.2}, "eval_ratio"),
        ({"validation_ratio": -0.1}, "validation_ratio"),
        ({"max_queries": 0}, "max_queries"),
        ({"min_label_count": 0}, "min_label_count"),
        ({"seed": -1}, "seed"),
        ({"previous": (["a"], ["train"])}, "ids"),
        ({"ids": ["a"]}, "ids"),
    ],
)
def test_audit_rejects_bad_parameters_by_name(kwargs, word):
    x = unit(np.eye(3))
    with pytest.raises(ValueError, match=word):
        audit(x, ["train", "validation", "test"], **kwargs)


def test_audit_rejects_bad_rows_and_lengths():
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        audit(np.array([[1.0, 0.0], [0.0, 0.0]]), ["train", "test"])
    with pytest.raises(ValueError, match="split has 1"):
        audit(unit(np.eye(2)), ["train"])
    with pytest.raises(ValueError, match="labels has 1"):
        audit(unit(np.eye(2)), ["train", "test"], labels=["a"])


@pytest.mark.parametrize("thresholds", ["0.9", 0.9, [], [0.9, "x"], [1.5], None])
def test_thresholds_that_are_not_similarities_are_named(thresholds):
    x = np.eye(4)
    with pytest.raises(ValueError, match=r"thresholds must be cosine similarities in \(0, 1\]"):
        audit(x, ["train", "train", "validation", "test"], thresholds=thresholds)


def test_thresholds_given_twice_are_refused():
    # Accepted before, and the table showed each row twice (found by a stress test).
    with pytest.raises(ValueError, match="thresholds must be distinct"):
        audit(np.eye(4), ["train", "train", "validation", "test"], thresholds=[0.95, 0.95])
