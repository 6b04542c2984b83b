"""New samples against what is already assigned (core/follow.py): binding to assigned
twins and joining existing bubbles, on points of the unit circle (angles in radians;
near twins at the leak threshold 0.95 are at most arccos(0.95) = 0.318 apart) and
against brute force."""

import math

import numpy as np
import pytest
from conftest import clustered_embeddings

from bubblefence_plugin.core.bubbles import (
    INNER,
    INNER_TEST,
    INNER_VAL,
    OUTER,
    TEST,
    TRAIN,
    UNASSIGNED,
    VALIDATION,
    AnchorTable,
)
from bubblefence_plugin.core.config import BubbleFenceConfig
from bubblefence_plugin.core.follow import (
    _assigned_twins,
    balance_margin_joins,
    bind_to_assigned,
    earlier_index,
    join_existing_bubbles,
    role_of,
    too_large_for_eval,
)
from bubblefence_plugin.core.neighbors import CellIndex
from bubblefence_plugin.core.twins import twin_components, twin_votes

CONFIG = BubbleFenceConfig(leak_threshold=0.95)


def circle(*angles):
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


def state(old, new):
    """Arrays for old rows [(angle, split, anchor, shell)] followed by new open rows."""
    x = circle(*[o[0] for o in old], *new)
    n = len(x)
    split = np.full(n, UNASSIGNED, np.int8)
    anchor = np.full(n, -1, np.int64)
    shell = np.zeros(n, np.int8)
    for i, (_, s, a, sh) in enumerate(old):
        split[i], anchor[i], shell[i] = s, a, sh
    return x, split, anchor, shell


def bind(x, split, anchor, shell, n_old, components, kept=None):
    new_kept = np.arange(n_old, len(x))
    kept = np.ones(len(x), bool) if kept is None else kept
    return bind_to_assigned(
        x,
        new_kept,
        np.asarray(components),
        split,
        anchor,
        shell,
        earlier_index(x, kept, n_old, CONFIG),
        CONFIG,
    )


# --------------------------------------------------------------------------- binding


def test_a_new_twin_takes_the_split_bubble_and_shell_of_its_assigned_twin():
    old = [(0.0, TRAIN, -1, 0), (1.0, VALIDATION, 0, INNER), (2.0, TEST, 0, OUTER)]
    x, split, anchor, shell = state(old, [0.05, 1.02, 3.0, 2.03])
    stats = bind(x, split, anchor, shell, 3, [3, 4, 5, 6])
    assert split[3:].tolist() == [TRAIN, VALIDATION, UNASSIGNED, TEST]
    assert anchor[3:].tolist() == [-1, 0, -1, 0]
    assert shell[3:].tolist() == [0, INNER, 0, OUTER]
    assert stats == {"bound_to_twins": 3, "cut_pairs_twins": 0, "leaks_twins": 0}
    assert split[:3].tolist() == [TRAIN, VALIDATION, TEST]  # earlier rows never move


def test_an_eval_twin_that_leaks_already_costs_nothing_so_the_component_goes_train():
    old = [
        (0.0, TRAIN, -1, 0),
        (0.1, TRAIN, -1, 0),
        (0.3, TEST, 7, OUTER),
        (2.0, TRAIN, -1, 0),
        (2.3, VALIDATION, 3, INNER),
        (4.0, TRAIN, -1, 0),
        (4.34, VALIDATION, 5, INNER),
        (4.36, VALIDATION, 5, INNER),
    ]
    # Rows 2 and 4 (eval) are twins of train rows already: rows 8 and 9 go train at no
    # leak, although row 9's most similar twin is validation. Row 10 is a twin of train
    # row 5 and of two clean validation rows (6, 7): train would make both leak, eval
    # only row 10 itself.
    x, split, anchor, shell = state(old, [0.15, 2.2, 4.16])
    stats = bind(x, split, anchor, shell, 8, [8, 9, 10])
    assert split[8:].tolist() == [TRAIN, TRAIN, VALIDATION]
    assert anchor[8:].tolist() == [-1, -1, 5] and shell[8:].tolist() == [0, 0, INNER]
    assert stats == {"bound_to_twins": 3, "cut_pairs_twins": 3, "leaks_twins": 1}


