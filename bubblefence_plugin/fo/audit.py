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
per near-duplicate group and flags a group that spans splits, so its count is mostly a
subset of ours. In fiftyone-brain 0.25 its second step (attaching each near duplicate to
its nearest kept sample) can attach a sample that is just beyond the threshold, so some
Brain leaks may be outside our set (on a small dense set, half of them): they are counted
(``brain_not_ours``) with the lowest cross-split similarity among them, which shows how far
beyond the threshold they are. Our leakage@t figures (raw cosine, eval against train)
answer a different question and are not expected to equal either.

Leaking samples. The eval samples whose most similar train sample reaches the leak
threshold (0.95 when audited, else the first threshold) are saved, most similar first, as
the dataset's saved view `LEAKS_VIEW` (``bubblefence_leaks``): the App lists it in the view
bar's saved views, ``dataset.load_saved_view("bubblefence_leaks")`` opens it in Python, and
it is there after a delegated run too, which cannot change the App's view. Each report
rewrites it. At most `MAX_LEAK_IDS` ids are kept: a saved view's stages live in one
database document. With ``max_queries`` sampling, only the measured eval samples can be in
it; the report says how many were measured.

The HTML report is one small file that opens offline: the map and the histogram are inline
SVG (plotly.js alone would be 4.9 MB), the map is BubbleFence's own (stored positions and
the bubbles' stored outlines, as the panel draws them) when our split is audited and the
dataset has one, else a PCA of the audited embeddings, and the closest eval→train pairs
are shown as inline thumbnails.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import re
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
import pandas as pd
from fiftyone import ViewField as F

from ..core import metrics
from ..core.progress import Progress, ProgressCallback, Steps, drive, within
from ..text import audited_text, counted
from .embeddings import check_vector_field, checked_vectors, read_vectors, vector_fields
from .export import check_writable, path_inside, safe_name, write_text_whole
from .fields import (
    ANCHOR_FIELD,
    DUPLICATE_FIELD,
    ERROR_FIELD,
    EXCLUDED_TAG,
    SHELL_FIELD,
    SPLIT_ALIASES,
    SPLIT_FIELD,
    check_samples,
    label_source,
    labels_from_values,
    role_of,
    roles_from_tags,
    root_dataset,
)
from .map import SPLIT_COLORS, load_layout, load_points, shell_splits
from .runs import RunType, from_npy_text, is_locked, reloaded, to_npy_text
from .state import default_vector_field, remembered_field, state_info

logger = logging.getLogger(__name__)

# One run per report, keyed "bubblefence_audit_<UTC time>_<random>".
REPORT_RUN = RunType("bubblefence_audit", "bubblefence-audit", 1, "audit_version")
KEEP_REPORTS = 20
TAGS_SOURCE = "tags"
BRAIN_QUADRATIC_ABOVE = 15_000  # the Brain's sklearn index stops precomputing distances here

# String fields BubbleFence writes that are not splits.
_NOT_SPLITS = {"filepath", SHELL_FIELD, DUPLICATE_FIELD, ERROR_FIELD}

LEAKS_VIEW = "bubblefence_leaks"  # saved view: the latest report's leaking eval samples
LEAK_THRESHOLD = 0.95  # the leak view's threshold when audited, else the first threshold
# Ids in the leak view: its select stage is stored in one database document (16 MB at
# most) and sent to the App whenever the view is opened; 10k ids are about 250 kB.
MAX_LEAK_IDS = 10_000
CLOSEST_PAIRS = 12  # eval→train pairs the HTML report shows as thumbnails
THUMBNAIL_PX = 96
MAP_POINTS = 5000  # points drawn on the HTML report's map, a seeded sample beyond that
# Bubbles drawn on it, most held-out samples first: each is an outline or two of SVG.
MAP_BUBBLES = 1000


@dataclass(frozen=True)
class AuditOptions:
    """What `iter_report` audits and how. Validated when made, so a bad option fails
    before any data is read.

    Args:
        split_source: ``"tags"`` or a string field (default: ``split`` when present,
            else tags)
        embeddings_field: a vector field (default: the one the BubbleFence state was
            built from, else ``bubblefence_embedding``, else the first vector field)
        label_field: a label field, read as the split reads it (a Classification's
            label, every object label of a Detections-like field, a string): adds
            label coverage (default: the one our split used, when it is ours that is
            audited; "": none)
        group_field: a field with one group per sample: adds group violations
            (default and "" as for ``label_field``)
        thresholds: cosine similarities at which leakage is counted
        eval_ratio: the target eval share (default: the BubbleFence config when
            auditing our ``split`` field)
        validation_ratio: the target validation share of eval (default: likewise)
        min_label_count: labels with fewer samples are not expected in eval (default:
            the BubbleFence config's when auditing our ``split`` field, else 20)
        max_queries: eval samples measured per direction (None: all, exact)
        seed: of the random baseline split and the sampled queries
        brain: also run FiftyOne Brain's ``compute_leaky_splits``
        html_path: write the HTML report there (a file, or a folder)
        store: keep the report as a custom run on the dataset, and its leaking eval
            samples as the saved view `LEAKS_VIEW`
    """

    split_source: str | None = None
    embeddings_field: str | None = None
    label_field: str | None = None
    group_field: str | None = None
    thresholds: Sequence[float] = metrics.DEFAULT_THRESHOLDS
    eval_ratio: float | None = None
    validation_ratio: float | None = None
    min_label_count: int | None = None
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
            metrics.MIN_LABEL_COUNT if self.min_label_count is None else self.min_label_count,
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


