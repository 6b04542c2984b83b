"""Step 3, contested components: new samples with near twins on both sides.

Earlier samples never move, so a new component with an assigned train twin and an
assigned eval twin leaks whatever side it takes: as train, each of its eval twins
gets a train twin; as eval, each of its members with a train twin does. Leakage counts
eval *samples* with a train twin, not pairs, so the cost of a side is a number of
samples, and components that share an eval twin share its cost:

* to eval, component C costs a(C): its members with an assigned train twin;
* to train, it costs its eval twins that do not leak yet (an eval twin that already
  has a train twin leaks anyway), each counted once however many components send it
  a train twin.

The choice that leaks the fewest eval samples is a minimum cut (the classic
project-selection cut): source -> eval twin e (capacity 1), e -> each component it is
a twin of (unbounded), component C -> sink (capacity a(C)). Cutting e leaks e (its
components go train); cutting C -> sink sends C to eval at a(C). Of all minimum cuts,
the one with the smallest source side is taken: on a tie a component goes to train.
That spends the leak on an eval sample already at the boundary, which then leaks
whatever comes later, instead of holding out a new sample that pushes eval further
into train's side, where the next rounds' samples bridge it again (measured in
bench/RESULTS.md, "Later rounds: bridges and the minimum").

A contested component can also reach across the line: more frames of a video already
split, arriving between the old ones, form one new component along the whole video.
Moved whole, it leaks along half of it. `split_spanning` then splits it by its members'
own twins, so that it leaks only where the line is, and keeps the split where it leaks
fewer eval samples than the component moved whole (never for a tight cluster, whose
halves would be twins of each other); the new pairs across are counted.

Memory: at most `MAX_EVAL_TWINS` eval twins are listed per member (the
smallest rows); eval twins beyond them are costed as the member's own, those not
leaking yet estimated at the share of its listed ones that do not (`_unlisted_clean`).
No pair list of the whole round is kept.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

from .bubbles import TEST, TRAIN, VALIDATION
from .neighbors import CellIndex
from .twins import TwinVotes, twin_votes

# Eval twins listed per member of a contested component: a member of a broad cluster at
# the train/eval line has a handful (bench mixtures: 1-3); past this many, the rest
# are costed as private (`_unlisted_clean`), so the list stays O(members * MAX_EVAL_TWINS).
MAX_EVAL_TWINS = 64


def fewest_leaks(
    embeddings: np.ndarray,
    rows: np.ndarray,
    comp: np.ndarray,
    contested: np.ndarray,
    index: CellIndex,
    base_split: np.ndarray,
    train_twins: np.ndarray,
    eval_twins: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Which contested components go to eval, and the eval samples that then leak.

    `rows` are the new kept rows, `comp[i]` the component (0..) of `rows[i]`, `contested`
    the components to decide; `index` holds the earlier rows, `base_split[p]` the split
    of index position p (-1: not assigned); `train_twins` / `eval_twins` count each
    row's assigned twins.
    Returns a bool per entry of `contested` (True: eval) and the cut's leak count.
    """
    contested = np.asarray(contested, dtype=np.int64)
    if len(contested) == 0:
        return np.zeros(0, bool), 0
    node_of = np.full(int(comp.max()) + 1, -1, np.int64)
    node_of[contested] = np.arange(len(contested))
    in_contest = node_of[comp] >= 0
    cost_eval = np.bincount(
        node_of[comp[in_contest]], weights=train_twins[in_contest] > 0, minlength=len(contested)
    ).astype(np.int64)
    members = np.flatnonzero(in_contest & (eval_twins > 0))
    member, twin = _eval_twins(embeddings, rows[members], index, base_split)
    # An eval twin with an assigned train twin leaks already: sending it another costs nothing.
    twins = np.unique(twin)
    clean = twins[_clean(embeddings, twins, index, base_split)]
    keep = np.isin(twin, clean)
    private = np.bincount(
        node_of[comp[members]],
        weights=_unlisted_clean(member, keep, eval_twins[members]),
        minlength=len(contested),
    ).astype(np.int64)
    edge_comp = node_of[comp[members[member[keep]]]]
    edge_twin = np.searchsorted(clean, twin[keep])
    return min_leak_cut(len(clean), len(contested), edge_twin, edge_comp, cost_eval, private)