def test_a_component_moves_as_one_on_the_votes_of_all_its_members():
    old = [
        (0.0, TRAIN, -1, 0),
        (0.1, TRAIN, -1, 0),
        (0.3, TEST, 7, OUTER),
        (2.0, TRAIN, -1, 0),
        (2.3, VALIDATION, 3, INNER),
    ]
    x, split, anchor, shell = state(old, [0.15, 2.2])
    # One component: train 3 against eval 2.
    stats = bind(x, split, anchor, shell, 5, [0, 0])
    assert split[5:].tolist() == [TRAIN, TRAIN] and anchor[5:].tolist() == [-1, -1]
    assert stats == {"bound_to_twins": 2, "cut_pairs_twins": 2, "leaks_twins": 0}


def test_an_eval_component_takes_the_bubble_of_its_most_similar_twin():
    old = [(1.0, VALIDATION, 1, INNER), (1.5, VALIDATION, 2, OUTER)]
    # Row 2 is 0.05 from bubble 1's sample, row 3 0.08 from bubble 2's: one component,
    # so both go to bubble 1 and its shell, not to the bubble each is nearest.
    x, split, anchor, shell = state(old, [1.05, 1.42])
    stats = bind(x, split, anchor, shell, 2, [0, 0])
    assert split[2:].tolist() == [VALIDATION, VALIDATION]
    assert anchor[2:].tolist() == [1, 1] and shell[2:].tolist() == [INNER, INNER]
    assert stats == {"bound_to_twins": 2, "cut_pairs_twins": 0, "leaks_twins": 0}


def test_a_forced_member_leads_its_component_over_twin_votes():
    old = [(0.0, TRAIN, -1, 0)]
    x, split, anchor, shell = state(old, [1.0, 0.1])
    # Row 1 is a new member of a known group: already validation, in bubble 4's outer
    # shell. Row 2 is a twin of train row 0, in row 1's component.
    split[1], anchor[1], shell[1] = VALIDATION, 4, OUTER
    stats = bind(x, split, anchor, shell, 1, [0, 0])
    assert split[1:].tolist() == [VALIDATION, VALIDATION]
    assert anchor[1:].tolist() == [4, 4] and shell[1:].tolist() == [OUTER, OUTER]
    # Row 2 is eval with a train twin: the group made it leak, and that is counted.
    assert stats == {"bound_to_twins": 1, "cut_pairs_twins": 1, "leaks_twins": 1}


def test_forced_members_bind_their_component_with_nothing_assigned_yet():
    x, split, anchor, shell = state([], [0.0, 0.1, 2.0])
    split[0], anchor[0], shell[0] = TEST, 2, INNER
    stats = bind(x, split, anchor, shell, 0, [0, 0, 2])
    assert split.tolist() == [TEST, TEST, UNASSIGNED]
    assert anchor.tolist() == [2, 2, -1] and shell.tolist() == [INNER, INNER, 0]
    assert stats == {"bound_to_twins": 1, "cut_pairs_twins": 0, "leaks_twins": 0}


def test_nothing_assigned_nothing_bound():
    x, split, anchor, shell = state([], [0.0, 0.1])
    stats = bind(x, split, anchor, shell, 0, [0, 0])
    assert stats == {"bound_to_twins": 0, "cut_pairs_twins": 0, "leaks_twins": 0}
    assert (split == UNASSIGNED).all()