def names_a_split(samples: foc.SampleCollection, source: str) -> bool:
    """Whether some sample's split source names a split or an alias (`role_of`: any case
    and spacing), so that it can be audited as a split: a string field (one query,
    stopping at the first such sample) or the tags (`TAGS_SOURCE`: their distinct values).

    Args:
        samples: a dataset or view
        source: a string field, or ``"tags"``
    """
    if source == TAGS_SOURCE:
        return any(role_of(tag) for tag in samples.distinct("tags"))
    names = "|".join(re.escape(name) for name in SPLIT_ALIASES)
    pattern = rf"^\s*({names})\s*$"
    return bool(samples.match(F(source).re_match(pattern, options="i")).limit(1).count())


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
    if options.html_path:
        check_writable(options.html_path, f"html_path {str(options.html_path)!r}")
    plan = _plan(samples, options)
    yield Progress(0.0, f"Reading {plan.embeddings_field!r} and the split ({plan.source})")
    rows = _read_rows(samples, plan)
    measure = _iter_measure(plan, rows, options)
    measured = yield from within(measure, 0.05, 0.8 if options.brain else 0.95)
    created = datetime.now(timezone.utc)
    leaks, leak_ids = _leaks(measured, rows, saved=options.store)
    result = _report_dict(plan, rows, options, measured, created, leaks)
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
        drawn = _report_map(samples, plan, rows, options.seed)
        thumbnails = _pair_thumbnails(plan.dataset, result["closest_pairs"])
        result["html_path"] = write_html(result, options.html_path, drawn, thumbnails)
    if options.store:
        yield Progress(0.98, "Storing the report")
        _save_leaks_view(plan.dataset, leak_ids, result)
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
    min_label_count: int
    warnings: list[str]
    label_field: str | None
    group_field: str | None
    # (values path, several labels per sample) of the label and group fields (`label_source`)
    label_path: tuple[str, bool] | None
    group_path: tuple[str, bool] | None


@dataclass
class _Rows:
    """The audited rows: the samples with a usable embedding, with or without a split."""

    ids: np.ndarray
    roles: np.ndarray  # train/validation/test, "" for no split
    x: np.ndarray  # unit embeddings
    labels: np.ndarray | list | None  # a label, or a list of labels, per row
    groups: np.ndarray | None
    n_collection: int
    n_without_embedding: int  # samples with a split but no usable embedding
    n_conflicting_tags: int
    other_values: Counter[str]  # split field values that are no split


def _plan(samples: foc.SampleCollection, options: AuditOptions) -> _Plan:
    """Checks the fields the options name and fills in the defaults; reads no samples."""
    dataset = reloaded(check_samples(samples))
    source = _resolve_source(samples, options.split_source)
    embeddings_field = options.embeddings_field or default_vector_field(dataset)
    if not embeddings_field:
        raise ValueError(
            f"dataset {dataset.name!r} has no vector field to audit with: name the field "
            "that holds the embeddings with embeddings_field (a vector field or a list of "
            f"numbers; fields of lists of numbers: {vector_fields(dataset)}), or run the "
            "BubbleFence split first"
        )
    check_vector_field(dataset, embeddings_field)
    state = state_info(dataset)
    ours = source == SPLIT_FIELD and state is not None
    warnings = []
    # Our split is audited by the label and group fields it was split by, unless others
    # (or "": none) are asked; one deleted since is left out, said. Labels are read as the
    # split reads them: a Classification's label, each object's label of a Detections
    # field, a string.
    fields = {}
    for name, asked in (("label_field", options.label_field), ("group_field", options.group_field)):
        field = remembered_field(asked, state.get(name) if ours else None)
        if field and asked is None and not dataset.has_field(field):
            warnings.append(f"the split's {name} {field!r} is gone: not measured")
            field = None
        elif field and dataset.has_field(field) and not samples.has_field(field):
            if asked is not None:
                raise ValueError(
                    f"{name}={field!r}: the view audited leaves that field out "
                    "(exclude_fields / select_fields); audit a view that keeps it, or pass "
                    f'{name}="" to measure without it'
                )
            warnings.append(f"the split's {name} {field!r} is left out of this view: not measured")
            field = None
        fields[name] = field
    label_field, group_field = fields["label_field"], fields["group_field"]
    label_path, group_path = (
        label_source(dataset, name, param) if name else None
        for name, param in ((label_field, "label_field"), (group_field, "group_field"))
    )
    eval_ratio, validation_ratio = options.eval_ratio, options.validation_ratio
    if ours and eval_ratio is None:
        eval_ratio = state["config"].get("eval_ratio")
    if ours and validation_ratio is None:
        validation_ratio = state["config"].get("validation_ratio")
    min_label_count = options.min_label_count
    if min_label_count is None:
        # The split's own: a label it was asked to cover is one the audit expects.
        stored = state["config"].get("min_label_count") if ours else None
        min_label_count = int(stored or metrics.MIN_LABEL_COUNT)
    if is_locked(dataset):
        warnings.append(
            "a BubbleFence run held this dataset during the audit: figures may mix rounds"
        )
    return _Plan(
        dataset,
        source,
        embeddings_field,
        ours,
        eval_ratio,
        validation_ratio,
        min_label_count,
        warnings,
        label_field,
        group_field,
        label_path,
        group_path,
    )


