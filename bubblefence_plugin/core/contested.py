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

Memory: at most `MAX_EVAL_TWINS` eval twins are listed per member (the
smallest rows); eval twins beyond them are counted as private and not yet leaking,
an upper bound on their cost. No pair list of the whole round is kept.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

from .bubbles import TEST, TRAIN, VALIDATION
from .neighbors import CellIndex
from .twins import twin_votes

# Eval twins listed per member of a contested component: a member of a broad cluster at
# the train/eval line has a handful (bench mixtures: 1-3); past this many, the rest
# are costed as private, so the list stays O(members * MAX_EVAL_TWINS).
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
    listed = np.bincount(member, minlength=len(members))
    private = np.bincount(
        node_of[comp[members]], weights=eval_twins[members] - listed, minlength=len(contested)
    ).astype(np.int64)
    # An eval twin with an assigned train twin leaks already: sending it another costs nothing.
    twins = np.unique(twin)
    is_train = (base_split == TRAIN).astype(np.int64)
    leaking = twin_votes(embeddings, embeddings[index.rows[twins]], [(index, is_train)], 2)
    clean = twins[leaking.count[:, 1] == 0]
    keep = np.isin(twin, clean)
    edge_comp = node_of[comp[members[member[keep]]]]
    edge_twin = np.searchsorted(clean, twin[keep])
    return min_leak_cut(len(clean), len(contested), edge_twin, edge_comp, cost_eval, private)


def _eval_twins(
    embeddings: np.ndarray, queries: np.ndarray, index: CellIndex, base_split: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(query, index position) of each query's eval twins, the `MAX_EVAL_TWINS` smallest
    positions per query (positions follow rows, so the choice does not rest on float)."""
    query = np.zeros(0, np.int64)
    twin = np.zeros(0, np.int64)
    for q, b, _ in index.pairs(embeddings[queries]):
        held = (base_split[b] == VALIDATION) | (base_split[b] == TEST)
        query = np.concatenate([query, q[held]])
        twin = np.concatenate([twin, b[held]])
        order = np.lexsort((twin, query))
        query, twin = query[order], twin[order]
        first = np.searchsorted(query, query)
        keep = np.arange(len(query)) - first < MAX_EVAL_TWINS
        query, twin = query[keep], twin[keep]
    return query, twin


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
    listed, costed as clean and c's own. Nodes: source, sink, eval twins, components."""
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
