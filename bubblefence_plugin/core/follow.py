"""Step 3: new samples against what is already assigned.

A later round must never create a leak that an earlier one avoided. New kept samples
are first grouped into the components of the leak graph among themselves (group
members linked); a component is the unit that moves:

* **bound**: a component with a near twin among assigned samples, or with members of
  a group that already has a side, takes that side. Twins in train and in eval
  (*contested*): the side that makes the fewest eval samples leak, over all contested
  components of the round at once (`contested.py`; ties to train); a group's side
  overrides it. A contested component that reaches across the line (more frames of a
  video already split, arriving between the old ones) is split along it, each member
  to the side of its own twins, where that leaks fewer eval samples than moving it
  whole (`contested.split_spanning`). The pairs to the other side are counted in
  `cut_pairs`. Eval is validation or test by more twin pairs (ties: the side of the
  single most similar twin). An eval component takes the bubble and shell of its most
  similar twin of that split, all its members together, so it never straddles
  validation and test. A component bound to eval that eval cannot hold (a tight
  cluster drawn in by one sample of a tiny first round) goes to train when that makes
  few eval samples leak (`too_large_for_eval`).
* **inside**: a free component (no assigned twin) with a member inside an existing
  bubble joins that bubble, in the shell of that member (the smallest such row). A
  ball held no train sample when its round ended (`bubbles.clear_of_train`).
* the rest stays open for new bubbles (`quota`), in units: the components at
  `closure_threshold` (`keep_margins`). Round 0 holds out whole units, so eval and
  train stay that margin apart; earlier samples cannot move, so a later round keeps
  the margin around them: a unit within `closure_threshold` of a train sample is
  *fenced* (train's margin: it stays train unless the quota needs it), else a unit
  within it of an eval sample joins that sample's bubble and shell (eval's margin).
  Without it the margin wears away round after round, and the next rounds' samples
  bridge the two sides (bench/RESULTS.md, "Later rounds: the closure margin").
* **balance**: a unit that joined eval through the margin has no near twin among the
  assigned samples, so its shell is free: where the round's new bubbles could not
  bring validation to `validation_ratio` of eval (a first round of 50 whose few
  bubbles drew in 2,838 later samples: validation 0.556), such units move to the other
  shell of their bubble, each only if none of its members is a near twin of the shell
  it leaves (`balance_margin_joins`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .bubbles import (
    INNER,
    INNER_VAL,
    OUTER,
    TEST,
    TRAIN,
    UNASSIGNED,
    VALIDATION,
    AnchorTable,
    assign_to_bubbles,
    shell_split,
)
from .config import BubbleFenceConfig
from .contested import eval_side, fewest_leaks, leaks_if_train, leaks_of, split_spanning
from .groups import crosses
from .grow import eval_room
from .neighbors import CellIndex
from .twins import TwinVotes, twin_votes

ROLES = (TRAIN, VALIDATION, TEST)

# A new component too large for eval goes to train only if the eval samples it then
# makes leak are at most this share of its size: a tight cluster that one held-out
# sample drew in (761 new members, 1 leak: bench case `mixture_tiny_first`), never a
# few new samples that would each cost an eval sample (`too_large_for_eval`).
TOO_LARGE_LEAK_SHARE = 0.03


# A kept index is extended while the rows added to it since it was built are at most this
# share of those it was built on: beyond, a new cluster of later rounds would sit in
# cells fitted without it, and a fresh build (seconds at 1M rows) pays for itself.
REBUILD_SHARE = 0.5
# A row added to a kept index is *loose* when its residual off its cell's subspace passes
# this many times the median of the rows the index was built on: rows of a cluster the
# index was not fitted on lie off every subspace (a median ~10x at 5,000 such rows), and
# widen the cells they join so that they stop pruning.
LOOSE_RESIDUAL = 4.0
# Loose rows past this share of an extended index make it built afresh. bench_quality's
# later rounds: 0-9 % (the extended index kept). Three rounds of 5,000 rows of new
# clusters each, then a burst of 12,000: 33 %, and the twin and margin searches took
# 3.9 s against the extended index, 0.6 s against a fresh one (the round 6.2 s, 3.0 s
# with the build). A few loose rows in a large state cost less than a build (7.4 s at 1M).
LOOSE_SHARE = 0.1


def earlier_index(
    embeddings: np.ndarray,
    kept: np.ndarray,
    n_old: int,
    config: BubbleFenceConfig,
    previous: CellIndex | None = None,
) -> CellIndex | None:
    """One index over the kept rows of the `n_old` earlier ones, for every search of a
    round against them (dedup, twins, the closure margin) at its own threshold
    (`CellIndex.at`); None when there are none.

    `previous`: the index of an earlier round, over a prefix of these rows. It is
    extended with the rest (`CellIndex.extended`) rather than built again, up to
    `REBUILD_SHARE`, and while few of the rest fit it loosely (`LOOSE_SHARE`); any index
    gives the same pairs, so the split does not depend on which one a round gets.
    """
    rows = np.flatnonzero(kept[:n_old])
    if len(rows) == 0:
        return None
    if previous is not None and len(rows) <= (1 + REBUILD_SHARE) * previous.built_rows:
        known = len(previous.rows)
        if known <= len(rows) and np.array_equal(previous.rows, rows[:known]):
            index = previous.extended(embeddings, rows[known:], config.seed)
            if _loose_rows(index, known) <= LOOSE_SHARE * len(rows):
                return index
    return CellIndex(embeddings, rows, config.leak_threshold, config.seed)


def _loose_rows(index: CellIndex, known: int) -> int:
    """How many of the rows added to `index` after its first `known` are loose
    (`LOOSE_RESIDUAL`): their residual bound is the last of their bound coordinates."""
    residual = index.coords[:, -1]
    return int(np.sum(residual[known:] > LOOSE_RESIDUAL * np.median(residual[:known])))


def bind_to_assigned(
    embeddings: np.ndarray,
    new_kept: np.ndarray,
    components: np.ndarray,
    split: np.ndarray,
    anchor: np.ndarray,
    shell: np.ndarray,
    earlier: CellIndex | None,
    config: BubbleFenceConfig,
) -> dict[str, int]:
    """Bind new components to their assigned twins and known groups (in place); returns
    the round-record counts `bound_to_twins` and `cut_pairs_twins`.

    `earlier`: an index over the kept rows of earlier rounds (None: there are none).

    `components[i]` is the component label of `new_kept[i]`; rows of `new_kept` that
    already have a split (new members of known groups) are *forced*: they keep it, and
    the rest of their component follows them. `leaks_twins`: the eval samples, earlier
    or new, that contested components make leak.
    """
    stats = {"bound_to_twins": 0, "cut_pairs_twins": 0, "leaks_twins": 0}
    base_role = None if earlier is None else role_of(split[earlier.rows])
    forced = split[new_kept] != UNASSIGNED
    has_assigned = base_role is not None and bool((base_role >= 0).any())
    if len(new_kept) == 0 or (not has_assigned and not forced.any()):
        return stats
    _, comp = np.unique(components, return_inverse=True)
    comp = comp.reshape(-1)
    n_comp = int(comp.max()) + 1
    votes = TwinVotes.empty(len(new_kept), len(ROLES), ranked=())
    index = None
    if has_assigned:
        index = earlier.at(config.leak_threshold)
        votes = _assigned_twins(embeddings, new_kept, comp, index, base_role)
    links = votes.count
    # A forced member votes for its own split as if it were its twin, above any pair.
    forced_rows = np.flatnonzero(forced)
    forced_split = split[new_kept[forced_rows]]
    per_comp = np.zeros((n_comp, 3), np.int64)
    np.add.at(per_comp, comp, links)
    forced_votes = np.zeros((n_comp, 3), np.int64)
    np.add.at(forced_votes, (comp[forced_rows], forced_split), 1)

    def most_similar() -> tuple[np.ndarray, np.ndarray]:
        """The most similar twin of each class per component among the rows ranked so
        far (ties: the smaller row); a forced member is its component's model for its
        split, bubble and shell included."""
        comp_best = np.full((n_comp, 3), -1, np.int64)
        comp_best_sim = np.full((n_comp, 3), -np.inf)
        for role in ROLES:
            has = np.flatnonzero(votes.best[:, role] >= 0)
            order = has[np.lexsort((votes.best[has, role], -votes.best_sim[has, role], comp[has]))]
            first = order[np.r_[True, comp[order][1:] != comp[order][:-1]]] if len(order) else order
            comp_best[comp[first], role] = votes.best[first, role]
            comp_best_sim[comp[first], role] = votes.best_sim[first, role]
        for forced_row, role in zip(forced_rows, forced_split, strict=True):
            c = comp[forced_row]
            if comp_best_sim[c, role] < np.inf:
                comp_best[c, role] = new_kept[forced_row]
                comp_best_sim[c, role] = np.inf
        return comp_best, comp_best_sim

    comp_best, comp_best_sim = most_similar()
    side = _decide(per_comp, forced_votes, comp_best_sim)
    contested = np.flatnonzero(
        (per_comp[:, TRAIN] > 0)
        & (per_comp[:, VALIDATION] + per_comp[:, TEST] > 0)
        & (forced_votes.sum(axis=1) == 0)
    )
    if len(contested):
        to_eval, stats["leaks_twins"] = fewest_leaks(
            embeddings,
            new_kept,
            comp,
            contested,
            index,
            base_role,
            links[:, TRAIN],
            links[:, VALIDATION] + links[:, TEST],
        )
        side[contested[~to_eval]] = TRAIN
        for c in contested[to_eval]:
            side[c] = eval_side(per_comp[c], comp_best_sim[c])
    n_kept = len(new_kept) + (0 if earlier is None else len(earlier.rows))
    # Of the kept samples: duplicates that followed their original are in no share.
    held = (split == VALIDATION) | (split == TEST)
    n_eval = int(held[new_kept].sum()) + (0 if earlier is None else int(held[earlier.rows].sum()))
    sizes = np.bincount(comp, minlength=n_comp)

    def leaks(c: int) -> int:
        return leaks_if_train(embeddings, new_kept[comp == c], index, base_role)

    too_large = too_large_for_eval(
        side, sizes, per_comp, forced_votes, n_kept, n_eval, config, leaks
    )
    side[too_large] = TRAIN
    if has_assigned:
        # Eval's most similar twins, for the rows that take eval's bubble and shell: of
        # the components bound to eval by their twins, and the members of contested ones
        # with more eval than train twins (`split_spanning`).
        own_eval = links[:, VALIDATION] + links[:, TEST]
        to_eval = (side[comp] > TRAIN) & (forced_votes[comp].sum(axis=1) == 0)
        may = np.isin(comp, contested) & (own_eval > links[:, TRAIN])
        _rank(embeddings, new_kept, np.flatnonzero(to_eval | may), index, base_role, votes)
        comp_best, comp_best_sim = most_similar()
    # Per member: its split and the twin whose bubble and shell it takes (eval).
    member_side = np.where(forced, -1, side[comp])
    model = comp_best[comp, np.maximum(member_side, 0)]
    split_comps, cut_within = np.zeros(0, np.int64), 0
    if len(contested):
        split_comps, cut_within, across = split_spanning(
            embeddings,
            new_kept,
            comp,
            member_side,
            model,
            votes,
            contested,
            index,
            base_role,
            config.leak_threshold,
            config.seed,
        )
    # Components that known groups bind, whatever their twins: their leaks are counted too.
    grouped = np.flatnonzero((forced_votes.sum(axis=1) > 0) & (per_comp.sum(axis=1) > 0))
    if len(split_comps) or len(too_large) or len(grouped):
        stats["leaks_twins"] = leaks_of(
            embeddings,
            new_kept,
            np.flatnonzero(np.isin(comp, np.union1d(np.union1d(contested, too_large), grouped))),
            np.where(forced, split[new_kept], member_side),
            links[:, TRAIN],
            across if len(split_comps) else np.zeros(0, np.int64),
            index,
            base_role,
        )
    free_members = member_side >= 0
    rows = new_kept[free_members]
    role = member_side[free_members]
    split[rows] = role
    twin = model[free_members]
    is_eval = role != TRAIN
    anchor[rows] = np.where(is_eval, anchor[np.maximum(twin, 0)], -1)
    shell[rows] = np.where(is_eval, shell[np.maximum(twin, 0)], 0)
    stats["bound_to_twins"] = int(free_members.sum())
    # Each member's pairs to assigned samples of another split than its own are cut, and
    # so are the new pairs across a split component or across the known groups of one
    # (counted, not hidden).
    bound = np.flatnonzero(split[new_kept] >= 0)
    role = split[new_kept[bound]]
    stats["cut_pairs_twins"] = int(
        links[bound].sum()
        - links[bound, role].sum()
        + cut_within
        + _crossings_across_groups(embeddings, new_kept, comp, forced, split, config)
    )
    return stats


def _crossings_across_groups(
    embeddings: np.ndarray,
    new_kept: np.ndarray,
    comp: np.ndarray,
    forced: np.ndarray,
    split: np.ndarray,
    config: BubbleFenceConfig,
) -> int:
    """Twin pairs across splits among the new members of components whose members keep
    the splits of known groups on both sides (groups win): each pair once."""
    role = split[new_kept].astype(np.int64)
    with_forced = np.isin(comp, comp[forced])
    lowest = np.full(int(comp.max()) + 1, np.iinfo(np.int64).max)
    highest = np.full(int(comp.max()) + 1, np.iinfo(np.int64).min)
    np.minimum.at(lowest, comp[with_forced], role[with_forced])
    np.maximum.at(highest, comp[with_forced], role[with_forced])
    rows = new_kept[with_forced & (lowest[comp] != highest[comp])]
    if len(rows) < 2:
        return 0
    index = CellIndex(embeddings, rows, config.leak_threshold, config.seed)
    crossings = 0
    for q, b, _ in index.pairs(embeddings[rows]):
        once = q < b
        crossings += int(np.sum(crosses(split[rows[q[once]]], split[rows[b[once]]])))
    return crossings


def _assigned_twins(
    embeddings: np.ndarray,
    new_kept: np.ndarray,
    comp: np.ndarray,
    index: CellIndex,
    base_role: np.ndarray,
) -> TwinVotes:
    """Each new kept row's assigned twins counted per role (`twin_votes`), and its most
    similar twin of every role where that can decide: a tie of twin pairs, train
    against eval or validation against test, in its component or, where a contested
    component is split by its members' own twins, in the row (`_ties_decide`:
    `_decide`, `contested.eval_side`, `contested.split_spanning`). Eval's most similar
    twins of the other rows are ranked once their sides are known (`_rank`).

    Counting needs no product where a cell lies wholly within the threshold
    (`CellIndex.cells_within`); ranking does. Ranking train for every row multiplied
    each new member of a tight train cluster with all its old members (most of a later
    round's twin stage at 1M samples); ranking train and eval for every component with
    an eval twin did the same with a tight cluster held out in part (a burst of 50k, then
    10k more frames of it among 40k varied rows: the twin stage 21.0 s, now 4.2 s).
    """
    votes = twin_votes(embeddings, embeddings[new_kept], [(index, base_role)], len(ROLES), ())
    tied = np.flatnonzero(_ties_decide(votes.count, comp))
    _rank(embeddings, new_kept, tied, index, base_role, votes, ROLES)
    return votes


def _rank(
    embeddings: np.ndarray,
    new_kept: np.ndarray,
    rows: np.ndarray,
    index: CellIndex,
    base_role: np.ndarray,
    votes: TwinVotes,
    roles: tuple[int, ...] = (VALIDATION, TEST),
) -> None:
    """Fills in `votes`' most similar twins of `roles` for `rows` (positions in
    `new_kept`), those not ranked yet for them (a row ranked once is ranked for every
    role it may need)."""
    rows = rows[votes.best_sim[rows].max(axis=1) == -np.inf] if len(rows) else rows
    rows = rows[(votes.count[rows][:, list(roles)] > 0).any(axis=1)]
    if len(rows) == 0:
        return
    found = twin_votes(
        embeddings, embeddings[new_kept[rows]], [(index, base_role)], len(ROLES), roles
    )
    for role in roles:
        votes.best[rows, role] = found.best[:, role]
        votes.best_sim[rows, role] = found.best_sim[:, role]


def _ties_decide(count: np.ndarray, comp: np.ndarray) -> np.ndarray:
    """The rows whose most similar twin of any role can decide a side or a shell: those
    of components with an eval twin whose twin pairs tie (train against eval,
    validation against test), and rows with an eval twin whose own pairs tie."""
    per_comp = np.zeros((int(comp.max()) + 1, len(ROLES)), np.int64)
    np.add.at(per_comp, comp, count)
    comp_ties = _ties(per_comp)
    return _ties(count) | comp_ties[comp]


def _ties(count: np.ndarray) -> np.ndarray:
    """Per row of twin pair counts (train, validation, test), with an eval twin: eval's
    pairs as many as train's, or validation's as many as test's."""
    n_eval = count[:, VALIDATION] + count[:, TEST]
    return (n_eval > 0) & ((count[:, TRAIN] == n_eval) | (count[:, VALIDATION] == count[:, TEST]))


