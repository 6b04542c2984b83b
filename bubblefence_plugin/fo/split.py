"""The split use case: one BubbleFence round on the new samples of a FiftyOne collection.

Operators, the command line and Python users all call `split` (or `iter_split`, its
generator of `Progress` events), so the App, a delegated worker and a script behave
identically. A round, under the dataset's `RunLock`:

1. reads the state (`state.load_state`, without its vectors) and settles the config
   and fields;
2. reconciles the state with the dataset: repairs the split fields of a round whose
   writing was interrupted, forgets deleted samples and those tagged ``excluded``; only
   then, if there is anything to split or to save, reads the state's vectors from the
   embeddings field and checks them (`state.with_embeddings`);
3. embeds the new samples (or reads the chosen vector field);
4. runs the core's round, commits the state, writes the split fields and tags, and
   places the new samples on the 2-D map.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fiftyone as fo
import fiftyone.core.collections as foc
import numpy as np

from ..core.config import KNOBS, BubbleFenceConfig, frozen_message, read_yaml_values
from ..core.progress import Progress, ProgressCallback, Steps, drive, within
from ..text import counted
from .embeddings import (
    MAX_ERRORS_SHOWN,
    check_vector_field,
    get_embedder,
    iter_embed_missing,
    kept_model,
    prepare_embeddings_field,
    read_embeddings,
)
from .fields import (
    ANCHOR_FIELD,
    DUPLICATE_FIELD,
    EMBEDDING_FIELD,
    ERROR_FIELD,
    EXCLUDED_TAG,
    RESULT_FIELDS,
    ROUND_FIELD,
    SPLIT_FIELD,
    SPLIT_TAGS,
    SPLIT_VALUES,
    assignment_table,
    check_collection,
    check_declarable,
    clear_excluded_fields,
    declare_fields,
    errors_by_filepath,
    label_source,
    label_values,
    refuse_splits_of_new_samples,
    refuse_values_not_ours,
    root_dataset,
    table_from_frame,
    write_assignments,
)
from .map import map_lacks_samples, update_after_round
from .runs import RESET_HOW, RunLock, reloaded
from .shards import pending_shards
from .state import (
    STATE_RUN,
    leave_split_if_excluded,
    load_state,
    record_fields_round,
    remembered_field,
    save_state,
    state_info,
    state_params,
    with_embeddings,
)

if TYPE_CHECKING:
    from ..core.pipeline import BubbleFence, RoundResult

ConfigSource = BubbleFenceConfig | dict | str | os.PathLike | None


def split(
    samples: foc.SampleCollection,
    config: ConfigSource = None,
    *,
    embeddings_field: str | None = None,
    label_field: str | None = None,
    group_field: str | None = None,
    progress: ProgressCallback | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Runs one BubbleFence round on the not-yet-assigned samples of ``samples``.

    Bubbles are global to the dataset; a view only chooses which new samples join.
    Samples already split never move; samples tagged ``excluded`` take no part.

    Example usage::

        import fiftyone.zoo as foz
        import bubblefence_plugin.fo as bf

        dataset = foz.load_zoo_dataset("quickstart")
        summary = bf.split(dataset, eval_ratio=0.2, label_field="ground_truth")
        print(summary["message"])

        # later, after adding samples: only the new ones are assigned
        bf.split(dataset)

    Args:
        samples: a dataset or any view of a flat image dataset (e.g.
            ``ctx.target_view()``)
        config: a `BubbleFenceConfig` (replaces the stored one), a dict of knobs or a
            YAML file (they change only the knobs they name), or None (the stored config,
            or the defaults on the first round)
        embeddings_field: an existing vector field to split by, instead of computing
            ``bubblefence_embedding`` with ``config.model_name``; remembered for later
            rounds (None: the field the state was built from)
        label_field: a label field whose labels each split should cover; remembered
            for later rounds, "" forgets it
        group_field: a field whose samples of one value (a patient, a video) stay in
            one side of the split; remembered like ``label_field``
        progress: called as ``progress(fraction, label)`` while the round runs
        **overrides: config knobs, e.g. ``eval_ratio=0.3``

    Returns:
        a JSON-able summary of the round: counts of the round and in total, the eval
        share, bubbles, near-twin pairs cut (``cut_pairs``) and how many eval samples
        ``min_eval_per_batch`` went without rather than leak (``eval_floor_shortfall``),
        errors, and a one-line ``message``
    """
    steps = iter_split(
        samples,
        config,
        embeddings_field=embeddings_field,
        label_field=label_field,
        group_field=group_field,
        **overrides,
    )
    return drive(steps, progress)


