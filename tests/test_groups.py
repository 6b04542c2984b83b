"""Groups (core/groups.py): encoding, codes, the majority decision, the moves it makes,
the voter tiers of a round and the edges that link a group, on hand-made inputs."""

import numpy as np
import pytest
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from bubblefence_plugin.core.bubbles import (
    DUPLICATE,
    INNER,
    INNER_TEST,
    INNER_VAL,
    NO_SHELL,
    OUTER,
    TEST,
    TRAIN,
    UNASSIGNED,
    VALIDATION,
)
from bubblefence_plugin.core.groups import (
    NO_GROUP,
    UNDECIDED,
    GroupDecision,
    apply_decision,
    crosses,
    crossings_changed,
    decide_groups,
    encode_groups,
    follow_known_groups,
    group_codes,
    group_links,
    group_summary,
    is_eval,
    resolve_round,
)
from bubblefence_plugin.core.neighbors import CellIndex

V, T, TR = VALIDATION, TEST, TRAIN


# --------------------------------------------------------------------------- encoding


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["v1", None, "", 7, 1.5], ["v1", "", "", "7", "1.5"]),
        (np.array([3, 1]), ["3", "1"]),
        (np.array(["a", ""]), ["a", ""]),
        (np.array(["a", None], dtype=object), ["a", ""]),
        ([], []),
    ],
)
def test_encode_groups(values, expected):
    assert encode_groups(values).tolist() == expected


@pytest.mark.parametrize("value", [["a", "b"], ("a",), {"a"}, np.array(["a"])])
def test_a_sample_belongs_to_one_group_at_most(value):
    with pytest.raises(ValueError, match="at most one group"):
        encode_groups(["ok", value])


@pytest.mark.parametrize(
    ("groups", "codes"),
    [
        (["b", "", "a", "b"], [1, NO_GROUP, 0, 1]),
        (["x", "y", "x"], [0, 1, 0]),
        (["", ""], [NO_GROUP, NO_GROUP]),
        ([], []),
    ],
)
def test_group_codes_are_dense_and_sorted_with_no_group_for_empty(groups, codes):
    assert group_codes(np.array(groups, dtype=str)).tolist() == codes


# --------------------------------------------------------------------------- decisions


def _decide(rows, validation_ratio=0.5, voters=None):
    codes = np.array([r[0] for r in rows])
    split = np.array([r[1] for r in rows], np.int8)
    anchor = np.array([r[2] for r in rows], np.int64)
    voters = np.arange(len(rows)) if voters is None else np.asarray(voters)
    return decide_groups(codes, voters, split, anchor, validation_ratio)


def test_only_voters_with_a_split_and_a_group_count():
    rows = [
        (0, TR, -1),
        (0, V, 1),  # not among the voters below
        (0, V, 1),  # not among the voters below
        (1, UNASSIGNED, -1),  # no split: no vote
        (1, DUPLICATE, -1),  # no role: no vote
        (NO_GROUP, V, 2),  # no group
        (2, T, 3),
    ]
    decision = _decide(rows, voters=[0, 3, 4, 5, 6])
    assert decision.split.tolist() == [TR, UNDECIDED, T]
    assert decision.anchor.tolist() == [-1, -1, 3]


def test_the_anchor_of_an_eval_group_is_its_most_voted_then_oldest_bubble():
    rows = [
        (0, T, 5),
        (0, T, 2),
        (0, T, 5),  # group 0: test, bubble 5 (2 voters) over bubble 2
        (1, T, 5),
        (1, T, 2),  # group 1: a tie, the older bubble 2
        (2, V, 1),
        (2, T, 4),
        (2, T, 3),  # group 2: test 2 : validation 1; test voters tie 3 / 4 -> 3
    ]
    decision = _decide(rows)
    assert decision.split.tolist() == [T, T, T]
    assert decision.anchor.tolist() == [5, 2, 3]