def too_large_for_eval(
    side: np.ndarray,
    sizes: np.ndarray,
    per_comp: np.ndarray,
    forced_votes: np.ndarray,
    n_kept: int,
    n_eval: int,
    config: BubbleFenceConfig,
    leaks: Callable[[int], int],
) -> np.ndarray:
    """Components bound to eval by their twins alone (no train twin, no known group)
    that eval cannot hold: each alone larger than `eval_tolerance` of the kept samples
    and than the room eval has left (`grow.eval_room`), the smaller components counted
    in first, and sent to train at a small cost: `leaks(c)`, the eval samples component
    c would make leak, at most `TOO_LARGE_LEAK_SHARE` of its size. They go to train,
    and those eval samples leak (counted).

    Following its eval twins, a large new component takes the share of eval far from
    its target: ten samples split first, then 2,990 of a 50-cluster mixture, and one of
    the ten eval samples drew its whole tight cluster (761 new samples) into test;
    eval came to 0.260, validation to 0.003 of it, and 2 of 28 labels reached eval.
    Sent to train, it makes that one eval sample leak.
    """
    held = np.flatnonzero(side > TRAIN)
    movable = (per_comp[held, TRAIN] == 0) & (forced_votes[held].sum(axis=1) == 0)
    room = eval_room(n_kept, n_eval, config) - int(sizes[held[~movable]].sum())
    alone = config.eval_tolerance * n_kept
    too_large = []
    candidates = held[movable]
    for c in candidates[np.lexsort((candidates, sizes[candidates]))]:
        if (
            sizes[c] > max(room, 0)
            and sizes[c] > alone
            and leaks(c) <= TOO_LARGE_LEAK_SHARE * sizes[c]
        ):
            too_large.append(c)
        else:
            room -= int(sizes[c])
    return np.asarray(too_large, np.int64)