def iter_split(
    samples: foc.SampleCollection,
    config: ConfigSource = None,
    *,
    embeddings_field: str | None = None,
    label_field: str | None = None,
    group_field: str | None = None,
    **overrides: Any,
) -> Steps[dict[str, Any]]:
    """`split` as a generator of `Progress` events (for live progress in the App); the
    summary is the generator's return value.

    Args:
        samples: a dataset or view, as for `split`
        config: as for `split`
        embeddings_field: as for `split`
        label_field: as for `split`
        group_field: as for `split`
        **overrides: config knobs
    """
    dataset = check_collection(samples)
    request = _Request(config, embeddings_field, label_field, group_field, overrides)
    with RunLock(dataset, "split") as lock:
        return (yield from _split_locked(samples, dataset, lock, request))


# --------------------------------------------------------------------------- config


def resolve_config(
    previous: BubbleFenceConfig | None,
    config: ConfigSource,
    overrides: dict[str, Any],
    model: str | None = None,
) -> tuple[BubbleFenceConfig, list[str]]:
    """The config of this round and the names of knobs that differ from the stored one.

    Without an explicit config a later round continues with the stored one, so a
    plain re-run never changes a knob by accident.

    Args:
        previous: the stored config, or None before the first round
        config: as for `split`
        overrides: knobs given as keywords; they win over ``config``
        model: the model a first round uses unless one is named (`kept_model`)
    """
    start = previous or BubbleFenceConfig(**({"model_name": model} if model else {}))
    if config is None:
        explicit: dict[str, Any] = {}
    elif isinstance(config, BubbleFenceConfig):
        start, explicit = config, {}  # a complete config replaces the stored one
    elif isinstance(config, dict):
        explicit = dict(config)
    else:
        explicit = read_yaml_values(config)
    # Only the knobs a file, dict or keyword names change; the others keep their
    # stored value, so a partial YAML does not silently reset e.g. the model.
    cfg = BubbleFenceConfig.from_dict({**start.to_dict(), **explicit, **overrides})
    if previous is None:
        return cfg, []
    old, new = previous.to_dict(), cfg.to_dict()
    return cfg, sorted(k for k in new if new[k] != old.get(k))


def check_split_config(
    samples: foc.SampleCollection | None,
    config: ConfigSource,
    overrides: dict[str, Any],
    label_field: str | None = None,
    group_field: str | None = None,
) -> BubbleFenceConfig:
    """The round's config and fields, checked against the stored ones without writing
    anything: for front ends that write before the round (the CLI adds folders first).

    Args:
        samples: the dataset or view to split, or None when it does not exist yet
        config: as for `split`
        overrides: config knobs given as keywords
        label_field: as for `split`
        group_field: as for `split`
    """
    info = state_info(samples) if samples is not None else None
    previous = BubbleFenceConfig.from_dict(info["config"]) if info else None
    model = kept_model(root_dataset(samples)) if samples is not None and not info else None
    cfg, changed = resolve_config(previous, config, overrides, model)
    if previous is not None:
        _refuse_frozen(previous, cfg, changed, info)
    elif samples is not None:
        _refuse_values_before_a_first_round(root_dataset(samples))
    for asked, param in ((label_field, "label_field"), (group_field, "group_field")):
        field = remembered_field(asked, (info or {}).get(param))
        if field and samples is None:
            raise ValueError(
                f"{param}={field!r}: the dataset does not exist yet, so it has no such "
                "field; add the samples with their labels first, then split"
            )
        _check_label_field(
            root_dataset(samples) if samples is not None else None, field, param, asked
        )
    _refuse_class_aware_without_labels(
        cfg, remembered_field(label_field, (info or {}).get("label_field"))
    )
    return cfg


def _refuse_class_aware_without_labels(cfg: BubbleFenceConfig, label_field: str | None) -> None:
    """``class_aware`` keeps near twins with different labels apart in dedup: without a
    label field it did nothing, and was frozen so (found by a README audit)."""
    if cfg.class_aware and not label_field:
        raise ValueError(
            "class_aware=True needs a label field (label_field=...): near twins with "
            "different labels are then not duplicates; without one, leave class_aware off"
        )


