"""How good a split is (SPEC 4), for any split given as arrays: ours, a random one, one that
came with the data. No FiftyOne here; `bubblefence_plugin.fo.audit` reads a collection and calls
`audit` / `iter_audit`.

Rows take part by their split name: ``train``, ``validation`` and ``test`` are the three
roles; any other value (``duplicate``, ``""``, None) is on neither side, so duplicates are
left out of every measure. Embeddings are unit rows (normalised here when they are not).

Definitions:

* **leakage@t, eval→train**: share of eval (validation + test) rows whose most similar train
  row has cosine similarity >= t, with the distribution of that nearest-neighbour similarity
  (mean, p50, p95, max, histogram).
* **leakage@t, validation↔test**: validation rows against test rows and test rows against
  validation rows, pooled into one share.
* **ratio error** ``|eval share - eval_ratio|`` over the rows with a role; **val/test
  balance** ``validation / (validation + test)``, target ``validation_ratio``.
* **label coverage**: labels with at least ``min_label_count`` rows, and how many of them
  appear in train, validation, test and eval. A row carries a set of labels (one class,
  or the classes of its detections), encoded as `labels.encode_label_sets` does for the
  split, so a label's rows are the rows that carry it.
* **group violations**: groups with members both in train and in eval.
* **stability**: share of the rows that had a role in an earlier assignment whose role is
  unchanged in a later one (joined on ids).
* **diversity** per split, from the eigenvalues λ of the embedding covariance and
  p = λ / Σλ: effective rank ER = exp(-Σ p log p) and participation ratio
  PR = (Σλ)² / Σλ², both between 1 and the dimension d; each divided by d; and the
  score sqrt(ER/d · PR/d) in [0, 1]. ER counts the spread in the tail of the spectrum, PR
  is dominated by the largest eigenvalues; the geometric mean is high only when both are.
  Isotropic data scores near 1, data on a line 1/d, identical rows 0. The rank of a
  covariance of n rows is at most n - 1, so a split with fewer rows than d scores at most
  (n - 1)/d: compare splits of similar size, or a split with the random baseline.
* **random baseline**: the same rows, with exactly the same numbers of train, validation
  and test rows, shuffled with the seed; every measure above is computed for it too.

Cost. Nearest neighbours are exact per query: each query row is compared with every base row,
one base chunk and one block of queries at a time (`neighbors.nearest`), so no N x N matrix
exists and memory stays near one block. The work is queries x base x d multiply-adds; with
more than ``max_queries`` query rows the queries are a seeded uniform sample (each still
compared with the whole base) and shares come with their standard error (<= 0.005 with
10,000 queries). At 1M x 512 with eval 0.2 on two cores the whole audit (split and
baseline) took 89 s with 10,000 queries (`bench/bench_audit.py`); exact, it would be about
20 times that, since eval→train alone is 200k x 800k x 512 multiply-adds per assignment.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import check_int
from .labels import encode_label_sets, label_shares
from .neighbors import RANK_DECIMALS, as_unit_rows, exact_similarity, nearest
from .progress import Progress, Steps, drive, within

TRAIN, VALIDATION, TEST = "train", "validation", "test"
ROLES = (TRAIN, VALIDATION, TEST)
DEFAULT_THRESHOLDS = (0.99, 0.95, 0.90)
MIN_LABEL_COUNT = 20
DEFAULT_MAX_QUERIES = 10_000
# Base rows per chunk: the chunk copy is 8 MiB at d=512, one block of similarities
# against it 16 MiB, memory each chunk reuses (at 65,536 rows, 128 and 256 MiB mapped
# anew per chunk: a 200k audit 17.9 -> 13.0 s, 1,012 -> 644 MB; bench/RESULTS.md).
BASE_CHUNK = 4096
HISTOGRAM_BINS = 50  # nearest-similarity histogram over [0, 1]
MAX_LISTED = 20  # examples listed in a report (missing labels, violating groups)


# --------------------------------------------------------------------------- results


@dataclass
class Leakage:
    """Nearest-neighbour similarity from query rows to base rows, and the share above each t."""

    direction: str
    thresholds: list[float]
    fraction: list[float]  # share of measured queries at or above each threshold
    stderr: list[float]  # standard error of each share; 0 when every query was measured
    count: list[int]  # fraction x population: exact when not sampled, else an estimate
    n_population: int  # query rows in the split(s)
    n_queries: int  # rows measured: all of them, or a seeded sample
    n_base: int
    sampled: bool
    similarity: dict[str, float]  # mean, p50, p95, max of the nearest similarity
    histogram: dict[str, Any]  # {"start", "step", "counts"} over [0, 1]

    def at(self, threshold: float) -> float:
        """The share at one of the thresholds."""
        return self.fraction[self.thresholds.index(threshold)]


@dataclass
class NearestPairs:
    """Each measured query row of a leakage direction with its most similar base row
    (row indices into the audited embeddings), most similar first. Kept beside a report
    for the leak view and the closest pairs, never in its dict."""

    query_rows: np.ndarray
    base_rows: np.ndarray
    similarity: np.ndarray

    def at_least(self, threshold: float) -> NearestPairs:
        """The pairs with a similarity of at least ``threshold``, most similar first."""
        keep = self.similarity >= threshold
        return NearestPairs(self.query_rows[keep], self.base_rows[keep], self.similarity[keep])


@dataclass
class Coverage:
    min_count: int
    n_labels: int  # distinct labels among rows with a role
    n_eligible: int  # labels with at least min_count rows
    covered: dict[str, int]  # eligible labels present in train/validation/test/eval
    # Eligible labels absent from each held-out split, and from train (held out whole:
    # a model trained on train never sees them), at most MAX_LISTED each.
    missing_from_eval: list[str]
    missing_from_validation: list[str]
    missing_from_test: list[str]
    missing_from_train: list[str]


@dataclass
class GroupViolations:
    n_groups: int
    n_violations: int  # groups with members in train and in eval
    n_samples: int  # rows of those groups
    examples: list[str]


@dataclass
class Diversity:
    n: int
    dim: int
    effective_rank: float
    participation_ratio: float
    effective_rank_norm: float
    participation_ratio_norm: float
    score: float


@dataclass
class Stability:
    n_before: int  # rows with a role in the earlier assignment
    n_compared: int  # of those, rows still present
    n_unchanged: int
    n_missing: int  # rows of the earlier assignment that are gone
    share_unchanged: float | None
    changes: dict[str, int]  # "train->test": count; "none" = no role any more
    n_left_out: int = 0  # rows taken out on purpose since (`stability`'s ``left_out``)


@dataclass
class SplitMetrics:
    """Every measure of one assignment (ours, or the random baseline)."""

    name: str
    counts: dict[str, int]  # train, validation, test, other
    eval_share: float | None
    ratio_error: float | None
    validation_share: float | None  # validation / (validation + test)
    balance_error: float | None
    eval_train: Leakage | None
    validation_test: Leakage | None
    coverage: Coverage | None
    groups: GroupViolations | None
    diversity: dict[str, Diversity | None]  # train, validation, test, eval, all


@dataclass
class AuditReport:
    n_rows: int
    dim: int
    thresholds: list[float]
    eval_ratio: float | None
    validation_ratio: float | None
    max_queries: int | None
    seed: int
    split: SplitMetrics
    baseline: SplitMetrics
    stability: Stability | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    # The split's measured eval rows and their nearest train rows: per-row arrays, so
    # they stay out of `to_dict`.
    eval_train_pairs: NearestPairs | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (no NaN, no numpy, no tuples), ready for a run or a file."""
        summary = dataclasses.asdict(dataclasses.replace(self, eval_train_pairs=None))
        del summary["eval_train_pairs"]
        return _jsonable(summary)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    return value