@pytest.mark.parametrize("old_split", [TRAIN, UNASSIGNED])
def test_duplicates_and_open_rows_are_not_twins_to_bind_to(old_split):
    # An old duplicate (kept False) or an old row without a split casts no vote.
    x, split, anchor, shell = state([(0.0, old_split, -1, 0)], [0.05])
    kept = np.array([old_split != TRAIN, True])
    stats = bind(x, split, anchor, shell, 1, [1], kept=kept)
    assert split[1] == UNASSIGNED and stats["bound_to_twins"] == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_binding_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    x = clustered_embeddings(260, 8, seed=seed + 10)
    n_old = 160
    split = np.full(len(x), UNASSIGNED, np.int8)
    split[:n_old] = rng.integers(0, 3, n_old)
    eval_old = split[:n_old] != TRAIN
    anchor = np.full(len(x), -1, np.int64)
    anchor[:n_old][eval_old] = rng.integers(0, 20, eval_old.sum())
    shell = np.zeros(len(x), np.int8)
    shell[:n_old][eval_old] = rng.integers(1, 3, eval_old.sum())
    new = np.arange(n_old, len(x))
    components = twin_components(x, new, CONFIG.leak_threshold, seed)
    old_anchor = anchor[:n_old].copy()
    stats = bind(x, split, anchor, shell, n_old, components)

    sims = x[new].astype(np.float64) @ x[:n_old].T.astype(np.float64)
    twins = sims >= CONFIG.leak_threshold
    votes = np.stack([(twins & (split[:n_old] == role)).sum(axis=1) for role in range(3)], 1)
    new_twins = x[new].astype(np.float64) @ x[new].T.astype(np.float64) >= CONFIG.leak_threshold
    crossed = 0
    checked = 0
    for c in np.unique(components):
        rows = np.flatnonzero(components == c)
        sides = set(split[new[rows]].tolist())
        if len(sides) > 1:
            # Split along the line (contested.split_spanning): a member with assigned
            # twins takes their side, and the new pairs across are cut.
            own = split[new[rows]]
            for row, side in zip(rows, own, strict=True):
                train, val, test = votes[row]
                if train != val + test:
                    assert (side == TRAIN) == (train > val + test)
                crossed += int(votes[row].sum() - votes[row, side])
            across = new_twins[np.ix_(rows, rows)] & (own[:, None] != own[None, :])
            crossed += int(np.triu(across, 1).sum())
            continue
        side = sides.pop()
        total = votes[rows].sum(axis=0)
        if total.sum() == 0:
            assert side == UNASSIGNED
            continue
        crossed += int(total.sum() - total[side])
        train, val, test = total
        if train and val + test:
            # Contested: train or eval is the fewest leaks (test_contested.py); eval is
            # validation or test by the pairs.
            assert side == TRAIN or val == test or side == (VALIDATION if val > test else TEST)
        elif train or val != test:
            checked += 1
            expected = TRAIN if train else (VALIDATION if val > test else TEST)
            assert side == expected
        if side != TRAIN:
            # The bubble and shell of the most similar twin of that split, for all.
            of_side = np.where(twins[rows] & (split[:n_old] == side), sims[rows], -np.inf)
            twin = np.unravel_index(np.argmax(of_side), of_side.shape)[1]
            assert (anchor[new[rows]] == old_anchor[twin]).all()
            assert (shell[new[rows]] == shell[twin]).all()
    assert checked >= 3
    assert stats["cut_pairs_twins"] == crossed
    assert stats["bound_to_twins"] == int(np.sum(split[new] != UNASSIGNED))


def test_twins_are_ranked_first_only_where_a_tie_can_decide():
    """`_assigned_twins`: every count as a search that ranks every split, and every
    split's most similar twin for the rows `_ties_decide` names (a tie of twin pairs in
    their component or in the row itself, with an eval twin), none for the others (eval's
    are ranked once the sides are known, `_rank`); a tight cluster held out in part,
    whose pairs do not tie, has none."""
    rng = np.random.default_rng(6)
    x = clustered_embeddings(900, 6, seed=12)
    tight = np.r_[0:300, 600:700]  # a tight cluster, 100 new members
    x[tight] = x[0] + 0.01 * rng.normal(size=(len(tight), x.shape[1])).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    old, new = np.arange(600), np.arange(600, 900)
    split = rng.choice([TRAIN, VALIDATION, TEST], size=600, p=[0.8, 0.1, 0.1])
    split[:300] = TRAIN  # its cells are wholly within the threshold
    split[:30] = VALIDATION  # held out in part
    index = CellIndex(x, old, CONFIG.leak_threshold, seed=0)
    _, comp = np.unique(twin_components(x, new, CONFIG.leak_threshold, 0), return_inverse=True)
    comp = comp.reshape(-1)
    votes = _assigned_twins(x, new, comp, index, role_of(split))
    full = twin_votes(x, x[new], [(index, role_of(split))], 3)
    assert np.array_equal(votes.count, full.count)
    per_comp = np.zeros((comp.max() + 1, 3), np.int64)
    np.add.at(per_comp, comp, votes.count)

    def ties(c):
        n_eval = c[:, VALIDATION] + c[:, TEST]
        return (n_eval > 0) & ((c[:, TRAIN] == n_eval) | (c[:, VALIDATION] == c[:, TEST]))

    decides = ties(votes.count) | ties(per_comp)[comp]
    assert decides.any() and not decides.all()
    assert np.array_equal(votes.best[decides], full.best[decides])
    assert np.array_equal(votes.best_sim[decides], full.best_sim[decides])
    assert (votes.best[~decides] == -1).all()
    assert not decides[:100].any() and (votes.count[:100, VALIDATION] >= 30).all()


