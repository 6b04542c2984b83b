"""Splits that respect labels and groups (issue 7; SPEC 2 "Labels and groups", SPEC 4).

Core cases run on generated data: labels of very unequal frequency (22 to 1500 samples,
plus labels below the 20-sample threshold) and groups of 1 to 500 samples that are
compact in embedding space, as the frames of a video are; one adversarial case scatters
groups at random. The FiftyOne cases go through `dataset.split`, the operator and the CLI.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import add_embedded_samples, crossing_pairs, unit
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from bubblefence_plugin import BubbleFence, BubbleFenceConfig
from bubblefence_plugin.core.bubbles import INNER, INNER_VAL, OUTER, TEST, TRAIN, VALIDATION
from bubblefence_plugin.core.groups import apply_decision, decide_groups, encode_groups, group_codes
from bubblefence_plugin.core.labels import SEPARATOR, LabelIndex, encode_label_sets
from bubblefence_plugin.core.metrics import group_violations, label_coverage, stability

LABEL_SIZES = (1500, 700, 400, 220, 120, 80, 50, 34, 22, 12, 5)
# Per-label eval share target with labels (issue 11): within 0.05 of eval_ratio, beyond
# what the label's largest unit makes impossible.
LABEL_SHARE_TOLERANCE = 0.05


def labelled_groups(
    seed: int, d: int = 32, sizes=LABEL_SIZES, prefix: str = "class", max_group: int = 60
):
    """Unit vectors, labels and groups: every label is a cluster of groups (videos).

    A label of 1000 samples or more holds one group of 500; the other groups have 1 to
    `max_group` samples; half of the one-sample groups have no group id at all (None).
    """
    rng = np.random.default_rng(seed)
    xs, labels, groups = [], [], []
    for label, n in enumerate(sizes):
        centre = rng.normal(size=d)
        left = n
        while left:
            if left == n and n >= 1000:
                size = 500
            else:
                size = int(min(left, np.clip(rng.pareto(1.5) * 3 + 1, 1, max_group)))
            left -= size
            group_centre = centre + 0.45 * rng.normal(size=d)
            xs.append(group_centre + 0.2 * rng.normal(size=(size, d)))
            labels += [f"{prefix}{label}"] * size
            name = f"{prefix}-video{len(xs)}"
            groups += [None if size == 1 and len(xs) % 2 else name] * size
    order = rng.permutation(len(labels))
    x = np.vstack(xs)[order]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, np.array(labels)[order], np.array(groups, dtype=object)[order]


def run_rounds(x, labels, groups, batches, on_target=True, **config):
    """Ingests the rows batch by batch; checks stability after every round."""
    bf = BubbleFence(BubbleFenceConfig(**config))
    start, before = 0, None
    for size in batches:
        rows = slice(start, start + size)
        bf.ingest(
            x[rows],
            labels=None if labels is None else labels[rows],
            groups=None if groups is None else groups[rows],
        )
        start += size
        now = bf.assignments()
        if before is not None:
            result = stability(before["id"], before["split"], now["id"], now["split"])
            assert result.share_unchanged == 1.0
        before = now
        check_groups(bf)
        if on_target:
            share = bf.summary()["eval_share"]
            assert abs(share - bf.config.eval_ratio) <= bf.config.eval_tolerance
    assert start == len(x)
    return bf


def check_groups(bf: BubbleFence) -> None:
    """Zero violations, one eval split per group, and every geometric exception is grouped."""
    frame = bf.assignments()
    split = frame["split"].to_numpy()
    groups = bf._groups
    if groups is None:
        return
    assert group_violations(split, groups).n_violations == 0
    eval_rows = np.isin(split, ("validation", "test")) & (groups != "")
    per_group = {}
    for g, s in zip(groups[eval_rows], split[eval_rows], strict=True):
        per_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in per_group.values())
    # Every eval sample names a bubble, with the shell of its split there.
    table = bf._anchors
    held = np.flatnonzero(np.isin(split, ("validation", "test")))
    anchor = frame["anchor_id"].to_numpy()[held]
    assert (anchor >= 0).all()
    shell = frame["shell"].to_numpy()[held]
    inner_is_val = table.layout[anchor] == INNER_VAL
    expected = np.where((shell == "inner") == inner_is_val, "validation", "test")
    assert (split[held] == expected).all()


def check_val_and_test(bf: BubbleFence) -> None:
    """Every eligible label in eval is in validation and test, unless that would leak.

    A label whose eval samples are all linked by pairs at least `unit_threshold` similar
    (the units bubbles move whole) or by groups cannot be split between validation and
    test without a val<->test leak.
    """
    split = bf.assignments()["split"].to_numpy()
    shares = bf.label_shares()
    x = bf._embeddings
    for row in shares[
        shares["eligible"] & (shares["validation"] + shares["test"] > 0)
    ].itertuples():
        if row.validation and row.test:
            continue
        rows = np.flatnonzero((bf._labels == row.label) & np.isin(split, ("validation", "test")))
        linked = x[rows] @ x[rows].T >= bf.config.unit_threshold
        if bf._groups is not None:
            own = bf._groups[rows]
            linked |= (own[:, None] == own[None, :]) & (own[:, None] != "")
        n_units = connected_components(sparse.csr_matrix(linked), directed=False)[0]
        assert n_units <= 2, row.label


def unit_labels(bf: BubbleFence, groups=None) -> np.ndarray:
    """Per sample, the unit it moves in: components of pairs at `unit_threshold`, joined
    by groups (-1 for duplicates)."""
    kept = np.flatnonzero(bf.assignments()["duplicate_of"].isna().to_numpy())
    x = bf._embeddings[kept]
    linked = x @ x.T >= bf.config.unit_threshold
    if groups is not None:
        own = np.asarray(groups)[kept]
        linked |= (own[:, None] == own[None, :]) & (own[:, None] != "")
    out = np.full(bf.n_samples, -1)
    out[kept] = connected_components(sparse.csr_matrix(linked), directed=False)[1]
    return out


def label_errors(bf: BubbleFence, groups=None) -> dict[str, float]:
    """|eval share - eval_ratio| per eligible label, beyond `LABEL_SHARE_TOLERANCE` and
    what its units allow.

    A label can only move in whole units (near-twin components and groups): its largest
    unit (as a share of the label) is added to the tolerance.
    """
    shares = bf.label_shares()
    shares = shares[shares["eligible"]]
    units = unit_labels(bf, groups)
    index = LabelIndex.from_encoded(bf._labels)
    out = {}
    for row in shares.itertuples():
        column = int(np.flatnonzero(index.names == row.label)[0])
        carries = index.matrix[:, column].toarray().ravel() > 0
        own = units[carries & (units >= 0)]
        grain = np.unique(own, return_counts=True)[1].max() / row.n
        error = abs(row.eval_share - bf.config.eval_ratio)
        out[row.label] = max(0.0, error - LABEL_SHARE_TOLERANCE - grain)
    return out


# --------------------------------------------------------------------------- building blocks


def test_label_sets_are_encoded_once_per_sample():
    encoded = encode_label_sets(["cat", None, ["dog", "cat", "dog"], (), 3, np.array(["b", "a"])])
    assert encoded.tolist() == ["cat", "", f"cat{SEPARATOR}dog", "", "3", f"a{SEPARATOR}b"]
    assert encode_label_sets(np.array([1, 2])).tolist() == ["1", "2"]
    index = LabelIndex.from_encoded(encoded)
    assert index.names.tolist() == ["3", "a", "b", "cat", "dog"]
    assert index.matrix.toarray().sum(axis=1).tolist() == [1, 0, 2, 0, 1, 2]
    assert index.counts(np.array([True, False, True, False, False, False])).tolist() == [
        0,
        0,
        0,
        2,
        1,
    ]
    with pytest.raises(ValueError, match="reserved"):
        encode_label_sets([f"a{SEPARATOR}b"])
    # NaN is a missing value (pandas), not a label "nan"; in a list too.
    missing = encode_label_sets(np.array([1.0, np.nan]))
    assert missing.tolist() == ["1.0", ""]
    assert encode_label_sets([np.float32("nan"), ["x", float("nan")]]).tolist() == ["", "x"]


def test_groups_are_encoded_and_coded():
    groups = encode_groups(["v1", None, "", 7, "v1"])
    assert groups.tolist() == ["v1", "", "", "7", "v1"]
    assert group_codes(groups).tolist() == [1, -1, -1, 0, 1]
    with pytest.raises(ValueError, match="at most one group"):
        encode_groups([["v1", "v2"]])


def test_group_votes_majority_ties_to_eval_and_one_eval_split():
    # Groups 0..3; rows: (group, split, anchor)
    rows = [
        (0, TRAIN, -1),
        (0, TRAIN, -1),
        (0, VALIDATION, 2),  # group 0: train 2 : eval 1 -> train
        (1, TRAIN, -1),
        (1, TEST, 1),  # group 1: tie -> eval, and test (its only eval split)
        (2, VALIDATION, 0),
        (2, TEST, 1),
        (2, TEST, 1),
        (2, TRAIN, -1),  # group 2: eval 3 : train 1 -> eval; test 2 : val 1 -> test, anchor 1
        (3, VALIDATION, 0),
        (3, TEST, 1),  # group 3: val/test tie -> the split further below its share
    ]
    codes = np.array([r[0] for r in rows])
    split = np.array([r[1] for r in rows], np.int8)
    anchor = np.array([r[2] for r in rows], np.int64)
    decision = decide_groups(codes, np.arange(len(rows)), split, anchor, validation_ratio=0.5)
    assert decision.split.tolist() == [TRAIN, TEST, TEST, VALIDATION]
    assert decision.anchor.tolist() == [-1, 1, 1, 0]
    shell = np.where(anchor >= 0, INNER, 0).astype(np.int8)
    layout = np.array([INNER_VAL, INNER_VAL, INNER_VAL], np.int8)
    moves = apply_decision(decision, codes, np.arange(len(rows)), split, anchor, shell, layout)
    assert moves == {"to_eval": 2, "to_train": 1, "val_test": 2}
    assert split.tolist() == [0, 0, 0, 2, 2, 2, 2, 2, 2, 1, 1]
    # Moved eval rows take their group's anchor and the shell of their split there.
    assert anchor[3] == 1 and shell[3] == OUTER and anchor[5] == 1 and shell[5] == OUTER
    assert anchor[2] == -1 and shell[2] == 0


# --------------------------------------------------------------------------- the core


def test_label_aware_round_covers_every_label_on_target():
    x, labels, _ = labelled_groups(0)
    plain = run_rounds(x, labels, None, [len(x)], seed=1, label_aware=False)
    aware = run_rounds(x, labels, None, [len(x)], seed=1)
    split = aware.assignments()["split"].to_numpy()
    coverage = label_coverage(split, labels)
    assert coverage.n_eligible == 9
    assert coverage.covered["eval"] == 9
    check_val_and_test(aware)
    assert max(label_errors(aware).values()) == 0
    summary = aware.summary()["labels"]
    assert summary["covered"]["eval"] == 9 and summary["missing_from_eval"] == []
    assert summary["eval_shares"]["class8"] == aware.label_shares().set_index("label").loc[
        "class8", "eval_share"
    ].round(4)
    assert aware.history[-1]["labels"] == summary
    # Without the label option, regions alone already spread eval over the labels.
    assert label_coverage(plain.assignments()["split"].to_numpy(), labels).covered["eval"] >= 8


@pytest.mark.parametrize(("eval_ratio", "seed"), [(0.2, 0), (0.2, 1), (0.05, 1)])
def test_labels_without_near_twins_reach_their_targets_exactly(eval_ratio, seed):
    # Found by a re-test: every sample its own unit, yet each label's last capture passed
    # its target by one (up to its cap) and the last label was left short: 15 of 120
    # eval samples against 24 (eval_ratio 0.05: 2 against 6).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 32)).astype(np.float32)
    labels = np.array([f"c{i % 10}" for i in range(1200)])
    bf = BubbleFence(BubbleFenceConfig(eval_ratio=eval_ratio, seed=seed))
    split = np.asarray(bf.ingest(x, labels=labels).split)
    held = np.isin(split, ("validation", "test"))
    target = round(eval_ratio * 120)
    assert [int(held[labels == name].sum()) for name in np.unique(labels)] == [target] * 10


def test_groups_one_and_several_rounds_zero_violations():
    x, labels, groups = labelled_groups(1)
    for batches in ([len(x)], [1600, 800, 500, len(x) - 2900]):
        bf = run_rounds(x, labels, groups, batches, seed=2)
        encoded = encode_groups(groups)
        assert max(label_errors(bf, encoded).values()) == 0
        summary = bf.summary()
        assert summary["groups"]["violations"] == 0
        shares = bf.label_shares()
        missing = shares[shares["eligible"] & (shares["validation"] + shares["test"] == 0)]
        for row in missing.itertuples():
            # Only a label that moves in units too big for its cap may be left out.
            cap = np.floor((bf.config.eval_ratio + bf.config.eval_tolerance) * row.n)
            units = unit_labels(bf, encoded)
            own = units[(bf._labels == row.label) & (units >= 0)]
            assert np.unique(own, return_counts=True)[1].min() > cap, row.label
        assert abs(summary["validation_share_of_eval"] - 0.5) <= 0.1
        if len(batches) > 1:
            assert sum(r["group_known"] for r in bf.history) > 0


def test_a_new_sample_of_a_known_group_follows_it_even_inside_a_bubble():
    x, labels, groups = labelled_groups(2)
    bf = BubbleFence(BubbleFenceConfig(seed=3))
    bf.ingest(x, labels=labels, groups=groups)
    frame = bf.assignments()
    split = frame["split"].to_numpy()
    named = np.flatnonzero(groups != None)  # noqa: E711
    eval_row = named[np.isin(split[named], ("validation", "test"))][0]
    train_row = named[split[named] == "train"][0]
    # A new member of a train group inside bubble 0 (halfway to its edge, not a duplicate
    # of the centre), and a new member of an eval group far from every bubble.
    table = bf._anchors
    centre, radius = table.centres[0].astype(np.float64), table.radius[0]
    side = np.random.default_rng(0).normal(size=32)
    side -= (side @ centre) * centre
    angle = np.arccos(1 - radius / 2)
    inside = np.cos(angle) * centre + np.sin(angle) * side / np.linalg.norm(side)
    far = -x[eval_row]
    assert (1 - far @ table.centres.T > table.radius).all()
    new = np.vstack([inside, far])
    r = bf.ingest(new, labels=["x", "y"], groups=[groups[train_row], groups[eval_row]])
    assert r.split.tolist() == ["train", split[eval_row]]
    assert r.anchor_id[0] == -1 and r.anchor_id[1] >= 0
    assert bf.history[-1]["group_known"] == 2
    check_groups(bf)


def test_a_new_label_is_brought_into_eval_in_a_later_round():
    x, labels, groups = labelled_groups(3, sizes=(900, 300, 120, 40))
    late_x, late_labels, late_groups = labelled_groups(
        4, sizes=(60, 30), prefix="late", max_group=8
    )
    bf = run_rounds(x, labels, groups, [len(x)], seed=4)
    bf.ingest(late_x, labels=late_labels, groups=late_groups)
    check_groups(bf)
    shares = bf.label_shares().set_index("label")
    for name in ("late0", "late1"):
        assert shares.loc[name, "validation"] + shares.loc[name, "test"] > 0
    assert max(label_errors(bf, encode_groups(np.r_[groups, late_groups])).values()) == 0


def test_groups_scattered_at_random_still_never_straddle():
    rng = np.random.default_rng(5)
    x, labels, _ = labelled_groups(5, sizes=(800, 400, 200, 100, 40))
    sizes = np.clip((rng.pareto(1.0, size=300) * 4 + 1).astype(int), 1, 500)
    groups = np.repeat(np.arange(len(sizes)), sizes)[: len(x)].astype(str)
    groups = rng.permutation(np.r_[groups, np.full(len(x) - len(groups), "")])
    bf = run_rounds(x, labels, groups, [900, 400, len(x) - 1300], seed=5, on_target=False)
    assert bf.summary()["groups"]["violations"] == 0
    # Groups scattered at random tie most samples into a few units: the quota yields to
    # them rather than split a group, and every round says by how much.
    for record in bf.history:
        assert record["shortfall"] == max(record["need"] - record["captured"], 0)
    check_groups(bf)


def test_a_component_groups_tie_together_is_cut_between_groups():
    """Groups of 7 unrelated samples tie the twin components of a 50-cluster mixture into
    one component larger than train: it is cut, and the cut now falls between groups.
    Cut through them, the groups' votes took most of its eval side back to train (eval
    0.081 of the data, validation 0.080 of eval)."""
    from bench.bench_quality import mixture

    x, _ = mixture(3000, seed=5)
    groups = (np.arange(len(x)) // 7).astype(str)
    bf = BubbleFence(BubbleFenceConfig(seed=0))
    record = bf.ingest(x, groups=groups).stats
    summary = bf.summary()
    assert record["captured_cut"] > 0 and summary["groups"]["violations"] == 0
    assert abs(summary["eval_share"] - 0.2) <= 0.01
    assert abs(summary["validation_share_of_eval"] - 0.5) <= 0.03
    check_groups(bf)


@pytest.mark.parametrize(
    ("seed", "rounds", "group_size", "validation_ratio", "opened"),
    [(0, [200], 7, 0.5, True), (0, [200], 5, 0.2, False), (1, [120, 40, 40], 5, 0.2, False)],
)
def test_pairs_that_group_moves_open_or_close_are_counted(
    seed, rounds, group_size, validation_ratio, opened
):
    """Groups settle a round after its cuts were counted: moving a member to its group's
    side opens twin pairs across a line, or closes pairs a cut had opened. Three tight
    clusters, groups of consecutive rows across them. Every pair across is still one of
    those counted in `cut_pairs` (a random fuzz of the core found both miscounts)."""
    rng = np.random.default_rng(seed)
    n = sum(rounds)
    centres = rng.normal(size=(3, 8))
    x = centres[rng.integers(0, 3, n)] + 0.01 * rng.normal(size=(n, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    groups = (np.arange(n) // group_size).astype(str)
    bf = BubbleFence(BubbleFenceConfig(seed=seed, validation_ratio=validation_ratio))
    for part in np.split(np.arange(n), np.cumsum(rounds)[:-1]):
        bf.ingest(x[part], groups=groups[part])
    assert crossing_pairs(bf, bf.config.leak_threshold) == sum(r["cut_pairs"] for r in bf.history)
    change = bf.history[0]["cut_pairs_groups"]
    assert change > 0 if opened else change < 0
    check_groups(bf)


def test_new_twins_that_known_groups_put_on_both_sides_are_counted():
    """Two new near copies of one point, each filed under a known group, one group in
    train and one in eval: each copy follows its group, and their pair across the line
    is counted (a stress test found 150 such pairs with `cut_pairs` 0)."""
    rng = np.random.default_rng(0)
    old = rng.standard_normal((400, 32))
    old_groups = np.array([f"g{i}" for i in range(len(old))], dtype=object)
    bf = BubbleFence(BubbleFenceConfig(seed=0))
    bf.ingest(old, groups=old_groups)
    split = bf.assignments()["split"].to_numpy()
    train, held = np.flatnonzero(split == "train"), np.flatnonzero(split != "train")
    k = 30
    points = rng.standard_normal((k, 32))
    new = np.vstack([points, points]) + 0.02 * rng.standard_normal((2 * k, 32))
    filed = np.concatenate([old_groups[train[:k]], old_groups[held[:k]]])
    bf.ingest(new, groups=filed)
    after = bf.assignments()["split"].to_numpy()[len(old) :]
    assert (after[:k] == "train").all() and (after[k:] != "train").all()
    assert bf.history[-1]["cut_pairs"] == k
    assert crossing_pairs(bf, bf.config.leak_threshold) == sum(r["cut_pairs"] for r in bf.history)
    check_groups(bf)


def _leaking_eval(bf) -> int:
    """Brute force: kept eval samples with a kept train sample at the leak threshold."""
    a = bf.assignments()
    kept = a["duplicate_of"].isna().to_numpy()
    split = a["split"].to_numpy()
    x = bf._embeddings[: len(a)].astype(np.float64)
    held, train = kept & (split != "train"), kept & (split == "train")
    return int(((x[held] @ x[train].T) >= bf.config.leak_threshold).any(axis=1).sum())


def test_eval_samples_that_known_groups_make_leak_are_counted():
    """New near twins of eval samples, each filed under a train group, follow their
    groups to train: the eval samples they make leak are the round's `leaks_twins` and
    `summary()["bridge_leaks"]`, which a reader is warned by (they were 0: components
    bound by groups were left out of the count)."""
    rng = np.random.default_rng(1)
    old = rng.standard_normal((400, 32)).astype(np.float32)
    old_groups = np.array([f"g{i // 4}" for i in range(len(old))], dtype=object)
    bf = BubbleFence(BubbleFenceConfig(seed=0))
    bf.ingest(old, groups=old_groups)
    split = bf.assignments()["split"].to_numpy()
    train, held = np.flatnonzero(split == "train"), np.flatnonzero(split != "train")
    before = _leaking_eval(bf)
    k = 30
    new = old[held[:k]] + 0.1 * rng.standard_normal((k, 32)).astype(np.float32)  # cos ~0.995
    result = bf.ingest(new, groups=old_groups[train[:k]])
    assert (result.split == "train").all()
    leaked = _leaking_eval(bf) - before
    assert leaked >= k // 2
    assert result.stats["leaks_twins"] == leaked == bf.summary()["bridge_leaks"]
    check_groups(bf)


def test_a_new_member_of_a_train_group_follows_it_before_any_bubble():
    """One sample, then another of its group: the first round held nothing out (no
    bubble yet), and the second sample follows its group to train."""
    x = np.eye(4)[:2]
    bf = BubbleFence(BubbleFenceConfig(seed=0))
    bf.ingest(x[:1], groups=["g"])
    assert bf.summary()["n_anchors"] == 0
    r = bf.ingest(x[1:], groups=["g"])
    assert r.split.tolist() == ["train"] and bf.history[-1]["group_known"] == 1


def _crossing(side: str, others: np.ndarray) -> int:
    """How many of ``others`` (split names) lie across either line from ``side``."""
    return int(
        np.sum(
            ((others == "train") != (side == "train"))
            | ((side != "train") & (others != "train") & (others != side))
        )
    )


def test_duplicates_that_follow_take_their_group_side():
    x, labels, groups = labelled_groups(6, sizes=(600, 200, 60))
    bf = BubbleFence(BubbleFenceConfig(seed=6, dedup_policy="follow"))
    bf.ingest(x, labels=labels, groups=groups)
    # Exact copies of earlier samples, filed under other groups: each copy is a duplicate
    # that would follow its original, but its own group decides.
    copies = np.arange(0, 300, 3)
    new_groups = np.array([f"copy{i % 7}" for i in range(len(copies))], dtype=object)
    r = bf.ingest(x[copies], labels=labels[copies], groups=new_groups)
    assert (r.duplicate_of != None).all()  # noqa: E711
    check_groups(bf)
    sides = {g: set(r.split[new_groups == g]) for g in set(new_groups)}
    assert all(len(s) == 1 for s in sides.values())
    # A copy its group's vote moved off its original's side crosses with the original and
    # its twins: those pairs are counted (found by a stress test: cut_pairs 0), and the
    # copy is not said to be with its original.
    a = bf.assignments()
    row_of = {sid: k for k, sid in enumerate(a["id"])}
    split = a["split"].to_numpy()
    kept = np.flatnonzero(a["duplicate_of"].isna().to_numpy())
    x64 = bf._embeddings.astype(np.float64)
    apart, extra = 0, 0
    copy_rows = np.array([row_of[c] for c in r.ids])
    moved = np.zeros(len(copy_rows), bool)
    for k, (f, original_id) in enumerate(zip(copy_rows, r.duplicate_of, strict=True)):
        if split[f] == split[row_of[original_id]]:
            continue
        apart += 1
        moved[k] = True
        twins = kept[x64[kept] @ x64[f] >= bf.config.leak_threshold]
        # Beside its original a copy mirrors it (its pairs are the original's); apart,
        # every pair it crosses with counts, those its original crossed too.
        extra += _crossing(split[f], split[twins])
    # So do its pairs with other copies (with the strata served to their targets first,
    # this data has 15 such pairs across the line; the count had them, this check not).
    twin_copies = np.triu(x64[copy_rows] @ x64[copy_rows].T >= bf.config.leak_threshold, 1)
    for a_, b_ in zip(*np.nonzero(twin_copies), strict=True):
        if moved[a_] or moved[b_]:
            extra += _crossing(split[copy_rows[a_]], split[copy_rows[b_ : b_ + 1]])
    assert apart > 0 and extra > 0
    assert r.stats["duplicates_with_original"] == len(copies) - apart
    assert crossing_pairs(bf) + extra == sum(h["cut_pairs"] for h in bf.history)


def test_a_copy_left_behind_by_its_original_counts_its_pairs():
    # Found by a fuzz of the core: a copy followed its original of the same round, then
    # the vote moved the original to eval and not the copy (its own group held it): the
    # exact pair crossed train/eval with cut_pairs 0.
    e = np.eye(64, dtype=np.float32)
    bf = BubbleFence(BubbleFenceConfig(seed=781, dedup_policy="follow", eval_ratio=0.3))
    bf.ingest(e[[0]], ids=[1], groups=["z"])
    bf.ingest(e[[1, 1]], ids=[10, 11], groups=["a", "G"])
    r = bf.ingest(e[[2, 2]], ids=[20, 21], groups=["G", "b"])
    split = dict(zip(bf.assignments()["id"], bf.assignments()["split"], strict=True))
    assert split[21] == "train" != split[20]
    assert r.stats["duplicates_with_original"] == 0
    assert r.stats["cut_pairs"] == 1 and sum(h["cut_pairs"] for h in bf.history) == 1


def test_deterministic_and_same_after_save_load(tmp_path):
    x, labels, groups = labelled_groups(7, sizes=(700, 300, 90, 30))
    runs = []
    for reload in (False, True):
        bf = BubbleFence(BubbleFenceConfig(seed=8))
        bf.ingest(x[:700], labels=labels[:700], groups=groups[:700])
        if reload:
            bf.save(tmp_path / "state.npz")
            bf = BubbleFence.load(tmp_path / "state.npz")
        bf.ingest(x[700:], labels=labels[700:], groups=groups[700:])
        runs.append(bf.assignments())
    assert runs[0].equals(runs[1])


def test_without_label_option_the_labels_only_drive_dedup():
    x, labels, _ = labelled_groups(8, sizes=(500, 200, 40))
    plain = BubbleFence(BubbleFenceConfig(seed=9))
    plain.ingest(x)
    unaware = BubbleFence(BubbleFenceConfig(seed=9, label_aware=False))
    unaware.ingest(x, labels=labels)
    assert plain.assignments().equals(unaware.assignments())
    assert "labels" in unaware.summary() and "labels" not in plain.summary()


@pytest.mark.parametrize("closure_threshold", [None, 0.91])
def test_multi_label_samples_count_for_each_of_their_labels(closure_threshold):
    """At 0.91 the closure's units grow coarse in these 32 dimensions (class0: one unit
    of 766 of its 800 samples): the twin components serve the labels' caps before the
    margin's units may pass them, else class2 and class3 go to eval almost whole."""
    x, labels, _ = labelled_groups(9, sizes=(800, 300, 120, 40))
    rng = np.random.default_rng(9)
    # Detections-like: every sample has its class plus, often, a frequent "person" and,
    # rarely, a "bike" spread over all classes.
    sets = [
        [c] + (["person"] if rng.random() < 0.6 else []) + (["bike"] if rng.random() < 0.03 else [])
        for c in labels
    ]
    bf = BubbleFence(BubbleFenceConfig(seed=10, closure_threshold=closure_threshold))
    bf.ingest(x, labels=sets)
    shares = bf.label_shares().set_index("label")
    assert set(shares.index) == {"class0", "class1", "class2", "class3", "person", "bike"}
    assert shares.loc["person", "n"] == sum("person" in s for s in sets)
    assert bf.summary()["labels"]["covered"]["eval"] == 6
    assert max(label_errors(bf).values()) == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_label_count": 0}, "min_label_count"),
        ({"label_aware": "yes"}, "label_aware"),
    ],
)
def test_bad_label_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BubbleFenceConfig(**kwargs)