# --------------------------------------------------------------------------- helpers


def role_codes(split: Sequence[Any] | np.ndarray) -> np.ndarray:
    """0/1/2 for train/validation/test, -1 for any other value (duplicate, None, "")."""
    values = np.asarray(split, dtype=object)
    codes = np.full(len(values), -1, dtype=np.int8)
    for code, role in enumerate(ROLES):
        codes[values == role] = code
    return codes


def _strings(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Labels or group ids as strings, "" for missing (None)."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "U":
        return values
    return np.asarray(["" if v is None else str(v) for v in values], dtype=str)


def _check_thresholds(thresholds: Sequence[float]) -> list[float]:
    message = f"thresholds must be cosine similarities in (0, 1], at least one; got {thresholds!r}"
    # A string is a sequence too: "0.9" read as "0", ".", "9".
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Iterable):
        raise ValueError(message)
    try:
        values = [float(t) for t in thresholds]
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if not values or any(not (0.0 < t <= 1.0) for t in values):
        raise ValueError(message)
    if len(set(values)) < len(values):  # each would be measured and shown twice
        raise ValueError(f"thresholds must be distinct; got {thresholds!r}")
    return values


def _check_ratio(name: str, value: float | None, *, open_ends: bool = False) -> float | None:
    """``value`` as a float if it is a share in [0, 1] (in (0, 1) with ``open_ends``),
    None for None; else a ValueError naming ``name``."""
    if value is None:
        return None
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if number and (0.0 < value < 1.0 if open_ends else 0.0 <= value <= 1.0):
        return float(value)
    allowed = "(0, 1)" if open_ends else "[0, 1]"
    raise ValueError(f"{name} must be a number in {allowed} or None, got {value!r}")