def _check_label_field(
    dataset: fo.Dataset | None, field: str | None, param: str, asked: str | None
) -> None:
    """Checks a label or group field (`label_source`); one remembered from earlier rounds
    (``asked`` None) that is gone is named as such, not as an option the user gave."""
    if not field or dataset is None:
        return
    if asked is None and dataset.get_field(field) is None:
        raise ValueError(
            f"the {param.replace('_', ' ')} {field!r} that earlier rounds were split by "
            f"is gone from dataset {dataset.name!r}: name another ({param}=...), or "
            f"{param}='' to go on without one"
        )
    label_source(dataset, field, param)


def _refuse_frozen(
    previous: BubbleFenceConfig,
    cfg: BubbleFenceConfig,
    changed: list[str],
    params: dict[str, Any],
) -> None:
    """Refuses a change of a knob fixed after the first round (`params`: the stored
    run's parameters: a state built from a field of the user's used no model)."""
    frozen = [k for k in changed if KNOBS[k].refuses(getattr(previous, k), getattr(cfg, k))]
    if "model_name" in frozen and params.get("embeddings_field") not in (None, EMBEDDING_FIELD):
        raise ValueError(
            "this dataset's BubbleFence split reads its embeddings from the field "
            f"{params.get('embeddings_field')!r}, not from a model, and so do its later "
            f"rounds: a model ({cfg.model_name!r}) does not apply to it. Leave the model "
            f"out, or reset the dataset's BubbleFence state {RESET_HOW} to start over "
            "with a model"
        )
    if frozen:
        old = previous.to_dict()
        detail = ", ".join(f"{k}: {old[k]!r} -> {getattr(cfg, k)!r}" for k in frozen)
        raise ValueError(
            f"cannot change {detail} after the first round: {frozen_message(frozen)}. "
            "Keep it, or reset the dataset's BubbleFence state "
            f"{RESET_HOW} to start over with the new value"
        )


# --------------------------------------------------------------------------- the round


@dataclass(frozen=True)
class _Request:
    """What the caller asked of the round (see `split`)."""

    config: ConfigSource
    embeddings_field: str | None
    label_field: str | None
    group_field: str | None
    overrides: dict[str, Any]


@dataclass
class _Round:
    """What the steps of one round share."""

    samples: foc.SampleCollection
    dataset: fo.Dataset
    lock: RunLock
    bf: BubbleFence | None  # the state; None until the first round ingests
    params: dict[str, Any]  # its run parameters; {} before the first round
    cfg: BubbleFenceConfig
    changed: list[str]  # knobs that differ from the stored config
    embeddings_field: str
    label_field: str | None
    group_field: str | None

    @property
    def uses_model(self) -> bool:
        """Whether this round computes embeddings (else it reads a user's field)."""
        return self.embeddings_field == EMBEDDING_FIELD


def _split_locked(
    samples: foc.SampleCollection, dataset: fo.Dataset, lock: RunLock, request: _Request
) -> Steps[dict[str, Any]]:
    """The round, step by step, under the dataset's lock (see the module docstring)."""
    yield Progress(0.0, "Reading the BubbleFence state")
    r = _open_round(samples, dataset, lock, request)
    if r.bf is not None:
        return (yield from _round(r, dataset, lock))
    # A first round declares the split fields once it has embeddings: if it ends after
    # that without a committed state (it failed, or no sample had a usable embedding),
    # they go again, empty.
    schema = set(dataset.get_field_schema())
    try:
        return (yield from _round(r, dataset, lock))
    finally:
        if STATE_RUN.info(reloaded(dataset)) is None:
            _drop_empty_fields_added(dataset, schema)


def _refuse_while_shards_embed(samples: foc.SampleCollection, dataset: fo.Dataset) -> None:
    """Refuses to embed samples that queued or running shards are embedding: the round
    would embed them a second time, perhaps with another model (the shards' model is
    recorded only once they write; found by a README audit: a CLI split took CLIP while
    EfficientNet shards were queued). The App's form offers to wait or to split only
    what is embedded; from Python and the shell, the message says how."""
    pending = pending_shards(dataset, EMBEDDING_FIELD)
    if not pending:
        return
    missing = samples.exists(EMBEDDING_FIELD, False).count()
    if missing:
        raise ValueError(
            f"{counted(missing, 'sample')} still lack {EMBEDDING_FIELD!r} while "
            f"{counted(len(pending), 'embedding shard')} of dataset {dataset.name!r} "
            f"{'is' if len(pending) == 1 else 'are'} queued or running: wait for them "
            f"(`fiftyone delegated list --dataset {dataset.name}`; from Python "
            "`bubblefence_plugin.fo.wait_for_shards(dataset)`), or split only the samples "
            f"embedded so far (from Python, a view: `dataset.exists({EMBEDDING_FIELD!r})`)"
        )