def test_bad_label_and_group_input_is_named():
    bf = BubbleFence()
    x = np.eye(4)[:3] + 0.1
    with pytest.raises(ValueError, match="groups has 2 entries"):
        bf.ingest(x, groups=["a", "b"])
    with pytest.raises(ValueError, match="labels has 1 entries"):
        bf.ingest(x, labels=["a"])
    assert bf.n_samples == 0
    with pytest.raises(ValueError, match="no labels"):
        bf.label_shares()


# --------------------------------------------------------------------------- FiftyOne side


def detections_dataset(fo_datasets, n_first: int):
    """Samples with an embeddings field, a Detections field and a `scene` group field.

    Every sample shows its class; every third one a "person" too. Returns the dataset
    and the ids of the first `n_first` samples.
    """
    import fiftyone as fo

    x, labels, groups = labelled_groups(10, d=16, sizes=(300, 120, 60, 30), max_group=8)
    ds = fo.Dataset()
    fo_datasets.append(ds)
    box = [0.1, 0.1, 0.2, 0.2]
    samples = []
    for i, (vector, label, scene) in enumerate(zip(x, labels, groups, strict=True)):
        objects = [fo.Detection(label=label, bounding_box=box)]
        if i % 3 == 0:
            objects.append(fo.Detection(label="person", bounding_box=box))
        samples.append(
            fo.Sample(
                filepath=f"/nonexistent/{i}.png",
                emb=vector,
                gt=fo.Detections(detections=objects),
                scene=scene,
            )
        )
    ds.add_samples(samples)
    return ds, ds.values("id")[:n_first]