# --------------------------------------------------------------------------- counts


def counts(split: Sequence[Any] | np.ndarray) -> dict[str, int]:
    codes = role_codes(split)
    out = {role: int(np.sum(codes == k)) for k, role in enumerate(ROLES)}
    out["other"] = int(np.sum(codes < 0))
    return out


def eval_share(split: Sequence[Any] | np.ndarray) -> float | None:
    """(validation + test) / (train + validation + test); None without any role."""
    c = counts(split)
    kept = c[TRAIN] + c[VALIDATION] + c[TEST]
    return (c[VALIDATION] + c[TEST]) / kept if kept else None


def ratio_error(split: Sequence[Any] | np.ndarray, eval_ratio: float) -> float | None:
    """|eval share - eval_ratio|."""
    share = eval_share(split)
    return None if share is None else abs(share - float(eval_ratio))


def val_test_balance(split: Sequence[Any] | np.ndarray) -> float | None:
    """validation / (validation + test); None without eval rows."""
    c = counts(split)
    held = c[VALIDATION] + c[TEST]
    return c[VALIDATION] / held if held else None


# --------------------------------------------------------------------------- leakage


def _iter_best_similarity(
    x: np.ndarray, query_rows: np.ndarray, base_rows: np.ndarray, label: str
) -> Steps[tuple[np.ndarray, np.ndarray]]:
    """Highest similarity of each query row to any base row, and that base row (-1 on an
    empty base); one event per chunk of base."""
    queries = x[query_rows]
    best = np.full(len(query_rows), -np.inf, dtype=np.float32)
    best_rows = np.full(len(query_rows), -1, dtype=np.int64)
    for start in range(0, len(base_rows), BASE_CHUNK):
        chunk_rows = base_rows[start : start + BASE_CHUNK]
        similarity, index = nearest(queries, x[chunk_rows])
        better = similarity > best
        best[better] = similarity[better]
        best_rows[better] = chunk_rows[index[better]]
        yield Progress(min(1.0, (start + len(chunk_rows)) / len(base_rows)), label)
    return best, best_rows


def best_similarity(x: np.ndarray, query_rows: np.ndarray, base_rows: np.ndarray) -> np.ndarray:
    """Highest cosine similarity of each query row to any base row (-inf on an empty base)."""
    steps = _iter_best_similarity(x, np.asarray(query_rows), np.asarray(base_rows), "")
    return drive(steps)[0]


def _decided_similarity(x: np.ndarray, rows: np.ndarray, partners: np.ndarray) -> np.ndarray:
    """The cosine of each (row, partner) pair in float64 (`exact_similarity`) over float64
    norms, rounded to `RANK_DECIMALS`, as the thresholds compare it: the float32 products
    that found the partners are off by ~1e-7, so a sample and its exact copy came out
    1.0000002 or 0.9999999 and leak@1.0 missed some copies."""
    sims = exact_similarity(x[rows], x[partners])
    norms = np.sqrt(exact_similarity(x[rows], x[rows]) * exact_similarity(x[partners], x[partners]))
    return np.clip(np.round(sims / norms, RANK_DECIMALS), -1.0, 1.0)