@pytest.mark.parametrize(("ratio", "side"), [(0.5, T), (0.95, V)])
def test_a_validation_test_tie_goes_to_the_split_further_below_its_share(ratio, side):
    # Rows 0-3 (no group) are validation already; group 0 has one of each.
    rows = [(NO_GROUP, V, 0)] * 4 + [(0, V, 1), (0, T, 2)]
    decision = _decide(rows, validation_ratio=ratio)
    assert decision.split.tolist() == [side]
    assert decision.anchor.tolist() == [1 if side == V else 2]


def test_tied_groups_are_placed_biggest_first_each_moving_the_balance():
    # Group 0: 2 + 2 tied, group 1: 1 + 1 tied. The bigger goes first, to validation
    # (gaps equal: ties to validation); the smaller then to test.
    rows = [(0, V, 0), (0, V, 0), (0, T, 1), (0, T, 1), (1, V, 2), (1, T, 3)]
    decision = _decide(rows)
    assert decision.split.tolist() == [V, T]
    assert decision.anchor.tolist() == [0, 3]


def test_no_groups_no_decision():
    decision = decide_groups(
        np.empty(0, np.int64),
        np.empty(0, np.int64),
        np.empty(0, np.int8),
        np.empty(0, np.int64),
        0.5,
    )
    assert len(decision.split) == 0 and len(decision.anchor) == 0


# --------------------------------------------------------------------------- moves


def test_apply_decision_moves_only_rows_that_disagree_by_hand():
    codes = np.array([0, 0, 1, NO_GROUP, 2, 0])
    split = np.array([TR, UNASSIGNED, T, TR, V, T], np.int8)
    anchor = np.array([-1, -1, 0, -1, 1, 0], np.int64)
    shell = np.array([NO_SHELL, NO_SHELL, INNER, NO_SHELL, INNER, INNER], np.int8)
    layout = np.array([INNER_VAL, INNER_TEST], np.int8)
    decision = GroupDecision(
        split=np.array([V, TR, UNDECIDED], np.int8), anchor=np.array([1, -1, -1])
    )
    moves = apply_decision(decision, codes, np.arange(6), split, anchor, shell, layout)
    # Rows 0 (train) and 1 (no split yet) go to eval; row 2 to train; row 5 test ->
    # validation; row 3 has no group and row 4's group is undecided.
    assert moves == {"to_eval": 2, "to_train": 1, "val_test": 1}
    assert split.tolist() == [V, V, TR, TR, V, V]
    assert anchor.tolist() == [1, 1, -1, -1, 1, 1]
    # Validation in bubble 1 (inner_test) is its outer shell; train has no shell.
    assert shell.tolist() == [OUTER, OUTER, NO_SHELL, NO_SHELL, INNER, OUTER]


def test_apply_decision_to_a_subset_of_rows():
    codes = np.array([0, 0])
    split = np.array([TR, TR], np.int8)
    anchor, shell = np.full(2, -1, np.int64), np.zeros(2, np.int8)
    decision = GroupDecision(split=np.array([T], np.int8), anchor=np.array([0]))
    layout = np.array([INNER_TEST], np.int8)
    moves = apply_decision(decision, codes, np.array([1]), split, anchor, shell, layout)
    assert moves == {"to_eval": 1, "to_train": 0, "val_test": 0}
    assert split.tolist() == [TR, T] and shell.tolist() == [NO_SHELL, INNER]


def test_new_rows_of_known_groups_follow_them():
    codes = np.array([0, 0, 1, 0, 1, 2, NO_GROUP])
    split = np.array([TR, TR, T] + [UNASSIGNED] * 4, np.int8)
    anchor = np.array([-1, -1, 0, -1, -1, -1, -1], np.int64)
    shell = np.array([0, 0, INNER, 0, 0, 0, 0], np.int8)
    layout = np.array([INNER_TEST], np.int8)
    known = follow_known_groups(
        codes, np.arange(3, 7), np.arange(3), split, anchor, shell, layout, 0.5
    )
    assert known.tolist() == [True, True, False, False]
    assert split.tolist() == [TR, TR, T, TR, T, UNASSIGNED, UNASSIGNED]
    assert anchor[3:].tolist() == [-1, 0, -1, -1]
    assert shell[3:].tolist() == [NO_SHELL, INNER, 0, 0]


