"""Contested components (core/contested.py): the side that makes the fewest eval samples
leak, against brute-force enumeration on tiny graphs and through `bind_to_assigned`."""

import itertools

import numpy as np
import pytest

from bubblefence_plugin import BubbleFence
from bubblefence_plugin.core import contested
from bubblefence_plugin.core.bubbles import INNER, TEST, TRAIN, UNASSIGNED, VALIDATION
from bubblefence_plugin.core.config import BubbleFenceConfig
from bubblefence_plugin.core.contested import min_leak_cut
from bubblefence_plugin.core.follow import bind_to_assigned, earlier_index
from bubblefence_plugin.core.twins import twin_components

CONFIG = BubbleFenceConfig(leak_threshold=0.95)


def brute_force(n_twins, edge_twin, edge_comp, cost_eval, private):
    """Every assignment of the components: the least leak count and the components that
    go to eval in every assignment reaching it."""
    best, always = None, None
    for bits in itertools.product([False, True], repeat=len(cost_eval)):
        to_eval = np.array(bits, bool)
        # An eval twin leaks when any of its components goes to train.
        leaked = set(edge_twin[~to_eval[edge_comp]].tolist())
        cost = int(cost_eval[to_eval].sum() + private[~to_eval].sum() + len(leaked))
        if best is None or cost < best:
            best, always = cost, to_eval.copy()
        elif cost == best:
            always &= to_eval
    return best, always


@pytest.mark.parametrize("seed", range(40))
def test_the_cut_is_the_fewest_leaks_and_goes_train_on_ties(seed):
    rng = np.random.default_rng(seed)
    n_twins, n_comps = int(rng.integers(1, 6)), int(rng.integers(1, 8))
    n_edges = int(rng.integers(1, 3 * n_comps + 1))
    edge_twin = rng.integers(0, n_twins, n_edges)
    edge_comp = rng.integers(0, n_comps, n_edges)
    cost_eval = rng.integers(1, 4, n_comps)
    private = rng.integers(0, 3, n_comps) * (rng.random(n_comps) < 0.3)
    to_eval, leaks = min_leak_cut(n_twins, n_comps, edge_twin, edge_comp, cost_eval, private)
    best, always = brute_force(n_twins, edge_twin, edge_comp, cost_eval, private)
    assert leaks == best
    assert to_eval.tolist() == always.tolist()


def test_components_sharing_one_eval_twin_leak_it_once():
    # Three components, each a twin of eval twin 0 and with one member with a train twin:
    # all to eval leaks 3 samples, all to train leaks twin 0 only.
    to_eval, leaks = min_leak_cut(
        1, 3, np.array([0, 0, 0]), np.array([0, 1, 2]), np.ones(3, np.int64), np.zeros(3)
    )
    assert to_eval.tolist() == [False, False, False] and leaks == 1


def bridges(n_bridges, eval_angle, train_angle, d=8):
    """An eval row at e_0, `n_bridges` new rows at `eval_angle` from it towards e_i, each
    with its own train row further along at `train_angle` from e_0. Returns rows:
    eval, trains, then the bridges."""
    basis = np.eye(d)

    def towards(i, angle):
        return np.cos(angle) * basis[0] + np.sin(angle) * basis[i]

    trains = [towards(i, train_angle) for i in range(1, n_bridges + 1)]
    new = [towards(i, eval_angle) for i in range(1, n_bridges + 1)]
    return np.array([basis[0], *trains, *new], np.float32)


def leaking_eval(x, split, threshold=0.95):
    """Brute force: eval rows with a train row at >= threshold."""
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    held = np.isin(split, [VALIDATION, TEST])
    train = split == TRAIN
    return np.flatnonzero(held & ((sims >= threshold) & train[None, :]).any(axis=1))