def _drop_empty_fields_added(dataset: fo.Dataset, schema: set[str]) -> None:
    """Deletes the split fields a failed first round declared, where no sample has a
    value (a per-sample error written to `ERROR_FIELD` stays)."""
    added = [f for f in RESULT_FIELDS if f not in schema and dataset.has_field(f)]
    if not added:
        return
    counts = dataset.aggregate([fo.Count(f) for f in added])
    empty = [f for f, n in zip(added, counts, strict=True) if not n]
    if empty:
        dataset.delete_sample_fields(empty)


def _round(r: _Round, dataset: fo.Dataset, lock: RunLock) -> Steps[dict[str, Any]]:
    """`_split_locked` once the round is open."""
    summary, new_ids = _reconcile(r)
    if r.bf is not None and new_ids:
        refuse_splits_of_new_samples(dataset, new_ids)
    if r.bf is not None and (new_ids or summary["n_forgotten"] or summary["n_excluded_left"]):
        yield Progress(0.02, "Reading the state's embeddings")
        r.bf = with_embeddings(dataset, r.bf, r.params)
    if not new_ids:
        return _finish_without_new(r, summary)

    ok_ids, embeddings = yield from _usable_embeddings(r, new_ids, summary)
    if not ok_ids:
        message = (
            f"No usable embeddings among the {counted(len(new_ids), 'sample')} not split yet "
            f"({counted(summary['n_errors'], 'error')}, in {ERROR_FIELD}; a sample that failed is "
            "tried again at every run)"
        )
        return _finish_summary(summary, r.bf, None, message + _unsaved_changes(r, summary))

    lock.heartbeat(force=True)
    yield Progress(0.85, f"Splitting {len(ok_ids)} new samples")
    result = _ingest(r, ok_ids, embeddings)
    lock.heartbeat(force=True)  # raises if the lock was lost: then nothing is committed

    yield Progress(0.9, "Saving the state")
    _commit(r)
    yield Progress(0.95, "Writing split fields and tags")
    _write_round_fields(r, result)
    yield Progress(0.97, "Placing the new samples on the 2-D map")
    summary = _finish_summary(summary, r.bf, result, None)
    update_after_round(dataset, r.bf, summary)  # never raises: a failure is noted in the summary
    yield Progress(1.0, "Done")
    return summary


def _open_round(
    samples: foc.SampleCollection, dataset: fo.Dataset, lock: RunLock, request: _Request
) -> _Round:
    """Reads the state and settles the round's config and fields: a config, embeddings
    field or label field that does not fit the state fails here, before any embedding."""
    STATE_RUN.finish_interrupted_commit(dataset)
    # Without the vectors: a round reads them once it knows it needs them.
    loaded = load_state(dataset, embeddings=False)
    bf, params = loaded if loaded else (None, {})
    # Like the label and group fields below, the embeddings field is remembered: a later
    # round that names none reads the field the state was built from.
    embeddings_field = request.embeddings_field or params.get("embeddings_field") or EMBEDDING_FIELD
    model = None if bf else kept_model(dataset)
    cfg, changed = resolve_config(
        bf.config if bf else None, request.config, request.overrides, model
    )
    if bf is not None:
        stored_field = params.get("embeddings_field")
        if stored_field and stored_field != embeddings_field:
            raise ValueError(
                f"this dataset's BubbleFence state was built from embeddings field "
                f"{stored_field!r}; mixing it with {embeddings_field!r} is refused. Use "
                f"{stored_field!r}, or reset the state to start over"
            )
        # Knobs that would change earlier assignments are refused; the rest apply to
        # new rounds.
        _refuse_frozen(bf.config, cfg, changed, params)
        if changed:
            bf.reconfigure(**{k: getattr(cfg, k) for k in changed})
    else:
        _refuse_values_before_a_first_round(dataset)
    # Label and group fields are remembered: a later round that names none keeps them, so a
    # new sample of a known group still follows its group; "" drops one explicitly.
    label_field = remembered_field(request.label_field, params.get("label_field"))
    group_field = remembered_field(request.group_field, params.get("group_field"))
    for field, param, asked in (
        (label_field, "label_field", request.label_field),
        (group_field, "group_field", request.group_field),
    ):
        _check_label_field(dataset, field, param, asked)
    _refuse_class_aware_without_labels(cfg, label_field)
    if embeddings_field == EMBEDDING_FIELD:
        _refuse_while_shards_embed(samples, dataset)
    if bf is None:  # declared once the embeddings are in hand: a failed first round adds none
        check_declarable(dataset, RESULT_FIELDS)
    else:
        declare_fields(dataset, RESULT_FIELDS)
    return _Round(
        samples=samples,
        dataset=dataset,
        lock=lock,
        bf=bf,
        params=params,
        cfg=cfg,
        changed=changed,
        embeddings_field=embeddings_field,
        label_field=label_field,
        group_field=group_field,
    )