def dataset_violations(ds) -> int:
    return group_violations(ds.values("split"), ds.values("scene")).n_violations


@pytest.mark.fiftyone
def test_dataset_split_with_detections_and_groups_remembers_the_fields(fo_datasets):
    import bubblefence_plugin.fo as bfo

    ds, first_ids = detections_dataset(fo_datasets, 400)
    summary = bfo.split(
        ds.select(first_ids), embeddings_field="emb", label_field="gt", group_field="scene"
    )
    assert summary["labels"]["n_labels"] == 5  # four classes and "person"
    assert summary["labels"]["covered"]["eval"] == summary["labels"]["n_eligible"]
    assert summary["groups"]["violations"] == 0 == dataset_violations(ds)
    assert "group violations: 0" in summary["message"]
    info = bfo.state_info(ds)
    assert (info["label_field"], info["group_field"]) == ("gt", "scene")

    # The next round names no fields: the stored ones keep holding.
    before = {i: s for i, s in zip(*ds.values(["id", "split"]), strict=True) if s}
    summary = bfo.split(ds, embeddings_field="emb")
    assert (summary["label_field"], summary["group_field"]) == ("gt", "scene")
    assert summary["n_assigned"] == len(ds) - 400
    assert dataset_violations(ds) == 0
    now = dict(zip(*ds.values(["id", "split"]), strict=True))
    assert all(now[i] == s for i, s in before.items())
    per_scene: dict[str, set] = {}
    for scene, s in zip(ds.values("scene"), ds.values("split"), strict=True):
        if scene and s in ("validation", "test"):
            per_scene.setdefault(scene, set()).add(s)
    assert all(len(s) == 1 for s in per_scene.values())