def test_bridges_sharing_one_eval_twin_go_train_and_leak_it_alone():
    # cos(bridge, eval) = 0.97 > cos(bridge, its train) = 0.96; bridges are not twins of
    # each other (0.94) and the eval row is not a twin of any train row (0.86).
    a = np.arccos(0.97)
    x = bridges(3, a, a + np.arccos(0.96))
    n_old = 4
    split = np.array([VALIDATION, TRAIN, TRAIN, TRAIN] + [UNASSIGNED] * 3, np.int8)
    anchor = np.array([2, -1, -1, -1, -1, -1, -1], np.int64)
    shell = np.array([INNER, 0, 0, 0, 0, 0, 0], np.int8)
    new = np.arange(n_old, len(x))
    components = twin_components(x, new, CONFIG.leak_threshold, 0)
    assert len(np.unique(components)) == 3
    # The pair-vote rule (one pair each side, the eval twin more similar) held each
    # bridge out: 3 leaking eval samples. The fewest: all train, the eval row leaks.
    old_rule = split.copy()
    old_rule[new] = VALIDATION
    assert len(leaking_eval(x, old_rule)) == 3
    kept = np.ones(len(x), bool)
    stats = bind_to_assigned(
        x, new, components, split, anchor, shell, earlier_index(x, kept, n_old, CONFIG), CONFIG
    )
    assert split[new].tolist() == [TRAIN] * 3
    assert leaking_eval(x, split).tolist() == [0]
    assert stats == {"bound_to_twins": 3, "cut_pairs_twins": 3, "leaks_twins": 1}


def test_a_bridge_on_a_tie_goes_train():
    a = np.arccos(0.97)
    x = bridges(1, a, a + np.arccos(0.96))
    split = np.array([TEST, TRAIN, UNASSIGNED], np.int8)
    anchor, shell = np.array([1, -1, -1]), np.array([INNER, 0, 0], np.int8)
    new = np.array([2])
    stats = bind_to_assigned(
        x,
        new,
        np.array([0]),
        split,
        anchor,
        shell,
        earlier_index(x, np.ones(3, bool), 2, CONFIG),
        CONFIG,
    )
    assert split[2] == TRAIN and anchor[2] == -1
    assert stats["leaks_twins"] == 1


def line_and_bridges(seed, d=6, n_old=200, n_new=12):
    """Old rows around e_0 split by the plane x_1 = 0 with a gap (eval above), and new
    rows at the midpoints of near (eval, train) pairs: bridges, some sharing an eval row."""
    rng = np.random.default_rng(seed)
    old = rng.normal(size=(4 * n_old, d)) * 0.3
    old[:, 0] = 1
    old /= np.linalg.norm(old, axis=1, keepdims=True)
    old = old[np.abs(old[:, 1]) > 0.05][:n_old]
    held = old[:, 1] > 0
    near = (old @ old.T > 0.82) & held[:, None] & ~held[None, :]
    e, t = np.nonzero(near)
    pick = rng.choice(len(e), n_new, replace=False)
    new = old[e[pick]] + old[t[pick]] + 0.03 * rng.normal(size=(n_new, d))
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    split = np.where(held, np.where(old[:, 2] > 0, VALIDATION, TEST), TRAIN)
    return np.vstack([old, new]).astype(np.float32), split.astype(np.int8)


@pytest.mark.parametrize("seed", range(6))
def test_binding_leaks_no_more_than_any_assignment_of_the_contested(seed):
    """The contested components' sides leak no more eval samples than the best of all
    2^m choices of whole components (brute force over the whole state, earlier rows
    fixed); a component split along the line may leak fewer."""
    x, old_split = line_and_bridges(seed)
    n_old = len(old_split)
    old = np.arange(n_old)
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    twins = sims >= CONFIG.leak_threshold
    np.fill_diagonal(twins, False)
    split = np.concatenate([old_split, np.full(len(x) - n_old, UNASSIGNED, np.int8)])
    anchor = np.where(split[:n_old] != TRAIN, 0, -1)
    anchor = np.concatenate([anchor, np.full(len(x) - n_old, -1)]).astype(np.int64)
    shell = np.where(split != TRAIN, INNER, 0).astype(np.int8)
    new = np.arange(n_old, len(x))
    components = twin_components(x, new, CONFIG.leak_threshold, seed)
    kept = np.ones(len(x), bool)
    stats = bind_to_assigned(
        x, new, components, split, anchor, shell, earlier_index(x, kept, n_old, CONFIG), CONFIG
    )
    ours = len(leaking_eval(x, split))
    before = len(leaking_eval(x[:n_old], old_split))
    assert stats["leaks_twins"] == ours - before
    has_train = (twins[new][:, old] & (old_split == TRAIN)).any(axis=1)
    has_eval = (twins[new][:, old] & (old_split != TRAIN)).any(axis=1)
    contested = [
        c
        for c in np.unique(components)
        if has_train[components == c].any() and has_eval[components == c].any()
    ]
    assert 2 <= len(contested) <= 12
    best = None
    for bits in itertools.product([TRAIN, VALIDATION], repeat=len(contested)):
        trial = split.copy()
        for c, side in zip(contested, bits, strict=True):
            trial[new[components == c]] = side
        found = len(leaking_eval(x, trial))
        best = found if best is None else min(best, found)
    assert ours <= best