def _read_rows(samples: foc.SampleCollection, plan: _Plan) -> _Rows:
    """Reads the split, the embeddings and the labels/groups; notes what is left out."""
    source = plan.source
    columns = list(dict.fromkeys(["tags" if source == TAGS_SOURCE else source, "tags"]))
    columns += [found[0] for found in (plan.label_path, plan.group_path) if found]
    values = dict(zip(columns, samples.values(columns), strict=True))
    read_ids, values[plan.embeddings_field] = read_vectors(samples, plan.embeddings_field)
    ids = np.asarray(read_ids, dtype=object)
    if source == TAGS_SOURCE:
        roles, n_conflicts = roles_from_tags(values["tags"])
        other: Counter[str] = Counter()
    else:
        roles = np.asarray([role_of(v) for v in values[source]], dtype=object)
        n_conflicts = 0
        # Values no split name reads as (an empty value, ours "duplicate" aside): said.
        other = Counter(
            str(v)
            for v, r in zip(values[source], roles, strict=True)
            if not r and v not in (None, "", "duplicate")
        )
    # An excluded sample is in no split: BubbleFence's own lets it go when it is excluded,
    # a split of the user's keeps its tags or field (the audit counted those samples).
    excluded = np.asarray([EXCLUDED_TAG in (tags or ()) for tags in values["tags"]], bool)
    n_excluded = int(np.count_nonzero(excluded & (roles != "")))
    roles[excluded] = ""
    if n_excluded:
        plan.warnings.append(
            f"{counted(n_excluded, 'sample')} tagged {EXCLUDED_TAG!r} "
            f"{'carries' if n_excluded == 1 else 'carry'} a split: left out of every measure"
        )
    checked = checked_vectors(values[plan.embeddings_field], plan.embeddings_field)
    rows = np.flatnonzero(checked.ok)
    n_without = int(np.sum((roles != "") & ~checked.ok))
    if n_without:
        plan.warnings.append(
            f"{counted(n_without, 'sample')} with a split "
            f"{'has' if n_without == 1 else 'have'} no usable {plan.embeddings_field!r} "
            "(missing, wrong dimension, NaN or zero): left out of every measure"
        )
    if n_conflicts:
        plan.warnings.append(
            f"{counted(n_conflicts, 'sample')} "
            f"{'carries' if n_conflicts == 1 else 'carry'} two split tags: left out"
        )
    if not (roles[rows] != "").any():
        raise ValueError(
            f"nothing to audit: no sample of this collection ({len(ids)} samples) has both a "
            f"split in {source!r} (train/validation/test or an alias) and a usable "
            f"{plan.embeddings_field!r} embedding"
        )
    labels, groups = (
        labels_from_values([values[found[0]][i] for i in rows], found[1]) if found else None
        for found in (plan.label_path, plan.group_path)
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
        left_out=plan.dataset.match_tags(EXCLUDED_TAG).values("id"),
        thresholds=options.thresholds,
        eval_ratio=plan.eval_ratio,
        validation_ratio=plan.validation_ratio,
        min_label_count=plan.min_label_count,
        max_queries=options.max_queries,
        seed=options.seed,
    )


def _report_dict(
    plan: _Plan,
    rows: _Rows,
    options: AuditOptions,
    measured: metrics.AuditReport,
    created: datetime,
    leaks: dict[str, Any],
) -> dict[str, Any]:
    return {
        "run_key": None,
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "dataset": plan.dataset.name,
        "source": plan.source,
        "is_bubblefence_split": plan.is_bubblefence_split,
        "embeddings_field": plan.embeddings_field,
        "label_field": plan.label_field,
        "group_field": plan.group_field,
        "n_collection": rows.n_collection,
        "n_audited": len(rows.ids),
        "n_split": int(np.count_nonzero(rows.roles != "")),
        "n_without_embedding": rows.n_without_embedding,
        "n_conflicting_tags": rows.n_conflicting_tags,
        "other_values": [[v, int(c)] for v, c in rows.other_values.most_common(10)],
        "n_other_values": int(sum(rows.other_values.values())),
        "warnings": plan.warnings,
        "metrics": measured.to_dict(),
        "leaks": leaks,
        "closest_pairs": _closest_pairs(rows, measured.eval_train_pairs),
        "brain": None,
        "html_path": None,
    }


def _closest_pairs(rows: _Rows, pairs: metrics.NearestPairs | None) -> list[dict[str, Any]]:
    """The `CLOSEST_PAIRS` most similar (eval sample, its nearest train sample) pairs."""
    if pairs is None:
        return []
    top = zip(
        pairs.query_rows[:CLOSEST_PAIRS],
        pairs.base_rows[:CLOSEST_PAIRS],
        pairs.similarity[:CLOSEST_PAIRS],
        strict=True,
    )
    return [
        {
            "eval_id": str(rows.ids[query]),
            "eval_split": str(rows.roles[query]),
            "train_id": str(rows.ids[base]),
            "similarity": round(float(similarity), 4),
        }
        for query, base, similarity in top
    ]


