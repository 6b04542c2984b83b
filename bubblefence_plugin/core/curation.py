"""Curation on embeddings beside the split: typicality, diverse picks, balanced picks.

Arrays only, no FiftyOne; rows are normalised to unit length where they are not.
Every strategy reduces to one of two kinds of term, combined with strengths into one
greedy objective (`select`):

* static scores, rank-normalised to [0, 1] so strengths weigh like against like:
  ``typical`` (typicality), ``outliers`` (1 - typicality rank), ``similar`` (most
  similar to a query set), ``metadata`` (a numeric array; a negative strength puts
  lower values first) and ``random`` (a seeded permutation);
* ``diverse``: greedy farthest-point (k-center) selection, whose term is each row's
  current cosine distance to everything already picked (or given as ``start``),
  divided by the largest such distance, so it stays in [0, 1] as picks accumulate.

``balance`` is a constraint, not a term: per-class quotas (`class_quotas`) that the
greedy fill respects. A strategy of strength 0 is dropped before anything runs, so a
combination with one strength zero *is* the other strategy alone.

Typicality (`typicality`): the mean cosine similarity s of a sample to its k nearest
other samples (k = 10), reported as (1 + s) / 2 in [0, 1]. The map is fixed, not
relative to the data set's maximum (FiftyOne Brain's uniqueness divides by the
current maximum, so one new outlier rescales every score): a sample's typicality
changes only when its own neighbourhood changes, and scores of one embedding model
compare across data sets and rounds. Outliers are the lowest typicality. The k
nearest neighbours are exact (`knn_all`): the rows are grouped around seeded k-means
centres, and a group is compared with a block of queries only when the triangle
inequality on angles says it could hold a closer row than a query's current k-th. In a
tight cluster every member is a candidate, so the cost stays quadratic in the sizes
of the largest tight clusters (the exact answer needs it); each such pair is computed
once, its product serving both rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

from .config import check_int
from .neighbors import as_unit_rows, knn, nearest
from .regions import RegionIndex

# Neighbours averaged by typicality: enough that one near-duplicate does not make a
# sample typical, few enough to stay local (LightlyStudio and TypiClust use ~10-20).
TYPICALITY_K = 10
# Below this many rows a plain blockwise product is as fast as the pruned search.
BRUTE_FORCE_ROWS = 8192
# Rows per piece of the pruned search (regions are cut to this size): the queries of a
# piece share their bounds, and a piece is the unit whose products serve both sides.
QUERY_BLOCK = 512
# Rows per product of the pruned search: below ~2,000 columns a 512-row product runs
# at a fraction of the BLAS's speed (measured here: 300 columns 17, 3,000 columns 37
# GFLOPS), and most regions hold far fewer rows than that.
CHUNK_ROWS = 2048
# Slack on the pruning bound: float32 products differ from exact angles by ~1e-6.
BOUND_SLACK = 1e-4
# Regions per sqrt(n) rows: more regions prune finer but cost a bound per region.
REGIONS_PER_SQRT_N = 1.0
# Share of each region's members, the farthest from its centre, moved to a catch-all
# region whose rows are bounded one by one: outliers then stop widening the regions'
# bounds (0.01 and 0 measured slower, 0.04 a little slower).
EDGE_SHARE = 0.02
# Pieces whose centres meet the catch-all region's rows in one product (bounds of
# each edge row per piece): a few MB of cosines at any n, one product instead of many.
EDGE_BOUND_PIECES = 64

STRATEGIES: dict[str, str] = {
    "diverse": "Cover the embedding space: greedy farthest-point (k-center) picks",
    "typical": "Samples close to many others first (high typicality)",
    "outliers": "Samples far from all others first (low typicality)",
    "similar": "Samples most similar to a query set first",
    "metadata": "By a numeric value: higher first (negative strength: lower first)",
    "balance": "Class quotas to a target distribution (uniform, input, or shares)",
    "random": "A seeded random sample",
}
BALANCE_TARGETS = ("uniform", "input")
SCORE_STRATEGIES = ("typical", "outliers", "similar", "metadata", "random")


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class CurationRequest:
    """What to pick: strategies with strengths, how many, and their few knobs.

    ``strengths`` maps strategy names (`STRATEGIES`) to weights; ``balance`` is a
    constraint, so its strength only switches it on. ``target`` is the balance
    target: ``"uniform"``, ``"input"`` (the candidates' own class shares) or explicit
    shares per class summing to 1. Validated on construction, before anything is read.
    """

    strengths: dict[str, float]
    count: int
    seed: int = 0
    k: int = TYPICALITY_K
    target: str | dict[str, float] = "uniform"
    active: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.strengths, dict) or not self.strengths:
            raise ValueError(
                f"strengths must be a non-empty dict of strategy -> strength; strategies: "
                f"{sorted(STRATEGIES)}"
            )
        for name, value in self.strengths.items():
            if name not in STRATEGIES:
                raise ValueError(f"strategy={name!r} is unknown; use one of {sorted(STRATEGIES)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"strength of {name!r} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"strength of {name!r} must be finite, got {value!r}")
            if value < 0 and name != "metadata":
                raise ValueError(
                    f"strength of {name!r} must be >= 0 (only metadata takes a negative "
                    f"strength, meaning lower values first), got {value}"
                )
        active = tuple(n for n in STRATEGIES if self.strengths.get(n, 0) != 0)
        if not active:
            raise ValueError("every strength is 0: give at least one strategy a strength")
        object.__setattr__(self, "active", active)
        check_int("count", self.count, 1)
        check_int("seed", self.seed, 0)
        check_int("k", self.k, 1)
        check_target(self.target)

    @property
    def needs_typicality(self) -> bool:
        return "typical" in self.active or "outliers" in self.active


def check_target(target: str | dict[str, float]) -> None:
    """Validates a balance target: a name in `BALANCE_TARGETS` or shares summing to 1."""
    if isinstance(target, str):
        if target not in BALANCE_TARGETS:
            raise ValueError(
                f"target={target!r}; use one of {BALANCE_TARGETS} or a dict of class -> "
                "share summing to 1"
            )
        return
    if not isinstance(target, dict) or not target:
        raise ValueError(
            f"target must be one of {BALANCE_TARGETS} or a non-empty dict of class -> share"
        )
    for label, share in target.items():
        if isinstance(share, bool) or not isinstance(share, (int, float)) or share < 0:
            raise ValueError(f"target share of {label!r} must be a number >= 0, got {share!r}")
    total = float(sum(target.values()))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"target shares must sum to 1, they sum to {total:.6g}")


# --------------------------------------------------------------------------- neighbours


def knn_all(x: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact k most similar other rows of every row of ``x`` (unit rows).

    Returns (similarities, indices), most similar first, shape (n, k'), k' =
    min(k, n - 1); ties go to the lower index. Rows are grouped into pieces (regions
    around seeded centres, cut to at most `QUERY_BLOCK` rows); each piece's queries
    meet the pieces in decreasing order of bound, each only with the queries whose
    bound for it beats their current k-th best (the angle to a piece's centre minus
    its angular radius bounds every member's angle). A product that covers a whole
    piece of queries also serves the later pieces among its columns (its transpose),
    which then skip that piece: within a tight cluster, where no bound prunes, each
    pair is computed once instead of twice. The catch-all region's rows (the regions'
    farthest members, `_regions_for_search`) are bounded one by one for the other
    pieces (`_search_edge`); its own pieces search as any other. Memory: one copy of
    ``x`` sorted by piece, the k best of every row, one chunk's similarities and the
    cosines of `EDGE_BOUND_PIECES` centres to the catch-all's rows; never N x N.
    """
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    k_eff = int(min(k, n - 1))
    if k_eff <= 0:
        return np.empty((n, 0), np.float32), np.empty((n, 0), np.int64)
    if n <= BRUTE_FORCE_ROWS:
        return knn(x, x, k_eff, exclude_self=np.arange(n))

    order, starts, centres, cos_radius, edge_lo = _regions_for_search(x, seed)
    sorted_x = x[order]
    edge_piece = int(np.searchsorted(starts, edge_lo))
    # Indexed by sorted position; the neighbours are original row indices.
    best_sim = np.full((n, k_eff), -np.inf, np.float32)
    best_idx = np.full((n, k_eff), -1, np.int64)
    done_with: list[list[int]] = [[] for _ in range(len(centres))]
    for piece in range(len(centres)):
        if piece % EDGE_BOUND_PIECES == 0:
            edge_cos = centres[piece : piece + EDGE_BOUND_PIECES] @ sorted_x[edge_lo:].T
        _search_piece(
            sorted_x,
            order,
            starts,
            centres,
            cos_radius,
            piece,
            done_with,
            best_sim,
            best_idx,
            edge_piece,
            edge_cos[piece % EDGE_BOUND_PIECES],
        )
    out_sim = np.empty_like(best_sim)
    out_idx = np.empty_like(best_idx)
    out_sim[order] = best_sim
    out_idx[order] = best_idx
    return out_sim, out_idx


def _regions_for_search(
    x: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Rows grouped around ~sqrt(n) seeded k-means centres (`RegionIndex.fit`, whose
    k-means++ seeding gives small clusters a centre too): (order, starts, centres, cos
    radius, first sorted position of the catch-all region).

    Each region's centre is the normalised mean of its members and its radius the
    largest member angle from that centre, as a cosine. The farthest `EDGE_SHARE` of
    each region's members go to one last region instead: a few stragglers would widen
    a region's radius, and so its bound, for every query. The catch-all's own radius
    is about 90 degrees, so the other pieces bound its rows one by one (`_search_edge`).
    """
    n = len(x)
    n_regions = int(min(n, max(16, round(REGIONS_PER_SQRT_N * math.sqrt(n)))))
    centres = RegionIndex.fit(x, seed=seed, n_regions=n_regions).centres
    _, label = nearest(x, centres)
    order = np.argsort(label, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(label, minlength=n_regions))])
    for r in range(n_regions):
        rows = order[bounds[r] : bounds[r + 1]]
        if len(rows) >= 1 / EDGE_SHARE:
            sims = x[rows] @ _unit_mean(x[rows])
            label[rows[sims < np.quantile(sims, EDGE_SHARE)]] = n_regions
    order = np.argsort(label, kind="stable")
    counts = np.bincount(label, minlength=n_regions + 1)
    ends = np.cumsum(counts[counts > 0])
    # Regions cut into even pieces of at most QUERY_BLOCK rows.
    starts = np.concatenate(
        [
            np.linspace(a, b, -(-(b - a) // QUERY_BLOCK) + 1).astype(np.int64)[:-1]
            for a, b in zip(np.concatenate([[0], ends[:-1]]), ends, strict=True)
        ]
        + [[n]]
    )
    centres = np.empty((len(starts) - 1, x.shape[1]), np.float32)
    cos_radius = np.empty(len(centres), np.float32)
    for r in range(len(centres)):
        members = x[order[starts[r] : starts[r + 1]]]
        centres[r] = _unit_mean(members)
        cos_radius[r] = float((members @ centres[r]).min())
    return order, starts, centres, cos_radius, n - int(counts[n_regions])


def _unit_mean(rows: np.ndarray) -> np.ndarray:
    mean = rows.sum(axis=0)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else rows[0]


def _search_piece(
    sorted_x: np.ndarray,
    order: np.ndarray,
    starts: np.ndarray,
    centres: np.ndarray,
    cos_radius: np.ndarray,
    piece: int,
    done_with: list[list[int]],
    best_sim: np.ndarray,
    best_idx: np.ndarray,
    edge_piece: int,
    edge_cos: np.ndarray,
) -> None:
    """Completes the k best of one piece's queries (positions in sorted_x), exactly.

    Pieces come in decreasing order of the piece's best bound, gathered into chunks
    of at least `CHUNK_ROWS` rows so that each product is large enough to run at the
    BLAS's full speed (pieces of a few dozen rows run several times slower). A chunk
    is compared only with the queries whose bound for one of its pieces beats their
    current k-th best, so one hard query (an outlier) does not drag its piece along.
    When every query of the piece meets a chunk, the product's transpose goes to the
    chunk's later pieces, which record that they have met this piece (``done_with``).
    A piece before the catch-all region (``edge_piece`` on) skips its pieces and ends
    with its rows (`_search_edge`, ``edge_cos``: this centre's cosines to them).
    """
    lo, hi = int(starts[piece]), int(starts[piece + 1])
    q = sorted_x[lo:hi]
    angle_to_centre = np.arccos(np.clip(q @ centres.T, -1.0, 1.0))
    radius = np.arccos(np.clip(cos_radius, -1.0, 1.0))
    bound = np.cos(np.maximum(angle_to_centre - radius, 0.0)) + BOUND_SLACK
    block_bound = bound.max(axis=0)
    visit = np.argsort(-block_bound, kind="stable")
    visit = visit[~np.isin(visit, done_with[piece])]
    if piece < edge_piece:
        visit = visit[visit < edge_piece]
    done_with[piece] = []
    sizes = np.diff(starts)
    first = 0
    while first < len(visit):
        kth = best_sim[lo:hi, -1]
        if block_bound[visit[first]] <= kth.min():
            break  # pieces come in decreasing bound: none left can help any query
        last = first + int(np.searchsorted(np.cumsum(sizes[visit[first:]]), CHUNK_ROWS)) + 1
        chunk = np.sort(visit[first:last])  # ascending: the later pieces' columns come last
        first = last
        active = np.flatnonzero((bound[:, chunk] > kth[:, None]).any(axis=1))
        if not len(active):
            continue
        columns = np.concatenate([np.arange(starts[r], starts[r + 1]) for r in chunk])
        sims = q[active] @ sorted_x[columns].T
        _merge(best_sim, best_idx, lo + active, order[lo + active], sims, order[columns])
        later = int(np.searchsorted(columns, hi))
        if len(active) == hi - lo and later < len(columns):
            _merge(
                best_sim,
                best_idx,
                columns[later:],
                order[columns[later:]],
                sims[:, later:],
                order[lo:hi],
                by_column=True,
            )
            for other in chunk[chunk > piece]:
                done_with[other].append(piece)
    if piece < edge_piece:
        _search_edge(sorted_x, order, starts, radius[piece], piece, edge_cos, best_sim, best_idx)


def _search_edge(
    sorted_x: np.ndarray,
    order: np.ndarray,
    starts: np.ndarray,
    radius: float,
    piece: int,
    edge_cos: np.ndarray,
    best_sim: np.ndarray,
    best_idx: np.ndarray,
) -> None:
    """Completes the k best of a piece's queries with the catch-all region's rows.

    Each edge row is bounded on its own (its angle to the piece's centre minus the
    piece's radius), not by the catch-all's radius of about 90 degrees that every
    query would pass: a query meets only the edge rows that could enter its list.
    """
    lo, hi = int(starts[piece]), int(starts[piece + 1])
    edge_lo = int(starts[-1]) - len(edge_cos)
    bound = np.cos(np.maximum(np.arccos(np.clip(edge_cos, -1.0, 1.0)) - radius, 0.0))
    bound += BOUND_SLACK
    kth = best_sim[lo:hi, -1]
    active = np.flatnonzero(kth < bound.max(initial=-np.inf))
    if not len(active):
        return
    near = edge_lo + np.flatnonzero(bound > kth[active].min())
    sims = sorted_x[lo + active] @ sorted_x[near].T
    _merge(best_sim, best_idx, lo + active, order[lo + active], sims, order[near])


def _merge(
    best_sim: np.ndarray,
    best_idx: np.ndarray,
    owners: np.ndarray,
    owner_ids: np.ndarray,
    sims: np.ndarray,
    candidate_ids: np.ndarray,
    by_column: bool = False,
) -> None:
    """Merges similarities (owners x candidates) into the owners' k best, in place.

    Only a similarity at or above an owner's k-th best can enter its list, and once
    the list is full such similarities are few (over a cluster of m rows met in random
    order, about k ln(m / k) in all): one comparison picks them out, and only they are
    sorted with the lists, by (owner, -similarity, index). An owner whose list is not
    full yet takes its (k + 1)-th best of the block as threshold (one more than k: the
    block may hold the owner itself, which is not its own neighbour). ``by_column``:
    ``sims`` is candidates x owners (a product's transpose), compared as it lies in
    memory (a transposed view is read several times slower).
    """
    k = best_sim.shape[1]
    threshold = best_sim[owners, -1]
    fresh = np.flatnonzero(np.isneginf(threshold))
    if len(fresh):
        block = sims[:, fresh].T if by_column else sims[fresh]
        kk = min(k + 1, block.shape[1])
        threshold[fresh] = np.partition(block, -kk, axis=1)[:, -kk]
    if by_column:
        col, row = np.divmod(np.flatnonzero(sims >= threshold), sims.shape[1])
    else:
        row, col = np.divmod(np.flatnonzero(sims >= threshold[:, None]), sims.shape[1])
    keep = candidate_ids[col] != owner_ids[row]
    row, col = row[keep], col[keep]
    if not len(row):
        return
    rows, slot = np.unique(row, return_inverse=True)
    target = owners[rows]
    owner = np.concatenate([np.repeat(np.arange(len(rows)), k), slot])
    found = sims[col, row] if by_column else sims[row, col]
    sim = np.concatenate([best_sim[target].ravel(), found])
    idx = np.concatenate([best_idx[target].ravel(), candidate_ids[col]])
    # One int64 key (owner, descending similarity) sorts several times faster than a
    # lexsort of three keys; only equal similarities of one owner out of index order
    # (duplicate rows) need the index too.
    key = (owner << 32) | _descending_bits(sim)
    ranked = np.argsort(key, kind="stable")
    before, after = ranked[:-1], ranked[1:]
    if ((key[before] == key[after]) & (idx[after] < idx[before])).any():
        ranked = np.lexsort((idx, key))
    counts = np.bincount(owner, minlength=len(rows))
    take = ranked[((np.cumsum(counts) - counts)[:, None] + np.arange(k)).ravel()]
    best_sim[target] = sim[take].reshape(len(rows), k)
    best_idx[target] = idx[take].reshape(len(rows), k)


def _descending_bits(values: np.ndarray) -> np.ndarray:
    """float32 values as int64 keys in [0, 2^32) that sort in decreasing value order."""
    bits = (values + np.float32(0.0)).view(np.int32)  # -0.0 -> 0.0
    ordered = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits).astype(np.int64)
    return np.int64(2**31 - 1) - ordered


# --------------------------------------------------------------------------- scores


def typicality(x: np.ndarray, k: int = TYPICALITY_K, seed: int = 0) -> np.ndarray:
    """(1 + mean cosine similarity to the k nearest other rows) / 2, in [0, 1] (float32).

    Exact (`knn_all`); ``seed`` only chooses the search's regions, never the result.
    """
    x = as_unit_rows(x, "x")
    if len(x) < 2:
        raise ValueError(f"typicality needs at least 2 samples, got {len(x)}")
    sims, _ = knn_all(x, k, seed=seed)
    return np.clip((1.0 + sims.mean(axis=1)) / 2.0, 0.0, 1.0).astype(np.float32)


def query_similarity(x: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row to its most similar query row (exact, blockwise)."""
    x = as_unit_rows(x, "x")
    query = as_unit_rows(query, "query")
    if len(query) == 0:
        raise ValueError("the query set is empty: give at least one query sample")
    if query.shape[1] != x.shape[1]:
        raise ValueError(f"query has dimension {query.shape[1]}, the samples {x.shape[1]}")
    return nearest(x, query)[0]


def metadata_scores(values: np.ndarray, lower_first: bool = False) -> np.ndarray:
    """Rank of each value in [0, 1] (ties share a rank); missing values (NaN) rank as the
    least wanted: lowest, or highest where lower values are wanted first (`lower_first`,
    a negative strength, which turns the ranks round: missing values ranked lowest then
    came first)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"metadata values must be 1-D, got shape {v.shape}")
    missing = ~np.isfinite(v)
    filled = np.where(missing, np.inf if lower_first else -np.inf, v)
    return _ranks(filled)


def class_quotas(
    labels: np.ndarray, count: int, target: str | dict[str, float] = "uniform"
) -> dict[str, int]:
    """Samples per class for a pick of ``count``, as close to the target as the data allows.

    Water-filling: each class gets count x share, a class with fewer samples than that
    gives all it has and its shortfall is shared among the others in proportion to
    their shares; integers by largest remainder (ties to the class first in sorted
    order). Classes absent from an explicit target get nothing; a target class absent
    from the data gets nothing and its share goes to the others. An empty label is no
    class: samples without a label get no quota (found by a stress test: a quarter of
    the samples unlabelled took a quarter of a uniform pick as class "").
    """
    check_target(target)
    names, available = np.unique(np.asarray(labels).astype(str), return_counts=True)
    names, available = names[names != ""], available[names != ""]
    if target == "uniform":
        shares = np.ones(len(names))
    elif target == "input":
        shares = available.astype(np.float64)
    else:
        shares = np.array([float(target.get(str(c), 0.0)) for c in names])
    total = min(int(count), int(available[shares > 0].sum()))
    quota = np.zeros(len(names))
    open_ = shares > 0
    remaining = float(total)
    while open_.any() and remaining > 1e-9:
        want = remaining * shares * open_ / shares[open_].sum()
        room = available - quota
        capped = open_ & (want >= room)
        if not capped.any():
            quota += want
            break
        quota[capped] = available[capped]
        remaining = total - quota.sum()
        open_ &= ~capped
    whole = np.floor(quota + 1e-9).astype(np.int64)
    short = total - int(whole.sum())
    if short > 0:
        frac = quota - whole
        frac[whole >= available] = -1.0  # a full class takes no extra sample
        for i in np.lexsort((np.arange(len(names)), -frac))[:short]:
            whole[i] += 1
    return {str(c): int(q) for c, q in zip(names, whole, strict=True) if q > 0}


# --------------------------------------------------------------------------- selection


@dataclass
class Selection:
    """Rows picked, in pick order, and the typicality computed on the way (or None)."""

    rows: np.ndarray
    typicality: np.ndarray | None
    quotas: dict[str, int] | None


def select(
    x: np.ndarray,
    request: CurationRequest,
    *,
    eligible: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    query: np.ndarray | None = None,
    metadata: np.ndarray | None = None,
    start: np.ndarray | None = None,
    typicality_scores: np.ndarray | None = None,
) -> Selection:
    """Picks ``request.count`` rows of ``x`` (unit rows) by the request's strategies.

    ``eligible`` (bool mask) limits the rows that may be picked, while typicality is
    measured among all rows; ``start`` (vectors) counts as already picked for
    ``diverse``, so a second pick adds what the first lacks. ``labels`` are needed by
    ``balance``, ``query`` by ``similar``, ``metadata`` (one number per row) by
    ``metadata``. Ties go to the lower row index, so the result is deterministic.
    """
    x = as_unit_rows(x, "x")
    n = len(x)
    mask = np.ones(n, bool) if eligible is None else np.asarray(eligible, bool)
    if mask.shape != (n,):
        raise ValueError(f"eligible must be a bool mask of length {n}, got shape {mask.shape}")
    active = request.active
    _check_inputs(active, n, labels, query, metadata)
    strengths = request.strengths

    typ = typicality_scores
    if request.needs_typicality and typ is None:
        typ = typicality(x, request.k, request.seed)
    static = np.zeros(n)
    for name in (s for s in active if s in SCORE_STRATEGIES):
        strength = strengths[name]
        static += strength * _score(name, x, typ, query, metadata, request.seed, strength < 0)

    quotas = None
    left: dict[str, int] | None = None
    label_str = None
    if "balance" in active:
        label_str = np.asarray(labels).astype(str)
        quotas = class_quotas(label_str[mask], request.count, request.target)
        left = dict(quotas)
        mask = mask & np.isin(label_str, list(quotas))
    count = min(request.count, int(mask.sum()), sum(quotas.values()) if quotas else n)

    if "diverse" not in active:
        rows = _fill_by_score(static, mask, count, label_str, left)
    else:
        first_random = not any(s in SCORE_STRATEGIES for s in active) and start is None
        rows = _greedy_diverse(
            x,
            static,
            strengths["diverse"],
            mask,
            count,
            label_str,
            left,
            start,
            first_random,
            request.seed,
        )
    return Selection(rows=rows, typicality=typ, quotas=quotas)


def _check_inputs(active: tuple[str, ...], n: int, labels, query, metadata) -> None:
    if "balance" in active and (labels is None or len(labels) != n):
        raise ValueError(f"balance needs one label per sample ({n}), got {_length(labels)}")
    if "similar" in active and (query is None or len(query) == 0):
        raise ValueError("similar needs a non-empty query set")
    if "metadata" in active and (metadata is None or len(metadata) != n):
        raise ValueError(f"metadata needs one value per sample ({n}), got {_length(metadata)}")


def _length(values: Any) -> str:
    return "none" if values is None else str(len(values))


def _score(name: str, x, typ, query, metadata, seed: int, lower_first: bool) -> np.ndarray:
    """A static strategy's score of every row, rank-normalised to [0, 1] (`lower_first`:
    the strategy's strength is negative)."""
    if name == "typical":
        return _ranks(typ)
    if name == "outliers":
        return 1.0 - _ranks(typ)
    if name == "similar":
        return _ranks(query_similarity(x, query))
    if name == "metadata":
        return metadata_scores(metadata, lower_first)
    return _ranks(np.random.default_rng(seed).random(len(x)))  # random


def _fill_by_score(
    static: np.ndarray, mask: np.ndarray, count: int, labels, left: dict[str, int] | None
) -> np.ndarray:
    """Highest objective first (ties: lower row), skipping classes whose quota is full."""
    candidates = np.flatnonzero(mask)
    ordered = candidates[np.lexsort((candidates, -static[candidates]))]
    if left is None:
        return ordered[:count]
    picked = []
    for row in ordered:
        label = labels[row]
        if left.get(label, 0) > 0:
            picked.append(row)
            left[label] -= 1
            if len(picked) == count:
                break
    return np.asarray(picked, np.int64)


def _greedy_diverse(
    x: np.ndarray,
    static: np.ndarray,
    strength: float,
    mask: np.ndarray,
    count: int,
    labels,
    left: dict[str, int] | None,
    start: np.ndarray | None,
    first_random: bool,
    seed: int,
) -> np.ndarray:
    """Greedy farthest-point picks, each maximising static + strength x distance term.

    The distance term is a row's cosine distance to its nearest picked (or start) row,
    divided by the current largest such distance among the candidates.
    """
    open_ = mask.copy()
    max_sim = np.full(len(x), -np.inf, np.float32)
    if start is not None and len(start):
        start = as_unit_rows(start, "start")
        max_sim = nearest(x, start)[0]
    picked: list[int] = []
    while len(picked) < count and open_.any():
        if not np.isfinite(max_sim).any():
            if first_random:
                row = int(np.random.default_rng(seed).choice(np.flatnonzero(open_)))
            else:
                row = _argmax(static, open_)
        else:
            dist = 1.0 - max_sim.astype(np.float64)
            top = dist[open_].max()
            term = dist / top if top > 0 else np.zeros(len(x))
            row = _argmax(static + strength * term, open_)
        picked.append(row)
        open_[row] = False
        if left is not None:
            label = labels[row]
            left[label] -= 1
            if left[label] == 0:
                open_ &= labels != label
        np.maximum(max_sim, x @ x[row], out=max_sim)
    return np.asarray(picked, np.int64)


def _argmax(values: np.ndarray, mask: np.ndarray) -> int:
    """Row of the largest value among ``mask`` (first on ties)."""
    return int(np.argmax(np.where(mask, values, -np.inf)))


def covering_radius(x: np.ndarray, subset: np.ndarray) -> float:
    """Largest cosine distance from any row of ``x`` to its nearest row of ``subset``."""
    return float(1.0 - nearest(as_unit_rows(x, "x"), as_unit_rows(subset, "subset"))[0].min())


# --------------------------------------------------------------------------- helpers


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks in [0, 1], ties averaged; all equal -> all 0.5."""
    n = len(values)
    if n < 2:
        return np.full(n, 0.5)
    return (rankdata(values, method="average") - 1.0) / (n - 1)