@pytest.mark.parametrize("seed", range(3))
def test_ranking_twins_only_where_they_decide_changes_no_split(seed, monkeypatch):
    """Rounds of points on the sphere in 3-d at leak threshold 0.99 (many rows and
    components with as many train as eval twins: ties) with a tight cluster held out in
    part, split as when every row's most similar twins were ranked: the same
    assignments."""
    from bubblefence_plugin.core import follow
    from bubblefence_plugin.core.pipeline import BubbleFence

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1500, 3))
    x[:200] = x[0] + 0.02 * np.linalg.norm(x[0]) * rng.normal(size=(200, 3))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    x = x[np.r_[0:150, rng.permutation(np.arange(150, 1500))]]
    config = BubbleFenceConfig(leak_threshold=0.99, seed=seed)

    def rounds():
        bf = BubbleFence(config)
        for part in np.array_split(np.arange(len(x)), [300, 700, 1100]):
            bf.ingest(x[part], ids=[str(i) for i in part])
        return bf.assignments()

    decided = []
    real = follow._ties_decide

    def recorded(count, comp):
        decides = real(count, comp)
        decided.append((int(decides.sum()), len(decides)))
        return decides

    monkeypatch.setattr(follow, "_ties_decide", recorded)
    narrow = rounds()
    # Some rows tie, and most do not: the narrower search is exercised both ways.
    assert sum(d for d, _ in decided) >= 10
    assert sum(d for d, _ in decided) < sum(n for _, n in decided) / 4
    monkeypatch.setattr(follow, "_ties_decide", lambda count, comp: np.ones(len(comp), bool))
    everywhere = rounds()
    assert narrow.equals(everywhere)
    assert (narrow["split"] != "train").sum() > 0