def _refuse_values_before_a_first_round(dataset: fo.Dataset) -> None:
    """Without a state, values in ``bubblefence_round`` (a field only a round writes) are
    a split of ours whose state is gone: a reset stopped between deleting the state and
    the fields, or samples copied from a split dataset without its runs. Says so, and
    that a reset finishes it; any other split field or tag is the user's
    (`refuse_values_not_ours`)."""
    n_left = dataset.count(ROUND_FIELD) if dataset.has_field(ROUND_FIELD) else 0
    if n_left:
        raise ValueError(
            f"dataset {dataset.name!r} has BubbleFence's split fields ({ROUND_FIELD!r} on "
            f"{n_left} samples) but no BubbleFence state: a reset was stopped before it "
            "finished, or the samples were copied from a split dataset without its runs "
            "(a clone of a view, an export without runs). To keep that split, copy it "
            f"first: dataset.clone_sample_field({SPLIT_FIELD!r}, 'original_split'). Then "
            f"reset {RESET_HOW} to clear BubbleFence's fields and tags, and split"
        )
    refuse_values_not_ours(dataset)


def _reconcile(r: _Round) -> tuple[dict[str, Any], list[str]]:
    """Brings the state up to date with the dataset; returns the round's summary so far
    and the new samples of the target, in dataset order.

    Repairs the split fields of a round whose writing was interrupted; forgets samples
    deleted since and samples tagged `EXCLUDED_TAG`.
    """
    n_repaired = n_forgotten = 0
    assigned: set[str] = set()
    dataset_ids = r.dataset.values("id")
    if r.bf is not None:
        frame = r.bf.assignments()
        n_repaired = _repair_fields(r, frame)
        assigned = set(frame["id"].tolist())
        gone = sorted(assigned - set(dataset_ids))
        if gone:
            n_forgotten = int(r.bf.forget(gone))
            assigned -= set(gone)
    left = leave_split_if_excluded(r.dataset, r.bf, r.params)
    assigned -= set(left)
    n_restored = n_edited = 0
    if r.bf is not None:  # the state's rows now: those forgotten and excluded left out,
        # a duplicate in the place of an original that left (`BubbleFence.forget`)
        n_restored, n_edited = _restore_mirror(r, r.bf.assignments())

    target_ids = set(r.samples.match_tags(EXCLUDED_TAG, bool=False).values("id"))
    new_ids = [i for i in dataset_ids if i in target_ids and i not in assigned]
    summary = {
        "dataset": r.dataset.name,
        "n_target": len(target_ids),
        "n_new": len(new_ids),
        "n_embedded": 0,
        "n_errors": 0,
        "n_forgotten": n_forgotten,
        "n_repaired": n_repaired + n_restored,
        "n_split_edited": n_edited,
        "n_excluded_left": len(left),
        "config_changed": r.changed,
        "label_field": r.label_field,
        "group_field": r.group_field,
    }
    return summary, new_ids


def _repair_fields(r: _Round, frame: Any) -> int:
    """Rewrites the split fields of the rounds the fields missed (a run died between its
    commit and its field writes); returns how many samples were rewritten."""
    fields_round = int(r.params.get("fields_round", -1))
    last_round = int(frame["round"].max()) if len(frame) else -1
    if fields_round >= last_round:
        return 0
    stale = frame[frame["round"] > fields_round]
    write_assignments(r.dataset, table_from_frame(stale))
    record_fields_round(r.dataset, r.params, last_round)
    return len(stale)


