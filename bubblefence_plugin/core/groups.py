"""Group constraints (SPEC 2, "Labels and groups"): a group never straddles train and eval.

A group is what must not be split: the frames of one video, the images of one drive,
scene or patient. Samples without a group ("" / None) are groups of their own.

The bubbles propose, the group decides:

* **Votes.** A group's side is the majority of its members' splits, ties to eval; an
  eval group takes the majority of validation / test (ties: whichever of the two is
  further below `validation_ratio`), so a group is never split between validation and
  test either. The voters are the group's members of earlier rounds when it has any
  (those never move, so the group's side is fixed once it has one), else its kept new
  members, else its new duplicates that follow their originals.
* **Moves.** A member whose split differs from its group's takes the group's split,
  the group's anchor (the bubble holding most of the voters with that split, ties to the
  older one) and the shell of that split in that bubble. A member whose split already
  agrees keeps its own bubble and shell.
* **Counts.** A move can open or close a twin pair across the line after the round
  counted its cuts: `crossings_changed` counts the difference exactly, over the moved
  rows' twins alone, and the round adds it to `cut_pairs`.

So the geometric invariants of a bubble (no train sample inside, eval samples inside
their bubble and in the shell of their split) hold for every sample that was not moved:
a moved sample is a train sample inside a bubble, or an eval sample outside it. The same
holds in later rounds: a new sample of a known group follows its group even inside a
bubble of the other side (groups win over bubbles).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bubbles import INNER, INNER_VAL, NO_SHELL, OUTER, TEST, TRAIN, VALIDATION
from .metrics import group_violations
from .neighbors import CellIndex

NO_GROUP = -1
UNDECIDED = -1


def encode_groups(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """One string per sample: the group id, "" for none (None or "")."""
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "iubU":
        return values.astype(str)
    out = []
    for value in values:
        if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
            raise ValueError(
                f"groups: a sample belongs to at most one group, got the collection {value!r}"
            )
        out.append("" if value is None else str(value))
    return np.asarray(out, dtype=str)


def group_codes(groups: np.ndarray) -> np.ndarray:
    """Dense integer code per sample (same string, same code); NO_GROUP for ""."""
    names, codes = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    if len(names) and names[0] == "":
        codes -= 1  # "" sorts first: it becomes NO_GROUP, the others 0..k-1
    return codes


@dataclass
class GroupDecision:
    """Per group code: its split (UNDECIDED without voters) and anchor (-1 for train)."""

    split: np.ndarray
    anchor: np.ndarray


def decide_groups(
    codes: np.ndarray,
    voter_rows: np.ndarray,
    split: np.ndarray,
    anchor: np.ndarray,
    validation_ratio: float,
) -> GroupDecision:
    """Majority votes of `voter_rows` (rows with a split) per group; see the module doc."""
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    voters = voter_rows[(codes[voter_rows] >= 0) & _has_role(split[voter_rows])]
    g, s = codes[voters], split[voters]
    n_train, n_val, n_test = (np.bincount(g[s == c], minlength=n_groups) for c in _ROLES)
    n_eval = n_val + n_test
    has_voters = n_train + n_eval > 0
    to_eval = has_voters & (n_eval >= n_train)
    side = np.full(n_groups, UNDECIDED, dtype=np.int8)
    side[has_voters & ~to_eval] = TRAIN
    side[to_eval & (n_val > n_test)] = VALIDATION
    side[to_eval & (n_test > n_val)] = TEST
    ties = np.flatnonzero(to_eval & (n_val == n_test))
    if len(ties):
        # Biggest tied groups first, each to the split further below its share.
        val_now, test_now = int(np.sum(split == VALIDATION)), int(np.sum(split == TEST))
        for group in ties[np.lexsort((ties, -n_eval[ties]))]:
            total = val_now + test_now + n_eval[group]
            val_gap = validation_ratio * total - val_now
            test_gap = (1.0 - validation_ratio) * total - test_now
            side[group] = VALIDATION if val_gap >= test_gap else TEST
            if side[group] == VALIDATION:
                val_now += int(n_eval[group])
            else:
                test_now += int(n_eval[group])
    group_anchor = np.full(n_groups, -1, dtype=np.int64)
    agree = voters[split[voters] == side[codes[voters]]]
    agree = agree[side[codes[agree]] != TRAIN]
    if len(agree):
        pairs, counts = np.unique(np.c_[codes[agree], anchor[agree]], axis=0, return_counts=True)
        # Per group: most voters first, then the older (smaller) anchor.
        order = np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))
        pairs = pairs[order]
        first = np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]
        group_anchor[pairs[first, 0]] = pairs[first, 1]
    return GroupDecision(split=side, anchor=group_anchor)


def apply_decision(
    decision: GroupDecision,
    codes: np.ndarray,
    rows: np.ndarray,
    split: np.ndarray,
    anchor: np.ndarray,
    shell: np.ndarray,
    layout: np.ndarray,
) -> dict[str, int]:
    """Moves the `rows` whose split differs from their group's decision (in place).

    Returns how many rows moved train -> eval (`to_eval`; unassigned rows included),
    eval -> train (`to_train`) and between validation and test (`val_test`).
    """
    g = codes[rows]
    target = np.full(len(rows), UNDECIDED, decision.split.dtype)
    target[g >= 0] = decision.split[g[g >= 0]]  # no decision to read where no row has a group
    moving = (target != UNDECIDED) & (split[rows] != target)
    moved, new_split = rows[moving], target[moving].astype(np.int8)
    old_split = split[moved]
    new_anchor = np.where(new_split == TRAIN, -1, decision.anchor[g[moving]])
    to_eval = new_split != TRAIN
    # Only rows going to eval have a bubble (a round may have none yet: every group train).
    inner_is_val = np.zeros(len(moved), bool)
    inner_is_val[to_eval] = layout[new_anchor[to_eval]] == INNER_VAL
    new_shell = np.where((new_split == VALIDATION) == inner_is_val, INNER, OUTER)
    split[moved] = new_split
    anchor[moved] = new_anchor
    shell[moved] = np.where(to_eval, new_shell, NO_SHELL)
    was_eval = is_eval(old_split)
    return {
        "to_eval": int(np.sum(to_eval & ~was_eval)),
        "to_train": int(np.sum(~to_eval & was_eval)),
        "val_test": int(np.sum(to_eval & was_eval)),
    }


def follow_known_groups(
    codes: np.ndarray,
    rows: np.ndarray,
    old_rows: np.ndarray,
    split: np.ndarray,
    anchor: np.ndarray,
    shell: np.ndarray,
    layout: np.ndarray,
    validation_ratio: float,
) -> np.ndarray:
    """New `rows` of groups that already have a side take it now (in place).

    Returns a mask over `rows`: True where the row's group was known.
    """
    decision = decide_groups(codes, old_rows, split, anchor, validation_ratio)
    g = codes[rows]
    known = g >= 0  # none where no row has a group: no decision to read
    known[known] = decision.split[g[known]] != UNDECIDED
    apply_decision(decision, codes, rows[known], split, anchor, shell, layout)
    return known


def resolve_round(
    codes: np.ndarray,
    old_rows: np.ndarray,
    new_rows: np.ndarray,
    follower: np.ndarray,
    split: np.ndarray,
    anchor: np.ndarray,
    shell: np.ndarray,
    layout: np.ndarray,
    validation_ratio: float,
) -> dict[str, int]:
    """Every new row with a split takes its group's side (in place); returns the moves.

    `follower` marks new duplicates that took their original's split (policy `follow`):
    they vote only in a group without any kept new member.
    """
    candidates = np.r_[old_rows, new_rows[~follower], new_rows[follower]]
    tier = np.r_[
        np.zeros(len(old_rows), np.int64),
        np.ones(int(np.sum(~follower)), np.int64),
        np.full(int(np.sum(follower)), 2, np.int64),
    ]
    voting = (codes[candidates] >= 0) & _has_role(split[candidates])
    candidates, tier = candidates[voting], tier[voting]
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    best_tier = np.full(n_groups, 3, dtype=np.int64)
    np.minimum.at(best_tier, codes[candidates], tier)
    voters = candidates[tier == best_tier[codes[candidates]]]
    decision = decide_groups(codes, voters, split, anchor, validation_ratio)
    rows = new_rows[_has_role(split[new_rows])]
    return apply_decision(decision, codes, rows, split, anchor, shell, layout)


def crossings_changed(
    embeddings: np.ndarray,
    moved: np.ndarray,
    split_before: np.ndarray,
    split_after: np.ndarray,
    indexes: Sequence[CellIndex],
    threshold: float,
) -> int:
    """Twin pairs (cosine >= `threshold`) across the train/eval line or validation/test
    after the `moved` rows changed split, less those before: negative where the moves
    closed more crossings than they opened.

    `indexes` hold every kept row once between them; only the moved rows' own twins are
    searched, a pair of two moved rows counted once (from its smaller row).
    """
    moved = np.asarray(moved, np.int64)
    if len(moved) == 0:
        return 0
    is_moved = np.zeros(len(split_after), bool)
    is_moved[moved] = True
    change = 0
    for index in indexes:
        at = index.at(threshold)
        for q, b, _ in at.pairs(embeddings[moved]):
            row, other = moved[q], at.rows[b]
            keep = (row != other) & (~is_moved[other] | (row < other))
            row, other = row[keep], other[keep]
            change += int(np.sum(crosses(split_after[row], split_after[other])))
            change -= int(np.sum(crosses(split_before[row], split_before[other])))
    return change


def crossings_of(
    embeddings: np.ndarray,
    rows: np.ndarray,
    split: np.ndarray,
    indexes: Sequence[CellIndex],
    threshold: float,
    others: np.ndarray | None = None,
) -> int:
    """Twin pairs (cosine >= `threshold`) that cross either line between `rows` (outside
    `indexes`: a round's duplicates that have a split, `dedup_policy` follow) and the
    indexed rows, the rows `others` (earlier such duplicates, also outside them), and
    among `rows` themselves: all of a copy's pairs, as no other search sees a copy
    (found by stress tests: a copy of a train sample with an eval twin was counted 4
    pairs short, two copies of one image voted into train and test 1 short, and a
    family of 828 copies of one frame that the vote parted 1,799 pairs short)."""
    rows = np.unique(np.asarray(rows, np.int64))
    count = crossings_between(embeddings, rows, others, split, threshold)
    for index in indexes:
        at = index.at(threshold)
        for q, b, _ in at.pairs(embeddings[rows]):
            count += int(np.sum(crosses(split[rows[q]], split[at.rows[b]])))
    if len(rows) > 1:
        # Any seed: the search is exact, the seed only shapes its cells.
        among = CellIndex(embeddings, rows, threshold, seed=0)
        for q, b, _ in among.own_pairs():
            once = q < b  # each pair is yielded both ways
            count += int(np.sum(crosses(split[rows[q[once]]], split[rows[b[once]]])))
    return count


def crossings_between(
    embeddings: np.ndarray,
    rows: np.ndarray,
    others: np.ndarray | None,
    split: np.ndarray,
    threshold: float,
) -> int:
    """Twin pairs (cosine >= `threshold`) across either line between one of `rows` and
    one of `others` (those among `rows` left out: each pair once)."""
    rows = np.unique(np.asarray(rows, np.int64))
    others = np.setdiff1d(np.asarray(others if others is not None else [], np.int64), rows)
    if len(rows) == 0 or len(others) == 0:
        return 0
    # Any seed: the search is exact, the seed only shapes its cells.
    at = CellIndex(embeddings, others, threshold, seed=0)
    return sum(
        int(np.sum(crosses(split[rows[q]], split[others[b]])))
        for q, b, _ in at.pairs(embeddings[rows])
    )


def crosses(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether pairs with splits `a` and `b` lie across the train/eval line or across
    validation/test."""
    return ((a == TRAIN) != (b == TRAIN)) | (is_eval(a) & is_eval(b) & (a != b))


_ROLES = (TRAIN, VALIDATION, TEST)


def _has_role(split: np.ndarray) -> np.ndarray:
    return (split == TRAIN) | is_eval(split)


def is_eval(split: np.ndarray) -> np.ndarray:
    """Validation or test."""
    return (split == VALIDATION) | (split == TEST)


def group_summary(groups: np.ndarray, split_names: np.ndarray) -> dict[str, Any]:
    """JSON-able count of groups and of groups on both sides of the train/eval line."""
    violations = group_violations(split_names, groups)
    return {
        "n_groups": violations.n_groups,
        "violations": violations.n_violations,
        "violating_examples": violations.examples,
    }


def group_links(codes: np.ndarray | None, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Edges (positions in `rows`) that chain the members of each group among `rows`."""
    if codes is None:
        return None
    own = codes[rows]
    grouped = np.flatnonzero(own >= 0)
    order = grouped[np.lexsort((grouped, own[grouped]))]
    same = own[order[1:]] == own[order[:-1]]
    return order[:-1][same], order[1:][same]