def _unlisted_clean(member: np.ndarray, clean: np.ndarray, n_twins: np.ndarray) -> np.ndarray:
    """Per member, its eval twins beyond the `MAX_EVAL_TWINS` listed that do not leak
    yet, estimated at the clean share of its listed ones (rounded).

    Counting every unlisted twin as clean sent a cut tight cluster to eval whole: its
    round-0 eval members all leak already, yet each new member's 102 eval twins past the
    64 listed were costed as 38 new leaks against its one, and 2,000 new samples went to
    eval, each with a train twin (eval share 0.84).
    `member[k]`, `clean[k]`: the member and whether its twin is clean, per listed twin;
    `n_twins`: each member's eval twins, listed or not.
    """
    listed = np.bincount(member, minlength=len(n_twins))
    share = np.bincount(member, weights=clean, minlength=len(n_twins)) / np.maximum(listed, 1)
    return np.rint((n_twins - listed) * share)


def _clean(
    embeddings: np.ndarray, positions: np.ndarray, index: CellIndex, base_split: np.ndarray
) -> np.ndarray:
    """Whether each of these index positions (eval samples) has no assigned train twin."""
    is_train = (base_split == TRAIN).astype(np.int64)
    found = twin_votes(embeddings, embeddings[index.rows[positions]], [(index, is_train)], 2, ())
    return found.count[:, 1] == 0