@pytest.mark.fiftyone
def test_label_and_group_fields_of_every_kind(fo_datasets):
    import fiftyone as fo

    import bubblefence_plugin.fo as bfo
    from bubblefence_plugin.fo import fields

    grouped = fo.Dataset()
    fo_datasets.append(grouped)
    grouped.add_group_field("group", default="left")
    samples = []
    for i in range(3):
        group = fo.Group()
        for side in ("left", "right"):
            samples.append(
                fo.Sample(
                    filepath=f"/nonexistent/{side}{i}.png",
                    group=group.element(side),
                    cls=fo.Classification(label=f"c{i}") if i < 2 else None,
                    clss=fo.Classifications(
                        classifications=[fo.Classification(label="a"), fo.Classification(label="b")]
                    ),
                    det=fo.Detections(detections=[fo.Detection(label=f"d{i}")] * (i + 1)),
                    name=f"n{i}",
                    num=i,
                    keywords=["k", f"k{i}"],
                    score=0.5,
                )
            )
    grouped.add_samples(samples)
    with pytest.raises(ValueError, match="select_group_slices"):
        bfo.split(grouped, embeddings_field="emb")
    flat = grouped.select_group_slices(media_type="image").clone()
    fo_datasets.append(flat)
    ids = flat.values("id")

    def values(field, param="label_field"):
        out = fields.label_values(flat, ids, field, param)
        return [list(v) for v in out] if isinstance(out, list) else out.tolist()

    assert fields.label_values(flat, ids, None) is None

    assert values("cls") == ["c0", "c0", "c1", "c1", "", ""]
    assert values("clss")[0] == ["a", "b"]
    assert [len(v) for v in values("det")] == [1, 1, 2, 2, 3, 3]
    assert values("name")[::2] == ["n0", "n1", "n2"] and values("num")[::2] == ["0", "1", "2"]
    assert values("keywords")[2] == ["k", "k1"]
    group_ids = values("group", "group_field")
    assert group_ids[0] == group_ids[1] != group_ids[2]  # the two slices of a group

    assert bfo.label_field_choices(flat) == [
        "cls",
        "clss",
        "det",
        "group",
        "keywords",
        "name",
        "num",
    ]
    assert bfo.label_field_choices(flat, multi_ok=False) == ["cls", "group", "name", "num"]
    with pytest.raises(ValueError, match="label_field='score' is a field of type FloatField"):
        fields.label_values(flat, ids, "score")
    with pytest.raises(ValueError, match="'det' is a field of type EmbeddedDocumentField"):
        fields.label_values(flat, ids, "det", "group_field")
    # A path inside a label list reads as the field does; before (found by a stress
    # test) each sample's list was one label, "['d1', 'd1']".
    assert values("det.detections.label") == values("det")
    assert values("clss.classifications.label") == values("clss")
    assert values("cls.label") == values("cls")
    with pytest.raises(ValueError, match="inside the list field 'det.detections'"):
        fields.label_values(flat, ids, "det.detections.label", "group_field")
    for reserved in ("tags", "filepath", "split", "metadata.width"):
        with pytest.raises(ValueError, match=f"{reserved}' cannot be used"):
            fields.label_values(flat, ids, reserved)
    with pytest.raises(ValueError, match="label_field='nope': .* no such field"):
        bfo.split(flat, embeddings_field="emb", label_field="nope")


