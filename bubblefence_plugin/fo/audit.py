"""The split audit on a FiftyOne collection: read a split and its embeddings, measure, store,
and write a self-contained HTML report.

    import bubblefence_plugin.fo as bf

    r = bf.report(dataset, split_source="split", html_path="audit.html", brain=True)
    bf.latest_report(dataset)  # the same dict, read back (also after dataset.clone())

Any split can be audited, not only ours:

* ``split_source="split"`` (or any string field): values ``train``/``validation``/``test``
  and the usual aliases (``val``, ``valid``, ``dev``, ``training``, ``testing``; any case);
  other values (``duplicate``, None, anything else) take no part and are counted;
* ``split_source="tags"``: the sample tags, same names; a sample with two split tags is
  ambiguous, takes no part and is counted.

The measures (SPEC 4) are those of `bubblefence_plugin.core.metrics.audit`, computed for the split
and for a seeded random split at the same ratios in the same call.

Storage. Each report is its own custom run, ``bubblefence_audit_<UTC time>_<random>``: the
report dict is in the run's config (cheap to read: `latest_report` touches no GridFS file),
the ids and roles it measured in its results (npy bytes, no pickle) so that the next report
of the same source can tell how many samples changed split (stability). Runs travel with
``dataset.clone()`` and a ``FiftyOneDataset`` export. A new report never rewrites another
run, so it cannot collide with the split state's two-phase commit (runs ``bubblefence`` /
``bubblefence_commit``; each registration is a ``$set`` of its own ``runs.<key>``) nor with a
concurrent report; the oldest reports beyond `KEEP_REPORTS` are deleted.

FiftyOne Brain. With ``brain=True`` FiftyOne Brain's ``compute_leaky_splits`` runs on the
same samples, split and embeddings field, once per threshold. Its threshold is a cosine
*distance* on mean-centred embeddings, and it reports the samples of near-duplicate groups
(found greedily) that span two splits, in any direction (train, validation and test alike).
So beside its count we give ours *in its meaning*: samples with a sample of another split
within that distance after the same centring, found exactly. The Brain keeps one sample
per near-duplicate group and flags a group that spans splits, so its count is a subset of
ours, usually much smaller. In fiftyone-brain 0.25 its second step (attaching each near
duplicate to its nearest kept sample) can attach a sample that is just beyond the
threshold, so a few Brain leaks may be outside our set: they are counted
(``brain_not_ours``) with the lowest cross-split similarity among them, which shows how far
beyond the threshold they are. Our leakage@t figures (raw cosine, eval against train)
answer a different question and are not expected to equal either.
"""

from __future__ import annotations

import html
import logging
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import numpy as np

from ..core import metrics
from ..core.progress import Progress, ProgressCallback, Steps, drive, within
from .embeddings import check_vector_field
from .export import path_inside, safe_name
from .fields import (
    DUPLICATE_FIELD,
    EMBEDDING_FIELD,
    ERROR_FIELD,
    SHELL_FIELD,
    SPLIT_FIELD,
    label_strings,
    root_dataset,
)
from .runs import RunType, from_npy_bytes, is_locked, to_npy_bytes
from .state import state_info

logger = logging.getLogger(__name__)

# One run per report, keyed "bubblefence_audit_<UTC time>_<random>".
REPORT_RUN = RunType("bubblefence_audit", "bubblefence-audit", 1, "audit_version")
KEEP_REPORTS = 20
TAGS_SOURCE = "tags"
MAP_POINTS = 5000  # points drawn on the HTML report's map
BRAIN_QUADRATIC_ABOVE = 15_000  # the Brain's sklearn index stops precomputing distances here

SPLIT_ALIASES = {
    "train": metrics.TRAIN,
    "training": metrics.TRAIN,
    "validation": metrics.VALIDATION,
    "val": metrics.VALIDATION,
    "valid": metrics.VALIDATION,
    "dev": metrics.VALIDATION,
    "test": metrics.TEST,
    "testing": metrics.TEST,
}
# String fields BubbleFence writes that are not splits.
_NOT_SPLITS = {"filepath", SHELL_FIELD, DUPLICATE_FIELD, ERROR_FIELD}