def _leaks(
    measured: metrics.AuditReport, rows: _Rows, saved: bool
) -> tuple[dict[str, Any], list[str]]:
    """The report's ``leaks`` entry, and the ids of the measured eval samples with a train
    sample at the leak threshold or above, most similar first, at most `MAX_LEAK_IDS`."""
    thresholds = measured.thresholds
    threshold = LEAK_THRESHOLD if LEAK_THRESHOLD in thresholds else thresholds[0]
    pairs = measured.eval_train_pairs
    leaking = np.empty(0, np.int64) if pairs is None else pairs.at_least(threshold).query_rows
    ids = rows.ids[leaking[:MAX_LEAK_IDS]].astype(str).tolist()
    leak = measured.split.eval_train
    summary = {
        "threshold": threshold,
        "n_found": len(leaking),
        "n_in_view": len(ids),
        "n_measured": leak.n_queries if leak else 0,
        "n_eval": leak.n_population if leak else 0,
        "view": LEAKS_VIEW if saved else None,
    }
    return summary, ids


def _save_leaks_view(dataset: fo.Dataset, ids: list[str], result: dict[str, Any]) -> None:
    """Saves the leaking eval samples as `LEAKS_VIEW`, most similar first. An empty view
    too: a view left from an earlier report would show leaks that are gone."""
    leaks = result["leaks"]
    description = (
        f"Eval samples of {result['source']!r} whose most similar train sample has cosine "
        f">= {leaks['threshold']:g}, most similar first: {leaks['n_in_view']} of "
        f"{leaks['n_found']} found among {leaks['n_measured']} measured eval samples "
        f"(report of {result['created_at']})"
    )
    view = dataset.select(ids, ordered=True)
    dataset.save_view(LEAKS_VIEW, view, description=description, overwrite=True)


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
        "ids": to_npy_text(np.asarray(ids, dtype="S24")),
        "roles": to_npy_text(metrics.role_codes(roles)),
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
            ids = from_npy_text(results.ids).astype(str)
            codes = from_npy_text(results.roles)
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
    ``warnings``, ``brain`` (None or the comparison), ``html_path``, ``leaks``
    (``threshold``, ``n_found``, ``n_in_view``, ``n_measured``, ``n_eval`` and ``view``,
    the saved view `LEAKS_VIEW` or None), ``closest_pairs`` (``eval_id``,
    ``eval_split``, ``train_id``, ``similarity``, most similar first), and ``metrics``:
    `bubblefence_plugin.core.metrics.AuditReport.to_dict()` with ``thresholds`` and, for
    ``split`` (ours) and ``baseline`` (random): ``counts``, ``eval_share``,
    ``ratio_error``, ``validation_share``, ``balance_error``, ``eval_train`` and
    ``validation_test`` (``fraction``/``stderr``/``count`` lists aligned with
    ``thresholds``, ``similarity`` mean/p50/p95/max, ``histogram``), ``coverage``,
    ``groups``, ``diversity`` per split; ``stability`` against the previous report.

    Args:
        samples: a dataset or view; the reports are its dataset's
    """
    dataset = reloaded(root_dataset(samples))  # another process may have stored one
    runs = _audit_runs(dataset)
    return runs[0][1].get("report") if runs else None


# --------------------------------------------------------------------------- presentation


def _excluded_since(n: int) -> str:
    return f" ({counted(n, 'sample')} excluded since, not compared)" if n else ""


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
    # The max to 4 places: 0.94987 to 3 reads 0.950, beside a leakage@0.95 of 0.
    return f"{s['mean']:.3f} / {s['p50']:.3f} / {s['p95']:.3f} / {s['max']:.4f}"


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
                else f"{share:.2%} of {stability['n_compared']} unchanged"
                + _excluded_since(stability.get("n_left_out", 0)),
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


def split_warnings(result: dict[str, Any]) -> list[str]:
    """What the audited split lacks, for a warning rather than a success: a held-out split
    without samples, classes (with enough samples to expect them there) without an eval,
    a validation, a test or a train sample, groups on both sides of the train/eval line.

    A group wholly in train or wholly in eval is what a group field asks for, so a group
    without eval samples is no warning; one cut across the line is.

    Args:
        result: a report (`report`, `latest_report`)

    Returns:
        one plain-text sentence per finding, naming the classes and groups
    """
    ours = result["metrics"]["split"]
    counts = ours["counts"]
    warnings = [
        f"No {role} sample in the split"
        for role in (metrics.VALIDATION, metrics.TEST)
        if counts[role] == 0 and counts[metrics.TRAIN] > 0
    ]
    if counts[metrics.TRAIN] == 0:
        warnings.append("No train sample in the split: leakage into train cannot be measured")
    other = result.get("other_values") or []
    if other:
        shown = ", ".join(f"{value!r} ({n})" for value, n in other)
        warnings.append(f"Values not read as a split (left out): {shown}")
    coverage = ours["coverage"]
    if coverage is not None:
        classes = f"Classes with >= {coverage['min_count']} samples but no"
        missing_eval = coverage["n_eligible"] - coverage["covered"]["eval"]
        if missing_eval:
            names = _listed(coverage["missing_from_eval"], missing_eval)
            warnings.append(f"{classes} eval sample ({missing_eval}): {names}")
        for role in (metrics.VALIDATION, metrics.TEST):
            # Classes without any eval sample are named above; a split with no sample of
            # the role at all is said once, above.
            only_here = coverage["n_eligible"] - coverage["covered"][role] - missing_eval
            if only_here and counts[role]:
                # Reports stored before these lists existed name no class here.
                listed = [
                    name
                    for name in coverage.get(f"missing_from_{role}", [])
                    if name not in coverage["missing_from_eval"]
                ]
                names = _listed(listed, only_here)
                warnings.append(f"{classes} {role} sample ({only_here}): {names}")
        missing_train = coverage["n_eligible"] - coverage["covered"].get(metrics.TRAIN, 0)
        # Reports stored before train's coverage was kept say nothing of it.
        if "missing_from_train" in coverage and missing_train and counts[metrics.TRAIN]:
            names = _listed(coverage["missing_from_train"], missing_train)
            warnings.append(f"{classes} train sample ({missing_train}), held out whole: {names}")
    groups = ours["groups"]
    if groups is not None and groups["n_violations"]:
        names = _listed(groups["examples"], groups["n_violations"])
        warnings.append(
            f"Groups with samples in both train and eval ({groups['n_violations']} of "
            f"{groups['n_groups']}): {names}"
        )
    return warnings


# Names a warning lists: it is read in a notice, which a list of 20 groups filled until
# it covered the dialog's Done button (seen in the App); the report lists more.
NAMES_IN_WARNING = 8


def _listed(names: Sequence[str], total: int) -> str:
    """Names joined, at most `NAMES_IN_WARNING`, with the count of those not listed."""
    names = list(names)[:NAMES_IN_WARNING]
    more = total - len(names)
    if not names:
        return f"{total} not listed"
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


# --------------------------------------------------------------------------- the HTML map


@dataclass
class _ReportMap:
    """What the HTML report's map draws, in one 2-D coordinate system."""

    title: str
    xy: np.ndarray  # (n, 2) points of audited samples with a role
    roles: np.ndarray  # their train / validation / test
    # Per bubble: anchor_id, x, y, r2d (outer radius), inner_r2d (0: no inner shell), and
    # the (m, 2) corners of its outline and its inner shell's in ``outer`` and ``inner``
    # (no corners: no members there), None where the stored map has no outlines.
    bubbles: pd.DataFrame
    notes: list[str]  # sentences