@pytest.mark.fiftyone
def test_a_list_of_labels_whose_first_value_was_empty_is_read(fo_datasets):
    # Found by a hostile-input walk: FiftyOne declares a bare ListField when the first
    # list it sees is empty, and the split refused it "expected ... list-of-strings".
    import fiftyone as fo

    from bubblefence_plugin.fo import fields

    ds = fo.Dataset()
    fo_datasets.append(ds)
    ds.add_samples(
        [fo.Sample(filepath=f"/n/{i}.png", gt=[] if i == 0 else [f"c{i}"]) for i in range(3)]
    )
    assert ds.get_field("gt").field is None
    labels = fields.label_values(ds, ds.values("id"), "gt")
    assert [list(v) for v in labels] == [[], ["c1"], ["c2"]]
    ds.set_values("other", [[], [1.5], [2.5]])  # floats are no labels
    with pytest.raises(ValueError, match="label_field='other' is a field of type ListField"):
        fields.label_values(ds, ds.values("id"), "other")


@pytest.mark.fiftyone
def test_operator_form_and_run_with_label_and_group_fields(fo_datasets):
    import asyncio

    import fiftyone.operators as foo
    from fiftyone.operators.executor import resolve_type
    from fiftyone.operators.registry import OperatorRegistry

    uri = "@bubblefence/bubblefence/bubblefence_split"
    ds, _ = detections_dataset(fo_datasets, 0)

    def form(params):
        request = {
            "dataset_name": ds.name,
            "operator_uri": uri,
            "params": params,
            "view": [],
            "target": "inputs",
        }
        result = asyncio.run(resolve_type(OperatorRegistry(), uri, request))
        return result.to_json()["type"]["properties"]

    props = form({})
    assert props["label_field"]["type"]["values"] == ["gt", "scene"]
    assert props["group_field"]["type"]["values"] == ["scene"]
    assert props["label_field"]["default"] is None
    assert "label_aware" in form({"show_advanced": True})

    result = foo.get_operator(uri)(
        ds, embeddings_field="emb", label_field="gt", group_field="scene"
    )
    requests = {r["operator_uri"]: r["params"] for r in result.executor.to_json()["requests"]}
    shown = requests["show_output"]["results"]["summary"]
    assert "Groups:" in shown and "violations 0" in shown and "Eval share per label" in shown
    assert dataset_violations(ds) == 0
    # The next form preselects the fields the state was built with.
    props = form({})
    assert props["label_field"]["default"] == "gt" and props["group_field"]["default"] == "scene"