def test_no_row_with_a_group_follows_none():
    # A first round whose rows all lack a group: an IndexError before (found by a stress
    # test of a group field that no sample of the view fills).
    codes = np.full(4, NO_GROUP)
    split = np.full(4, UNASSIGNED, np.int8)
    anchor, shell = np.full(4, -1, np.int64), np.zeros(4, np.int8)
    empty = np.zeros(0, np.int64)
    known = follow_known_groups(
        codes, np.arange(4), empty, split, anchor, shell, np.zeros(0, np.int8), 0.5
    )
    assert not known.any() and (split == UNASSIGNED).all()
    split[:] = [TR, T, TR, TR]
    follower = np.zeros(4, bool)
    moves = resolve_round(
        codes, empty, np.arange(4), follower, split, anchor, shell, np.zeros(0, np.int8), 0.5
    )
    assert sum(moves.values()) == 0 and split.tolist() == [TR, T, TR, TR]


def test_resolve_round_votes_old_rows_then_kept_new_rows_then_followers():
    rows = [
        # (group, split, anchor, shell, old, follower)
        (0, TR, -1, 0, True, False),
        (0, V, 2, INNER, False, False),  # overruled by the old train member
        (0, DUPLICATE, -1, 0, False, False),  # an excluded duplicate: no role, stays
        (1, T, 3, OUTER, False, False),
        (1, T, 3, OUTER, False, False),
        (1, TR, -1, 0, False, False),  # group 1: kept new members vote, test 2 : 1
        (1, V, 1, INNER, False, True),
        (1, V, 1, INNER, False, True),
        (1, V, 1, INNER, False, True),  # followers, outvoted by not voting at all
        (2, V, 4, INNER, False, True),
        (2, V, 4, INNER, False, True),
        (2, TR, -1, 0, False, True),  # group 2: followers only, validation 2 : 1
    ]
    codes = np.array([r[0] for r in rows])
    split = np.array([r[1] for r in rows], np.int8)
    anchor = np.array([r[2] for r in rows], np.int64)
    shell = np.array([r[3] for r in rows], np.int8)
    old = np.flatnonzero([r[4] for r in rows])
    new = np.flatnonzero([not r[4] for r in rows])
    follower = np.array([r[5] for r in rows])[new]
    layout = np.full(5, INNER_VAL, np.int8)
    moves = resolve_round(codes, old, new, follower, split, anchor, shell, layout, 0.5)
    assert moves == {"to_eval": 2, "to_train": 1, "val_test": 3}
    assert split.tolist() == [TR, TR, DUPLICATE, T, T, T, T, T, T, V, V, V]
    assert anchor.tolist() == [-1, -1, -1, 3, 3, 3, 3, 3, 3, 4, 4, 4]
    assert shell.tolist() == [0, 0, 0, OUTER, OUTER, OUTER, OUTER, OUTER, OUTER] + [INNER] * 3