def _restore_mirror(r: _Round, frame: Any) -> tuple[int, int]:
    """The split fields and tags of the samples in the state (``frame``: its assignments),
    held against the state: a sample whose split value, split tag, round or bubble is
    gone (a field deleted, a tag removed) is written again, and so is a duplicate that
    took the place of an original that left, or points to another original since
    (`BubbleFence.forget`); one whose split value was changed otherwise is counted, not
    overwritten (the state is what later rounds keep; `reset` starts over). Returns
    (restored, changed).

    Counts first, in one pass (values and tags per split, rounds, bubbles and duplicates
    held), so a round reads every sample's values only when they disagree with the
    state. The fields exist here: `_open_round` declared them."""
    stored = frame["split"].value_counts().to_dict()
    in_bubble = frame["anchor_id"].to_numpy() >= 0
    has_original = frame["duplicate_of"].notna().to_numpy()
    duplicate_of = [
        d if h else None for d, h in zip(frame["duplicate_of"], has_original, strict=True)
    ]
    values, tags, n_rounds, n_anchors, n_duplicates = r.dataset.aggregate(
        [
            fo.CountValues(SPLIT_FIELD),
            fo.CountValues("tags"),
            fo.Count(ROUND_FIELD),
            fo.Count(ANCHOR_FIELD),
            fo.Count(DUPLICATE_FIELD),
        ]
    )
    if (
        all(values.get(k, 0) == n for k, n in stored.items())
        and all(tags.get(t, 0) == stored.get(t, 0) for t in SPLIT_TAGS)
        and n_rounds >= len(frame)
        and n_anchors >= int(in_bubble.sum())
        and n_duplicates == int(has_original.sum())
    ):
        return 0, 0
    ids, held, tag_lists, rounds, anchors, originals = r.dataset.values(
        ["id", SPLIT_FIELD, "tags", ROUND_FIELD, ANCHOR_FIELD, DUPLICATE_FIELD]
    )
    found = dict(
        zip(ids, zip(held, tag_lists, rounds, anchors, originals, strict=True), strict=True)
    )
    restore, changed = [], 0
    for row, (sid, split, original) in enumerate(
        zip(frame["id"], frame["split"], duplicate_of, strict=True)
    ):
        value, sample_tags, rnd, anchor, original_field = found.get(
            sid, (None, [], None, None, None)
        )
        # A duplicate's place is the state's alone: one that took an original's place
        # (the field still "duplicate"), or a field showing a place the state does not
        # hold (written by a run stopped before its commit), is written again.
        about_a_duplicate = "duplicate" in (value, split)
        if value is not None and value != split and not about_a_duplicate:
            changed += 1
        elif (
            value is None
            or value != split
            or any(t in SPLIT_TAGS and t != split for t in sample_tags or [])
            or (split in SPLIT_TAGS and split not in (sample_tags or []))
            or rnd is None
            or (in_bubble[row] and anchor is None)
            or (original_field or None) != original
        ):
            restore.append(row)
    if restore:
        write_assignments(r.dataset, table_from_frame(frame.iloc[restore]))
    return len(restore), changed


def _finish_without_new(r: _Round, summary: dict[str, Any]) -> dict[str, Any]:
    """Commits what reconciling changed (samples forgotten or excluded), then says why
    there was nothing to split."""
    if (summary["n_forgotten"] or summary["n_excluded_left"]) and r.bf is not None:
        save_state(r.dataset, r.bf, state_params(r.bf, r.cfg, r.embeddings_field, r.params))
    if r.bf is not None:  # those of an exclusion stopped after its commit too
        clear_excluded_fields(r.dataset)
    if not summary["n_target"] and not len(r.samples):
        message = "Nothing to split: the target view is empty (0 samples)"
    elif not summary["n_target"]:
        message = f"Nothing to split: every sample of the target is tagged {EXCLUDED_TAG!r}"
    else:
        message = "Nothing new to split: every sample in the target is already assigned"
    if summary["n_excluded_left"]:
        message += f"; {counted(summary['n_excluded_left'], 'excluded sample')} left the split"
    if summary["n_forgotten"]:
        message += f"; {counted(summary['n_forgotten'], 'deleted sample')} left the state"
    summary = _finish_summary(summary, r.bf, None, message + _unsaved_changes(r, summary))
    if r.bf is not None and r.bf.n_samples and map_lacks_samples(r.dataset, r.bf.n_samples):
        # A round stopped before it placed its samples on the map: placed now.
        if not (summary["n_forgotten"] or summary["n_excluded_left"]):
            r.bf = with_embeddings(r.dataset, r.bf, r.params)
        update_after_round(r.dataset, r.bf, summary)
        placed = summary.get("map", {}).get("n_new_points", 0)
        if placed:
            summary["message"] += (
                f"; placed {counted(placed, 'sample')} on the 2-D map, which lacked them"
            )
    return summary