@pytest.mark.fiftyone
def test_cli_split_with_label_and_group_fields(fo_datasets, capsys):
    from bubblefence_plugin import cli

    ds, _ = detections_dataset(fo_datasets, 0)
    ds.name = f"bf-labels-groups-{ds.name}"[:60]
    args = ["split", "--dataset", ds.name, "--embeddings-field", "emb"]
    assert cli.main([*args, "--label-field", "gt", "--group-field", "scene"]) == 0
    out = capsys.readouterr().out
    assert "labels: 5 with >= 20 samples" in out and "violations 0" in out
    assert dataset_violations(ds) == 0
    assert cli.main([*args, "--label-field", "emb"]) == 2
    assert "--label-field='emb' is a field of type VectorField" in capsys.readouterr().err


@pytest.mark.fiftyone
def test_a_group_field_first_given_later_goes_by_every_samples_group(fo_datasets):
    """A group field given only in a later round: the earlier samples' groups are read
    too (`BubbleFence.relabel`), new members follow their group's majority, and the
    round reports the groups that straddle (round 0 did not know them) as the data has
    them; changing the field later goes by the new field's values for every sample."""
    import bubblefence_plugin.fo as bfo

    ds, first_ids = detections_dataset(fo_datasets, 400)
    ds.set_values("other", [f"o{i % 7}" for i in range(len(ds))])
    bfo.split(ds.select(first_ids), embeddings_field="emb")
    before = dict(zip(*ds.select(first_ids).values(["id", "split"]), strict=True))
    summary = bfo.split(ds, embeddings_field="emb", group_field="scene")
    assert summary["groups"]["violations"] == dataset_violations(ds) > 0
    assert all(ds[i].split == s for i, s in before.items())
    sides: dict[str, dict[str, int]] = {}
    for sid, scene, split in zip(*ds.values(["id", "scene", "split"]), strict=True):
        if sid in before:
            side = "train" if split == "train" else "eval"
            sides.setdefault(scene, {"train": 0, "eval": 0})[side] += 1
    # A new member of a group with a clear earlier majority took that side.
    for sid, scene, split in zip(*ds.values(["id", "scene", "split"]), strict=True):
        votes = sides.get(scene)
        if sid in before or votes is None or votes["train"] == votes["eval"]:
            continue
        if split == "duplicate":
            continue
        majority = "train" if votes["train"] > votes["eval"] else "eval"
        assert ("train" if split == "train" else "eval") == majority

    add_embedded_samples(ds, 40, seed=3)
    ds.set_values("other", [f"o{i % 7}" for i in range(len(ds))])
    summary = bfo.split(ds, embeddings_field="emb", group_field="other")
    truth = group_violations(ds.values("split"), ds.values("other"))
    assert summary["groups"]["n_groups"] == 7
    assert summary["groups"]["violations"] == truth.n_violations


