"""The split state of a dataset: the committed `BubbleFence`, stored as the run
``bubblefence`` (`STATE_RUN`, written with the two-phase commit of `runs`).

Truth and mirrors. The state is the single source of truth: a sample is "assigned"
when its id is in the stored state, never because a field happens to be set. The
sample fields (``split``, ``anchor_id``, ...) and the split tags are a mirror written
after the state commits (`fields.write_assignments`); the run's ``fields_round`` says
up to which round the mirror is written, so the next run repairs it if a run died
while writing it.

The state keeps no copy of the embeddings: they live in the embeddings field, and
the state holds one checksum per row, so an edited vector is detected on load.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any

import fiftyone as fo
import fiftyone.core.collections as foc
import numpy as np
import pandas as pd
from fiftyone import ViewField as F

from ..core.config import BubbleFenceConfig
from ..core.neighbors import ROW_STEP, unit_rows
from ..core.state import (
    StateDamagedError,
    check_layout,
    check_model_name,
    check_values,
    damaged,
    npy_blob_header,
    rows_with_room,
)
from ..text import counted
from .embeddings import checked_vectors, holds_vectors, read_vectors
from .fields import (
    DUPLICATE_FIELD,
    DUPLICATE_SPLIT,
    EMBEDDING_FIELD,
    EXCLUDED_TAG,
    SPLIT_FIELD,
    id_chunks,
    root_dataset,
    table_from_frame,
    values_by_id,
    write_assignments,
)
from .runs import RESET_HINT, RunType, npy_bytes, reloaded, to_npy_text

if TYPE_CHECKING:
    from ..core.pipeline import BubbleFence

# Version 1: the embeddings matrix inside the run; 2: rebuilt from the embeddings field.
STATE_RUN = RunType("bubblefence", "bubblefence-state", 2, "state_version")
RUN_KEY = STATE_RUN.key


def state_info(samples: foc.SampleCollection) -> dict[str, Any] | None:
    """The stored run's parameters (config, source, rounds), cheap: no arrays are read.

    Args:
        samples: a dataset or view; the state is its dataset's

    Returns:
        the parameters (``config``, ``embeddings_field``, ``label_field``,
        ``group_field``, ``n_samples``, ``excluded_ids``...), or None without a state;
        a state of a newer BubbleFence is refused with the advice to upgrade (the forms
        read its config with this code's knobs)
    """
    dataset = reloaded(root_dataset(samples))
    info = STATE_RUN.info(dataset)
    return None if info is None else STATE_RUN.check(dataset, info)


def ids_not_split(samples: foc.SampleCollection) -> list[str]:
    """Ids of the samples of ``samples`` that the dataset's state does not hold and that
    are not excluded: what the next split would assign, in dataset order. Samples merged
    from another dataset carry that dataset's split fields, so only the state tells them.

    Args:
        samples: a dataset or view
    """
    dataset = root_dataset(samples)
    found = _read_checked(dataset)
    held = set(found[2]["ids"].astype(str).tolist()) if found is not None else set()
    candidates = samples.match_tags(EXCLUDED_TAG, bool=False).values("id")
    return [i for i in candidates if i not in held]


def remembered_field(asked: str | None, stored: str | None) -> str | None:
    """A label or group field as a round or an audit of our split reads it: the one the
    split stored unless one is asked; "" is none.

    Args:
        asked: the field asked for (None: not said)
        stored: the field the stored split used, or None
    """
    return (stored if asked is None else asked) or None


def default_vector_field(dataset: fo.Dataset) -> str | None:
    """The vector field a reader uses when none is named: the one the stored split read
    (a list field too: the split took it), else BubbleFence's own, else the first vector
    field by name; None when the dataset has none.

    Args:
        dataset: the dataset
    """
    info = state_info(dataset)
    stored = info.get("embeddings_field") if info else None
    if holds_vectors(dataset, stored):
        return stored
    # Vector fields only: a list of numbers may be anything (a box, scores), so it is
    # read only when named.
    fields = sorted(dataset.get_field_schema(ftype=fo.VectorField))
    if EMBEDDING_FIELD in fields:
        return EMBEDDING_FIELD
    return next(iter(fields), None)


def load_state(
    samples: foc.SampleCollection, embeddings: bool = True
) -> tuple[BubbleFence, dict[str, Any]] | None:
    """Loads the stored `BubbleFence` and its run parameters, or None if there is none.

    Every array is checked before it is allocated; a damaged state raises
    `StateDamagedError`.

    Args:
        samples: a dataset or view; the state is its dataset's
        embeddings: rebuild the embeddings matrix from the embeddings field. False
            only reads assignments (the export manifest); such a state cannot ingest

    Returns:
        (the `BubbleFence`, its run parameters), or None
    """
    dataset = reloaded(root_dataset(samples))
    found = _read_checked(dataset)
    if found is None:
        return None
    params, meta, arrays = found
    gone: list[str] = []
    if not embeddings:
        arrays["embeddings"] = np.empty((len(arrays["ids"]), 0), np.float32)
    elif "embeddings" not in arrays:
        arrays["embeddings"], gone = _stored_embeddings(dataset, params, arrays)
    bf = _state_from_arrays(dataset, meta, arrays)
    if gone:
        bf.forget(gone)  # deleted from the dataset since the state was written
    return bf, params


def with_embeddings(dataset: fo.Dataset, bf: BubbleFence, params: dict[str, Any]) -> BubbleFence:
    """``bf``, loaded without its vectors (`load_state` with ``embeddings=False``) and
    perhaps forgetting samples since, with them: rebuilt from the embeddings field and
    checked against the stored checksums as `load_state` does. A round reads them only
    once it has new samples to split or a state to save (a run with nothing new took
    6.1 s at 100,000 samples reading them all, 1.5 s without; bench/RESULTS.md).

    Args:
        dataset: the dataset whose committed state ``bf`` was loaded from
        bf: that state
        params: its run parameters
    """
    found = _read_checked(dataset)
    if found is None:
        raise StateDamagedError(
            f"the BubbleFence state of dataset {dataset.name!r} was removed while it was read"
        )
    stored = found[2]
    meta, arrays = bf.state_dict()
    ids = arrays["ids"].astype(str)
    position = pd.Index(stored["ids"].astype(str)).get_indexer(ids)
    if (position < 0).any():
        raise StateDamagedError(
            f"the BubbleFence state of dataset {dataset.name!r} changed while it was read; "
            "run the split again"
        )
    gone: list[str] = []
    if "embeddings" in stored:  # a state of version 1 holds its vectors
        arrays["embeddings"] = stored["embeddings"][position]
    else:
        source = {"ids": ids, "embedding_checks": stored["embedding_checks"][position]}
        arrays["embeddings"], gone = _stored_embeddings(dataset, params, source)
    meta["dim"] = params.get("dim")
    loaded = _state_from_arrays(dataset, meta, arrays)
    if gone:
        loaded.forget(gone)
    return loaded


def save_state(dataset: fo.Dataset, bf: BubbleFence, params: dict[str, Any]) -> None:
    """Commits the state atomically (`RunType.commit`). Call under the dataset's `RunLock`.

    Args:
        dataset: the dataset
        bf: the `BubbleFence`
        params: its run parameters (`state_params`)
    """
    meta, arrays = bf.state_dict()
    # The vectors live in the embeddings field; a checksum per row detects edits.
    arrays["embedding_checks"] = _row_checks(arrays.pop("embeddings"))
    _commit_arrays(dataset, params, meta, arrays)


def _commit_arrays(
    dataset: fo.Dataset, params: dict[str, Any], meta: dict[str, Any], arrays: dict[str, Any]
) -> None:
    payload = {"meta": meta, "arrays": {k: to_npy_text(v) for k, v in arrays.items()}}
    STATE_RUN.commit(dataset, params, payload)


def state_params(
    bf: BubbleFence, cfg: BubbleFenceConfig, embeddings_field: str, old: dict[str, Any]
) -> dict[str, Any]:
    """The run parameters of ``bf`` after a round: its config and counts, the rest
    carried over from the previous parameters ``old``.

    Args:
        bf: the `BubbleFence`
        cfg: the round's config
        embeddings_field: the field the state's vectors are read from
        old: the previous run parameters ({} for the first round)
    """
    return STATE_RUN.new_params(
        config=cfg.to_dict(),
        embeddings_field=embeddings_field,
        model_name=old.get("model_name"),
        label_field=old.get("label_field"),
        group_field=old.get("group_field"),
        dim=int(bf.dim) if bf.dim else None,
        n_samples=int(bf.n_samples),
        # The last round saved; `fields_round` below it: its fields were not all written.
        last_round=int(bf.history[-1]["round"]) if bf.history else -1,
        fields_round=int(old.get("fields_round", -1)),
        excluded_ids=old.get("excluded_ids", []),
        updated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def unfinished_round(info: dict[str, Any] | None) -> int | None:
    """The round a stopped run saved without writing all its split fields and tags (the
    next split writes them first), from `state_info`'s parameters; None if there is none
    or the state predates ``last_round``.

    Args:
        info: `state_info` of a dataset, or None
    """
    last = (info or {}).get("last_round")
    if last is None or int(info.get("fields_round", -1)) >= int(last):
        return None
    return int(last)


def record_fields_round(dataset: fo.Dataset, params: dict[str, Any], value: int) -> None:
    """Records that the split fields mirror the state up to round ``value``.

    Args:
        dataset: the dataset
        params: the stored run parameters, updated in place
        value: the last round written to the fields
    """
    params["fields_round"] = int(value)
    STATE_RUN.update_params(dataset, params)


def state_embeddings(bf: BubbleFence) -> np.ndarray:
    """The unit embeddings ``bf`` holds, one row per row of ``bf.assignments()``.

    Args:
        bf: a `BubbleFence` loaded with its embeddings (`load_state`)
    """
    return bf.state_dict()[1]["embeddings"]


def leave_split_if_excluded(
    dataset: fo.Dataset, bf: BubbleFence | None, params: dict[str, Any]
) -> list[str]:
    """Samples tagged `EXCLUDED_TAG` that the state holds leave it (`forget`); returns them.

    Nothing else moves: the others keep their split, bubble and shell. The run's
    parameters list every excluded sample (``excluded_ids``), so the exclusion is
    auditable. The caller commits, then calls `fields.clear_excluded_fields`.

    Args:
        dataset: the dataset
        bf: its `BubbleFence`, or None before the first round
        params: its run parameters; ``excluded_ids`` is updated in place
    """
    left = _excluded_among(dataset, bf.assignments()["id"] if bf is not None else [], params)
    if left:
        bf.forget(left)
    return left


def forget_excluded(dataset: fo.Dataset) -> list[str]:
    """`leave_split_if_excluded` on the stored state, without reading one embedding;
    returns the samples that left. Call under the dataset's `RunLock`.

    The state commits what `load_state`, `leave_split_if_excluded` and `save_state`
    would: the same rows leave (with them samples deleted from the dataset since, as
    `load_state` drops those), every other array is equal, and the rows kept keep
    their stored checksums, which rebuilding the vectors from the field and
    checksumming them again reproduces to float64 rounding. That rebuild reads every
    vector (seconds at 30,000 samples) and is left to the next round's `load_state`,
    which checks them. When no held sample is excluded the state is not rewritten:
    at most its ``excluded_ids`` parameter changes.

    Args:
        dataset: the dataset
    """
    found = _read_checked(dataset)
    if found is None:
        return []
    params, meta, arrays = found
    # Whatever this call excludes, an exclusion stopped before it is finished first.
    _finish_a_stopped_exclusion(dataset, meta, arrays)
    listed = list(params.get("excluded_ids", []))
    held = arrays["ids"].astype(str)
    left = _excluded_among(dataset, held, params)
    if not left:
        if params["excluded_ids"] != listed:
            STATE_RUN.update_params(dataset, params)
        return []
    gone = _deleted_among(dataset, held.tolist())
    leaving = np.isin(held, gone + left)
    checks = arrays.pop("embedding_checks")[~leaving]
    # Duplicates of the originals that leave: one takes each original's place, the
    # others point to it (`BubbleFence.forget`); their fields follow the commit.
    original = np.asarray(arrays["duplicate_of"], np.int64)
    promoted = held[~leaving & (original >= 0) & leaving[np.maximum(original, 0)]]
    bf = _state_without_vectors(dataset, meta, arrays)
    for ids in (gone, left):  # in `load_state`'s order, then `leave_split_if_excluded`'s
        if ids:
            bf.forget(ids)
    new_meta, new_arrays = bf.state_dict()
    del new_arrays["embeddings"]  # zero columns: the vectors were never read
    new_arrays["embedding_checks"] = checks
    new_meta["dim"] = meta.get("dim")  # not None: no vector was read to tell it
    params["n_samples"] = int(bf.n_samples)
    _commit_arrays(dataset, params, new_meta, new_arrays)
    if len(promoted):
        _write_rows(dataset, bf, promoted)
    return left


def _finish_a_stopped_exclusion(
    dataset: fo.Dataset, meta: dict[str, Any], arrays: dict[str, np.ndarray]
) -> None:
    """Writes the fields of the samples a stopped exclusion left unwritten: it committed
    the state, then was stopped before writing the copy taking each excluded original's
    place (still reading "duplicate") and the other copies (still naming the excluded
    original). The next exclusion, of any samples, finishes it. One query when there are
    none.
    """
    marked_ids, marked_originals = dataset.match(F(SPLIT_FIELD) == DUPLICATE_SPLIT).values(
        ["id", DUPLICATE_FIELD]
    )
    if not marked_ids:
        return
    held = arrays["ids"].astype(str)
    original = np.asarray(arrays["duplicate_of"], np.int64)
    stored = dict(
        zip(held, np.where(original >= 0, held[np.maximum(original, 0)], None), strict=True)
    )
    stale = [
        sid
        for sid, named in zip(marked_ids, marked_originals, strict=True)
        if sid in stored and stored[sid] != named
    ]
    if stale:
        _write_rows(dataset, _state_without_vectors(dataset, meta, arrays), stale)


def _state_without_vectors(
    dataset: fo.Dataset, meta: dict[str, Any], arrays: dict[str, np.ndarray]
) -> BubbleFence:
    """The stored state with zero-column embeddings: enough to forget samples and to
    list assignments, without reading one vector."""
    arrays = {k: v for k, v in arrays.items() if k != "embedding_checks"}
    arrays["embeddings"] = np.empty((len(arrays["ids"]), 0), np.float32)
    return _state_from_arrays(dataset, meta, arrays)


def _write_rows(dataset: fo.Dataset, bf: BubbleFence, ids: Any) -> None:
    """Writes the split fields and tags of samples ``ids`` as ``bf`` assigns them."""
    frame = bf.assignments()
    write_assignments(dataset, table_from_frame(frame[frame["id"].isin(ids)]))


def _deleted_among(dataset: fo.Dataset, held: list[str]) -> list[str]:
    """The ``held`` ids no longer in the dataset, sorted.

    Counted first: in the usual case, none, that count is all it costs (0.2-0.3 s at
    30,000 samples, where listing every sample id took 0.3-0.5 s of a 1 s exclusion).
    """
    if sum(dataset.select(chunk).count() for chunk in id_chunks(held)) == len(held):
        return []
    return sorted(set(held) - set(values_by_id(dataset, held, [])[0]))


def _excluded_among(dataset: fo.Dataset, held: Any, params: dict[str, Any]) -> list[str]:
    """Sets ``params["excluded_ids"]`` to every sample tagged `EXCLUDED_TAG`; returns
    those among the ``held`` ids, sorted."""
    excluded = sorted(dataset.match_tags(EXCLUDED_TAG).values("id"))
    params["excluded_ids"] = excluded
    if not excluded:
        return []
    held_ids = set(np.asarray(held).astype(str).tolist())
    return [i for i in excluded if i in held_ids]


def _read_checked(
    dataset: fo.Dataset,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]] | None:
    """(run parameters, meta, arrays) of the committed state, checked
    (`_checked_state`); None when there is none, `StateDamagedError` when unreadable."""
    found = STATE_RUN.read_committed(dataset)
    if found is None:
        # A write-ahead copy alone, half-written: a first commit stopped before its
        # commit point, so there is no state yet (the next split drops the copy).
        if dataset.has_run(STATE_RUN.key):
            raise StateDamagedError(
                f"the BubbleFence state of dataset {dataset.name!r} is unreadable; {RESET_HINT}"
            )
        return None
    params, results = found
    STATE_RUN.check(dataset, params)
    meta, arrays = _checked_state(dataset, params, results)
    return params, meta, arrays


def _state_from_arrays(
    dataset: fo.Dataset, meta: dict[str, Any], arrays: dict[str, np.ndarray]
) -> BubbleFence:
    from ..core.pipeline import BubbleFence

    try:
        return BubbleFence.from_state_dict(meta, arrays)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        where = f"the BubbleFence state of dataset {dataset.name!r}"
        raise damaged(where, f"{type(e).__name__}: {e}", RESET_HINT) from e


def _checked_state(
    dataset: fo.Dataset, params: dict[str, Any], results: Any
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The stored meta and arrays, checked (`core.state.check_layout`) before any array
    is allocated, and the run parameters the next steps use (model, field, dimension)."""
    where = f"the BubbleFence state of dataset {dataset.name!r}"
    meta, blobs = results.meta, results.arrays
    if not isinstance(meta, dict) or not isinstance(blobs, dict):
        raise damaged(where, "its meta or arrays are not mappings", RESET_HINT)
    check_model_name(params.get("model_name"), where, RESET_HINT)
    if not isinstance(params.get("embeddings_field"), str):
        raise damaged(where, f"embeddings field {params.get('embeddings_field')!r}", RESET_HINT)
    if params.get("dim") != meta.get("dim"):
        raise damaged(
            where,
            f"dimension {params.get('dim')!r} in its run, {meta.get('dim')!r} inside",
            RESET_HINT,
        )
    blobs = {k: npy_bytes(v, f"{where}: array {k!r}") for k, v in blobs.items()}
    headers = {k: npy_blob_header(v, f"{where}: array {k!r}", RESET_HINT) for k, v in blobs.items()}
    ids_shape = headers.get("ids", ((), None))[0]
    n_samples = params.get("n_samples", ids_shape[0] if ids_shape else -1)
    check_layout(headers, meta, n_samples, where, RESET_HINT)
    arrays = {k: np.load(io.BytesIO(v), allow_pickle=False) for k, v in blobs.items()}
    check_values(arrays, where, RESET_HINT)
    return meta, arrays


def _row_checks(unit_rows: np.ndarray) -> np.ndarray:
    """One number per row that moves when the row changes: its product with a fixed
    irregular vector (cosines of multiples of the golden angle, the same everywhere).
    A tolerance, not a hash, so a one-ulp difference in normalisation is no change."""
    weights = np.cos(np.arange(unit_rows.shape[1]) * 2.399963229728653)
    checks = np.empty(len(unit_rows))
    # In blocks: a float64 copy of every row at once was twice the matrix (4 GB at 1M).
    for start in range(0, len(unit_rows), ROW_STEP):
        checks[start : start + ROW_STEP] = (
            unit_rows[start : start + ROW_STEP].astype(np.float64) @ weights
        )
    return checks


# Said when vectors the state holds are gone or changed: a reset loses the whole split,
# where taking those samples out of it (they leave the state) lets the next round run.
_HELD_VECTORS_WAYS_ON = (
    "Restore them; or take those samples out of the split, and the next round runs: "
    "exclude them (bubblefence_plugin.fo.exclude(dataset.select(ids)), the panel's "
    "Exclude) or delete them; or reset the state"
)


def _stored_embeddings(
    dataset: fo.Dataset, params: dict[str, Any], arrays: dict[str, np.ndarray]
) -> tuple[np.ndarray, list[str]]:
    """The state's embeddings matrix, rebuilt from the embeddings field in state order.

    The state keeps only a checksum per row: the vectors already live in the field,
    and a second copy in the run would double a million-sample dataset's storage.
    Returns the matrix (zero rows for samples deleted since) and the deleted ids.
    """
    field = params["embeddings_field"]
    ids = arrays["ids"].astype(str)
    dim = int(params["dim"])
    if "embedding_checks" not in arrays:
        where = f"the BubbleFence state of dataset {dataset.name!r}"
        raise damaged(where, "no embedding_checks array", RESET_HINT)
    if not dataset.has_field(field):
        raise ValueError(
            f"embeddings field {field!r}, which the BubbleFence state of dataset "
            f"{dataset.name!r} was built from, does not exist (renamed or deleted?); "
            f"rename it back (dataset.rename_sample_field(<new name>, {field!r})) or "
            f"recompute it, or {RESET_HINT}"
        )
    all_ids, vectors = read_vectors(dataset, field)
    # Where each state row's sample is in the field's order, -1 if deleted (by pandas'
    # hash index: 0.5 s at 1M ids, 1.8 s through a dict).
    position = pd.Index(all_ids).get_indexer(ids)
    present = position >= 0
    rows = [vectors[k] for k in position[present].tolist()]
    del all_ids, vectors, position  # held only by `rows` now: freed as soon as it is
    checked = checked_vectors(rows, field, dim, f"; {RESET_HINT}") if rows else None
    del rows
    if checked is not None and checked.errors:
        bad = [str(ids[present][i]) for i in sorted(checked.errors)][:5]
        raise ValueError(
            f"embeddings field {field!r} lost or broke the vectors of "
            f"{counted(len(checked.errors), 'sample')} the BubbleFence state holds (e.g. "
            f"{bad}). {_HELD_VECTORS_WAYS_ON}"
        )
    matrix = rows_with_room(len(ids), dim)  # the next round appends after them
    matrix[~present] = 0
    if checked is not None:
        matrix[present] = unit_rows(checked.embeddings, out=checked.embeddings)
        del checked
    checks = _row_checks(matrix)[present]  # no copy of the present rows
    changed = np.flatnonzero(np.abs(checks - arrays.pop("embedding_checks")[present]) > 1e-4)
    if len(changed):
        raise ValueError(
            f"embeddings field {field!r} changed for {counted(len(changed), 'sample')} since "
            f"they were split (e.g. {ids[present][changed[:5]].tolist()}); splitting new "
            "samples against changed embeddings would break the guarantees. "
            f"{_HELD_VECTORS_WAYS_ON}"
        )
    return matrix, ids[~present].tolist()