def _eval_twins(
    embeddings: np.ndarray, queries: np.ndarray, index: CellIndex, base_split: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(query, index position) of each query's eval twins, the `MAX_EVAL_TWINS` smallest
    positions per query (positions follow rows, so the choice does not rest on float),
    ordered by query, then position.

    A new member of a cut tight cluster has as many eval twins as the cluster has eval
    members: cells wholly within a query's threshold (`CellIndex.hits`) give each of
    their queries their smallest eval positions without a product, and the pairs kept
    are cut back to the cap whenever they pass twice it per query. Listing every pair
    and sorting all kept so far after each block took 7.8 s of a 20k round whose first
    round had cut a cluster of 20k (now 0.13 s); memory stays O(queries * cap) either way.
    """
    held = (base_split == VALIDATION) | (base_split == TEST)
    found: list[tuple[np.ndarray, np.ndarray]] = []
    n_found = 0
    for q, part, hits in index.hits(embeddings[queries], whole_cells=True):
        if hits.every:
            twins = np.sort(part[held[part]])[:MAX_EVAL_TWINS]
            query, twin = np.repeat(q, len(twins)), np.tile(twins, len(q))
        else:
            i, j = np.nonzero(hits.mask) if hits.mask is not None else (hits.i, hits.j)
            query, twin = q[i], part[j]
            query, twin = _smallest_per_query(query[held[twin]], twin[held[twin]])
        found.append((query, twin))
        n_found += len(query)
        if n_found > 2 * MAX_EVAL_TWINS * len(queries):
            found = [_smallest_of(found)]
            n_found = len(found[0][0])
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return _smallest_of(found)


def _smallest_of(found: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """`_smallest_per_query` of (query, twin) blocks taken together."""
    query, twin = (np.concatenate(parts) for parts in zip(*found, strict=True))
    return _smallest_per_query(query, twin)


def _smallest_per_query(query: np.ndarray, twin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs with each query's `MAX_EVAL_TWINS` smallest twins, by query then twin."""
    order = np.lexsort((twin, query))
    query, twin = query[order], twin[order]
    first = np.searchsorted(query, query)
    keep = np.arange(len(query)) - first < MAX_EVAL_TWINS
    return query[keep], twin[keep]


def min_leak_cut(
    n_twins: int,
    n_comps: int,
    edge_twin: np.ndarray,
    edge_comp: np.ndarray,
    cost_eval: np.ndarray,
    private: np.ndarray,
) -> tuple[np.ndarray, int]:
    """The project-selection cut (module docstring): which components go to eval (the
    smallest source side of a minimum cut: ties to train) and the leaks it costs.

    `edge_twin[k]`, `edge_comp[k]`: eval twin and component of one twin relation;
    `cost_eval[c]`: members of c with a train twin; `private[c]`: eval twins of c not
    listed that do not leak yet (estimated), costed as c's own. Nodes: source, sink,
    eval twins, components."""
    source, sink = 0, 1
    twin_node = 2 + np.arange(n_twins)
    comp_node = 2 + n_twins + np.arange(n_comps)
    unbounded = int(n_twins + private.sum() + cost_eval.sum() + 1)
    pairs = np.unique(np.stack([edge_twin, edge_comp], axis=1), axis=0)
    tail = np.concatenate(
        [np.full(n_twins, source), twin_node[pairs[:, 0]], comp_node, np.full(n_comps, source)]
    )
    head = np.concatenate([twin_node, comp_node[pairs[:, 1]], np.full(n_comps, sink), comp_node])
    capacity = np.concatenate(
        [np.ones(n_twins, np.int64), np.full(len(pairs), unbounded), cost_eval, private]
    )
    use = capacity > 0
    n = 2 + n_twins + n_comps
    graph = sparse.csr_matrix(
        (capacity[use].astype(np.int32), (tail[use], head[use])), shape=(n, n)
    )
    flow = maximum_flow(graph, source, sink)
    residual = (graph - flow.flow).tocsr()
    residual.data[residual.data < 0] = 0
    residual.eliminate_zeros()
    reached = np.zeros(n, bool)
    reached[breadth_first_order(residual, source, directed=True, return_predecessors=False)] = True
    return reached[comp_node], int(flow.flow_value)


def split_spanning(
    embeddings: np.ndarray,
    rows: np.ndarray,
    comp: np.ndarray,
    role: np.ndarray,
    model: np.ndarray,
    votes: TwinVotes,
    candidates: np.ndarray,
    index: CellIndex,
    base_split: np.ndarray,
    threshold: float,
    seed: int,
) -> tuple[np.ndarray, int, np.ndarray]:
    """Contested components that span the line, split along it where that leaks less.

    A component of new samples can reach across the train/eval line: more frames of a
    video already split, arriving between the old ones. Whole on either side, it
    leaks along all of its length (as train, every old eval frame near it gets a train
    twin; as eval, every new frame near the old train ones leaks). Split by its members'
    own twins, it leaks only where the line is: each member with assigned twins takes
    the side most of them are on (ties: the side of the most similar, train on a
    tie), and its split and bubble as `eval_side` gives them; members without one keep
    the component's. The split is kept only where it leaks fewer eval samples than the
    whole component (a tight new cluster across the line would leak all over).

    `rows`: the new kept rows; `comp[i]`, `role[i]`, `model[i]`: the component, the
    whole component's split (-1: not bound) and the twin whose bubble and shell an
    eval member takes; `votes`: each row's assigned twins (`twin_votes` over `index`,
    classes train / validation / test); `candidates`: the components that may be split
    (contested, no group member); `base_split[p]`: the split of index position p.
    Updates `role` and `model` in place; returns the components split, the twin pairs
    their new members cut among themselves, and the members (positions in `rows`) put
    in eval with a new train twin.
    """
    own_train = votes.count[:, TRAIN]
    own_eval = votes.count[:, VALIDATION] + votes.count[:, TEST]
    closest_train = votes.best_sim[:, TRAIN] >= votes.best_sim[:, [VALIDATION, TEST]].max(axis=1)
    wants_train = (own_train > own_eval) | (
        (own_train == own_eval) & (own_train > 0) & closest_train
    )
    wants_eval = (own_eval > 0) & ~wants_train
    n_comp = int(comp.max()) + 1
    spans = np.zeros(n_comp, bool)
    spans[candidates] = True
    spans &= (np.bincount(comp[wants_train], minlength=n_comp) > 0) & (
        np.bincount(comp[wants_eval], minlength=n_comp) > 0
    )
    members = np.flatnonzero(spans[comp])
    if len(members) == 0:
        return np.zeros(0, np.int64), 0, np.zeros(0, np.int64)
    split_role = role[members].copy()
    split_model = model[members].copy()
    to_train = wants_train[members]
    split_role[to_train] = TRAIN
    split_model[to_train] = -1
    for i in np.flatnonzero(wants_eval[members]):
        r = eval_side(votes.count[members[i]], votes.best_sim[members[i]])
        split_role[i], split_model[i] = r, votes.best[members[i], r]
    # New twins across the split: a member sent to eval with a new train twin leaks, and
    # every new pair between two splits is cut.
    new_train_twin = np.zeros(len(members), bool)
    cut_new = np.zeros(n_comp, np.int64)
    search = CellIndex(embeddings, rows[members], threshold, seed)
    for q, b, hits in search.hits(embeddings[rows[members]]):
        if hits.mask is not None:
            qi, bi = np.nonzero(hits.mask)
            qi, bi = q[qi], b[bi]
        else:
            qi, bi = q[hits.i], b[hits.j]
        apart = split_role[qi] != split_role[bi]
        new_train_twin[qi[apart & (split_role[bi] == TRAIN)]] = True
        once = apart & (qi < bi)
        cut_new += np.bincount(comp[members[qi[once]]], minlength=n_comp)
    # Old eval twins without a train twin yet that get one: distinct per component.
    queries, twins = _eval_twins(embeddings, rows[members], index, base_split)
    if len(twins):
        distinct = np.unique(twins)
        clean = np.isin(twins, distinct[_clean(embeddings, distinct, index, base_split)])
        queries, twins = queries[clean], twins[clean]
    comp_of = comp[members[queries]]
    leaks_whole = np.zeros(n_comp, np.int64)
    leaks_split = np.zeros(n_comp, np.int64)
    whole_train = role[members[queries]] == TRAIN
    _count_distinct(leaks_whole, comp_of[whole_train], twins[whole_train])
    sent = split_role[queries] == TRAIN
    _count_distinct(leaks_split, comp_of[sent], twins[sent])
    # New members in eval with a train twin.
    whole_eval = role[members] != TRAIN
    np.add.at(leaks_whole, comp[members], whole_eval & (own_train[members] > 0))
    split_eval = split_role != TRAIN
    np.add.at(leaks_split, comp[members], split_eval & ((own_train[members] > 0) | new_train_twin))
    better = leaks_split < leaks_whole
    take = better[comp[members]]
    role[members[take]] = split_role[take]
    model[members[take]] = split_model[take]
    split = np.flatnonzero(better)
    return split, int(cut_new[split].sum()), members[take & split_eval & new_train_twin]


def leaks_of(
    embeddings: np.ndarray,
    rows: np.ndarray,
    members: np.ndarray,
    role: np.ndarray,
    own_train: np.ndarray,
    across: np.ndarray,
    index: CellIndex,
    base_split: np.ndarray,
) -> int:
    """Eval samples that the sides of these new members make leak, counted as
    `fewest_leaks` counts them: members in eval with an assigned train twin or a new
    one (`across`: members given by `split_spanning`), and assigned eval samples with no
    train twin yet that get one from a member in train (up to `MAX_EVAL_TWINS` listed
    per member).

    `members`: positions in `rows` (the new kept rows); `role[i]` the split of rows[i];
    `own_train[i]` its assigned train twins; `base_split[p]` the split of index position p.
    """
    in_eval = members[role[members] != TRAIN]
    leaking_new = np.union1d(in_eval[own_train[in_eval] > 0], across)
    to_train = members[role[members] == TRAIN]
    return len(leaking_new) + leaks_if_train(embeddings, rows[to_train], index, base_split)


def leaks_if_train(
    embeddings: np.ndarray, rows: np.ndarray, index: CellIndex, base_split: np.ndarray
) -> int:
    """Assigned eval samples with no train twin yet that get one if these new rows go to
    train (up to `MAX_EVAL_TWINS` listed per row)."""
    _, twins = _eval_twins(embeddings, rows, index, base_split)
    twins = np.unique(twins)
    return int(np.sum(_clean(embeddings, twins, index, base_split)))


def _count_distinct(counts: np.ndarray, comps: np.ndarray, twins: np.ndarray) -> None:
    """Add to counts[c] the distinct twins listed for component c."""
    if len(comps):
        pairs = np.unique(np.stack([comps, twins], axis=1), axis=0)
        np.add.at(counts, pairs[:, 0], 1)


def eval_side(votes: np.ndarray, best_sim: np.ndarray) -> int:
    """Validation or test for an eval component: more twin pairs; on a tie the side of
    the most similar twin, validation if that twin is train."""
    _, val, test = (int(v) for v in votes)
    if val != test:
        return VALIDATION if val > test else TEST
    by_best = int(np.argmax(best_sim))
    return by_best if by_best != TRAIN else (VALIDATION if val else TEST)