@pytest.mark.fiftyone
def test_a_label_field_first_given_later_is_counted_for_every_sample(fo_datasets):
    """Label coverage after a label field first given in a later round: the round's
    figures are the report's, over every sample (not those of the last round alone)."""
    import bubblefence_plugin.fo as bfo

    ds, first_ids = detections_dataset(fo_datasets, 400)
    bfo.split(ds.select(first_ids), embeddings_field="emb")
    summary = bfo.split(ds, embeddings_field="emb", label_field="gt")
    report = bfo.report(ds, "split", store=False)
    coverage = report["metrics"]["split"]["coverage"]
    assert summary["labels"]["n_eligible"] == coverage["n_eligible"] == 5
    assert summary["labels"]["covered"]["eval"] == coverage["covered"]["eval"]


@pytest.mark.fiftyone
def test_a_view_grouped_by_a_field_is_refused_with_the_way_to_split_it(fo_datasets):
    import bubblefence_plugin.fo as bfo

    ds, _ = detections_dataset(fo_datasets, 10)
    with pytest.raises(ValueError, match="group_by.*group_field"):
        bfo.split(ds.group_by("scene"), embeddings_field="emb")
    assert not ds.has_field("split") or ds.exists("split").count() == 0


@pytest.mark.fiftyone
def test_labels_held_out_whole_are_said_missing_from_train(fo_datasets):
    """Labels that are each one component at the closure, held out whole, have no train
    sample: the round and the audit say so, naming them."""
    import fiftyone as fo

    import bubblefence_plugin.fo as bfo
    from bubblefence_plugin.text import round_warnings

    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(20, 32)))
    label = np.repeat(np.arange(20), 60)
    x = unit(centres[label] + 0.02 * rng.normal(size=(len(label), 32)))
    ds = fo.Dataset()
    fo_datasets.append(ds)
    ds.add_samples(
        [
            fo.Sample(filepath=f"/nonexistent/{i}.png", emb=v, clf=fo.Classification(label=f"c{k}"))
            for i, (v, k) in enumerate(zip(x, label, strict=True))
        ]
    )
    summary = bfo.split(ds, embeddings_field="emb", label_field="clf")
    splits = np.asarray(ds.values("split"))
    names = np.asarray(ds.values("clf.label"))
    untrained = sorted(n for n in set(names) if not np.any(splits[names == n] == "train"))
    assert untrained  # whole classes are the only units: eval takes some whole
    assert summary["labels"]["missing_from_train"] == sorted(
        summary["labels"]["missing_from_train"], key=untrained.index
    ) and set(summary["labels"]["missing_from_train"]) == set(untrained)
    said = [w for w in round_warnings(summary) if w.startswith("No train sample")]
    assert said and all(name in said[0] for name in untrained)
    report = bfo.report(ds, "split", store=False)
    audit = [w for w in bfo.split_warnings(report) if "no train sample" in w]
    assert audit and all(name in audit[0] for name in untrained)