@dataclass(frozen=True)
class AuditOptions:
    """What `iter_report` audits and how. Validated when made, so a bad option fails
    before any data is read.

    Args:
        split_source: ``"tags"`` or a string field (default: ``split`` when present,
            else tags)
        embeddings_field: a vector field (default: the one the BubbleFence state was
            built from, else ``bubblefence_embedding``, else the first vector field)
        label_field: a field with one label per sample: adds label coverage
        group_field: a field with one group per sample: adds group violations
        thresholds: cosine similarities at which leakage is counted
        eval_ratio: the target eval share (default: the BubbleFence config when
            auditing our ``split`` field)
        validation_ratio: the target validation share of eval (default: likewise)
        min_label_count: labels with fewer samples are not expected in eval
        max_queries: eval samples measured per direction (None: all, exact)
        seed: of the random baseline split and the sampled queries
        brain: also run FiftyOne Brain's ``compute_leaky_splits``
        html_path: write the HTML report there (a file, or a folder)
        store: keep the report as a custom run on the dataset
    """

    split_source: str | None = None
    embeddings_field: str | None = None
    label_field: str | None = None
    group_field: str | None = None
    thresholds: Sequence[float] = metrics.DEFAULT_THRESHOLDS
    eval_ratio: float | None = None
    validation_ratio: float | None = None
    min_label_count: int = metrics.MIN_LABEL_COUNT
    max_queries: int | None = metrics.DEFAULT_MAX_QUERIES
    seed: int = 0
    brain: bool = False
    html_path: str | os.PathLike | None = None
    store: bool = True

    def __post_init__(self) -> None:
        thresholds, _, _ = metrics.check_audit_knobs(
            self.thresholds,
            self.eval_ratio,
            self.validation_ratio,
            self.min_label_count,
            self.max_queries,
            self.seed,
        )
        object.__setattr__(self, "thresholds", tuple(thresholds))


# --------------------------------------------------------------------------- reading


def split_sources(samples: foc.SampleCollection) -> list[str]:
    """What can be audited: ``tags`` and every top-level string field that is not ours.

    Args:
        samples: a dataset or view
    """
    fields = samples.get_field_schema(ftype=fo.StringField)
    return [TAGS_SOURCE] + sorted(f for f in fields if f not in _NOT_SPLITS)


def role_of(value: Any) -> str:
    """train / validation / test for a split name or alias (any case), "" otherwise.

    Args:
        value: a split field's value or a tag
    """
    if not isinstance(value, str):
        return ""
    return SPLIT_ALIASES.get(value.strip().lower(), "")


def _roles_from_tags(tag_lists: Sequence[Sequence[str] | None]) -> tuple[np.ndarray, int]:
    roles, conflicts = [], 0
    for tags in tag_lists:
        found = {role_of(t) for t in tags or ()} - {""}
        if len(found) > 1:
            conflicts += 1
        roles.append(found.pop() if len(found) == 1 else "")
    return np.asarray(roles, dtype=object), conflicts


def _default_embeddings_field(dataset: fo.Dataset) -> str | None:
    info = state_info(dataset)
    stored = info.get("embeddings_field") if info else None
    vector_fields = dataset.get_field_schema(ftype=fo.VectorField)
    for candidate in (stored, EMBEDDING_FIELD):
        if candidate and candidate in vector_fields:
            return candidate
    return next(iter(sorted(vector_fields)), None)


def _check_field(samples: foc.SampleCollection, name: str, what: str) -> None:
    """A label or group field: one string, int or Classification per sample."""
    field = samples.get_field(name)
    if field is None:
        raise ValueError(
            f"{what} {name!r} does not exist on dataset {root_dataset(samples).name!r}; "
            f"fields: {sorted(samples.get_field_schema())}"
        )
    single = isinstance(field, (fo.StringField, fo.IntField)) or (
        isinstance(field, fo.EmbeddedDocumentField)
        and issubclass(field.document_type, fo.Classification)
    )
    if not single:
        raise ValueError(
            f"{what} {name!r} is a {type(field).__name__}; the audit needs one string, int "
            "or Classification value per sample"
        )


def _resolve_source(samples: foc.SampleCollection, split_source: str | None) -> str:
    if split_source is None:
        return SPLIT_FIELD if samples.has_field(SPLIT_FIELD) else TAGS_SOURCE
    if split_source == TAGS_SOURCE:
        return split_source
    field = samples.get_field(split_source)
    if field is None or not isinstance(field, fo.StringField):
        raise ValueError(
            f"split_source must be 'tags' or a string field of the dataset, got "
            f"{split_source!r}; choices: {split_sources(samples)}"
        )
    return split_source


# --------------------------------------------------------------------------- the report