def _unsaved_changes(r: _Round, summary: dict[str, Any]) -> str:
    """What a run that split nothing says of the knobs, label field and group field it
    was asked to change: they are stored with a round, so they were not kept
    (`config_changed` emptied; the summary names the stored fields)."""
    changed, summary["config_changed"] = summary["config_changed"], []
    for name in ("label_field", "group_field"):
        stored = r.params.get(name) or None
        if (summary[name] or None) != stored:
            changed.append(name)
            summary[name] = stored
    if not changed:
        return ""
    return (
        f"; {', '.join(changed)} not changed: knobs and the label and group fields are "
        "stored with a round that splits new samples, so give them again with those"
    )


def _usable_embeddings(
    r: _Round, new_ids: list[str], summary: dict[str, Any]
) -> Steps[tuple[list[str], np.ndarray]]:
    """(ids, unit embeddings) of the new samples that have a usable vector; computes the
    missing ones first when the round uses the model. Failures are counted in the
    summary and written to `ERROR_FIELD`."""
    errors: dict[str, str] = {}
    dim = r.bf.dim if r.bf is not None else None
    if r.uses_model:
        errors = yield from within(_embed_new(r, new_ids, dim, summary), 0.02, 0.8)
    else:
        check_vector_field(r.dataset, r.embeddings_field)
        declare_fields(r.dataset, RESULT_FIELDS)
    yield Progress(0.8, "Reading embeddings")
    candidate_ids = [i for i in new_ids if i not in errors]
    ok_ids, embeddings, read_errors = read_embeddings(
        r.dataset, candidate_ids, r.embeddings_field, dim
    )
    errors.update(read_errors)
    if read_errors:
        r.dataset.set_values(ERROR_FIELD, read_errors, key_field="id")
    summary["n_errors"] = len(errors)
    summary["errors"] = errors_by_filepath(r.dataset, dict(list(errors.items())[:MAX_ERRORS_SHOWN]))
    return ok_ids, embeddings


def _embed_new(
    r: _Round, new_ids: list[str], dim: int | None, summary: dict[str, Any]
) -> Steps[dict[str, str]]:
    """Embeds the new samples that lack a vector with the config's model; returns the
    per-sample errors."""
    embedder = get_embedder(r.cfg.model_name, r.cfg.device, r.cfg.batch_size)
    declare_fields(r.dataset, RESULT_FIELDS)  # the model loaded: the round will write
    prepare_embeddings_field(r.dataset, embedder.model_name, embedder.dim)
    if dim is not None and embedder.dim != dim:
        raise ValueError(
            f"model {embedder.model_name!r} gives {embedder.dim}-d embeddings but the "
            f"state holds {dim}-d ones; reset the state to change model"
        )
    _, n_embedded, errors = yield from iter_embed_missing(r.dataset, new_ids, embedder, r.lock)
    summary["n_embedded"] = n_embedded
    return errors


def _ingest(r: _Round, ok_ids: list[str], embeddings: np.ndarray) -> RoundResult:
    """The core's round on the new samples, with their labels and groups."""
    from ..core.pipeline import BubbleFence

    if r.bf is None:
        r.bf = BubbleFence(r.cfg)
    # The samples held go by the fields' values now, not those of their rounds: a field
    # first given or changed since, or values edited (`BubbleFence.relabel`). One read
    # per field serves them and the new samples.
    held = r.bf.assignments()["id"].tolist() if r.bf.n_samples else []
    labels = label_values(r.dataset, held + ok_ids, r.label_field)
    groups = label_values(r.dataset, held + ok_ids, r.group_field, "group_field")
    if held and (labels is not None or groups is not None):
        r.bf.relabel(
            labels=None if labels is None else labels[: len(held)],
            groups=None if groups is None else groups[: len(held)],
        )
    kwargs: dict[str, Any] = {"ids": ok_ids}
    if labels is not None:
        kwargs["labels"] = labels[len(held) :]
    if groups is not None:
        kwargs["groups"] = groups[len(held) :]
    return r.bf.ingest(embeddings, **kwargs)


def _commit(r: _Round) -> None:
    """Commits the state with this round's parameters; then excluded samples lose their
    split fields (idempotent, so a run that dies in between finishes it next time)."""
    params = state_params(r.bf, r.cfg, r.embeddings_field, r.params)
    params["model_name"] = r.cfg.model_name if r.uses_model else None
    params.update(label_field=r.label_field, group_field=r.group_field)
    save_state(r.dataset, r.bf, params)
    r.params = params
    clear_excluded_fields(r.dataset)