def test_relabel_gives_held_samples_their_labels_and_groups_and_moves_none():
    """`relabel` after a round split without labels or groups: nothing moves, the summary
    counts the labels and the groups on both sides as the data has them, and the next
    round's members of a group take its majority side; a wrong length is refused."""
    x, labels, _ = labelled_groups(3, sizes=(300, 150, 80))
    # Groups across the clusters (patients, drives): a round without them cuts them.
    groups = np.array([f"drive{i % 37}" for i in range(len(x))], dtype=object)
    first = 400
    bf = BubbleFence(BubbleFenceConfig(eval_ratio=0.2, seed=0))
    bf.ingest(x[:first])
    before = bf.assignments().copy()
    with pytest.raises(ValueError, match="labels has 3 entries for 400 samples held"):
        bf.relabel(labels=["a"] * 3)
    bf.relabel(labels=labels[:first], groups=groups[:first])
    pd.testing.assert_frame_equal(bf.assignments(), before)
    summary = bf.summary()
    assert summary["labels"]["n_labels"] == 3
    split = bf.assignments()["split"].to_numpy()
    truth = group_violations(split, encode_groups(groups[:first]))
    assert summary["groups"]["violations"] == truth.n_violations > 0
    codes = group_codes(encode_groups(groups))
    decision = decide_groups(codes, np.arange(first), _codes(split), np.zeros(first, np.int64), 0.5)
    bf.ingest(x[first:], labels=labels[first:], groups=groups[first:])
    after = bf.assignments()
    pd.testing.assert_frame_equal(after.iloc[:first], before)
    new = np.arange(first, len(x))
    known = (codes[new] >= 0) & (decision.split[np.maximum(codes[new], 0)] >= 0)
    new_split = _codes(after["split"].to_numpy()[new])
    expected = decision.split[codes[new][known]]
    followed = np.where(expected == TRAIN, new_split[known] == TRAIN, new_split[known] != TRAIN)
    assert known.sum() > 20 and followed.all()


def _codes(names: np.ndarray) -> np.ndarray:
    lookup = {"train": TRAIN, "validation": VALIDATION, "test": TEST}
    return np.array([lookup.get(str(n), -1) for n in names], np.int8)


def test_copies_that_group_votes_part_from_their_family_count_every_pair():
    """`dedup_policy` follow with groups across tight clusters of copies: a vote moves some
    copies of one original off its side while others stay, in this round and later
    ones. Every pair that crosses, copies included, is in `cut_pairs` (found by a stress
    test: a family of 828 copies parted 1,799 pairs short)."""
    rng = np.random.default_rng(6)
    centres = unit(rng.normal(size=(30, 48)))
    family = rng.integers(30, size=3000)
    x = unit(centres[family] + 0.012 * rng.normal(size=(3000, 48)))  # copies at ~0.993
    groups = np.array([f"g{i}" for i in rng.integers(400, size=3000)], dtype=object)
    config = BubbleFenceConfig(seed=6, dedup_policy="follow", dedup_threshold=0.99)
    bf = BubbleFence(config)
    for part in np.array_split(np.arange(3000), 3):
        bf.ingest(x[part], ids=part, groups=groups[part])
    split = bf.assignments()["split"].to_numpy()
    copies = int(bf.assignments()["duplicate_of"].notna().sum())
    crossing = crossing_pairs_with_copies(x[bf.assignments()["id"].to_numpy()], split)
    assert copies > 1000 and crossing > 50
    assert sum(int(r["cut_pairs"]) for r in bf.history) == crossing


def crossing_pairs_with_copies(x: np.ndarray, split: np.ndarray, threshold: float = 0.95) -> int:
    """Brute force over every sample with a split, copies that follow included."""
    placed = np.flatnonzero(np.isin(split, ["train", "validation", "test"]))
    sims = x[placed] @ x[placed].T
    s = split[placed]
    across = (s[:, None] == "train") != (s[None, :] == "train")
    across |= (s[:, None] != "train") & (s[None, :] != "train") & (s[:, None] != s[None, :])
    return int(np.sum(np.triu(across & (sims >= threshold), 1)))