def role_of(split: np.ndarray) -> np.ndarray:
    """Split codes as classes of `twin_votes`: train, validation, test; -1 for the rest
    (duplicates kept as originals whose original was deleted)."""
    return np.where(np.isin(split, ROLES), split, -1).astype(np.int64)


def _decide(links: np.ndarray, forced: np.ndarray, best_sim: np.ndarray) -> np.ndarray:
    """Split per component (-1: free). Forced members first, then the twin pairs:
    train against eval, then validation against test; ties to the most similar twin."""
    side = np.full(len(links), -1, np.int64)
    for votes, use in ((forced, forced.sum(axis=1) > 0), (links, links.sum(axis=1) > 0)):
        todo = np.flatnonzero(use & (side < 0))
        for c in todo:
            train, val, test = (int(v) for v in votes[c])
            by_best = int(np.argmax(best_sim[c]))
            if train != val + test:
                to_eval = val + test > train
            else:
                to_eval = by_best != TRAIN
            side[c] = eval_side(votes[c], best_sim[c]) if to_eval else TRAIN
    return side


def join_existing_bubbles(
    embeddings: np.ndarray,
    new_kept: np.ndarray,
    components: np.ndarray,
    split: np.ndarray,
    anchor: np.ndarray,
    shell: np.ndarray,
    anchors: AnchorTable,
) -> int:
    """Free components with a member inside an existing bubble join it (in place).

    The component takes the bubble and shell of its smallest row inside a bubble.
    A bubble none of whose samples is left (all excluded or deleted) holds nothing
    out and takes no one: the samples of a cluster excluded and included again went
    to its emptied bubble whole (a class of 60 once 57 train and 3 eval came back 59
    eval, the round's eval share 0.39) where they now meet the quota as any new sample.
    Returns how many samples joined.
    """
    open_mask = split[new_kept] == UNASSIGNED
    rows = new_kept[open_mask]
    if len(rows) == 0 or len(anchors) == 0:
        return 0
    held = np.zeros(len(anchors), bool)
    held[anchor[anchor >= 0]] = True
    hit, hit_shell = assign_to_bubbles(embeddings[rows], anchors, active=held)
    comp = components[open_mask]
    inside = np.flatnonzero(hit >= 0)
    if len(inside) == 0:
        return 0
    # rows are ascending, so the first inside member of each component is its smallest row.
    _, first = np.unique(comp[inside], return_index=True)
    chosen = inside[first]
    by_comp = dict(zip(comp[chosen].tolist(), chosen.tolist(), strict=True))
    members = np.flatnonzero(np.isin(comp, comp[chosen]))
    source = np.array([by_comp[c] for c in comp[members].tolist()], dtype=np.int64)
    bubble, bubble_shell = hit[source], hit_shell[source]
    split[rows[members]] = shell_split(anchors.layout[bubble], bubble_shell)
    anchor[rows[members]] = bubble
    shell[rows[members]] = bubble_shell
    return len(members)