def report(
    samples: foc.SampleCollection,
    split_source: str | None = None,
    embeddings_field: str | None = None,
    label_field: str | None = None,
    group_field: str | None = None,
    *,
    progress: ProgressCallback | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Audits the split of ``samples`` (a dataset or view) and returns the JSON-able report.

    Any split can be audited, not only ours: a string field or the sample tags. The
    measures (`bubblefence_plugin.core.metrics.audit`) are computed for the split and
    for a seeded random split at the same ratios.

    Example usage::

        import bubblefence_plugin.fo as bf

        r = bf.report(dataset, "split", html_path="audit.html", brain=True)
        for row in bf.summary_rows(r):
            print(row["metric"], row["split"], row["baseline"])
        bf.latest_report(dataset)  # the same dict, read back (also after dataset.clone())

    Args:
        samples: a dataset or view
        split_source: see `AuditOptions`
        embeddings_field: see `AuditOptions`
        label_field: see `AuditOptions`
        group_field: see `AuditOptions`
        progress: called as ``progress(fraction, label)`` while the audit runs
        **options: the other fields of `AuditOptions` (``thresholds``, ``eval_ratio``,
            ``brain``, ``html_path``, ``store``...)

    Returns:
        the report; its layout is described in `latest_report`
    """
    audit_options = AuditOptions(
        split_source=split_source,
        embeddings_field=embeddings_field,
        label_field=label_field,
        group_field=group_field,
        **options,
    )
    return drive(iter_report(samples, audit_options), progress)


def iter_report(
    samples: foc.SampleCollection, options: AuditOptions | None = None
) -> Steps[dict[str, Any]]:
    """`report` as a generator of `Progress` events; the report is the return value.

    Args:
        samples: a dataset or view
        options: what to audit and how (default: `AuditOptions()`)
    """
    options = options or AuditOptions()
    plan = _plan(samples, options)
    yield Progress(0.0, f"Reading {plan.embeddings_field!r} and the split ({plan.source})")
    rows = _read_rows(samples, plan, options)
    measure = _iter_measure(plan, rows, options)
    measured = yield from within(measure, 0.05, 0.8 if options.brain else 0.95)
    created = datetime.now(timezone.utc)
    result = _report_dict(plan, rows, options, measured, created)
    if options.brain:
        yield Progress(0.8, "FiftyOne Brain compute_leaky_splits")
        result["brain"] = brain_comparison(
            samples,
            plan.source,
            plan.embeddings_field,
            measured.thresholds,
            rows.ids,
            rows.roles,
            rows.x,
        )
    if options.html_path:
        yield Progress(0.96, "Writing the HTML report")
        points = _map_points(rows.x, rows.roles, options.seed)
        result["html_path"] = write_html(result, options.html_path, points)
    if options.store:
        yield Progress(0.98, "Storing the report")
        result["run_key"] = _store(plan.dataset, result, rows.ids, rows.roles, created)
    yield Progress(1.0, "Done")
    return result


@dataclass
class _Plan:
    """The options resolved against the collection: what is read and compared."""

    dataset: fo.Dataset
    source: str  # "tags" or a string field
    embeddings_field: str
    is_bubblefence_split: bool  # our split field, with the state's targets
    eval_ratio: float | None
    validation_ratio: float | None
    warnings: list[str]


@dataclass
class _Rows:
    """The audited rows: the samples with a usable embedding, with or without a split."""

    ids: np.ndarray
    roles: np.ndarray  # train/validation/test, "" for no split
    x: np.ndarray  # unit embeddings
    labels: np.ndarray | None
    groups: np.ndarray | None
    n_collection: int
    n_without_embedding: int  # samples with a split but no usable embedding
    n_conflicting_tags: int
    other_values: Counter[str]  # split field values that are no split


def _plan(samples: foc.SampleCollection, options: AuditOptions) -> _Plan:
    """Checks the fields the options name and fills in the defaults; reads no samples."""
    if not isinstance(samples, foc.SampleCollection):
        raise ValueError(f"expected a FiftyOne dataset or view, got {type(samples).__name__}")
    dataset = root_dataset(samples)
    source = _resolve_source(samples, options.split_source)
    embeddings_field = options.embeddings_field or _default_embeddings_field(dataset)
    if not embeddings_field:
        raise ValueError(
            f"dataset {dataset.name!r} has no vector field to audit with; run the "
            "BubbleFence split first, or compute embeddings into a vector field"
        )
    check_vector_field(dataset, embeddings_field)
    for name, what in ((options.label_field, "label_field"), (options.group_field, "group_field")):
        if name:
            _check_field(samples, name, what)
    state = state_info(dataset)
    ours = source == SPLIT_FIELD and state is not None
    eval_ratio, validation_ratio = options.eval_ratio, options.validation_ratio
    if ours and eval_ratio is None:
        eval_ratio = state["config"].get("eval_ratio")
    if ours and validation_ratio is None:
        validation_ratio = state["config"].get("validation_ratio")
    warnings = []
    if is_locked(dataset):
        warnings.append(
            "a BubbleFence run held this dataset during the audit: figures may mix rounds"
        )
    return _Plan(dataset, source, embeddings_field, ours, eval_ratio, validation_ratio, warnings)


def _read_rows(samples: foc.SampleCollection, plan: _Plan, options: AuditOptions) -> _Rows:
    """Reads the split, the embeddings and the labels/groups; notes what is left out."""
    from ..embedder import embeddings_from_array

    source = plan.source
    columns = ["id", plan.embeddings_field, "tags" if source == TAGS_SOURCE else source]
    columns += [f for f in (options.label_field, options.group_field) if f]
    values = dict(zip(columns, samples.values(columns), strict=True))
    ids = np.asarray(values["id"], dtype=object)
    if source == TAGS_SOURCE:
        roles, n_conflicts = _roles_from_tags(values["tags"])
        other: Counter[str] = Counter()
    else:
        roles = np.asarray([role_of(v) for v in values[source]], dtype=object)
        n_conflicts = 0
        other = Counter(str(v) for v, r in zip(values[source], roles, strict=True) if not r)
    checked = embeddings_from_array(values[plan.embeddings_field])
    rows = np.flatnonzero(checked.ok)
    n_without = int(np.sum((roles != "") & ~checked.ok))
    if n_without:
        plan.warnings.append(
            f"{n_without} samples with a split have no usable {plan.embeddings_field!r} "
            "(missing, wrong dimension, NaN or zero): left out of every measure"
        )
    if n_conflicts:
        plan.warnings.append(f"{n_conflicts} samples carry two split tags: left out")
    if not (roles[rows] != "").any():
        raise ValueError(
            f"nothing to audit: no sample of this collection ({len(ids)} samples) has both a "
            f"split in {source!r} (train/validation/test or an alias) and a usable "
            f"{plan.embeddings_field!r} embedding"
        )
    labels, groups = (
        label_strings(np.asarray(values[f], dtype=object)[rows]) if f else None
        for f in (options.label_field, options.group_field)
    )
    return _Rows(
        ids=ids[rows],
        roles=roles[rows],
        x=checked.embeddings,
        labels=labels,
        groups=groups,
        n_collection=len(checked.ok),
        n_without_embedding=n_without,
        n_conflicting_tags=n_conflicts,
        other_values=other,
    )


def _iter_measure(plan: _Plan, rows: _Rows, options: AuditOptions) -> Steps[metrics.AuditReport]:
    """The core's measures of the rows, with stability against the previous report."""
    return metrics.iter_audit(
        rows.x,
        rows.roles,
        rows.labels,
        rows.groups,
        ids=rows.ids.astype(str),
        previous=_previous_snapshot(plan.dataset, plan.source),
        thresholds=options.thresholds,
        eval_ratio=plan.eval_ratio,
        validation_ratio=plan.validation_ratio,
        min_label_count=options.min_label_count,
        max_queries=options.max_queries,
        seed=options.seed,
    )


def _report_dict(
    plan: _Plan,
    rows: _Rows,
    options: AuditOptions,
    measured: metrics.AuditReport,
    created: datetime,
) -> dict[str, Any]:
    return {
        "run_key": None,
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "dataset": plan.dataset.name,
        "source": plan.source,
        "is_bubblefence_split": plan.is_bubblefence_split,
        "embeddings_field": plan.embeddings_field,
        "label_field": options.label_field,
        "group_field": options.group_field,
        "n_collection": rows.n_collection,
        "n_audited": len(rows.ids),
        "n_without_embedding": rows.n_without_embedding,
        "n_conflicting_tags": rows.n_conflicting_tags,
        "other_values": [[v, int(c)] for v, c in rows.other_values.most_common(10)],
        "warnings": plan.warnings,
        "metrics": measured.to_dict(),
        "brain": None,
        "html_path": None,
    }


# --------------------------------------------------------------------------- FiftyOne Brain


def brain_comparison(
    samples: foc.SampleCollection,
    source: str,
    embeddings_field: str,
    thresholds: Sequence[float],
    ids: np.ndarray,
    roles: np.ndarray,
    x: np.ndarray,
) -> dict[str, Any]:
    """Runs ``compute_leaky_splits`` on the audited samples and counts ours in its meaning.

    One Brain run builds the index; ``find_leaks`` is repeated at distance ``1 - t``
    for each threshold.

    Args:
        samples: the audited dataset or view
        source: its split source (``"tags"`` or a string field)
        embeddings_field: the vector field the Brain reads
        thresholds: cosine similarities
        ids: the audited rows' sample ids
        roles: their train/validation/test roles ("" for none)
        x: their unit embeddings
    """
    import fiftyone.brain as fob

    has_role = roles != ""
    role_ids = [str(i) for i in ids[has_role]]
    view = samples.select(role_ids)
    if source == TAGS_SOURCE:
        present = set(view.distinct("tags"))
        splits: Any = sorted(t for t in present if role_of(t))
    else:
        splits = source
    clock = time.perf_counter()
    index = fob.compute_leaky_splits(view, splits=splits, embeddings=embeddings_field)
    seconds = time.perf_counter() - clock
    ours_best = metrics.cross_split_similarity(x[has_role], roles[has_role], center=True)
    role_of_id = dict(zip(role_ids, roles[has_role], strict=True))
    best_of_id = dict(zip(role_ids, ours_best.tolist(), strict=True))
    rows = []
    for t in thresholds:
        distance = round(1.0 - float(t), 10)
        clock = time.perf_counter()
        index.find_leaks(distance)
        seconds += time.perf_counter() - clock
        brain_ids = set(index.leak_ids or [])
        ours_ids = {i for i, s in zip(role_ids, ours_best, strict=True) if s >= 1.0 - distance}
        outside = [best_of_id[i] for i in brain_ids - ours_ids]
        rows.append(
            {
                "similarity": float(t),
                "distance": distance,
                "brain_leaks": len(brain_ids),
                "brain_eval_leaks": sum(role_of_id.get(i) != metrics.TRAIN for i in brain_ids),
                "ours_same_meaning": len(ours_ids),
                "brain_not_ours": len(outside),
                "brain_not_ours_min_similarity": min(outside) if outside else None,
            }
        )
    return {
        "n_samples": len(role_ids),
        "seconds": round(seconds, 3),
        "splits": splits,
        "rows": rows,
        "note": (
            "FiftyOne Brain threshold = cosine distance on mean-centred embeddings; it flags "
            "near-duplicate groups (one kept sample each) that span splits. 'ours, same "
            "meaning' counts exactly the samples with a sample of another split within that "
            "distance after the same centring"
        ),
    }


# --------------------------------------------------------------------------- storage


def _audit_runs(dataset: fo.Dataset) -> list[tuple[str, dict[str, Any]]]:
    """(key, parameters) of the stored reports, newest first."""
    found = REPORT_RUN.stored(dataset)
    found.sort(key=lambda item: (item[1].get("created_at", ""), item[0]), reverse=True)
    return found


def _store(
    dataset: fo.Dataset,
    result: dict[str, Any],
    ids: np.ndarray,
    roles: np.ndarray,
    created: datetime,
) -> str:
    """Stores the report as a new run, with the ids and roles it measured (for the next
    report's stability); drops the oldest beyond `KEEP_REPORTS`. Returns the run key."""
    key = f"{REPORT_RUN.key}_{created.strftime('%Y%m%dT%H%M%S%f')}_{uuid.uuid4().hex[:6]}"
    result["run_key"] = key
    params = REPORT_RUN.new_params(
        created_at=result["created_at"], source=result["source"], report=result
    )
    snapshot = {
        "ids": to_npy_bytes(np.asarray(ids, dtype="S24")),
        "roles": to_npy_bytes(metrics.role_codes(roles)),
    }
    REPORT_RUN.put(dataset, params, snapshot, key=key)
    for old, _ in _audit_runs(dataset)[KEEP_REPORTS:]:
        dataset.delete_run(old)
    return key


def _previous_snapshot(dataset: fo.Dataset, source: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids, split names) measured by the newest stored report of the same source."""
    for key, params in _audit_runs(dataset):
        if params.get("source") != source:
            continue
        try:
            results = REPORT_RUN.results(dataset, key)
            ids = from_npy_bytes(results.ids).astype(str)
            codes = from_npy_bytes(results.roles)
        except Exception as e:  # a report without its snapshot: skip it, say why
            logger.warning("BubbleFence report %s has no readable snapshot (%s)", key, e)
            continue
        names = np.asarray((*metrics.ROLES, ""), dtype=object)
        return ids, names[codes]
    return None


def list_reports(samples: foc.SampleCollection) -> list[dict[str, Any]]:
    """Stored reports of the dataset, newest first: run key, time, source.

    Args:
        samples: a dataset or view; the reports are its dataset's
    """
    return [
        {"run_key": key, "created_at": p.get("created_at"), "source": p.get("source")}
        for key, p in _audit_runs(root_dataset(samples))
    ]


def latest_report(samples: foc.SampleCollection) -> dict[str, Any] | None:
    """The most recent stored report of the dataset of ``samples`` (a dict), or None.

    Layout: ``created_at``, ``source``, ``embeddings_field``, ``n_audited``,
    ``warnings``, ``brain`` (None or the comparison), ``html_path``, and ``metrics``:
    `bubblefence_plugin.core.metrics.AuditReport.to_dict()` with ``thresholds`` and, for
    ``split`` (ours) and ``baseline`` (random): ``counts``, ``eval_share``,
    ``ratio_error``, ``validation_share``, ``balance_error``, ``eval_train`` and
    ``validation_test`` (``fraction``/``stderr``/``count`` lists aligned with
    ``thresholds``, ``similarity`` mean/p50/p95/max, ``histogram``), ``coverage``,
    ``groups``, ``diversity`` per split; ``stability`` against the previous report.

    Args:
        samples: a dataset or view; the reports are its dataset's
    """
    dataset = root_dataset(samples)
    dataset.reload()  # another process (a delegated worker) may have stored one
    runs = _audit_runs(dataset)
    return runs[0][1].get("report") if runs else None


# --------------------------------------------------------------------------- presentation


def _share(value: float | None, stderr: float | None = None) -> str:
    if value is None:
        return "—"
    return f"{value:.4f} ± {stderr:.4f}" if stderr else f"{value:.4f}"


def _leak_cell(leak: dict[str, Any] | None, k: int) -> str:
    if leak is None:
        return "—"
    text = _share(leak["fraction"][k], leak["stderr"][k])
    return f"{text} ({leak['count'][k]}{'≈' if leak['sampled'] else ''})"


def _similarity_cell(leak: dict[str, Any] | None) -> str:
    if leak is None:
        return "—"
    s = leak["similarity"]
    return f"{s['mean']:.3f} / {s['p50']:.3f} / {s['p95']:.3f} / {s['max']:.3f}"


def _diversity_cell(block: dict[str, Any]) -> str:
    parts = []
    for name in metrics.ROLES:
        d = block["diversity"].get(name)
        parts.append("—" if d is None else f"{d['score']:.3f}")
    return " / ".join(parts)


def summary_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    """The compact table of a report: one row per measure, ours beside the random baseline.

    Args:
        result: a report (`report`, `latest_report`)

    Returns:
        rows of ``{"key", "metric", "split", "baseline"}`` strings; ``key`` names the
        measure for code (``leakage_eval_train@0.95``...), ``metric`` for people
    """
    m = result["metrics"]
    ours, base = m["split"], m["baseline"]
    rows: list[dict[str, str]] = []

    def add(key: str, metric: str, f: Callable[[dict[str, Any]], str]) -> None:
        rows.append({"key": key, "metric": metric, "split": f(ours), "baseline": f(base)})

    add(
        "counts",
        "Samples train / validation / test",
        lambda b: "{train} / {validation} / {test}".format(**b["counts"]),
    )
    target = m["eval_ratio"]
    add(
        "eval_share",
        f"Eval share (target {target:.2f})" if target is not None else "Eval share",
        lambda b: (
            _share(b["eval_share"])
            + (f" (error {b['ratio_error']:.4f})" if b["ratio_error"] is not None else "")
        ),
    )
    target = m["validation_ratio"]
    add(
        "validation_share",
        f"Validation / eval (target {target:.2f})" if target is not None else "Validation / eval",
        lambda b: _share(b["validation_share"]),
    )
    for k, t in enumerate(m["thresholds"]):
        add(
            f"leakage_eval_train@{t:g}",
            f"Leakage@{t:g} eval→train",
            lambda b, k=k: _leak_cell(b["eval_train"], k),
        )
    add(
        "similarity_eval_train",
        "NN similarity eval→train mean / p50 / p95 / max",
        lambda b: _similarity_cell(b["eval_train"]),
    )
    for k, t in enumerate(m["thresholds"]):
        add(
            f"leakage_validation_test@{t:g}",
            f"Leakage@{t:g} validation↔test",
            lambda b, k=k: _leak_cell(b["validation_test"], k),
        )
    if ours["coverage"] is not None:
        add(
            "label_coverage",
            f"Labels (≥{ours['coverage']['min_count']}) in eval / validation / test",
            lambda b: "{e} / {v} / {t} of {n}".format(
                e=b["coverage"]["covered"]["eval"],
                v=b["coverage"]["covered"]["validation"],
                t=b["coverage"]["covered"]["test"],
                n=b["coverage"]["n_eligible"],
            ),
        )
    if ours["groups"] is not None:
        add(
            "group_violations",
            "Group violations (train and eval)",
            lambda b: f"{b['groups']['n_violations']} of {b['groups']['n_groups']} groups",
        )
    add("diversity", "Diversity score train / validation / test", _diversity_cell)
    stability = m["stability"]
    if stability is not None:
        share = stability["share_unchanged"]
        rows.append(
            {
                "key": "stability",
                "metric": "Stability since the previous report",
                "split": "—"
                if share is None
                else f"{share:.2%} of {stability['n_compared']} unchanged",
                "baseline": "—",
            }
        )
    brain = result.get("brain")
    for row in (brain or {}).get("rows", []):
        rows.append(
            {
                "key": f"brain_leaks@{row['distance']:g}",
                "metric": f"FiftyOne Brain leaks @ distance {row['distance']:g} "
                "(ours in its meaning)",
                "split": f"{row['brain_leaks']} ({row['ours_same_meaning']})",
                "baseline": "—",
            }
        )
    return rows


def _map_points(x: np.ndarray, roles: np.ndarray, seed: int) -> dict[str, list] | None:
    """2-D PCA of at most MAP_POINTS audited samples with a role, for the HTML map."""
    from ..core.anchors import fit_projection, subsample

    rows = np.flatnonzero(roles != "")
    if len(rows) < 3:
        return None
    rng = np.random.default_rng([seed, 3])
    rows = rows[subsample(len(rows), MAP_POINTS, rng)]
    projection = fit_projection(x[rows], 2, rng)
    xy = projection.transform(x[rows])
    if xy.shape[1] < 2:
        return None
    return {"x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(), "split": roles[rows].tolist()}


_COLOURS = {"train": "#4c78a8", "validation": "#f58518", "test": "#54a24b", "random": "#9d9d9d"}


def _figure_html(result: dict[str, Any], points: dict[str, list] | None) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            "Embedding map (PCA of the audited samples)",
            "Nearest train similarity of eval samples",
        ),
    )
    if points is not None:
        split = np.asarray(points["split"])
        for role in metrics.ROLES:
            mask = split == role
            fig.add_trace(
                go.Scatter(
                    x=np.asarray(points["x"])[mask],
                    y=np.asarray(points["y"])[mask],
                    mode="markers",
                    name=role,
                    marker={"size": 4, "color": _COLOURS[role], "opacity": 0.7},
                ),
                row=1,
                col=1,
            )
    m = result["metrics"]
    for name, block in (("split", m["split"]), ("random", m["baseline"])):
        leak = block["eval_train"]
        if leak is None:
            continue
        h = leak["histogram"]
        total = max(sum(h["counts"]), 1)
        centres = [h["start"] + (i + 0.5) * h["step"] for i in range(len(h["counts"]))]
        fig.add_trace(
            go.Bar(
                x=centres,
                y=[c / total for c in h["counts"]],
                name=f"{name} (eval→train)",
                marker={"color": _COLOURS.get(name, "#e45756"), "opacity": 0.6},
            ),
            row=1,
            col=2,
        )
    for t in m["thresholds"]:
        fig.add_vline(x=t, line={"dash": "dot", "width": 1}, row=1, col=2)
    fig.update_layout(barmode="overlay", height=480, margin={"t": 40, "b": 30})
    fig.update_xaxes(title_text="cosine similarity", row=1, col=2)
    fig.update_yaxes(title_text="share of eval samples", row=1, col=2)
    # Inline plotly.js: the file opens offline, on any machine.
    return fig.to_html(full_html=False, include_plotlyjs=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _diversity_rows(m: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name in (*metrics.ROLES, "eval", "all"):
        for label, block in (("split", m["split"]), ("random", m["baseline"])):
            d = block["diversity"].get(name)
            if d is None or (name == "all" and label == "random"):
                continue
            rows.append(
                [
                    name,
                    label,
                    d["n"],
                    f"{d['effective_rank']:.1f}",
                    f"{d['participation_ratio']:.1f}",
                    f"{d['effective_rank_norm']:.3f}",
                    f"{d['participation_ratio_norm']:.3f}",
                    f"{d['score']:.3f}",
                ]
            )
    return rows


def render_html(result: dict[str, Any], points: dict[str, list] | None = None) -> str:
    """The report as one self-contained HTML page (tables and an inline plotly figure).

    Args:
        result: a report
        points: the 2-D map's points (``x``, ``y``, ``split`` lists), or None for no map
    """
    m = result["metrics"]
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>BubbleFence report: {esc(result['dataset'])}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "th{background:#f3f3f3}code{background:#f3f3f3;padding:0 3px}</style></head><body>",
        f"<h1>BubbleFence split report: {esc(result['dataset'])}</h1>",
        f"<p>Split source <code>{esc(result['source'])}</code>, embeddings "
        f"<code>{esc(result['embeddings_field'])}</code>, {result['n_audited']} samples "
        f"audited ({m['dim']}-d), {esc(result['created_at'])}. Leakage thresholds are cosine "
        "similarities; ± is the standard error where eval samples were sampled "
        f"(at most {m['max_queries'] or 'all'} per direction), ≈ marks estimated counts.</p>",
        "<h2>Summary</h2>",
        _table(
            ["measure", "this split", "random split, same ratios"],
            [[r["metric"], r["split"], r["baseline"]] for r in summary_rows(result)],
        ),
        "<h2>Diversity</h2>",
        "<p>Effective rank exp(H(λ/Σλ)) and participation ratio (Σλ)²/Σλ² of the embedding "
        "covariance, each divided by the dimension; score = geometric mean of the two.</p>",
        _table(
            ["split", "assignment", "n", "ER", "PR", "ER/d", "PR/d", "score"],
            _diversity_rows(m),
        ),
    ]
    coverage = m["split"]["coverage"]
    if coverage is not None and coverage["missing_from_eval"]:
        parts.append(
            "<p>Labels with enough samples that never reach eval: "
            f"{esc(', '.join(coverage['missing_from_eval']))}</p>"
        )
    brain = result.get("brain")
    if brain:
        parts += [
            "<h2>FiftyOne Brain compute_leaky_splits</h2>",
            f"<p>{esc(brain['note'])}. {brain['n_samples']} samples, {brain['seconds']:.1f} s.</p>",
            _table(
                [
                    "cosine similarity",
                    "Brain distance",
                    "Brain leaks",
                    "of which eval",
                    "ours, same meaning",
                    "Brain leaks not in ours (their lowest similarity)",
                ],
                [
                    [
                        r["similarity"],
                        r["distance"],
                        r["brain_leaks"],
                        r["brain_eval_leaks"],
                        r["ours_same_meaning"],
                        f"{r['brain_not_ours']} ({r['brain_not_ours_min_similarity']:.4f})"
                        if r["brain_not_ours"]
                        else "0",
                    ]
                    for r in brain["rows"]
                ],
            ),
        ]
    notes = result["warnings"] + m["notes"]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    parts += [_figure_html(result, points), "</body></html>"]
    return "\n".join(parts)


def write_html(
    result: dict[str, Any], path: str | os.PathLike, points: dict[str, list] | None = None
) -> str:
    """Writes `render_html` to ``path`` (a file, or a folder to put a named file in); atomic.

    Args:
        result: a report
        path: an ``.html`` file, or a folder
        points: as for `render_html`

    Returns:
        the path written
    """
    target = Path(path).expanduser().resolve()
    if target.is_dir():
        # The dataset name is the user's; as a file name it must not leave the folder.
        stamp = result["created_at"].replace(":", "").replace("-", "").split(".")[0]
        name = safe_name(result["dataset"], "dataset")
        target = path_inside(target, target / f"bubblefence-report-{name}-{stamp}.html")
    if target.suffix.lower() not in (".html", ".htm"):
        target = target.with_suffix(target.suffix + ".html")
    page = render_html(result, points)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".bubblefence-report-", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.replace(tmp, target)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise ValueError(f"html_path {str(path)!r} is not writable: {e}") from e
    return str(target)