def _report_map(
    samples: foc.SampleCollection, plan: _Plan, rows: _Rows, seed: int
) -> _ReportMap | None:
    """BubbleFence's stored map with its bubbles when our split is audited and the
    dataset has one; otherwise a PCA of the audited embeddings (no bubbles: another split
    has none, and ours without a stored map has no 2-D bubble radii)."""
    rng = np.random.default_rng([seed, 3])
    stored = _stored_map(samples, plan, rows, rng) if plan.is_bubblefence_split else None
    return stored or _pca_map(rows, rng)


def _drawn_rows(rows: np.ndarray, rng: np.random.Generator, notes: list[str]) -> np.ndarray:
    """At most `MAP_POINTS` of ``rows``, a seeded sample beyond that (noted)."""
    from ..core.anchors import subsample

    if len(rows) > MAP_POINTS:
        notes.append(f"{MAP_POINTS} of {len(rows)} samples drawn (a seeded random sample).")
    return rows[subsample(len(rows), MAP_POINTS, rng)]


def _stored_map(
    samples: foc.SampleCollection, plan: _Plan, rows: _Rows, rng: np.random.Generator
) -> _ReportMap | None:
    """The audited samples on the stored map (`bubblefence_plugin.fo.map`), and the
    bubbles that have samples among them, most held-out samples first, with their
    stored outlines (None in a layout run from before outlines were stored)."""
    points, layout = load_points(plan.dataset), load_layout(plan.dataset)
    if points is None or layout is None:
        return None
    position = pd.Index(points[0]).get_indexer(rows.ids.astype(str))
    has_role = rows.roles != ""
    placed = np.flatnonzero(has_role & (position >= 0))
    if not len(placed):
        return None
    notes = []
    n_unplaced = int(np.sum(has_role & (position < 0)))
    if n_unplaced:
        notes.append(f"{n_unplaced} audited samples have no place on the map: not drawn.")
    drawn = _drawn_rows(placed, rng, notes)
    present = {int(a) for a in samples.distinct(ANCHOR_FIELD)}
    anchors = layout.anchors
    bubbles = anchors[anchors["anchor_id"].isin(present)]
    bubbles = bubbles.assign(n_eval=bubbles["n_validation"] + bubbles["n_test"])
    bubbles = bubbles.sort_values(["n_eval", "anchor_id"], ascending=[False, True])
    if len(bubbles) > MAP_BUBBLES:
        notes.append(
            f"{MAP_BUBBLES} of {len(bubbles)} bubbles drawn (most held-out samples first)."
        )
    bubbles = bubbles.head(MAP_BUBBLES).copy()
    for shell in ("outer", "inner"):
        if layout.outline_vertices is None:  # a layout stored before outlines: circles
            bubbles[shell] = None
        else:
            outlines = [layout.outline(row, shell) for row in bubbles.itertuples()]
            bubbles[shell] = pd.Series(outlines, index=bubbles.index, dtype=object)
    return _ReportMap(
        title=f"BubbleFence map ({layout.layout.method.upper()}) with its bubbles",
        xy=points[1][position[drawn]],
        roles=rows.roles[drawn],
        bubbles=bubbles,
        notes=notes,
    )