def test_new_frames_between_old_ones_split_along_the_line():
    """A video's even frames were split (its first half eval, the rest train); its odd
    frames arrive: one new component along the whole video, with twins on both sides.
    Whole, it would leak along half the video; split by each frame's own twins, only
    at the line. Brute force: the pairs cut and the eval samples that leak."""
    rng = np.random.default_rng(3)
    d, n = 24, 400
    walk = np.empty((n, d))
    walk[0] = rng.normal(size=d)
    walk[0] /= np.linalg.norm(walk[0])
    for t in range(1, n):
        step = walk[t - 1] + 0.12 / np.sqrt(d) * rng.normal(size=d)
        walk[t] = step / np.linalg.norm(step)
    x = np.vstack([walk[0::2], walk[1::2]]).astype(np.float32)
    n_old = n // 2
    split = np.full(len(x), UNASSIGNED, np.int8)
    split[: n_old // 2] = np.where(np.arange(n_old // 2) < n_old // 4, VALIDATION, TEST)
    split[n_old // 2 : n_old] = TRAIN
    anchor = np.where(split[:n_old] != TRAIN, 0, -1)
    anchor = np.concatenate([anchor, np.full(n - n_old, -1)]).astype(np.int64)
    shell = np.where(split != TRAIN, INNER, 0).astype(np.int8)
    new = np.arange(n_old, len(x))
    components = twin_components(x, new, CONFIG.leak_threshold, 0)
    assert len(np.unique(components)) == 1
    before = leaking(x[:n_old], split[:n_old])
    stats = bind(x, split, anchor, shell, n_old, components)
    sides = split[new]
    assert (sides == TRAIN).any() and (sides != TRAIN).any()  # split along the line
    twins = x.astype(np.float64) @ x.T.astype(np.float64) >= CONFIG.leak_threshold
    np.fill_diagonal(twins, False)
    apart = np.triu(twins & (split[:, None] != split[None, :]), 1)
    apart[:n_old, :n_old] = False  # pairs of old rows were cut before
    assert stats["cut_pairs_twins"] == int(apart.sum())
    ours = leaking(x, split)
    assert stats["leaks_twins"] == ours - before
    for whole in (TRAIN, VALIDATION):
        trial = split.copy()
        trial[new] = whole
        assert leaking(x, trial) >= 100  # whole: half the video's frames leak
    assert ours - before <= 12  # split: a few frames at the line


def test_a_tight_new_cluster_across_the_line_stays_whole():
    # Every new sample is a twin of every other: split by their own twins, the half in
    # eval would each have new train twins; whole in train, only the old eval one leaks.
    old = [(0.4, TRAIN, -1, 0), (-0.4, VALIDATION, 0, INNER)]
    x, split, anchor, shell = state(old, list(np.linspace(-0.15, 0.15, 20)))
    stats = bind(x, split, anchor, shell, 2, [0] * 20)
    assert (split[2:] == TRAIN).all()
    assert stats["leaks_twins"] == 1 == leaking(x, split)


def leaking(x, split):
    """Eval samples with a train twin (brute force)."""
    twins = x.astype(np.float64) @ x.T.astype(np.float64) >= CONFIG.leak_threshold
    held = (split == VALIDATION) | (split == TEST)
    return int(np.sum(held & (twins & (split == TRAIN)[None, :]).any(axis=1)))


# --------------------------------------------------------------------------- bubbles


def _bubble(angle, radius_angle, inner_angle, layout):
    return dict(
        centres=circle(angle),
        centre_row=-1,
        radius=1.0 - math.cos(radius_angle),
        inner_radius=1.0 - math.cos(inner_angle),
        layout=layout,
        lid=np.nan,
        round=0,
        n_captured=0,
        cut_pairs=0,
    )


TWO_BUBBLES = AnchorTable.from_rows(
    [_bubble(1.0, 0.3, 0.1, INNER_VAL), _bubble(2.5, 0.2, 0.05, INNER_TEST)], 2
)


def _new_rows_and_bubble_members(angles, held_bubbles=(0, 1)):
    """New rows at `angles`, then an earlier member at the centre of each bubble of
    `held_bubbles` (a bubble without one holds nothing any more)."""
    centres = [1.0, 2.5]
    x = circle(*angles, *(centres[b] for b in held_bubbles))
    split = np.full(len(x), UNASSIGNED, np.int8)
    anchor = np.full(len(x), -1, np.int64)
    for k, b in enumerate(held_bubbles):
        split[len(angles) + k], anchor[len(angles) + k] = VALIDATION, b
    return x, split, anchor, np.zeros(len(x), np.int8)


def test_free_components_join_the_bubble_they_touch():
    angles = [1.05, 1.2, 1.6, 2.52, 2.65, 4.0, 1.0, 1.25, 1.02]
    x, split, anchor, shell = _new_rows_and_bubble_members(angles)
    split[6] = TRAIN  # bound to a train twin already: stays, even inside bubble 0
    components = np.array([0, 1, 1, 3, 4, 5, 6, 7, 7])
    joined = join_existing_bubbles(
        x, np.arange(len(angles)), components, split, anchor, shell, TWO_BUBBLES
    )
    split, anchor, shell = split[: len(angles)], anchor[: len(angles)], shell[: len(angles)]
    # Row 0: inner shell of an inner_val bubble; row 1 its outer shell, and row 2 (outside)
    # comes with it; rows 3 and 4: inner and outer of an inner_test bubble; row 5 is in
    # no bubble; rows 7 and 8: the shell of the smaller row inside (7, outer).
    assert joined == 7
    assert split.tolist() == [
        VALIDATION,
        TEST,
        TEST,
        TEST,
        VALIDATION,
        UNASSIGNED,
        TRAIN,
        TEST,
        TEST,
    ]
    assert anchor.tolist() == [0, 0, 0, 1, 1, -1, -1, 0, 0]
    assert shell.tolist() == [INNER, OUTER, OUTER, INNER, OUTER, 0, 0, OUTER, OUTER]


def test_a_bubble_whose_samples_all_left_takes_no_one():
    """Bubble 1's members were all excluded: rows inside it stay open; bubble 0 still
    takes its own."""
    angles = [1.05, 2.52, 2.65]
    x, split, anchor, shell = _new_rows_and_bubble_members(angles, held_bubbles=(0,))
    components = np.arange(3)
    joined = join_existing_bubbles(x, np.arange(3), components, split, anchor, shell, TWO_BUBBLES)
    assert joined == 1 and split[:3].tolist() == [VALIDATION, UNASSIGNED, UNASSIGNED]
    assert anchor[:3].tolist() == [0, -1, -1]


def test_no_bubbles_or_no_open_rows_join_nothing():
    x = circle(1.0, 1.05)
    split = np.full(2, UNASSIGNED, np.int8)
    anchor, shell = np.full(2, -1, np.int64), np.zeros(2, np.int8)
    rows, components = np.arange(2), np.array([0, 1])
    assert join_existing_bubbles(x, rows, components, split, anchor, shell, AnchorTable()) == 0
    split[:] = TRAIN
    assert join_existing_bubbles(x, rows, components, split, anchor, shell, TWO_BUBBLES) == 0
    assert split.tolist() == [TRAIN, TRAIN] and anchor.tolist() == [-1, -1]


def test_too_large_for_eval_by_hand():
    """Components already decided count first: a contested one in eval (it has a train
    twin) and one a known group's member decided. Of the rest, smallest first, one goes
    to train only if it alone is over 0.03 of the kept samples and over the room left
    (`eval_room`: floor(0.23 * kept) - eval)."""
    config = BubbleFenceConfig(eval_ratio=0.2, eval_tolerance=0.03)
    side = np.array([VALIDATION, TEST, VALIDATION, TEST, TRAIN, VALIDATION, -1])
    sizes = np.array([5, 20, 34, 40, 500, 60, 3])
    per_comp = np.zeros((7, 3), np.int64)
    per_comp[:, VALIDATION] = 1
    per_comp[0, TRAIN] = 2  # contested, decided eval
    forced_votes = np.zeros((7, 3), np.int64)
    forced_votes[5, VALIDATION] = 1

    def moved(n_eval, leaks=lambda c: 1):
        return too_large_for_eval(side, sizes, per_comp, forced_votes, 1000, n_eval, config, leaks)

    # 230 - 200 - 5 - 60 < 0: 34 and 40 are over 30 and the room; 20 is not over 30.
    assert moved(200).tolist() == [2, 3]
    # 230 - 50 - 65 = 115: 20, 34 and 40 fit.
    assert moved(50).tolist() == []
    # 230 - 100 - 65 = 65: 20 and 34 fit, 40 is over the 11 left (one leak, <= 0.03 * 40).
    assert moved(100).tolist() == [3]
    # At two leaks, 40 samples cost more than 0.03 of them: it stays, eval over its cap.
    assert moved(100, leaks=lambda c: 2).tolist() == []


# --------------------------------------------------------------------------- balance


def margin_join_state():
    """Bubble 0: earlier validation at angle 0, earlier test at pi; joined this round, all
    in validation: unit 5 (0.45 and 0.5) and unit 7 (-0.1, a twin of angle 0)."""
    old = [(0.0, VALIDATION, 0, INNER), (math.pi, TEST, 0, OUTER)]
    x, split, anchor, shell = state(old, [0.45, 0.5, -0.1])
    split[2:], anchor[2:], shell[2:] = VALIDATION, 0, INNER
    return x, split, anchor, shell


def one_bubble(x, layout, inner_radius):
    return AnchorTable(
        centres=x[:1],
        radius=np.array([0.6]),
        inner_radius=np.array([inner_radius]),
        lid=np.ones(1),
        layout=np.array([layout]),
        round=np.zeros(1, np.int32),
    )


def balance(x, split, anchor, shell, bubble):
    kept = np.ones(len(x), bool)
    earlier = earlier_index(x, kept, 2, CONFIG)
    joined, units = np.arange(2, 5), np.array([5, 5, 7])
    return balance_margin_joins(
        x, joined, units, split, anchor, shell, bubble, kept, 2, earlier, CONFIG, slack=0.015
    )


def test_a_margin_joined_unit_moves_only_into_a_shell_its_bubble_has():
    # Test is bubble 0's inner shell, and it has none (inner radius -1): nothing moves.
    x, split, anchor, shell = margin_join_state()
    split[:2], shell[:2] = [VALIDATION, TEST], [OUTER, INNER]
    before = split.copy()
    assert balance(x, split, anchor, shell, one_bubble(x, INNER_TEST, -1.0)) == 0
    assert np.array_equal(split, before)


def test_margin_joined_units_change_shell_only_without_a_twin_on_the_side_they_leave():
    # Validation holds 4 of 5: unit 5 (0.45 from the earlier validation sample: inside
    # the margin, no twin) moves to test, bubble 0's outer ring; unit 7, a twin, stays.
    x, split, anchor, shell = margin_join_state()
    assert balance(x, split, anchor, shell, one_bubble(x, INNER_VAL, 0.1)) == 2
    assert split.tolist() == [VALIDATION, TEST, TEST, TEST, VALIDATION]
    assert shell[2:4].tolist() == [OUTER, OUTER]
    assert shell[4] == INNER


def test_balance_margin_joins_makes_no_move_that_leaves_validation_farther_off():
    # Validation 2 of 5: moving unit 5 (2 rows) to it would leave it 1.5 off, not 0.5.
    x, split, anchor, shell = margin_join_state()
    split[2:], shell[2:] = [TEST, TEST, VALIDATION], [OUTER, OUTER, INNER]
    before = split.copy()
    assert balance(x, split, anchor, shell, one_bubble(x, INNER_VAL, 0.1)) == 0
    assert np.array_equal(split, before)