def keep_margins(
    embeddings: np.ndarray,
    open_rows: np.ndarray,
    unit_of: np.ndarray,
    split: np.ndarray,
    anchor: np.ndarray,
    shell: np.ndarray,
    kept: np.ndarray,
    n_old: int,
    earlier: CellIndex | None,
    config: BubbleFenceConfig,
    room: int,
) -> tuple[np.ndarray, int]:
    """The closure margin around assigned samples (module docstring), in place.

    `unit_of[i]`: the unit (component at `closure_threshold`) of `open_rows[i]`;
    `earlier`: an index over the kept rows of the `n_old` earlier ones (None: there
    are none), searched with one over the rows this round has assigned so far.
    Returns which open rows are fenced (train's margin) and how many joined eval.
    Train comes first: a unit within the margin of both sides stays train, as a
    contested component does on a tie (`contested.py`). One range search at the
    closure threshold over the assigned samples serves both sides.

    At most `room` rows join eval: the margin is a preference, and the eval share is
    the spec's. Units closest to eval first (their most similar eval sample), whole;
    the others stay open, and with eval full they settle as train: no near twin of
    theirs is in eval, so no pair crosses (a first round of 50 drew 951 later rows in
    through the margin, and eval ended at 0.233 of the data).
    """
    fenced = np.zeros(len(open_rows), bool)
    threshold = config.unit_threshold
    searches = []
    if earlier is not None:
        searches.append((earlier.at(threshold), role_of(split[earlier.rows])))
    this_round = n_old + np.flatnonzero(kept[n_old:] & np.isin(split[n_old:], ROLES))
    if len(this_round):
        index = CellIndex(embeddings, this_round, threshold, config.seed)
        searches.append((index, split[this_round].astype(np.int64)))
    if threshold >= config.leak_threshold or len(open_rows) == 0 or not searches:
        return fenced, 0  # no margin below the twins, or nothing to keep it around
    near = twin_votes(embeddings, embeddings[open_rows], searches, len(ROLES), (VALIDATION, TEST))
    fenced = np.isin(unit_of, unit_of[near.count[:, TRAIN] > 0])
    # Each open row's most similar eval sample (ties: the smaller row), then each free
    # unit's, over its members: the unit's model.
    to_test = (near.best_sim[:, TEST] > near.best_sim[:, VALIDATION]) | (
        (near.best_sim[:, TEST] == near.best_sim[:, VALIDATION])
        & (near.best[:, TEST] < near.best[:, VALIDATION])
    )
    side = np.where(to_test, TEST, VALIDATION)
    rows = np.arange(len(open_rows))
    best, best_sim = near.best[rows, side], near.best_sim[rows, side]
    _, unit = np.unique(unit_of, return_inverse=True)
    unit = unit.reshape(-1)
    has = np.flatnonzero((best >= 0) & ~fenced)
    order = has[np.lexsort((best[has], -best_sim[has], unit[has]))]
    first = order[np.r_[True, unit[order][1:] != unit[order][:-1]]] if len(order) else order
    model = np.full(int(unit.max()) + 1, -1, np.int64)
    model[unit[first]] = best[first]
    # The joining units, closest to eval first (their most similar eval sample; ties:
    # the smaller twin), each whole while the room lasts.
    sizes = np.bincount(unit[model[unit] >= 0], minlength=len(model))
    taken = np.zeros(len(model), bool)
    for u in unit[first[np.lexsort((best[first], -best_sim[first]))]]:
        if sizes[u] <= room:
            taken[u] = True
            room -= sizes[u]
    joins = np.flatnonzero(taken[unit])
    rows, twin = open_rows[joins], model[unit[joins]]
    split[rows], anchor[rows], shell[rows] = split[twin], anchor[twin], shell[twin]
    return fenced, len(rows)