def _write_round_fields(r: _Round, result: RoundResult) -> None:
    """Mirrors the round's assignments into the split fields and tags, and those of the
    earlier samples it made duplicates of a new one (`RoundResult.relinked_ids`)."""
    table = assignment_table(
        result.ids, result.split, result.anchor_id, result.shell, result.round, result.duplicate_of
    )
    write_assignments(r.dataset, table)
    if len(result.relinked_ids):
        frame = r.bf.assignments()
        write_assignments(r.dataset, table_from_frame(frame[frame["id"].isin(result.relinked_ids)]))
    record_fields_round(r.dataset, r.params, int(result.round))


# --------------------------------------------------------------------------- summary


def _finish_summary(
    summary: dict[str, Any], bf: Any, result: Any, message: str | None
) -> dict[str, Any]:
    """Adds the round's and the state's counts, and the one-line ``message`` (the
    round's own unless ``message`` is given)."""
    summary.update(_round_counts(result))
    summary.update(_state_counts(bf))
    summary["message"] = message if message is not None else _round_message(summary)
    return summary


def _round_counts(result: Any) -> dict[str, Any]:
    if result is None:
        return {
            "round": None,
            "n_assigned": 0,
            "counts_round": {s: 0 for s in SPLIT_VALUES},
            "n_duplicates_placed": 0,
            "new_anchors": 0,
            "cut_pairs": 0,
            "eval_shortfall": 0,
            "eval_floor_shortfall": 0,
        }
    counts = Counter(str(s) for s in np.asarray(result.split))
    return {
        "round": int(result.round),
        "n_assigned": len(result.ids),
        "counts_round": {s: int(counts.get(s, 0)) for s in SPLIT_VALUES},
        # Duplicates in their original's split (`dedup_policy` follow): counted in their
        # splits above, and said apart so that "duplicates 0" does not hide them; one a
        # group's vote moved off its original's side is not among them.
        "n_duplicates_placed": int(result.stats.get("duplicates_with_original", 0)),
        "new_anchors": len(result.new_anchor_ids),
        # Said to the user (`text.round_warnings`): the leak graph's pairs this round put
        # on both sides of a line, and how far min_eval_per_batch yielded to it.
        "cut_pairs": int(result.stats["cut_pairs"]),
        "eval_shortfall": int(result.stats.get("shortfall", 0)),
        "eval_floor_shortfall": int(result.stats["floor_shortfall"]),
    }


def _state_counts(bf: Any) -> dict[str, Any]:
    if bf is None:
        return {"counts_total": {s: 0 for s in SPLIT_VALUES}, "eval_share": 0.0, "n_anchors": 0}
    totals = Counter(bf.assignments()["split"].astype(str).tolist())
    counts_total = {s: int(totals.get(s, 0)) for s in SPLIT_VALUES}
    kept = sum(counts_total[s] for s in SPLIT_TAGS)
    held = counts_total["validation"] + counts_total["test"]
    core = bf.summary()
    return {
        "counts_total": counts_total,
        "eval_share": round(held / kept, 4) if kept else 0.0,
        "validation_share_of_eval": round(core["validation_share_of_eval"], 4),
        "n_eval": held,
        "n_anchors": len(bf.anchors),
        **{k: core[k] for k in ("labels", "groups", "targets", "bridge_leaks") if k in core},
    }


def _placed(summary: dict[str, Any]) -> str:
    placed = summary.get("n_duplicates_placed", 0)
    return f"; {counted(placed, 'duplicate')} placed with their original" if placed else ""


def _round_message(summary: dict[str, Any]) -> str:
    c = summary["counts_round"]
    message = (
        f"Round {summary['round']}: {counted(summary['n_assigned'], 'sample')} assigned "
        f"(train {c['train']}, validation {c['validation']}, test {c['test']}, "
        f"duplicates {c['duplicate']}{_placed(summary)}); "
        f"eval share {summary['eval_share']:.3f}; "
        f"{summary['new_anchors']} new {counted(summary['new_anchors'], 'bubble', False)}, "
        f"{summary['n_anchors']} in all"
    )
    if summary.get("labels"):
        labels = summary["labels"]
        message += (
            f"; labels with >= {labels['min_label_count']} samples in eval: "
            f"{labels['covered']['eval']}/{labels['n_eligible']}"
        )
    if summary.get("groups"):
        message += f"; group violations: {summary['groups']['violations']}"
    if summary["n_errors"]:
        message += f"; {counted(summary['n_errors'], 'sample')} failed (see {ERROR_FIELD})"
    return message
