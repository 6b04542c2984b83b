"""Curation core on arrays: known answers on hand-built data, exactness, validation."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import unit

from bubblefence_plugin.core import curation as cur
from bubblefence_plugin.core.neighbors import knn


def separated_clusters(k: int, per: int, dim: int = 32, spread: float = 0.05, seed: int = 0):
    """k tight clusters around orthogonal directions: (x, cluster label per row)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:k]
    labels = np.repeat(np.arange(k), per)
    x = centres[labels] + spread * rng.standard_normal((k * per, dim))
    return unit(x), labels


def test_pruned_knn_is_exact_against_brute_force():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((30, 48))
    sizes = (np.arange(1, 31) ** -1.0 * 9000 / np.sum(np.arange(1, 31) ** -1.0)).astype(int) + 5
    x = np.concatenate(
        [
            c + s * rng.standard_normal((n, 48))
            for c, n, s in zip(centres, sizes, rng.uniform(0.05, 0.6, 30), strict=True)
        ]
    )
    x = unit(np.concatenate([x, x[:50]]))  # exact duplicates too
    assert len(x) > cur.BRUTE_FORCE_ROWS  # the pruned path runs
    sims, idx = cur.knn_all(x, 7, seed=3)
    ref_sims, _ = knn(x, x, 7, exclude_self=np.arange(len(x)))
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    assert (idx != np.arange(len(x))[:, None]).all()  # never itself
    # the reported neighbours really have the reported similarities
    np.testing.assert_allclose(np.einsum("id,ikd->ik", x, x[idx]), sims, atol=1e-5)
    # a different pivot seed changes the search, not the answer
    np.testing.assert_allclose(cur.knn_all(x, 7, seed=11)[0], sims, atol=1e-5)


def test_isolated_point_is_the_top_outlier_and_scale_is_absolute():
    x, _ = separated_clusters(3, 40)
    lone = np.zeros((1, x.shape[1]), np.float32)
    lone[0, -1] = 1.0  # orthogonal to every cluster
    data = np.concatenate([x, lone])
    t = cur.typicality(data, k=5)
    assert t.dtype == np.float32 and t.shape == (121,)
    assert int(np.argmin(t)) == 120
    assert 0.0 <= t.min() and t.max() <= 1.0
    # (1 + mean similarity) / 2: the lone point's neighbours are ~orthogonal
    assert abs(t[120] - 0.5) < 0.05 and t[:120].min() > 0.9
    # not relative to the maximum: adding a far cluster leaves the others' scores alone
    far, _ = separated_clusters(1, 40, seed=5)
    far = unit(np.roll(far, 10, axis=1))
    t2 = cur.typicality(np.concatenate([x, far]), k=5)
    np.testing.assert_allclose(t2[:120], t[:120], atol=1e-6)
    req = cur.CurationRequest({"outliers": 1.0}, count=1)
    assert cur.select(data, req).rows.tolist() == [120]


def test_diverse_pick_takes_one_per_well_separated_cluster():
    x, labels = separated_clusters(6, 50)
    for seed in range(4):
        rows = cur.select(x, cur.CurationRequest({"diverse": 1.0}, count=6, seed=seed)).rows
        assert sorted(labels[rows].tolist()) == list(range(6))
    a = cur.select(x, cur.CurationRequest({"diverse": 1.0}, count=6, seed=2)).rows
    b = cur.select(x, cur.CurationRequest({"diverse": 1.0}, count=6, seed=2)).rows
    assert a.tolist() == b.tolist()  # seeded: same result


def test_second_diverse_pick_adds_what_the_first_lacks():
    x, labels = separated_clusters(6, 50)
    already = x[labels < 3]  # e.g. the train split covers clusters 0-2
    eligible = labels >= 0
    rows = cur.select(
        x, cur.CurationRequest({"diverse": 1.0}, count=3), eligible=eligible, start=already
    ).rows
    assert sorted(labels[rows].tolist()) == [3, 4, 5]
    assert cur.covering_radius(x, np.concatenate([already, x[rows]])) < 0.5