def _pca_map(rows: _Rows, rng: np.random.Generator) -> _ReportMap | None:
    """A 2-D PCA of the audited samples with a role; None for fewer than 3."""
    from ..core.anchors import fit_projection

    has_role = np.flatnonzero(rows.roles != "")
    if len(has_role) < 3:
        return None
    notes = ["Bubbles are drawn when BubbleFence's own split is audited and has a map."]
    drawn = _drawn_rows(has_role, rng, notes)
    xy = fit_projection(rows.x[drawn], 2, rng).transform(rows.x[drawn])
    if xy.shape[1] < 2:
        return None
    return _ReportMap(
        title="PCA of the audited embeddings",
        xy=xy,
        roles=rows.roles[drawn],
        bubbles=pd.DataFrame(columns=["anchor_id", "x", "y", "r2d", "inner_r2d", "outer", "inner"]),
        notes=notes,
    )


# --------------------------------------------------------------------------- thumbnails


def _pair_thumbnails(dataset: fo.Dataset, pairs: Sequence[dict[str, Any]]) -> dict[str, str | None]:
    """Inline JPEG thumbnails (data URIs) of the images of the closest pairs, by sample id;
    None where the image cannot be read.

    Args:
        dataset: the dataset the pairs' samples belong to
        pairs: a report's ``closest_pairs``
    """
    ids = sorted({pair[key] for pair in pairs for key in ("eval_id", "train_id")})
    if not ids:
        return {}
    sample_ids, paths = dataset.select(ids).values(["id", "filepath"])
    return {sid: _thumbnail_uri(path) for sid, path in zip(sample_ids, paths, strict=True)}


def _thumbnail_uri(path: str) -> str | None:
    """A JPEG data URI of the image at ``path``, at most `THUMBNAIL_PX` on a side."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))  # JPEG: decode at a small scale
            thumbnail = image.convert("RGB")
        thumbnail.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        buffer = io.BytesIO()
        thumbnail.save(buffer, "JPEG", quality=75)
    # Missing, remote, corrupt or oversized: a thumbnail is never worth a failed report.
    except Exception as e:
        logger.info("No thumbnail for %s: %s", path, e)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- HTML


_HISTOGRAM_COLOURS = {"split": "#e45756", "random": "#9d9d9d"}
_RANDOM_KEY = {"random split, same ratios": _HISTOGRAM_COLOURS["random"]}
_BUBBLES_KEY = (
    "Bubbles: solid, the whole bubble, in its outer ring's split colour; dotted, its inner "
    "shell, in that shell's (hover for its number). "
)
_SVG_WIDTH = 640


def _map_svg(drawn: _ReportMap) -> str:
    """The map as inline SVG: a dot per sample (a zero-length round-capped path segment,
    the smallest SVG mark), then per bubble a group titled with its number (the
    browser shows it on hover): its outline solid, its inner shell's dotted; circles of
    its drawn radii where the stored map has no outlines."""
    width, height, pad = _SVG_WIDTH, 480, 10
    xy = drawn.xy.astype(np.float64)
    bubbles = list(drawn.bubbles.itertuples())
    extents = np.vstack([xy, *(_bubble_extent(b) for b in bubbles)])
    low, high = extents.min(axis=0), extents.max(axis=0)
    # One scale for both axes: shapes keep their proportions, circles stay round.
    scale = min(
        (width - 2 * pad) / max(high[0] - low[0], 1e-9),
        (height - 2 * pad) / max(high[1] - low[1], 1e-9),
    )

    def to_px(x: Any, y: Any) -> tuple[Any, Any]:
        return pad + (x - low[0]) * scale, height - pad - (y - low[1]) * scale

    px, py = to_px(xy[:, 0], xy[:, 1])
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' class='map'>"
    ]
    for role in metrics.ROLES:  # train first: the held-out splits on top
        mask = drawn.roles == role
        path = "".join(f"M{x:.1f} {y:.1f}h0" for x, y in zip(px[mask], py[mask], strict=True))
        if path:
            parts.append(
                f"<path d='{path}' stroke='{SPLIT_COLORS[role]}' stroke-width='4' "
                "stroke-linecap='round' opacity='0.8'/>"
            )
    if bubbles:
        marks = "".join(_bubble_svg(b, to_px, scale) for b in bubbles)
        parts.append(f"<g class='bubbles' fill='none' stroke-width='1'>{marks}</g>")
    parts.append("</svg>")
    return "".join(parts)


def _bubble_extent(bubble: Any) -> np.ndarray:
    """Points that bound what is drawn of a bubble (a row of `_ReportMap.bubbles`): its
    outline's corners, or its outer circle's bounding box."""
    if bubble.outer is not None:
        return np.asarray(bubble.outer, np.float64).reshape(-1, 2)
    r = bubble.r2d
    return np.array([[bubble.x - r, bubble.y - r], [bubble.x + r, bubble.y + r]], np.float64)


def _bubble_svg(bubble: Any, to_px: Callable[[Any, Any], tuple[Any, Any]], scale: float) -> str:
    """One bubble's group: its title, then its outline and its inner shell's (dotted) as
    closed paths, or as circles where the stored map has no outlines, each in its
    shell's split colour as the panel draws them; "" for nothing."""
    marks = []
    inner_split, outer_split = shell_splits(bubble.layout)
    for outline, radius, css, split in (
        (bubble.outer, bubble.r2d, "", outer_split),
        (bubble.inner, bubble.inner_r2d, " class='inner'", inner_split),
    ):
        css += f" stroke='{SPLIT_COLORS[split]}'"
        if outline is None:
            if radius > 0:
                cx, cy = to_px(bubble.x, bubble.y)
                marks.append(f"<circle{css} cx='{cx:.1f}' cy='{cy:.1f}' r='{radius * scale:.1f}'/>")
        elif len(outline):
            corners = np.asarray(outline, np.float64)
            x, y = to_px(corners[:, 0], corners[:, 1])
            marks.append(f"<path{css} d='{_closed_path(x, y)}'/>")
    if not marks:
        return ""
    return f"<g><title>bubble {int(bubble.anchor_id)}</title>{''.join(marks)}</g>"