def balance_margin_joins(
    embeddings: np.ndarray,
    joined: np.ndarray,
    unit_of: np.ndarray,
    split: np.ndarray,
    anchor: np.ndarray,
    shell: np.ndarray,
    anchors: AnchorTable,
    kept: np.ndarray,
    n_old: int,
    earlier: CellIndex | None,
    config: BubbleFenceConfig,
    slack: float,
) -> int:
    """Moves units that joined eval through the margin (`keep_margins`) to the other
    shell of their bubble while validation is more than `slack` (a share of eval) off
    `validation_ratio`, in place; returns how many rows moved.

    `joined`: those rows, `unit_of` their units; `anchors`: every bubble, this round's
    included. A unit moves only if none of its members is a near twin of an assigned
    sample on the side it leaves (its own members aside: a unit's twins are inside it),
    so no pair at `leak_threshold` comes to cross validation and test, and only into a
    shell its bubbles have (a bubble without an inner shell has no room for the other
    split); the largest units first, each only if it does not carry validation past the
    target by more than the slack.
    """
    held = kept & ((split == VALIDATION) | (split == TEST))
    n_eval = int(held.sum())
    target = config.validation_ratio * n_eval
    excess = int((kept & (split == VALIDATION)).sum()) - target
    if len(joined) == 0 or abs(excess) <= slack * n_eval:
        return 0
    leaving = VALIDATION if excess > 0 else TEST
    arriving = TEST if leaving == VALIDATION else VALIDATION
    on_side = split[joined] == leaving
    rows, units = joined[on_side], unit_of[on_side]
    if len(rows) == 0:
        return 0
    tied = _twins_on(leaving, embeddings, rows, split, kept, n_old, earlier, config)
    new_shell = np.where(
        (arriving == VALIDATION) == (anchors.layout[anchor[rows]] == INNER_VAL), INNER, OUTER
    )
    no_room = (new_shell == INNER) & (anchors.inner_radius[anchor[rows]] <= 0)
    names, unit = np.unique(units, return_inverse=True)
    unit = unit.reshape(-1)
    blocked = np.bincount(unit, tied | no_room, minlength=len(names)) > 0
    sizes = np.bincount(unit, minlength=len(names))
    chosen = np.zeros(len(names), bool)
    left = abs(excess)
    for u in np.lexsort((names, -sizes)):  # the largest first; ties: the smaller unit
        if left <= slack * n_eval:
            break
        if not blocked[u] and sizes[u] <= left + slack * n_eval:
            chosen[u] = True
            left -= sizes[u]
    # Still off: the one unit left that brings validation closest, if any does.
    free = np.flatnonzero(~blocked & ~chosen)
    if left > slack * n_eval and len(free):
        best = free[np.argmin(np.abs(left - sizes[free]))]
        if abs(left - sizes[best]) < left:
            chosen[best] = True
    moving = chosen[unit]
    split[rows[moving]] = arriving
    shell[rows[moving]] = new_shell[moving]
    return int(moving.sum())


def _twins_on(
    side: int,
    embeddings: np.ndarray,
    rows: np.ndarray,
    split: np.ndarray,
    kept: np.ndarray,
    n_old: int,
    earlier: CellIndex | None,
    config: BubbleFenceConfig,
) -> np.ndarray:
    """Per row of `rows`: whether it has a near twin on `side` among the assigned kept
    samples other than `rows` (earlier rows through `earlier`, this round's in an index
    of their own)."""
    searches = []
    if earlier is not None:
        searches.append((earlier.at(config.leak_threshold), role_of(split[earlier.rows])))
    this_round = n_old + np.flatnonzero(kept[n_old:] & np.isin(split[n_old:], ROLES))
    this_round = np.setdiff1d(this_round, rows, assume_unique=True)
    if len(this_round):
        index = CellIndex(embeddings, this_round, config.leak_threshold, config.seed)
        searches.append((index, role_of(split[this_round])))
    if not searches:
        return np.zeros(len(rows), bool)
    votes = twin_votes(embeddings, embeddings[rows], searches, len(ROLES), ranked=())
    return votes.count[:, side] > 0