def test_balance_hits_target_shares_exactly_where_the_data_allows():
    labels = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 5)
    assert cur.class_quotas(labels, 30, "uniform") == {"a": 13, "b": 12, "c": 5}
    assert cur.class_quotas(labels, 17, "input") == {"a": 10, "b": 6, "c": 1}
    assert cur.class_quotas(labels, 20, {"a": 0.5, "b": 0.5}) == {"a": 10, "b": 10}
    assert cur.class_quotas(labels, 20, {"a": 0.25, "c": 0.75}) == {"a": 15, "c": 5}
    assert cur.class_quotas(labels, 500, "uniform") == {"a": 50, "b": 30, "c": 5}
    x, _ = separated_clusters(1, 85, seed=2)
    req = cur.CurationRequest({"balance": 1.0, "random": 1.0}, count=30)
    sel = cur.select(x, req, labels=labels)
    picked = labels[sel.rows]
    assert {c: int((picked == c).sum()) for c in "abc"} == sel.quotas == {"a": 13, "b": 12, "c": 5}
    assert len(set(sel.rows.tolist())) == 30
    # balanced and diverse together still respect the quotas
    req = cur.CurationRequest({"balance": 1.0, "diverse": 1.0}, count=30, target="uniform")
    picked = labels[cur.select(x, req, labels=labels).rows]
    assert {c: int((picked == c).sum()) for c in "abc"} == {"a": 13, "b": 12, "c": 5}


def test_samples_without_a_label_take_no_part_in_a_balance():
    # Found by a stress test: unlabelled samples (label "") got a quota of their own.
    labels = np.array(["a"] * 50 + [""] * 25 + ["b"] * 30)
    assert cur.class_quotas(labels, 20, "uniform") == {"a": 10, "b": 10}
    assert cur.class_quotas(labels, 16, "input") == {"a": 10, "b": 6}
    x, _ = separated_clusters(1, len(labels), seed=3)
    for strategy in ("random", "diverse"):
        req = cur.CurationRequest({"balance": 1.0, strategy: 1.0}, count=20)
        assert "" not in labels[cur.select(x, req, labels=labels).rows]
    only_unlabelled = cur.CurationRequest({"balance": 1.0}, count=5)
    assert len(cur.select(x[:10], only_unlabelled, labels=np.full(10, "")).rows) == 0


def test_combination_with_a_zero_strength_equals_the_other_alone():
    x, _ = separated_clusters(5, 40, spread=0.3, seed=4)
    values = np.random.default_rng(0).random(len(x))
    for alone, other in (("diverse", "typical"), ("typical", "diverse"), ("metadata", "diverse")):
        solo = cur.select(x, cur.CurationRequest({alone: 1.0}, count=12, seed=1), metadata=values)
        both = cur.select(
            x, cur.CurationRequest({alone: 1.0, other: 0.0}, count=12, seed=1), metadata=values
        )
        assert solo.rows.tolist() == both.rows.tolist(), (alone, other)
    # and a real combination differs from both parts
    mix = cur.select(x, cur.CurationRequest({"diverse": 1.0, "typical": 1.0}, count=12)).rows
    assert (
        mix.tolist() != cur.select(x, cur.CurationRequest({"typical": 1.0}, count=12)).rows.tolist()
    )