def _iter_leakage(
    x: np.ndarray,
    direction: str,
    pairs: list[tuple[np.ndarray, np.ndarray]],
    thresholds: list[float],
    max_queries: int | None,
    rng: np.random.Generator,
    label: str = "",
) -> Steps[tuple[Leakage, NearestPairs] | None]:
    """Leakage of the query rows of every (query rows, base rows) pair, pooled, with each
    measured query's nearest base row.

    The queries of all pairs are one population; with more than ``max_queries`` of them a
    seeded uniform sample is measured, each sampled query against its whole base.
    """
    sizes = [len(q) for q, _ in pairs]
    population = int(sum(sizes))
    if population == 0 or any(len(b) == 0 for _, b in pairs):
        return None
    sampled = max_queries is not None and population > max_queries
    picked = np.sort(rng.choice(population, size=max_queries, replace=False)) if sampled else None
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    measured, parts, partners = [], [], []
    for k, (queries, base) in enumerate(pairs):
        if picked is None:
            rows = queries
        else:
            inside = picked[(picked >= offsets[k]) & (picked < offsets[k + 1])]
            rows = queries[inside - offsets[k]]
        steps = _iter_best_similarity(x, rows, base, label)
        similarity, base_rows = yield from within(steps, k / len(pairs), (k + 1) / len(pairs))
        measured.append(rows)
        parts.append(similarity)
        partners.append(base_rows)
    measured_rows, partner_rows = np.concatenate(measured), np.concatenate(partners)
    best = _decided_similarity(x, measured_rows, partner_rows)
    order = np.argsort(-best, kind="stable")
    nearest_pairs = NearestPairs(measured_rows[order], partner_rows[order], best[order])
    n = len(best)
    fractions = [float(np.mean(best >= t)) for t in thresholds]
    # Finite-population correction: a sample that is most of the population is nearly exact.
    correction = (population - n) / (population - 1) if sampled and population > 1 else 0.0
    stderr = [math.sqrt(p * (1 - p) / n * correction) for p in fractions]
    hist, _ = np.histogram(np.clip(best, 0.0, 1.0), bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    leak = Leakage(
        direction=direction,
        thresholds=list(thresholds),
        fraction=fractions,
        stderr=stderr,
        count=[int(round(p * population)) for p in fractions],
        n_population=population,
        n_queries=n,
        n_base=len(np.unique(np.concatenate([b for _, b in pairs]))),
        sampled=bool(sampled),
        similarity={
            "mean": float(best.mean()),
            "p50": float(np.percentile(best, 50)),
            "p95": float(np.percentile(best, 95)),
            "max": float(best.max()),
        },
        histogram={"start": 0.0, "step": 1.0 / HISTOGRAM_BINS, "counts": hist.tolist()},
    )
    return leak, nearest_pairs


def _leakage_pairs(codes: np.ndarray, direction: str) -> list[tuple[np.ndarray, np.ndarray]]:
    train, val, test = (np.flatnonzero(codes == k) for k in range(3))
    if direction == "eval->train":
        return [(np.flatnonzero(codes > 0), train)]
    return [(val, test), (test, val)]


def eval_train_leakage(
    embeddings: np.ndarray,
    split: Sequence[Any] | np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    max_queries: int | None = None,
    seed: int = 0,
) -> Leakage | None:
    """Leakage@t of eval rows against train rows (None without eval or train rows)."""
    return _leakage_in("eval->train", embeddings, split, thresholds, max_queries, seed)


def validation_test_leakage(
    embeddings: np.ndarray,
    split: Sequence[Any] | np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    max_queries: int | None = None,
    seed: int = 0,
) -> Leakage | None:
    """Leakage@t between validation and test, both directions pooled."""
    return _leakage_in("validation<->test", embeddings, split, thresholds, max_queries, seed)


def _leakage_in(
    direction: str,
    embeddings: np.ndarray,
    split: Sequence[Any] | np.ndarray,
    thresholds: Sequence[float],
    max_queries: int | None,
    seed: int,
) -> Leakage | None:
    steps = _iter_leakage(
        as_unit_rows(embeddings),
        direction,
        _leakage_pairs(role_codes(split), direction),
        _check_thresholds(thresholds),
        max_queries,
        np.random.default_rng(seed),
    )
    measured = drive(steps)
    return None if measured is None else measured[0]


def leakage(
    embeddings: np.ndarray,
    split: Sequence[Any] | np.ndarray,
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
) -> dict[float, float]:
    """Share of eval rows whose most similar train row reaches each threshold (exact).

    0.0 for every threshold when there is no eval or no train row.
    """
    result = eval_train_leakage(embeddings, split, thresholds, max_queries=None)
    if result is None:
        return {t: 0.0 for t in thresholds}
    return dict(zip(thresholds, result.fraction, strict=True))


def cross_split_similarity(
    embeddings: np.ndarray, split: Sequence[Any] | np.ndarray, *, center: bool = False
) -> np.ndarray:
    """Per row with a role, its highest similarity to a row of another role (NaN without one).

    With ``center=True`` the rows with a role are mean-centred and re-normalised first: that
    is what FiftyOne Brain's ``compute_leaky_splits`` compares (cosine *distance* on centred
    vectors), so ``similarity >= 1 - distance`` reproduces its threshold exactly. Every
    query is compared with every other-role row: use it at the sizes the Brain handles.
    """
    x = as_unit_rows(embeddings)
    codes = role_codes(split)
    has_role = np.flatnonzero(codes >= 0)
    out = np.full(len(x), np.nan, dtype=np.float64)
    if center and len(has_role):
        mean = x[has_role].mean(axis=0, dtype=np.float64).astype(np.float32)
        centred = x - mean
        norms = np.linalg.norm(centred, axis=1)
        x = centred / np.maximum(norms, 1e-12)[:, None]
    for k in range(len(ROLES)):
        rows = np.flatnonzero(codes == k)
        others = has_role[codes[has_role] != k]
        if len(rows) and len(others):
            out[rows] = best_similarity(x, rows, others)
    return out


# --------------------------------------------------------------------------- labels, groups


def label_coverage(
    split: Sequence[Any] | np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    min_count: int = MIN_LABEL_COUNT,
) -> Coverage:
    """How many labels with at least ``min_count`` rows (with a role) each split covers.

    ``labels`` holds one entry per row: a label, a collection of labels (a multi-label
    row, e.g. the classes of its detections), or None / "" / [] for none.
    """
    return _label_set_coverage(split, encode_label_sets(labels), min_count)


def _label_set_coverage(
    split: Sequence[Any] | np.ndarray, encoded: np.ndarray, min_count: int
) -> Coverage:
    """`label_coverage` of label sets encoded by `labels.encode_label_sets`."""
    codes = role_codes(split)
    if len(encoded) != len(codes):
        raise ValueError(f"labels has {len(encoded)} entries for {len(codes)} rows")
    shares = label_shares(encoded, codes, codes >= 0, min_count)
    shares = shares[shares["n"] > 0]  # labels carried only by rows without a role
    eligible = shares[shares["eligible"]]
    present = {role: eligible[role] > 0 for role in ROLES}
    present["eval"] = present[VALIDATION] | present[TEST]
    missing = {name: eligible["label"][~seen].tolist() for name, seen in present.items()}
    return Coverage(
        min_count=int(min_count),
        n_labels=len(shares),
        n_eligible=len(eligible),
        covered={name: int(seen.sum()) for name, seen in present.items()},
        missing_from_eval=sorted(missing["eval"])[:MAX_LISTED],
        missing_from_validation=sorted(missing[VALIDATION])[:MAX_LISTED],
        missing_from_test=sorted(missing[TEST])[:MAX_LISTED],
        missing_from_train=sorted(missing[TRAIN])[:MAX_LISTED],
    )


def group_violations(
    split: Sequence[Any] | np.ndarray, groups: Sequence[Any] | np.ndarray
) -> GroupViolations:
    """Groups (video, patient, drive) with members on both sides of the train/eval line."""
    codes = role_codes(split)
    names = _strings(groups)
    if len(names) != len(codes):
        raise ValueError(f"groups has {len(names)} entries for {len(codes)} rows")
    kept = (codes >= 0) & (names != "")
    uniq, inverse, sizes = np.unique(names[kept], return_inverse=True, return_counts=True)
    in_train = np.bincount(inverse[codes[kept] == 0], minlength=len(uniq)) > 0
    in_eval = np.bincount(inverse[codes[kept] > 0], minlength=len(uniq)) > 0
    violating = in_train & in_eval
    return GroupViolations(
        n_groups=len(uniq),
        n_violations=int(violating.sum()),
        n_samples=int(sizes[violating].sum()),
        examples=uniq[violating][:MAX_LISTED].tolist(),
    )


# --------------------------------------------------------------------------- stability


def stability(
    ids_before: Sequence[Any] | np.ndarray,
    split_before: Sequence[Any] | np.ndarray,
    ids_after: Sequence[Any] | np.ndarray,
    split_after: Sequence[Any] | np.ndarray,
    left_out: Sequence[Any] | np.ndarray = (),
) -> Stability:
    """Share of rows with a role before whose role is the same after (joined on ids).

    Rows that are gone afterwards are counted as missing, not as changed; a row that lost
    its role (reset, marked duplicate) is a change to "none". Rows of ``left_out`` (ids
    taken out of the assignment on purpose since, such as excluded samples) that have no
    role after are neither: they are counted apart (a stress test read 27 exclusions as
    "train->none" changes); one that still has its role (marked, not applied yet) is
    compared as any other.
    """
    before_codes = role_codes(split_before)
    after_codes = role_codes(split_after)
    before_ids = np.asarray(ids_before).astype(str)
    after_ids = np.asarray(ids_after).astype(str)
    for name, ids, codes in (
        ("before", before_ids, before_codes),
        ("after", after_ids, after_codes),
    ):
        if len(ids) != len(codes):
            raise ValueError(f"ids_{name} has {len(ids)} entries, split_{name} {len(codes)}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError(f"ids_{name} contains repeated ids")
    had_role = before_codes >= 0
    before_ids, before_codes = before_ids[had_role], before_codes[had_role]
    _, ib, ia = np.intersect1d(before_ids, after_ids, assume_unique=True, return_indices=True)
    taken_out = np.isin(before_ids[ib], np.asarray(left_out).astype(str)) & (after_codes[ia] < 0)
    n_before = len(before_ids) - int(taken_out.sum())
    n_missing = len(before_ids) - len(ib)
    ib, ia = ib[~taken_out], ia[~taken_out]
    old, new = before_codes[ib], after_codes[ia]
    changed = old != new
    names = np.asarray((*ROLES, "none"), dtype=object)
    pairs = zip(names[old[changed]], names[new[changed]], strict=True)
    changes = Counter(f"{a}->{b}" for a, b in pairs)
    compared = len(ib)
    return Stability(
        n_before=n_before,
        n_compared=compared,
        n_unchanged=int(compared - changed.sum()),
        n_missing=int(n_missing),
        share_unchanged=float(1.0 - changed.mean()) if compared else None,
        changes=dict(sorted(changes.items())),
        n_left_out=int(taken_out.sum()),
    )


# --------------------------------------------------------------------------- diversity


def _moments(x: np.ndarray, rows: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(n, mean, scatter about the mean) of x[rows], chunked; two passes for accuracy."""
    d = x.shape[1]
    total = np.zeros(d, dtype=np.float64)
    for start in range(0, len(rows), BASE_CHUNK):
        total += x[rows[start : start + BASE_CHUNK]].sum(axis=0, dtype=np.float64)
    n = len(rows)
    mean = total / max(n, 1)
    scatter = np.zeros((d, d), dtype=np.float64)
    shift = mean.astype(np.float32)
    # Centred before the product: unit embeddings often share a large mean direction,
    # and E[xx'] - mm' would cancel most float32 digits.
    for start in range(0, len(rows), BASE_CHUNK):
        chunk = x[rows[start : start + BASE_CHUNK]] - shift
        scatter += chunk.T @ chunk
    return n, mean, scatter


def _combine(a: tuple, b: tuple) -> tuple[int, np.ndarray, np.ndarray]:
    """Moments of the union of two disjoint row sets (parallel-variance formula)."""
    (na, ma, sa), (nb, mb, sb) = a, b
    n = na + nb
    if na == 0 or nb == 0:
        return (na, ma, sa) if nb == 0 else (nb, mb, sb)
    delta = mb - ma
    return n, ma + delta * nb / n, sa + sb + np.outer(delta, delta) * (na * nb / n)


def diversity_from_covariance(covariance: np.ndarray, n: int) -> Diversity:
    """Effective rank, participation ratio and their score from a covariance matrix."""
    d = covariance.shape[0]
    eigenvalues = np.clip(np.linalg.eigvalsh(covariance), 0.0, None)
    total = float(eigenvalues.sum())
    if total <= 0.0:  # identical rows: no spread at all
        er = pr = 0.0
    else:
        p = eigenvalues[eigenvalues > 0] / total
        er = float(np.exp(-np.sum(p * np.log(p))))
        pr = float(total**2 / np.sum(eigenvalues**2))
    return Diversity(
        n=int(n),
        dim=int(d),
        effective_rank=er,
        participation_ratio=pr,
        effective_rank_norm=er / d,
        participation_ratio_norm=pr / d,
        score=math.sqrt((er / d) * (pr / d)),
    )


def diversity(embeddings: np.ndarray, rows: np.ndarray | None = None) -> Diversity | None:
    """Diversity of ``embeddings[rows]`` (all rows by default); None for fewer than 2 rows."""
    x = as_unit_rows(embeddings)
    rows = np.arange(len(x)) if rows is None else np.asarray(rows)
    n, _, scatter = _moments(x, rows)
    return diversity_from_covariance(scatter / (n - 1), n) if n >= 2 else None


def _diversity_per_split(x: np.ndarray, codes: np.ndarray) -> dict[str, Diversity | None]:
    moments = {role: _moments(x, np.flatnonzero(codes == k)) for k, role in enumerate(ROLES)}
    moments["eval"] = _combine(moments[VALIDATION], moments[TEST])
    moments["all"] = _combine(moments[TRAIN], moments["eval"])
    return {
        name: diversity_from_covariance(s / (n - 1), n) if n >= 2 else None
        for name, (n, _, s) in moments.items()
    }


# --------------------------------------------------------------------------- baseline


def random_split_like(split: Sequence[Any] | np.ndarray, seed: int = 0) -> np.ndarray:
    """The same rows with exactly the same numbers of train, validation and test, shuffled.

    Rows without a role keep their value. Seeded: same input and seed, same result.
    """
    values = np.asarray(split, dtype=object).copy()
    codes = role_codes(values)
    rows = np.flatnonzero(codes >= 0)
    shuffled = np.random.default_rng(seed).permutation(codes[rows])
    values[rows] = np.asarray(ROLES, dtype=object)[shuffled]
    return values


# --------------------------------------------------------------------------- audit


def _iter_split_metrics(
    x: np.ndarray,
    codes: np.ndarray,
    name: str,
    labels: np.ndarray | None,  # label sets, encoded (`labels.encode_label_sets`)
    groups: np.ndarray | None,
    thresholds: list[float],
    eval_ratio: float | None,
    validation_ratio: float | None,
    min_label_count: int,
    max_queries: int | None,
    rng: np.random.Generator,
) -> Steps[tuple[SplitMetrics, NearestPairs | None]]:
    """Every measure of one assignment, and its eval rows' nearest train rows."""
    split = np.asarray(ROLES + ("",), dtype=object)[codes]  # -1 indexes the ""
    # Eval->train is by far the largest product; validation<->test a few % of it.
    steps = _iter_leakage(
        x,
        "eval->train",
        _leakage_pairs(codes, "eval->train"),
        thresholds,
        max_queries,
        rng,
        f"{name}: eval->train nearest neighbours",
    )
    eval_train = yield from within(steps, 0.0, 0.85)
    eval_train_leak, eval_train_pairs = eval_train or (None, None)
    yield Progress(0.85, f"{name}: validation<->test nearest neighbours")
    validation_test = drive(
        _iter_leakage(
            x,
            "validation<->test",
            _leakage_pairs(codes, "validation<->test"),
            thresholds,
            max_queries,
            rng,
        )
    )
    yield Progress(0.92, f"{name}: diversity, coverage, groups")
    share, balance = eval_share(split), val_test_balance(split)
    measures = SplitMetrics(
        name=name,
        counts=counts(split),
        eval_share=share,
        ratio_error=None if eval_ratio is None or share is None else abs(share - eval_ratio),
        validation_share=balance,
        balance_error=(
            None if validation_ratio is None or balance is None else abs(balance - validation_ratio)
        ),
        eval_train=eval_train_leak,
        validation_test=None if validation_test is None else validation_test[0],
        coverage=None if labels is None else _label_set_coverage(split, labels, min_label_count),
        groups=None if groups is None else group_violations(split, groups),
        diversity=_diversity_per_split(x, codes),
    )
    return measures, eval_train_pairs


def check_audit_knobs(
    thresholds: Sequence[float],
    eval_ratio: float | None,
    validation_ratio: float | None,
    min_label_count: int,
    max_queries: int | None,
    seed: int,
) -> tuple[list[float], float | None, float | None]:
    """Validates the knobs of `audit` (see there), so a front end can refuse bad ones
    before it reads any data; returns the thresholds and the two ratios as floats."""
    checked = (
        _check_thresholds(thresholds),
        # As a split takes them: an eval share of 0 or 1 leaves nothing to measure.
        _check_ratio("eval_ratio", eval_ratio, open_ends=True),
        _check_ratio("validation_ratio", validation_ratio),
    )
    check_int("min_label_count", min_label_count, 1)
    if max_queries is not None:  # None: every query
        check_int("max_queries", max_queries, 1)
    check_int("seed", seed, 0)
    return checked


def iter_audit(
    embeddings: np.ndarray,
    split: Sequence[Any] | np.ndarray,
    labels: Sequence[Any] | np.ndarray | None = None,
    groups: Sequence[Any] | np.ndarray | None = None,
    *,
    ids: Sequence[Any] | np.ndarray | None = None,
    previous: tuple[Sequence[Any], Sequence[Any]] | None = None,
    left_out: Sequence[Any] | np.ndarray = (),
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    eval_ratio: float | None = None,
    validation_ratio: float | None = None,
    min_label_count: int = MIN_LABEL_COUNT,
    max_queries: int | None = DEFAULT_MAX_QUERIES,
    seed: int = 0,
) -> Steps[AuditReport]:
    """`audit` as a generator of `Progress` events; the report is its return value."""
    clock = time.perf_counter()
    thresholds, eval_ratio, validation_ratio = check_audit_knobs(
        thresholds, eval_ratio, validation_ratio, min_label_count, max_queries, seed
    )
    x = as_unit_rows(embeddings)
    codes = role_codes(split)
    n = len(x)
    if len(codes) != n:
        raise ValueError(f"split has {len(codes)} entries for {n} embeddings")
    label_sets = None if labels is None else encode_label_sets(labels)
    group_strings = None if groups is None else _strings(groups)
    for name, values in (("labels", label_sets), ("groups", group_strings), ("ids", ids)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for {n} embeddings")
    if previous is not None and ids is None:
        raise ValueError("previous needs ids: stability joins the two assignments on ids")

    notes = []
    if not (codes >= 0).any():
        notes.append("no row is train, validation or test: nothing to measure")
    common = dict(
        labels=label_sets,
        groups=group_strings,
        thresholds=thresholds,
        eval_ratio=eval_ratio,
        validation_ratio=validation_ratio,
        min_label_count=int(min_label_count),
        max_queries=None if max_queries is None else int(max_queries),
    )
    ours_gen = _iter_split_metrics(
        x, codes, "split", rng=np.random.default_rng([seed, 1]), **common
    )
    ours, ours_pairs = yield from within(ours_gen, 0.0, 0.5)
    baseline_codes = role_codes(random_split_like(np.asarray(ROLES + ("",))[codes], seed))
    base_gen = _iter_split_metrics(
        x, baseline_codes, "random", rng=np.random.default_rng([seed, 2]), **common
    )
    baseline, _ = yield from within(base_gen, 0.5, 1.0)
    result = None
    if previous is not None:
        split_now = np.asarray(ROLES + ("",), dtype=object)[codes]
        result = stability(previous[0], previous[1], ids, split_now, left_out)
    yield Progress(1.0, "done")
    return AuditReport(
        n_rows=n,
        dim=int(x.shape[1]),
        thresholds=thresholds,
        eval_ratio=eval_ratio,
        validation_ratio=validation_ratio,
        max_queries=common["max_queries"],
        seed=int(seed),
        split=ours,
        baseline=baseline,
        stability=result,
        seconds=round(time.perf_counter() - clock, 3),
        notes=notes,
        eval_train_pairs=ours_pairs,
    )


def audit(
    embeddings: np.ndarray,
    split: Sequence[Any] | np.ndarray,
    labels: Sequence[Any] | np.ndarray | None = None,
    groups: Sequence[Any] | np.ndarray | None = None,
    **kwargs: Any,
) -> AuditReport:
    """Every SPEC 4 measure of ``split`` and of a seeded random split at the same ratios.

    ``embeddings`` (n, d), one row per entry of ``split`` (train/validation/test; any other
    value takes no part). Optional ``labels`` (one label or a collection of labels per row,
    None or "" = missing) and ``groups`` (one per row) add label coverage and group
    violations. ``ids`` with ``previous=(ids, split)`` of an earlier assignment add
    stability (``left_out``: ids taken out on purpose since). ``eval_ratio`` /
    ``validation_ratio`` are the targets of the ratio and balance errors.
    ``max_queries`` bounds the leakage queries per direction (None = all, exact).
    Keyword arguments are those of `iter_audit`.
    """
    return drive(iter_audit(embeddings, split, labels, groups, **kwargs))