def test_eval_twins_past_the_list_that_leak_already_cost_nothing(monkeypatch):
    # One tight cone (every pair a twin): round 0 cuts it, so each of its eval samples
    # has a train twin already. A new member then has more eval twins than are listed;
    # costing the unlisted ones as clean sent all new members to eval, each leaking.
    monkeypatch.setattr(contested, "MAX_EVAL_TWINS", 8)
    rng = np.random.default_rng(0)
    d = 64
    x = np.ones(d) / np.sqrt(d) + rng.standard_normal((600, d)) * np.sqrt(0.01 / d)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    bf = BubbleFence(BubbleFenceConfig(seed=0))
    bf.ingest(x[:200])
    before = bf.assignments()["split"].to_numpy()
    held = np.isin(before, ["validation", "test"])
    assert held.sum() > 8 and bf.history[0]["cut_pairs"] > 0
    assert len(leaking_eval(x[:200], _codes(before))) == held.sum()
    bf.ingest(x[200:])
    after = bf.assignments()["split"].to_numpy()
    assert (after[200:] == "train").all()
    assert bf.history[1]["leaks_twins"] == 0
    assert len(leaking_eval(x, _codes(after))) == held.sum()


def test_eval_twins_are_each_querys_smallest_eval_positions(monkeypatch):
    """Against brute force: a tight cone (its cells wholly within a query's threshold:
    blocks without products) and a broad cloud beside it, eval scattered over both, the
    list cut to 4 per query, so that the kept pairs are cut back while blocks stream."""
    from bubblefence_plugin.core.neighbors import CellIndex

    monkeypatch.setattr(contested, "MAX_EVAL_TWINS", 4)
    every_blocks = []
    hits = CellIndex.hits

    def recording(self, queries, whole_cells=False):
        for q, part, found in hits(self, queries, whole_cells):
            every_blocks.append(found.every)
            yield q, part, found

    monkeypatch.setattr(CellIndex, "hits", recording)
    rng = np.random.default_rng(2)
    d = 64
    cone = np.ones(d) / np.sqrt(d) + rng.standard_normal((900, d)) * np.sqrt(0.01 / d)
    cloud = np.ones(d) / np.sqrt(d) + rng.standard_normal((600, d)) * np.sqrt(0.06 / d)
    x = np.vstack([cone, cloud])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    earlier = np.r_[0:700, 900:1300]
    index = CellIndex(x, earlier, 0.95, seed=0)
    base_split = rng.choice([TRAIN, VALIDATION, TEST], size=len(earlier))
    queries = np.r_[700:900, 1300:1500]
    query, twin = contested._eval_twins(x, queries, index, base_split)
    sims = x[queries].astype(np.float64) @ x[earlier].T.astype(np.float64)
    held = (base_split == VALIDATION) | (base_split == TEST)
    expected = [np.flatnonzero((sims[k] >= 0.95) & held)[:4] for k in range(len(queries))]
    assert query.tolist() == np.repeat(np.arange(len(queries)), [len(e) for e in expected]).tolist()
    assert twin.tolist() == np.concatenate(expected).tolist()
    assert any(every_blocks) and not all(every_blocks)
    assert sum(len(e) == 4 for e in expected) > 100


def test_unlisted_eval_twins_are_costed_at_the_clean_share_of_the_listed():
    member = np.array([0, 0, 0, 0, 1, 1])
    clean = np.array([True, True, False, False, False, False])
    # Member 0: 4 listed, half clean, 10 unlisted -> 5; member 1: none clean -> 0;
    # member 2: nothing listed (no twin) -> 0.
    got = contested._unlisted_clean(member, clean, np.array([14, 30, 0]))
    assert got.tolist() == [5, 0, 0]


def _codes(split):
    return np.select(
        [split == "train", split == "validation", split == "test"], [TRAIN, VALIDATION, TEST], -1
    )