def test_metadata_sign_similarity_and_typical_order():
    x, _ = separated_clusters(2, 20)
    values = np.arange(40.0)
    values[3] = np.nan
    high = cur.select(x, cur.CurationRequest({"metadata": 1.0}, count=3), metadata=values).rows
    low = cur.select(x, cur.CurationRequest({"metadata": -2.0}, count=3), metadata=values).rows
    # A missing value is the least wanted either way: it came first in "lower values
    # first" (a tester's pick of 10 was 10 samples with no value).
    assert high.tolist() == [39, 38, 37]
    assert low.tolist() == [0, 1, 2]
    last = cur.select(x, cur.CurationRequest({"metadata": -1.0}, count=40), metadata=values).rows
    assert last[-1] == 3
    query = x[25:26]
    rows = cur.select(x, cur.CurationRequest({"similar": 1.0}, count=20), query=query).rows
    assert set(rows.tolist()) == set(range(20, 40))  # the query's own cluster
    sims = cur.query_similarity(x, query)
    assert np.isclose(sims[25], 1.0) and sims[:20].max() < 0.5
    typ = cur.typicality(x, k=3)
    top = cur.select(x, cur.CurationRequest({"typical": 1.0}, count=5, k=3)).rows
    assert np.all(typ[top] >= np.sort(typ)[-5])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strengths": {"spread": 1.0}, "count": 3}, "strategy='spread'"),
        ({"strengths": {"diverse": 0.0}, "count": 3}, "every strength is 0"),
        ({"strengths": {"typical": -1.0}, "count": 3}, "only metadata"),
        ({"strengths": {"diverse": 1.0}, "count": 0}, "count"),
        ({"strengths": {"diverse": 1.0}, "count": 3, "seed": -1}, "seed"),
        ({"strengths": {"balance": 1.0}, "count": 3, "target": "even"}, "target='even'"),
        ({"strengths": {"balance": 1.0}, "count": 3, "target": {"a": 0.5}}, "sum to 1"),
        ({"strengths": {"diverse": float("nan")}, "count": 3}, "finite"),
    ],
)
def test_parameters_are_validated_up_front(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cur.CurationRequest(**kwargs)


def test_missing_inputs_are_refused_by_name():
    x, _ = separated_clusters(2, 10)
    with pytest.raises(ValueError, match="balance needs one label"):
        cur.select(x, cur.CurationRequest({"balance": 1.0}, count=3))
    with pytest.raises(ValueError, match="similar needs"):
        cur.select(x, cur.CurationRequest({"similar": 1.0}, count=3))


def test_rows_are_normalised_and_bad_rows_refused_by_number():
    x, _ = separated_clusters(2, 10)
    request = cur.CurationRequest({"diverse": 1.0, "typical": 0.5}, count=5)
    np.testing.assert_array_equal(cur.select(x * 3, request).rows, cur.select(x, request).rows)
    broken = x.copy()
    broken[4] = 0.0
    with pytest.raises(ValueError, match=r"x rows \[4\] are zero vectors"):
        cur.select(broken, request)


def test_pruned_knn_matches_exact_ties_and_serves_both_sides(monkeypatch):
    """Entries of +-1/4 in 16-d: unit rows whose products are exact in any order, so
    ties (exact duplicates, equal angles) are real and must go to the lower index."""
    monkeypatch.setattr(cur, "BRUTE_FORCE_ROWS", 100)
    monkeypatch.setattr(cur, "QUERY_BLOCK", 64)
    monkeypatch.setattr(cur, "CHUNK_ROWS", 128)
    rng = np.random.default_rng(4)
    patterns = rng.choice([-0.25, 0.25], size=(60, 16)).astype(np.float32)
    tight = np.repeat(patterns[:1], 400, axis=0)  # one tight cluster: every pair ties
    tight[:, :2] = rng.choice([-0.25, 0.25], size=(400, 2))  # ... nearly: 4 variants
    x = np.concatenate([tight, patterns[rng.integers(0, 60, 900)]])
    x = x[rng.permutation(len(x))]
    k = 6
    sims, idx = cur.knn_all(x, k, seed=1)
    full = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(full, -np.inf)
    ref_idx = np.argsort(-full, axis=1, kind="stable")[:, :k]  # ties: lower index first
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(sims, np.take_along_axis(full, ref_idx, axis=1))


def test_pruned_knn_is_exact_on_tight_clusters_beside_broad_ones(monkeypatch):
    monkeypatch.setattr(cur, "BRUTE_FORCE_ROWS", 500)
    monkeypatch.setattr(cur, "QUERY_BLOCK", 128)
    monkeypatch.setattr(cur, "CHUNK_ROWS", 256)
    # a catch-all of many pieces, its rows bounded one by one for pieces in blocks of 3
    monkeypatch.setattr(cur, "EDGE_SHARE", 0.1)
    monkeypatch.setattr(cur, "EDGE_BOUND_PIECES", 3)
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((8, 64))
    spreads = [0.01, 0.01, 0.02, 0.3, 0.5, 0.6, 0.8, 1.0]  # tight ones many pieces wide
    sizes = [900, 500, 300, 200, 200, 150, 100, 50]
    x = np.concatenate(
        [
            c + s * rng.standard_normal((m, 64))
            for c, s, m in zip(centres, spreads, sizes, strict=True)
        ]
        + [rng.standard_normal((20, 64))]  # isolated outliers
    )
    x = unit(np.concatenate([x, x[::40]]))  # exact duplicates
    sims, idx = cur.knn_all(x, 10, seed=5)
    ref_sims, _ = knn(x, x, 10, exclude_self=np.arange(len(x)))
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    assert (idx != np.arange(len(x))[:, None]).all()
    assert all(len(set(row)) == 10 for row in idx.tolist())  # no neighbour twice
    np.testing.assert_allclose(np.einsum("id,ikd->ik", x, x[idx]), sims, atol=1e-5)
    assert (np.diff(sims, axis=1) <= 0).all()


def test_merge_puts_equal_similarities_in_index_order():
    """A candidate equal to a listed neighbour but of lower index goes first, in either
    orientation of the block; equal -inf fillers of a list not yet full stay last."""
    for by_column in (False, True):
        best_sim = np.array([[0.5, 0.25], [-np.inf, -np.inf]], np.float32)
        best_idx = np.array([[7, 9], [-1, -1]])
        sims = np.array([[0.5, 0.5, 0.125], [0.25, 0.0, 0.25]], np.float32)
        cur._merge(
            best_sim,
            best_idx,
            np.array([0, 1]),
            np.array([100, 101]),
            sims.T if by_column else sims,
            np.array([8, 3, 2]),
            by_column=by_column,
        )
        np.testing.assert_array_equal(best_idx, [[3, 7], [2, 8]])
        np.testing.assert_array_equal(best_sim, [[0.5, 0.5], [0.25, 0.25]])