def test_apply_decision_before_any_bubble_exists():
    """A first round that held nothing out has no bubble: a new member of its (train)
    group follows it to train without a layout to look up (an IndexError before)."""
    codes = np.array([0, 0], np.int64)
    split = np.array([TR, V], np.int8)
    anchor, shell = np.array([-1, -1]), np.array([NO_SHELL, INNER], np.int8)
    decision = GroupDecision(split=np.array([TR], np.int8), anchor=np.array([-1]))
    moves = apply_decision(
        decision, codes, np.array([1]), split, anchor, shell, np.zeros(0, np.int8)
    )
    assert split.tolist() == [TR, TR] and anchor[1] == -1 and shell[1] == NO_SHELL
    assert moves == {"to_eval": 0, "to_train": 1, "val_test": 0}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crossings_changed_by_moves_match_brute_force(seed):
    """The change in twin pairs across either line, over the moved rows' twins alone,
    equals the brute-force count after less the count before (two indexes that hold the
    rows between them, as a later round's earlier and new rows; moved rows in both)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 16))
    x = centres[rng.integers(0, 6, 400)] + 0.15 * rng.normal(size=(400, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    before = rng.choice([TR, V, T], len(x)).astype(np.int8)
    moved = np.sort(rng.choice(len(x), 60, replace=False))
    after = before.copy()
    after[moved] = rng.choice([TR, V, T], len(moved))
    threshold = 0.9
    indexes = [
        CellIndex(x, np.arange(250), threshold, 0),
        CellIndex(x, np.arange(250, 400), 0.8, 0),
    ]

    def brute(split):
        x64 = x.astype(np.float64)
        i, j = np.nonzero(np.triu(x64 @ x64.T >= threshold, 1))
        return int(np.sum(crosses(split[i], split[j])))

    change = crossings_changed(x, moved, before, after, indexes, threshold)
    assert change == brute(after) - brute(before) != 0
    assert crossings_changed(x, moved[:0], before, after, indexes, threshold) == 0


def test_resolved_groups_never_straddle_train_and_eval():
    rng = np.random.default_rng(0)
    n, n_groups = 300, 25
    codes = rng.integers(-1, n_groups, n)
    split = rng.choice([TR, V, T, DUPLICATE], n).astype(np.int8)
    # Earlier rounds already agree within each group (what every round leaves behind).
    old, new = np.arange(100), np.arange(100, n)
    side = rng.choice([TR, V, T], n_groups).astype(np.int8)
    agree = (codes[old] >= 0) & (split[old] != DUPLICATE)
    split[old[agree]] = side[codes[old[agree]]]
    anchor = np.where(is_eval(split), rng.integers(0, 6, n), -1)
    shell = np.where(is_eval(split), INNER, 0).astype(np.int8)
    layout = rng.integers(0, 2, 6).astype(np.int8)
    follower = rng.random(len(new)) < 0.2
    before = split.copy()
    moves = resolve_round(codes, old, new, follower, split, anchor, shell, layout, 0.5)
    has_role = split != DUPLICATE
    for g in range(n_groups):
        sides = set(split[(codes == g) & has_role].tolist())
        assert len(sides) <= 1, (g, sides)
        if ((codes[old] == g) & (before[old] != DUPLICATE)).any():
            assert sides == {side[g]}  # a group with a side keeps it
    moved = split != before
    assert not moved[old].any() and sum(moves.values()) == moved.sum() > 0
    # A moved eval row is in the shell its split has in its new bubble.
    eval_moved = moved & is_eval(split)
    inner_is_val = layout[anchor[eval_moved]] == INNER_VAL
    expected = np.where((split[eval_moved] == V) == inner_is_val, INNER, OUTER)
    assert (shell[eval_moved] == expected).all()
    assert (anchor[moved & (split == TR)] == -1).all()


# --------------------------------------------------------------------------- links, summary


def test_group_links_chain_the_members_of_each_group():
    codes = np.array([0, NO_GROUP, 0, 1, 0, 1])
    i, j = group_links(codes, np.arange(6))
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 2), (2, 4), (3, 5)]
    # Positions in `rows`, not rows.
    i, j = group_links(codes, np.array([4, 1, 2, 5]))
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 2)]
    assert group_links(None, np.arange(6)) is None


def test_group_links_connect_exactly_the_groups():
    rng = np.random.default_rng(1)
    codes = rng.integers(-1, 30, 400)
    rows = rng.permutation(400)[:250]
    i, j = group_links(codes, rows)
    own = codes[rows]
    grouped = own[own >= 0]
    assert len(i) == len(j) == len(grouped) - len(np.unique(grouped))  # a chain per group
    graph = sparse.coo_matrix((np.ones(len(i)), (i, j)), shape=(len(rows), len(rows)))
    _, component = connected_components(graph, directed=False)
    for a in range(len(rows)):
        same_group = (own == own[a]) & (own[a] >= 0)
        same_group[a] = True
        assert ((component == component[a]) == same_group).all()


def test_group_summary_counts_groups_on_both_sides():
    groups = np.array(["a", "a", "b", "", "c", "b"])
    names = np.array(["train", "validation", "test", "train", "duplicate", "validation"])
    assert group_summary(groups, names) == {
        "n_groups": 2,  # c has only a duplicate; "" is no group
        "violations": 1,
        "violating_examples": ["a"],
    }