def _closed_path(x: np.ndarray, y: np.ndarray) -> str:
    """An SVG path through the corners and back to the first, in whole pixels (half a
    pixel is below what a 1-pixel line shows; the report stays small): the first corner
    absolute, the others relative to the one before. The steps are taken between
    corners already rounded, so no rounding adds up."""
    corners = np.rint(np.stack([x, y], axis=1)).astype(np.int64)
    steps = np.diff(corners, axis=0).ravel()
    # A minus sign separates two numbers; a space is needed otherwise.
    lines = "".join(str(v) if v < 0 else f" {v}" for v in steps).lstrip()
    return f"M{corners[0, 0]} {corners[0, 1]}{'l' + lines if lines else ''}z"


def _histogram_svg(result: dict[str, Any]) -> str | None:
    """Nearest train similarity of eval samples, ours beside the random split, as SVG bars
    with the thresholds dotted; None without eval→train pairs."""
    m = result["metrics"]
    shares = {}
    for name, block in (("split", m["split"]), ("random", m["baseline"])):
        leak = block["eval_train"]
        if leak is not None:
            counts = np.asarray(leak["histogram"]["counts"], np.float64)
            shares[name] = (leak["histogram"], counts / max(counts.sum(), 1.0))
    if not shares:
        return None
    width, height, left, bottom, top = _SVG_WIDTH, 260, 40, 34, 12
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max(float(s.max()) for _, s in shares.values()) or 1.0
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>"]
    for name, (histogram, share) in shares.items():
        bar_w = histogram["step"] * plot_w
        bars = "".join(
            f"<rect x='{left + (histogram['start'] + i * histogram['step']) * plot_w:.1f}' "
            f"y='{top + plot_h * (1 - s / peak):.1f}' width='{bar_w:.1f}' "
            f"height='{plot_h * s / peak:.1f}'/>"
            for i, s in enumerate(share)
            if s > 0
        )
        parts.append(f"<g fill='{_HISTOGRAM_COLOURS[name]}' opacity='0.55'>{bars}</g>")
    axis_y = top + plot_h
    parts.append(
        f"<g stroke='#555'><line x1='{left}' y1='{axis_y}' x2='{left + plot_w}' y2='{axis_y}'/>"
        f"<line x1='{left}' y1='{top}' x2='{left}' y2='{axis_y}'/></g>"
    )
    ticks = "".join(
        f"<text x='{left + t * plot_w:.1f}' y='{axis_y + 14}' text-anchor='middle'>{t:.1f}</text>"
        for t in np.linspace(0.0, 1.0, 6)
    )
    parts.append(
        f"<g font-size='11' fill='#333'>{ticks}"
        f"<text x='{left + plot_w / 2:.1f}' y='{height - 4}' text-anchor='middle'>"
        "cosine similarity to the nearest train sample</text>"
        f"<text x='{left - 4}' y='{top + 4}' text-anchor='end'>{peak:.2f}</text>"
        f"<text x='{left - 4}' y='{axis_y}' text-anchor='end'>0</text></g>"
    )
    for k, t in enumerate(m["thresholds"]):
        x = left + t * plot_w
        # Thresholds are often close together (0.9, 0.95, 0.99): one label row each.
        parts.append(
            f"<line x1='{x:.1f}' y1='{top}' x2='{x:.1f}' y2='{axis_y}' stroke='#222' "
            f"stroke-dasharray='3 3'/><text x='{x - 3:.1f}' y='{top + 10 + 12 * k}' "
            f"font-size='10' text-anchor='end'>{t:g}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _legend(colours: dict[str, str]) -> str:
    """A colour key per name, on a line of its own."""
    keys = "".join(
        f"<span class='key' style='background:{colour}'></span>{html.escape(name)} "
        for name, colour in colours.items()
    )
    return keys + "<br>"


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


def _leaks_html(result: dict[str, Any], thumbnails: dict[str, str | None]) -> list[str]:
    """The leak count and view, and the closest eval→train pairs side by side."""
    leaks, esc = result["leaks"], html.escape
    parts = [
        "<h2>Leaking eval samples</h2>",
        f"<p>{leaks['n_found']} of the {leaks['n_measured']} measured eval samples (of "
        f"{leaks['n_eval']}) have a train sample at cosine similarity ≥ {leaks['threshold']:g}."
        + (
            f" They are the saved view <code>{esc(leaks['view'])}</code> of the dataset "
            f"(most similar first, at most {MAX_LEAK_IDS})."
            if leaks["view"] and leaks["n_found"]
            else ""
        )
        + "</p>",
    ]
    pairs = result["closest_pairs"]
    if not pairs:
        return parts
    figures = []
    for pair in pairs:
        images = "".join(
            f"<img class='thumb' src='{thumbnails[sid]}' alt='{esc(sid)}'>"
            if thumbnails.get(sid)
            else f"<span class='thumb missing' title='{esc(sid)}'>no image</span>"
            for sid in (pair["eval_id"], pair["train_id"])
        )
        figures.append(
            f"<figure>{images}<figcaption>{pair['similarity']:.4f}<br>"
            f"{esc(pair['eval_split'])} {esc(pair['eval_id'])}<br>"
            f"train {esc(pair['train_id'])}</figcaption></figure>"
        )
    parts += [
        f"<h3>The {len(pairs)} closest eval → train pairs (eval image left, cosine)</h3>",
        "<div class='pairs'>" + "".join(figures) + "</div>",
    ]
    return parts


def _figures_html(result: dict[str, Any], drawn: _ReportMap | None) -> list[str]:
    parts = []
    if drawn is not None:
        parts += [
            f"<h2>Embedding map: {html.escape(drawn.title)}</h2>",
            _map_svg(drawn),
            f"<p>{_legend({r: SPLIT_COLORS[r] for r in metrics.ROLES})}"
            + (_BUBBLES_KEY if len(drawn.bubbles) else "")
            + html.escape(" ".join(drawn.notes))
            + "</p>",
        ]
    histogram = _histogram_svg(result)
    if histogram is not None:
        parts += [
            "<h2>Nearest train similarity of eval samples</h2>",
            histogram,
            f"<p>{_legend({'this split': _HISTOGRAM_COLOURS['split'], **_RANDOM_KEY})}"
            "Share of the measured eval samples per bin; dotted: the leakage thresholds.</p>",
        ]
    return parts


_STYLE = (
    "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    "th{background:#f3f3f3}code{background:#f3f3f3;padding:0 3px}"
    ".bubbles .inner{stroke-dasharray:2 2}"
    ".warning{background:#fff4e0;border-left:4px solid #f0a020;padding:0.5em 1em}"
    ".key{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}"
    ".pairs{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;font-size:11px}"
    f".thumb{{display:inline-block;width:{THUMBNAIL_PX}px;height:{THUMBNAIL_PX}px;"
    "object-fit:contain;background:#eee;margin-right:2px;vertical-align:top}"
    f".missing{{line-height:{THUMBNAIL_PX}px;text-align:center;color:#888}}</style>"
)


def render_html(
    result: dict[str, Any],
    drawn: _ReportMap | None = None,
    thumbnails: dict[str, str | None] | None = None,
) -> str:
    """The report as one self-contained HTML page: tables, warnings, the leaking samples
    with thumbnails of the closest pairs, and the map and histogram as inline SVG.

    Args:
        result: a report
        drawn: the map, or None for none
        thumbnails: `_pair_thumbnails` of the report's closest pairs (missing: placeholders)
    """
    m = result["metrics"]
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>BubbleFence report: {esc(result['dataset'])}</title>",
        _STYLE,
        "</head><body>",
        f"<h1>BubbleFence split report: {esc(result['dataset'])}</h1>",
        f"<p>Split source <code>{esc(result['source'])}</code>, embeddings "
        f"<code>{esc(result['embeddings_field'])}</code>, {audited_text(result)} "
        f"({m['dim']}-d), {esc(result['created_at'])}. Leakage thresholds are cosine "
        "similarities; ± is the standard error where eval samples were sampled "
        f"(at most {m['max_queries'] or 'all'} per direction), ≈ marks estimated counts.</p>",
    ]
    warnings = split_warnings(result)
    if warnings:
        parts.append(
            "<div class='warning'><strong>Warnings</strong><ul>"
            + "".join(f"<li>{esc(w)}</li>" for w in warnings)
            + "</ul></div>"
        )
    parts += [
        "<h2>Summary</h2>",
        _table(
            ["measure", "this split", "random split, same ratios"],
            [[r["metric"], r["split"], r["baseline"]] for r in summary_rows(result)],
        ),
        *_leaks_html(result, thumbnails or {}),
        *_figures_html(result, drawn),
        "<h2>Diversity</h2>",
        "<p>Effective rank exp(H(λ/Σλ)) and participation ratio (Σλ)²/Σλ² of the embedding "
        "covariance, each divided by the dimension; score = geometric mean of the two.</p>",
        _table(
            ["split", "assignment", "n", "ER", "PR", "ER/d", "PR/d", "score"],
            _diversity_rows(m),
        ),
    ]
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
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(
    result: dict[str, Any],
    path: str | os.PathLike,
    drawn: _ReportMap | None = None,
    thumbnails: dict[str, str | None] | None = None,
) -> str:
    """Writes `render_html` to ``path`` (a file, or a folder to put a named file in); atomic.
    The file gets the mode any new file of the user gets (0644 under the usual umask 022).

    Args:
        result: a report
        path: an ``.html`` file, or a folder
        drawn: as for `render_html`
        thumbnails: as for `render_html`

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
    write_text_whole(target, render_html(result, drawn, thumbnails), f"html_path {str(path)!r}")
    return str(target)


def write_json(result: dict[str, Any], path: str | os.PathLike) -> str:
    """Writes the report as JSON to ``path``; atomic, with the mode of `write_html`.

    Args:
        result: a report
        path: the file to write

    Returns:
        the path written
    """
    target = Path(path).expanduser().resolve()
    write_text_whole(target, json.dumps(result, indent=1), f"json path {str(path)!r}")
    return str(target)
