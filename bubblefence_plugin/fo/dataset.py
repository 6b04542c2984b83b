"""The FiftyOne side of BubbleFence: embeddings, split fields and tags, the persisted state.

Operators, the command line and Python users all call `split`, `reset` and `export`
here, so the App, a delegated worker and a script behave identically.

Truth and mirrors. The custom run ``bubblefence`` (SPEC 3) is the single source of
truth: a sample is "assigned" when its id is in the stored state, never because a
field happens to be set. The sample fields (``split``, ``anchor_id``, ...) and the
``train``/``validation``/``test`` tags are a mirror written after the state commits,
and the next run repairs that mirror if a run died while writing it.

Crash safety. ``save_run_results(overwrite=True)`` deletes the old GridFS file before
writing the new one, so a kill in between would lose the state. We therefore write a
complete copy to the run ``bubblefence_commit`` first (the commit point), then
overwrite ``bubblefence``, then drop the copy; a reader that finds a complete commit
copy rolls it forward.

Concurrency. Two runs on one dataset are refused through a lock document in the
dataset's ExecutionStore (``set_if_absent`` is a MongoDB insert on a unique index, so
exactly one run wins). The lock carries an expiry that the holder refreshes while it
works, and host/pid, so a run that was killed does not block the next one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import numpy as np
import yaml

from ..core.config import BubbleFenceConfig, translate_reference_layout
from ..core.state import (
    StateDamagedError,
    array_from_npy_bytes,
    check_layout,
    check_model_name,
    check_values,
    damaged,
    npy_blob_header,
)

logger = logging.getLogger(__name__)

RUN_KEY = "bubblefence"
COMMIT_KEY = "bubblefence_commit"
STATE_FORMAT = "bubblefence-state"
# 1: the embeddings matrix inside the run; 2: rebuilt from the embeddings field.
STATE_VERSION = 2

EMBEDDING_FIELD = "bubblefence_embedding"
SPLIT_FIELD = "split"
ANCHOR_FIELD = "anchor_id"
SHELL_FIELD = "bubblefence_shell"
ROUND_FIELD = "bubblefence_round"
DUPLICATE_FIELD = "duplicate_of"
ERROR_FIELD = "bubblefence_error"
SPLIT_TAGS = ("train", "validation", "test")
SPLIT_VALUES = (*SPLIT_TAGS, "duplicate")
EXCLUDED_TAG = "excluded"

# Declared up front so the App sidebar shows them with the right types, and so a
# user field of the same name with another type is refused instead of clobbered.
RESULT_FIELDS: dict[str, type] = {
    SPLIT_FIELD: fo.StringField,
    ANCHOR_FIELD: fo.IntField,
    SHELL_FIELD: fo.StringField,
    ROUND_FIELD: fo.IntField,
    DUPLICATE_FIELD: fo.StringField,
    ERROR_FIELD: fo.StringField,
}

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = (
    "id",
    "filepath",
    "split",
    "anchor_id",
    "shell",
    "round",
    "duplicate_of",
    "export_folders",
)
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, CSV
# injection); the quote is added to cells starting with it too, so reading strips
# exactly one quote back.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
# Export folder names: one path component, portable characters only.
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_FOLDER_CHARS = 100  # well under every file system's 255-byte name limit

LOCK_STORE = "bubblefence"
LOCK_KEY = "run_lock"
LOCK_TTL_S = 15 * 60  # longer than any single step between heartbeats (one ingest call)
HEARTBEAT_S = 30.0
EMBED_CHUNK = 256  # images per embedding call: embeddings are saved after each chunk

ProgressCallback = Callable[[float, str], Any]
RESET_HINT = "run bubblefence_reset (or `python -m bubblefence_plugin reset`) to start over"


class BubbleFenceBusyError(RuntimeError):
    """Another BubbleFence run holds this dataset."""


class ModelUnavailableError(RuntimeError):
    """The embedding model could not be loaded (offline, not cached, bad folder)."""


@dataclass(frozen=True)
class Progress:
    """One progress event of `iter_split`: overall fraction done and what is happening."""

    fraction: float
    label: str


# --------------------------------------------------------------------------- npy blobs


def to_npy_bytes(array: np.ndarray) -> bytes:
    """npy bytes without pickle: object arrays are refused, not silently pickled."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def from_npy_bytes(blob: bytes, where: str = "a stored BubbleFence array") -> np.ndarray:
    """The array, after its npy header was checked against the bytes present (a crafted
    header cannot make this allocate more than the blob holds)."""
    return array_from_npy_bytes(blob, where, RESET_HINT)


# --------------------------------------------------------------------------- run lock


class RunLock:
    """Exclusive, crash-tolerant lock on one dataset's BubbleFence state.

    Use as a context manager. A lock is stale (and taken over atomically with
    compare-and-set) when its expiry has passed, or when it was taken on this host by
    a process that no longer exists.
    """

    def __init__(self, dataset: fo.Dataset, purpose: str = "split", ttl: int = LOCK_TTL_S):
        from fiftyone.operators.store import ExecutionStore

        self._store = ExecutionStore.create(LOCK_STORE, dataset_id=dataset._doc.id)
        self._dataset_name = dataset.name
        self._ttl = ttl
        self._value: dict[str, Any] | None = None
        self._last_beat = 0.0
        self.purpose = purpose

    def _new_value(self) -> dict[str, Any]:
        now = time.time()
        return {
            "token": uuid.uuid4().hex if self._value is None else self._value["token"],
            "purpose": self.purpose,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_started": _process_start_time(os.getpid()),
            "started": self._value["started"] if self._value else now,
            "expires": now + self._ttl,
        }

    def acquire(self) -> None:
        value = self._new_value()
        for _ in range(3):
            if self._store.set_if_absent(LOCK_KEY, value, ttl=self._ttl):
                break
            current = self._store.get(LOCK_KEY)
            if current is None:
                continue  # released or expired between the two calls
            if not _lock_is_stale(current):
                started = time.strftime(
                    "%Y-%m-%d %H:%M:%S UTC", time.gmtime(current.get("started", 0))
                )
                raise BubbleFenceBusyError(
                    f"another BubbleFence {current.get('purpose', 'run')} is in progress on "
                    f"dataset {self._dataset_name!r} (host {current.get('host')}, pid "
                    f"{current.get('pid')}, started {started}); wait for it to finish. "
                    "A run that was killed releases the dataset when its lock expires "
                    f"(at most {self._ttl // 60} minutes)."
                )
            if self._store.compare_and_set(LOCK_KEY, current, value, ttl=self._ttl):
                logger.warning("Took over a stale BubbleFence lock on %s", self._dataset_name)
                break
        else:
            raise BubbleFenceBusyError(
                f"could not lock dataset {self._dataset_name!r}: it changed hands repeatedly"
            )
        self._value = value
        self._last_beat = time.monotonic()

    def heartbeat(self, force: bool = False) -> None:
        """Extends the expiry; raises if the lock was lost (then nothing may be committed)."""
        if self._value is None:
            raise BubbleFenceBusyError("the BubbleFence lock is not held")
        if not force and time.monotonic() - self._last_beat < HEARTBEAT_S:
            return
        new = self._new_value()
        if not self._store.compare_and_set(LOCK_KEY, self._value, new, ttl=self._ttl):
            self._value = None
            raise BubbleFenceBusyError(
                f"lost the BubbleFence lock on dataset {self._dataset_name!r} (it expired "
                "and another run took it); this run stops without committing"
            )
        self._value = new
        self._last_beat = time.monotonic()

    def release(self) -> None:
        if self._value is None:
            return
        current = self._store.get(LOCK_KEY)
        if current is not None and current.get("token") == self._value["token"]:
            self._store.delete(LOCK_KEY)
        self._value = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _process_start_time(pid: int) -> float | None:
    # The start time guards against a recycled pid being mistaken for the lock holder.
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:
        return None


def _lock_is_stale(value: dict[str, Any]) -> bool:
    if float(value.get("expires", 0)) < time.time():
        return True
    if value.get("host") != socket.gethostname():
        return False
    pid = value.get("pid")
    if not isinstance(pid, int):
        return True
    started = _process_start_time(pid)
    if started is None:
        return True  # no such process on this host
    recorded = value.get("pid_started")
    return recorded is not None and abs(started - float(recorded)) > 1.0


def is_locked(dataset: fo.Dataset) -> bool:
    """Whether a live BubbleFence run currently holds ``dataset``."""
    from fiftyone.operators.store import ExecutionStore

    current = ExecutionStore.create(LOCK_STORE, dataset_id=dataset._doc.id).get(LOCK_KEY)
    return current is not None and not _lock_is_stale(current)


# --------------------------------------------------------------------------- state


def state_info(samples: foc.SampleCollection) -> dict[str, Any] | None:
    """The stored run's parameters (config, source, rounds), cheap: no arrays are read."""
    dataset = samples._root_dataset
    for key in (RUN_KEY, COMMIT_KEY):
        if dataset.has_run(key):
            params = _run_params(dataset, key)
            if params.get("format") == STATE_FORMAT:
                return params
    return None


def _run_params(dataset: fo.Dataset, key: str) -> dict[str, Any]:
    config = dataset.get_run_info(key).config
    return {k: v for k, v in config.serialize().items() if k not in ("cls", "type")}


def _read_run(dataset: fo.Dataset, key: str) -> tuple[dict[str, Any], Any] | None:
    """(params, results) of a complete stored state, or None if absent or half-written."""
    if not dataset.has_run(key):
        return None
    try:
        results = dataset.load_run_results(key, cache=False, load_view=False)
    except Exception as e:  # its GridFS file was deleted by an interrupted overwrite
        logger.warning("BubbleFence state copy %r is unreadable (%s)", key, e)
        return None
    if results is None or getattr(results, "arrays", None) is None:
        return None
    return _run_params(dataset, key), results


def load_state(
    samples: foc.SampleCollection, embeddings: bool = True
) -> tuple[Any, dict[str, Any]] | None:
    """Loads the stored `BubbleFence` and its run parameters, or None if there is none.

    ``embeddings=False`` skips rebuilding the matrix from the embeddings field: for
    reading assignments only (the export manifest); such a state cannot ingest.
    """
    from ..core.pipeline import BubbleFence

    dataset = samples._root_dataset
    found = _read_run(dataset, COMMIT_KEY) or _read_run(dataset, RUN_KEY)
    if found is None:
        if dataset.has_run(RUN_KEY) or dataset.has_run(COMMIT_KEY):
            raise StateDamagedError(
                f"the BubbleFence state of dataset {dataset.name!r} is unreadable; {RESET_HINT}"
            )
        return None
    params, results = found
    if params.get("format") != STATE_FORMAT:
        raise ValueError(
            f"run {RUN_KEY!r} on dataset {dataset.name!r} was not written by BubbleFence; "
            "delete it with dataset.delete_run() or reset"
        )
    version = int(params.get("state_version", 0))
    if version > STATE_VERSION:
        raise ValueError(
            f"the BubbleFence state of {dataset.name!r} has version {version}, written by a "
            f"newer BubbleFence (this one reads up to {STATE_VERSION}); upgrade the plugin"
        )
    meta, arrays = _checked_state(dataset, params, results)
    gone: list[str] = []
    if not embeddings:
        arrays["embeddings"] = np.empty((len(arrays["ids"]), 0), np.float32)
    elif "embeddings" not in arrays:
        arrays["embeddings"], gone = _stored_embeddings(dataset, params, arrays)
    try:
        bf = BubbleFence.from_state_dict(meta, arrays)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        where = f"the BubbleFence state of dataset {dataset.name!r}"
        raise damaged(where, f"{type(e).__name__}: {e}", RESET_HINT) from e
    if gone:
        bf.forget(gone)  # deleted from the dataset since the state was written
    return bf, params


def _checked_state(
    dataset: fo.Dataset, params: dict[str, Any], results: Any
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The stored meta and arrays, checked (`state.check_layout`) before any array is
    allocated, and the run parameters the next steps use (model, field, dimension)."""
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
    return unit_rows.astype(np.float64) @ weights


def _stored_embeddings(
    dataset: fo.Dataset, params: dict[str, Any], arrays: dict[str, np.ndarray]
) -> tuple[np.ndarray, list[str]]:
    """The state's embeddings matrix, rebuilt from the embeddings field in state order.

    The state keeps only a checksum per row: the vectors already live in the field,
    and a second copy in the run would double a million-sample dataset's storage.
    Returns the matrix (zero rows for samples deleted since) and the deleted ids.
    """
    from ..core.pipeline import unit_rows
    from ..embedder import embeddings_from_array

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
    all_ids, vectors = dataset.values(["id", field])
    position = dict(zip(all_ids, range(len(all_ids)), strict=True))
    present = np.array([i in position for i in ids], dtype=bool)
    rows = [vectors[position[i]] for i in ids[present]]
    checked = embeddings_from_array(rows, dim=dim) if rows else None
    if checked is not None and checked.errors:
        bad = [ids[present][i] for i in sorted(checked.errors)][:5]
        raise ValueError(
            f"embeddings field {field!r} lost or broke the vectors of {len(checked.errors)} "
            f"samples the BubbleFence state holds (e.g. {bad}); restore them or reset the state"
        )
    matrix = np.zeros((len(ids), dim), dtype=np.float32)
    if checked is not None:
        matrix[present] = unit_rows(checked.embeddings)
    checks = _row_checks(matrix[present])
    changed = np.flatnonzero(np.abs(checks - arrays.pop("embedding_checks")[present]) > 1e-4)
    if len(changed):
        raise ValueError(
            f"embeddings field {field!r} changed for {len(changed)} samples since they were "
            f"split (e.g. {ids[present][changed[:5]].tolist()}); splitting new samples against "
            "changed embeddings would break the guarantees. Restore them or reset the state"
        )
    return matrix, ids[~present].tolist()


def _put_run(dataset: fo.Dataset, key: str, params: dict[str, Any], payload: dict) -> None:
    config = dataset.init_run(**params)
    if dataset.has_run(key):
        dataset.update_run_config(key, config)
    else:
        dataset.register_run(key, config)
    results = dataset.init_run_results(key, **payload)
    dataset.save_run_results(key, results, overwrite=True, cache=False)


def save_state(dataset: fo.Dataset, bf: Any, params: dict[str, Any]) -> None:
    """Commits the state atomically (write-ahead copy first, see the module docstring)."""
    meta, arrays = bf.state_dict()
    # The vectors live in the embeddings field; a checksum per row detects edits.
    arrays["embedding_checks"] = _row_checks(arrays.pop("embeddings"))
    payload = {"meta": meta, "arrays": {k: to_npy_bytes(v) for k, v in arrays.items()}}
    _put_run(dataset, COMMIT_KEY, params, payload)  # <- the commit point
    _put_run(dataset, RUN_KEY, params, payload)
    dataset.delete_run(COMMIT_KEY)


def _finish_interrupted_commit(dataset: fo.Dataset) -> None:
    found = _read_run(dataset, COMMIT_KEY)
    if found is None:
        if dataset.has_run(COMMIT_KEY):
            dataset.delete_run(COMMIT_KEY)  # half-written copy: never committed
        return
    params, results = found
    logger.info("Finishing an interrupted BubbleFence commit on %s", dataset.name)
    _put_run(dataset, RUN_KEY, params, {"meta": results.meta, "arrays": results.arrays})
    dataset.delete_run(COMMIT_KEY)


def _set_fields_round(dataset: fo.Dataset, params: dict[str, Any], value: int) -> None:
    params["fields_round"] = int(value)
    dataset.update_run_config(RUN_KEY, dataset.init_run(**params))


# --------------------------------------------------------------------------- fields


def _check_result_fields(dataset: fo.Dataset, names: Iterable[str] = tuple(RESULT_FIELDS)) -> None:
    for name in names:
        ftype = RESULT_FIELDS[name]
        field = dataset.get_field(name)
        if field is None:
            dataset.add_sample_field(name, ftype)
        elif not isinstance(field, ftype):
            raise ValueError(
                f"dataset {dataset.name!r} already has a field {name!r} of type "
                f"{type(field).__name__}; BubbleFence writes a {ftype.__name__} there. "
                "Rename or delete that field first"
            )


def _write_assignments(dataset: fo.Dataset, table: dict[str, list]) -> None:
    """Mirrors assignments into fields and tags; idempotent, so a repair can rerun it.

    One bulk write, not a `set_values` per field: samples with the same values (all
    train samples of a round; a bubble's shell) share one update, which at 100k samples
    takes seconds where six `set_values` took 24 s. It goes through FiftyOne's own
    `_bulk_write`, which refreshes loaded samples; the fields exist already
    (`_check_result_fields`), and `last_modified_at` is set as `set_values` sets it.
    """
    from bson import ObjectId
    from pymongo import UpdateMany

    ids = table["id"]
    if not ids:
        return
    now = datetime.now(timezone.utc).replace(tzinfo=None)  # FiftyOne stores naive UTC
    columns = ("split", "anchor_id", "shell", "round", "duplicate_of")
    same_values: dict[tuple, list[ObjectId]] = {}
    for sid, *values in zip(ids, *(table[c] for c in columns), strict=True):
        same_values.setdefault(tuple(values), []).append(ObjectId(sid))
    # Untag first: stale tags (an earlier interrupted write, zoo split tags) must not
    # leave a sample tagged both train and test. `ordered` keeps this before the tagging.
    stale = {"$pull": {"tags": {"$in": list(SPLIT_TAGS)}}}
    ops = [
        UpdateMany({"_id": {"$in": chunk}}, stale) for chunk in _chunks(list(map(ObjectId, ids)))
    ]
    for (split_value, anchor, shell, rnd, duplicate), oids in same_values.items():
        fields = {
            SPLIT_FIELD: split_value,
            ANCHOR_FIELD: anchor,
            SHELL_FIELD: shell,
            ROUND_FIELD: rnd,
            DUPLICATE_FIELD: duplicate,
            ERROR_FIELD: None,
            "last_modified_at": now,
        }
        update: dict[str, Any] = {"$set": fields}
        if split_value in SPLIT_TAGS:
            update["$addToSet"] = {"tags": split_value}
        ops.extend(UpdateMany({"_id": {"$in": chunk}}, update) for chunk in _chunks(oids))
    dataset._bulk_write(ops, ids=ids, ordered=True)


def _chunks(items: list, size: int = 50_000) -> Iterator[list]:
    """Slices of at most `size`: a query's id list must stay under MongoDB's 16 MB."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _assignment_table(ids: Sequence[str], split, anchor, shell, rnd, dup) -> dict[str, list]:
    """Plain Python lists with None where a field is unset (train has no anchor or shell)."""
    anchor_list = [None if int(a) < 0 else int(a) for a in np.asarray(anchor)]
    shell_list = [s if s else None for s in np.asarray(shell, dtype=object)]
    dup_list = [d if d else None for d in np.asarray(dup, dtype=object)]
    return {
        "id": [str(i) for i in ids],
        "split": [str(s) for s in np.asarray(split)],
        "anchor_id": anchor_list,
        "shell": shell_list,
        "round": [int(r) for r in np.broadcast_to(np.asarray(rnd), (len(ids),))],
        "duplicate_of": dup_list,
    }


def _table_from_frame(frame: Any) -> dict[str, list]:
    return _assignment_table(
        frame["id"].tolist(),
        frame["split"].to_numpy(),
        frame["anchor_id"].fillna(-1).to_numpy(),
        frame["shell"].fillna("").to_numpy(),
        frame["round"].to_numpy(),
        frame["duplicate_of"].fillna("").to_numpy(),
    )


# --------------------------------------------------------------------------- config


def resolve_config(
    previous: BubbleFenceConfig | None,
    config: BubbleFenceConfig | dict | str | os.PathLike | None,
    overrides: dict[str, Any],
) -> tuple[BubbleFenceConfig, list[str]]:
    """The config of this round and the names of knobs that differ from the stored one.

    Without an explicit config a later round continues with the stored one, so a
    plain re-run never changes a knob by accident.
    """
    start = previous or BubbleFenceConfig()
    if config is None:
        explicit: dict[str, Any] = {}
    elif isinstance(config, BubbleFenceConfig):
        start, explicit = config, {}  # a complete config replaces the stored one
    elif isinstance(config, dict):
        explicit = dict(config)
    else:
        BubbleFenceConfig.from_yaml(config)  # validates, warns about ignored keys
        data = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        explicit, _ = translate_reference_layout(data)
    # Only the knobs a file, dict or keyword names change; the others keep their
    # stored value, so a partial YAML does not silently reset e.g. the model.
    cfg = BubbleFenceConfig.from_dict({**start.to_dict(), **explicit, **overrides})
    if previous is None:
        return cfg, []
    old, new = previous.to_dict(), cfg.to_dict()
    return cfg, sorted(k for k in new if new[k] != old.get(k))


def check_split_config(
    samples: foc.SampleCollection | None,
    config: BubbleFenceConfig | dict | str | os.PathLike | None,
    overrides: dict[str, Any],
) -> BubbleFenceConfig:
    """The round's config, checked against the stored one without writing anything:
    for front ends that write before the round (the CLI adds folders first)."""
    info = state_info(samples) if samples is not None else None
    previous = BubbleFenceConfig.from_dict(info["config"]) if info else None
    cfg, changed = resolve_config(previous, config, overrides)
    if previous is not None:
        _refuse_frozen(previous, cfg, changed)
    return cfg


def _refuse_frozen(previous: BubbleFenceConfig, cfg: BubbleFenceConfig, changed: list[str]) -> None:
    from ..core.config import FROZEN_AFTER_FIRST_ROUND

    frozen = [k for k in changed if k in FROZEN_AFTER_FIRST_ROUND]
    if frozen:
        old = previous.to_dict()
        detail = ", ".join(f"{k}: {old[k]!r} -> {getattr(cfg, k)!r}" for k in frozen)
        raise ValueError(
            f"cannot change {detail} after the first round: earlier samples were split "
            "with the stored value. Keep it, or reset the dataset's BubbleFence state "
            "(bubblefence_reset) to start over with the new value"
        )


def _apply_config_change(bf: Any, cfg: BubbleFenceConfig, changed: list[str]) -> Any:
    """Knobs that would change earlier assignments are refused; the rest apply to new rounds."""
    _refuse_frozen(bf.config, cfg, changed)
    if not changed:
        return bf
    bf.reconfigure(**{k: getattr(cfg, k) for k in changed})
    return bf


# --------------------------------------------------------------------------- embeddings

_EMBEDDER_CACHE: dict[tuple, Any] = {}


def get_embedder(model: str, device: str = "auto", batch_size: int = 64) -> Any:
    """A cached `ImageEmbedder`: the App server re-runs the operator, not the model load."""
    key = (str(model), str(device), int(batch_size))
    if key not in _EMBEDDER_CACHE:
        from ..embedder import ImageEmbedder

        try:
            embedder = ImageEmbedder(model=model, device=device, batch_size=batch_size)
        except ValueError:
            raise
        except Exception as e:
            raise ModelUnavailableError(
                f"could not load the embedding model {model!r}: {str(e).rstrip('.')}. "
                "Alternatives: a local model folder (--model /path/to/clip, or model_name "
                "in the operator form), or an existing embeddings field"
            ) from e
        _EMBEDDER_CACHE.clear()  # keep at most one model in memory
        _EMBEDDER_CACHE[key] = embedder
    return _EMBEDDER_CACHE[key]


def _field_vectors(dataset: fo.Dataset, field: str) -> None:
    f = dataset.get_field(field)
    if f is None:
        vector_fields = sorted(dataset.get_field_schema(ftype=fo.VectorField))
        raise ValueError(
            f"embeddings field {field!r} does not exist on dataset {dataset.name!r}; "
            f"vector fields: {vector_fields}"
        )
    if not isinstance(f, (fo.VectorField, fo.ListField, fo.ArrayField)):
        raise ValueError(f"embeddings field {field!r} is a {type(f).__name__}, not a vector field")


def _embed_missing(
    dataset: fo.Dataset,
    ids: list[str],
    embedder: Any,
    lock: RunLock | None,
    span: tuple[float, float],
    field: str = EMBEDDING_FIELD,
    chunk_size: int = EMBED_CHUNK,
) -> Generator[Progress, None, tuple[int, int, dict[str, str]]]:
    """Embeds the samples among ``ids`` that lack ``field``, saving per chunk.

    Saving each chunk means a killed run keeps the work done; the next run embeds
    only what is still missing. Returns (samples tried, embeddings this call wrote,
    errors); the two counts differ when another writer (an embedding shard) got to
    some samples first. ``lock`` (the split's) is kept alive between chunks.
    """
    todo = dataset.select(ids).exists(field, False)
    todo_ids, paths = todo.values(["id", "filepath"])
    errors: dict[str, str] = {}
    done = written = 0
    for start in range(0, len(todo_ids), chunk_size):
        chunk_ids = todo_ids[start : start + chunk_size]
        out = embedder.embed_paths(paths[start : start + chunk_size])
        written += _write_once(dataset, field, chunk_ids, out)
        errors.update({chunk_ids[row]: msg for row, msg in out.errors.items()})
        done += len(chunk_ids)
        if lock is not None:
            lock.heartbeat()
        frac = span[0] + (span[1] - span[0]) * done / len(todo_ids)
        yield Progress(frac, f"Embedded {done}/{len(todo_ids)} images")
    return len(todo_ids), written, errors


def _write_once(dataset: fo.Dataset, field: str, ids: list[str], out: Any) -> int:
    """Writes one chunk's embeddings and errors where ``field`` is still empty.

    Each update is conditional on the sample having no embedding yet, which MongoDB
    checks atomically per document: of two writers (shards of different layouts, a
    split racing its shards) exactly one writes a sample, and a stored vector never
    changes, which the state's per-sample checksums rely on. A successful sample's
    old error is cleared; a failed one gets its message unless another writer has
    embedded it meanwhile. Returns how many embeddings this call wrote. Raw updates
    (as in `_write_assignments`) because ``set_values`` cannot be conditional; the
    loaded samples are refreshed as ``set_values`` would.
    """
    from bson import ObjectId
    from fiftyone.core.odm.database import bulk_write
    from fiftyone.core.sample import Sample
    from pymongo import UpdateOne

    now = datetime.now(timezone.utc).replace(tzinfo=None)  # FiftyOne stores naive UTC
    vectors = dataset.get_field(field)
    ok_rows = np.flatnonzero(out.ok)
    ok_ops = [
        UpdateOne(
            {"_id": ObjectId(ids[row]), field: None},
            {"$set": {field: vectors.to_mongo(vec), ERROR_FIELD: None, "last_modified_at": now}},
        )
        for row, vec in zip(ok_rows, out.embeddings, strict=True)
    ]
    error_ops = [
        UpdateOne(
            {"_id": ObjectId(ids[row]), field: None},
            {"$set": {ERROR_FIELD: msg, "last_modified_at": now}},
        )
        for row, msg in out.errors.items()
    ]
    coll = dataset._sample_collection
    written = sum(r.modified_count for r in bulk_write(ok_ops, coll)) if ok_ops else 0
    if error_ops:
        bulk_write(error_ops, coll)
    Sample._reload_docs(dataset._sample_collection_name, sample_ids=ids)
    return written


def _read_embeddings(
    dataset: fo.Dataset, ids: list[str], field: str, dim: int | None
) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """Embeddings of ``ids`` from ``field``, checked: bad rows become per-sample errors."""
    from ..embedder import embeddings_from_array

    ordered_ids, vectors = dataset.select(ids).values(["id", field])
    try:
        checked = embeddings_from_array(vectors, dim=dim)
    except ValueError as e:
        raise ValueError(
            f"embeddings field {field!r} cannot be used: {e}"
            + (
                f". The BubbleFence state of this dataset holds {dim}-d embeddings; "
                "mixing dimensions (another model) is refused. Reset the state "
                "(bubblefence_reset) to split with this field from scratch"
                if dim
                else ""
            )
        ) from e
    # A few rows of another length are per-sample errors like unreadable images; a
    # field where no row fits the state is refused above (another model).
    ok_ids = [ordered_ids[i] for i in checked.indices]
    errors = {ordered_ids[i]: f"{field}: {m}" for i, m in checked.errors.items()}
    return ok_ids, checked.embeddings, errors


# Label list types: a sample carries the labels of all the objects in the list.
_LABEL_LISTS = {
    fo.Classifications: "classifications",
    fo.Detections: "detections",
    fo.Polylines: "polylines",
    fo.Keypoints: "keypoints",
}
_SCALAR_FIELDS = (fo.StringField, fo.IntField, fo.BooleanField, fo.ObjectIdField)
# Sample fields never offered as labels or groups (our own results, paths, split tags).
_NOT_LABELS = {"id", "filepath", "tags", "metadata", ERROR_FIELD, EMBEDDING_FIELD}


def _label_path(field: Any, name: str, multi_ok: bool) -> tuple[str, bool] | None:
    """(values path, several labels per sample) of a usable label/group field, else None."""
    if isinstance(field, fo.EmbeddedDocumentField):
        doc = field.document_type
        for label_list, attr in _LABEL_LISTS.items():
            if multi_ok and issubclass(doc, label_list):
                return f"{name}.{attr}.label", True
        if issubclass(doc, fo.Classification):
            return f"{name}.label", False
        if issubclass(doc, fo.Group):  # a flattened grouped dataset: the group's id
            return f"{name}.id", False
    elif isinstance(field, fo.ListField) and isinstance(field.field, _SCALAR_FIELDS):
        return (name, True) if multi_ok else None
    elif isinstance(field, _SCALAR_FIELDS):
        return name, False
    return None


def label_field_choices(dataset: fo.Dataset, multi_ok: bool = True) -> list[str]:
    """Sample fields usable as labels (``multi_ok``) or as groups (one value per sample)."""
    return sorted(
        name
        for name, field in dataset.get_field_schema().items()
        if name not in _NOT_LABELS
        and name not in RESULT_FIELDS
        and _label_path(field, name, multi_ok) is not None
    )


def _label_source(dataset: fo.Dataset, field: str, param: str) -> tuple[str, bool]:
    """(values path, several labels per sample) of a label or group field; checks it.

    Labels (``param="label_field"``) come from a Classification, a label list
    (Classifications, Detections, Polylines, Keypoints: every object's label), a
    string/int field or a list of strings; groups from a string/int/ObjectId field, a
    Classification's label or a Group's id.
    """
    multi_ok = param == "label_field"
    schema_field = dataset.get_field(field)
    if schema_field is None:
        raise ValueError(f"{param}={field!r}: dataset {dataset.name!r} has no such field")
    found = _label_path(schema_field, field, multi_ok)
    if found is None:
        kinds = (
            "a Classification, Classifications, Detections, Polylines, Keypoints, string, "
            "int or list-of-strings field"
            if multi_ok
            else "a string, int, ObjectId, Classification or Group field"
        )
        raise ValueError(f"{param}={field!r} is a {type(schema_field).__name__}; expected {kinds}")
    return found


def _label_values(
    dataset: fo.Dataset, ids: list[str], field: str | None, param: str = "label_field"
) -> np.ndarray | list | None:
    """Per sample (dataset order): its label, its list of labels, or its group id."""
    if not field:
        return None
    path, multi = _label_source(dataset, field, param)
    values = dataset.select(ids).values(path)
    return [v or [] for v in values] if multi else label_strings(values)


def label_strings(values: Iterable[Any]) -> np.ndarray:
    """Label or group values as strings: a Classification's label, "" for None."""
    out = []
    for v in values:
        if v is not None and hasattr(v, "label"):  # Classification and friends
            v = v.label
        out.append("" if v is None else str(v))
    return np.asarray(out, dtype=str)


# --------------------------------------------------------------------------- split


def split(
    samples: foc.SampleCollection,
    config: BubbleFenceConfig | dict | str | os.PathLike | None = None,
    *,
    embeddings_field: str | None = None,
    label_field: str | None = None,
    group_field: str | None = None,
    progress: ProgressCallback | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Runs one BubbleFence round on the not-yet-assigned samples of ``samples``.

    ``samples`` is a dataset or any view of an image dataset (e.g. ``ctx.target_view()``);
    bubbles are global to the dataset, the view only chooses which new samples join.
    ``embeddings_field`` names an existing vector field to use instead of computing
    ``bubblefence_embedding`` with ``config.model_name``. Keyword ``overrides`` are
    config knobs (``eval_ratio=0.3``). Returns a JSON-able summary of the round.
    """
    gen = iter_split(
        samples,
        config,
        embeddings_field=embeddings_field,
        label_field=label_field,
        group_field=group_field,
        **overrides,
    )
    return drive(gen, progress)


def drive(gen: Generator[Progress, None, Any], progress: ProgressCallback | None = None) -> Any:
    """Runs a generator of `Progress` events to its return value, reporting each event."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(event.fraction, event.label)


def iter_split(
    samples: foc.SampleCollection,
    config: BubbleFenceConfig | dict | str | os.PathLike | None = None,
    *,
    embeddings_field: str | None = None,
    label_field: str | None = None,
    group_field: str | None = None,
    **overrides: Any,
) -> Generator[Progress, None, dict[str, Any]]:
    """`split` as a generator of `Progress` events (for live progress in the App).

    The summary is the generator's return value (``StopIteration.value``).
    """
    dataset = _check_collection(samples)
    with RunLock(dataset, "split") as lock:
        return (
            yield from _split_locked(
                samples,
                dataset,
                lock,
                config,
                embeddings_field,
                label_field,
                group_field,
                overrides,
            )
        )


def _check_collection(samples: foc.SampleCollection) -> fo.Dataset:
    if not isinstance(samples, foc.SampleCollection):
        raise ValueError(f"expected a FiftyOne dataset or view, got {type(samples).__name__}")
    if samples._is_patches or samples._is_frames or samples._is_clips:
        raise ValueError("BubbleFence splits samples; pass the dataset, not a patches/frames view")
    dataset = samples._root_dataset
    if dataset.media_type == "group":
        raise ValueError(
            f"{dataset.name!r} is a grouped dataset; BubbleFence splits flat image datasets. "
            "Flatten its image slices with dataset.select_group_slices(media_type='image')"
            ".clone() and split that with group_field='group': the samples of one group "
            "then never straddle train and eval"
        )
    if dataset.media_type not in ("image", None):
        raise ValueError(
            f"BubbleFence splits image datasets; {dataset.name!r} has media type "
            f"{dataset.media_type!r}"
        )
    return dataset


def _split_locked(
    samples: foc.SampleCollection,
    dataset: fo.Dataset,
    lock: RunLock,
    config: Any,
    embeddings_field: str | None,
    label_field: str | None,
    group_field: str | None,
    overrides: dict[str, Any],
) -> Generator[Progress, None, dict[str, Any]]:
    from ..core.pipeline import BubbleFence

    yield Progress(0.0, "Reading the BubbleFence state")
    _finish_interrupted_commit(dataset)
    loaded = load_state(dataset)
    bf, params = loaded if loaded else (None, {})
    source_field = embeddings_field or EMBEDDING_FIELD
    use_model = source_field == EMBEDDING_FIELD

    cfg, changed = resolve_config(bf.config if bf else None, config, overrides)
    if bf is not None:
        stored_field = params.get("embeddings_field")
        if stored_field and stored_field != source_field:
            raise ValueError(
                f"this dataset's BubbleFence state was built from embeddings field "
                f"{stored_field!r}; mixing it with {source_field!r} is refused. Use "
                f"{stored_field!r}, or reset the state to start over"
            )
        bf = _apply_config_change(bf, cfg, changed)
    # Label and group fields are remembered: a later round that names none keeps them, so a
    # new sample of a known group still follows its group; "" drops one explicitly.
    label_field = params.get("label_field") if label_field is None else label_field or None
    group_field = params.get("group_field") if group_field is None else group_field or None
    for field, param in ((label_field, "label_field"), (group_field, "group_field")):
        if field:
            _label_source(dataset, field, param)  # a wrong field fails before any embedding
    _check_result_fields(dataset)

    n_repaired = 0
    n_forgotten = 0
    assigned: set[str] = set()
    if bf is not None:
        frame = bf.assignments()
        # Repair the mirror if the previous run died between commit and field writes.
        fields_round = int(params.get("fields_round", -1))
        last_round = int(frame["round"].max()) if len(frame) else -1
        if fields_round < last_round:
            stale = frame[frame["round"] > fields_round]
            _write_assignments(dataset, _table_from_frame(stale))
            n_repaired = len(stale)
            _set_fields_round(dataset, params, last_round)
        # Samples deleted from the dataset since the last round leave the state
        # (`load_state` already dropped those it found without an embedding).
        n_forgotten = int(params.get("n_samples", bf.n_samples)) - bf.n_samples
        all_ids = set(dataset.values("id"))
        assigned = set(frame["id"].tolist())
        gone = sorted(assigned - all_ids)
        if gone:
            n_forgotten += int(bf.forget(gone))
            assigned -= set(gone)
    left = _leave_split_if_excluded(dataset, bf, params)
    assigned -= set(left)

    target = samples.match_tags(EXCLUDED_TAG, bool=False)
    target_ids = set(target.values("id"))
    new_ids = [i for i in dataset.select(list(target_ids - assigned)).values("id")]
    summary: dict[str, Any] = {
        "dataset": dataset.name,
        "n_target": len(target_ids),
        "n_new": len(new_ids),
        "n_embedded": 0,
        "n_errors": 0,
        "n_forgotten": n_forgotten,
        "n_repaired": n_repaired,
        "n_excluded_left": len(left),
        "config_changed": changed if bf is not None else [],
        "label_field": label_field,
        "group_field": group_field,
    }
    if not new_ids:
        if (n_forgotten or left) and bf is not None:
            save_state(dataset, bf, _params_for(dataset, bf, cfg, source_field, params))
            clear_excluded_fields(dataset)
        if not target_ids and not len(samples):
            message = "Nothing to split: the target view is empty (0 samples)"
        elif not target_ids:
            message = f"Nothing to split: every sample of the target is tagged {EXCLUDED_TAG!r}"
        else:
            message = "Nothing new to split: every sample in the target is already assigned"
        return _finish_summary(summary, bf, None, message)

    # Embeddings: compute what is missing, or read the chosen field.
    errors: dict[str, str] = {}
    dim = bf.dim if bf is not None else None
    if use_model:
        embedder = get_embedder(cfg.model_name, cfg.device, cfg.batch_size)
        _check_embedding_field(dataset, embedder.model_name, embedder.dim)
        if dim is not None and embedder.dim != dim:
            raise ValueError(
                f"model {embedder.model_name!r} gives {embedder.dim}-d embeddings but the "
                f"state holds {dim}-d ones; reset the state to change model"
            )
        n_embedded, _, errors = yield from _embed_missing(
            dataset, new_ids, embedder, lock, (0.02, 0.8)
        )
        summary["n_embedded"] = n_embedded
    else:
        _field_vectors(dataset, source_field)
    yield Progress(0.8, "Reading embeddings")
    candidate_ids = [i for i in new_ids if i not in errors]
    ok_ids, emb, read_errors = _read_embeddings(dataset, candidate_ids, source_field, dim)
    errors.update(read_errors)
    if read_errors:
        dataset.set_values(ERROR_FIELD, read_errors, key_field="id")
    summary["n_errors"] = len(errors)
    summary["errors"] = dict(list(errors.items())[:20])
    if not ok_ids:
        return _finish_summary(
            summary,
            bf,
            None,
            f"No usable embeddings among the {len(new_ids)} new samples ({len(errors)} errors)",
        )

    # One core round.
    lock.heartbeat(force=True)
    yield Progress(0.85, f"Splitting {len(ok_ids)} new samples")
    if bf is None:
        bf = BubbleFence(cfg)
    kwargs: dict[str, Any] = {"ids": ok_ids}
    labels = _label_values(dataset, ok_ids, label_field)
    groups = _label_values(dataset, ok_ids, group_field, "group_field")
    if labels is not None:
        kwargs["labels"] = labels
    if groups is not None:
        kwargs["groups"] = groups
    result = bf.ingest(emb, **kwargs)
    lock.heartbeat(force=True)  # raises if the lock was lost: then nothing is committed

    yield Progress(0.9, "Saving the state")
    params = _params_for(dataset, bf, cfg, source_field, params)
    params["model_name"] = cfg.model_name if use_model else None
    params.update(label_field=label_field, group_field=group_field)
    save_state(dataset, bf, params)
    clear_excluded_fields(dataset)

    yield Progress(0.95, "Writing split fields and tags")
    table = _assignment_table(
        result.ids,
        result.split,
        result.anchor_id,
        result.shell,
        result.round,
        result.duplicate_of,
    )
    _write_assignments(dataset, table)
    _set_fields_round(dataset, params, int(result.round))
    yield Progress(0.97, "Placing the new samples on the 2-D map")
    summary = _finish_summary(summary, bf, result, None)
    from .map import update_after_round  # here: viz imports this module

    update_after_round(dataset, bf, summary)  # never raises: a failure is noted in the summary
    yield Progress(1.0, "Done")
    return summary


def _params_for(
    dataset: fo.Dataset, bf: Any, cfg: BubbleFenceConfig, field: str, old: dict[str, Any]
) -> dict[str, Any]:
    return {
        "method": "bubblefence",
        "format": STATE_FORMAT,
        "state_version": STATE_VERSION,
        "config": cfg.to_dict(),
        "embeddings_field": field,
        "model_name": old.get("model_name"),
        "label_field": old.get("label_field"),
        "group_field": old.get("group_field"),
        "dim": int(bf.dim) if bf.dim else None,
        "n_samples": int(bf.n_samples),
        "fields_round": int(old.get("fields_round", -1)),
        "excluded_ids": old.get("excluded_ids", []),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _leave_split_if_excluded(dataset: fo.Dataset, bf: Any, params: dict[str, Any]) -> list[str]:
    """Samples tagged `EXCLUDED_TAG` that the state holds leave it (`forget`); returns them.

    Nothing else moves: the others keep their split, bubble and shell. The run's
    parameters list every excluded sample (``excluded_ids``), so the exclusion is
    auditable. The caller commits, then calls `clear_excluded_fields`.
    """
    excluded = sorted(dataset.match_tags(EXCLUDED_TAG).values("id"))
    params["excluded_ids"] = excluded
    if bf is None or not excluded:
        return []
    held = set(bf.assignments()["id"].astype(str).tolist())
    left = [i for i in excluded if i in held]
    if left:
        bf.forget(left)
    return left


def clear_excluded_fields(dataset: fo.Dataset) -> int:
    """Clears the split fields and split tags of excluded samples; returns how many.

    Run after the commit that dropped them from the state; idempotent, so a run that
    died in between finishes the job next time.
    """
    if not dataset.has_field(ROUND_FIELD):
        return 0
    ids = dataset.match_tags(EXCLUDED_TAG).exists(ROUND_FIELD).values("id")
    if ids:
        view = dataset.select(ids)
        view.untag_samples(list(SPLIT_TAGS))
        view.clear_sample_fields([f for f in RESULT_FIELDS if f != ERROR_FIELD])
    return len(ids)


def _check_embedding_field(
    dataset: fo.Dataset, model_name: str, dim: int, name: str = EMBEDDING_FIELD
) -> None:
    """The field a model writes records that model, so vectors of two models never mix."""
    field = dataset.get_field(name)
    info = {"model_name": model_name, "dim": int(dim)}
    if field is None:
        dataset.add_sample_field(name, fo.VectorField, info=info)
        return
    if not isinstance(field, fo.VectorField):
        raise ValueError(
            f"field {name!r} is a {type(field).__name__}; embeddings are written to a "
            "VectorField: choose another field name or delete that field"
        )
    stored = field.info or {}
    if stored.get("model_name") not in (None, model_name) or stored.get("dim") not in (None, dim):
        redo = (
            "reset without keeping embeddings"
            if name == EMBEDDING_FIELD
            else f"delete field {name!r} or choose another one"
        )
        raise ValueError(
            f"field {name!r} holds embeddings of model {stored.get('model_name')!r} "
            f"({stored.get('dim')}-d), not of {model_name!r}; {redo} to recompute them "
            "with the new model"
        )
    if not stored:
        field.info = info
        field.save()


def _finish_summary(
    summary: dict[str, Any], bf: Any, result: Any, message: str | None
) -> dict[str, Any]:
    if result is not None:
        counts = Counter(str(s) for s in np.asarray(result.split))
        summary["round"] = int(result.round)
        summary["n_assigned"] = len(result.ids)
        summary["counts_round"] = {s: int(counts.get(s, 0)) for s in SPLIT_VALUES}
        summary["new_anchors"] = len(result.new_anchor_ids)
    else:
        summary["round"] = None
        summary["n_assigned"] = 0
        summary["counts_round"] = {s: 0 for s in SPLIT_VALUES}
        summary["new_anchors"] = 0
    if bf is not None:
        frame = bf.assignments()
        totals = Counter(frame["split"].astype(str).tolist())
        summary["counts_total"] = {s: int(totals.get(s, 0)) for s in SPLIT_VALUES}
        kept = sum(summary["counts_total"][s] for s in SPLIT_TAGS)
        held = summary["counts_total"]["validation"] + summary["counts_total"]["test"]
        summary["eval_share"] = round(held / kept, 4) if kept else 0.0
        summary["n_anchors"] = len(bf.anchors)
        core = bf.summary()
        summary.update({k: core[k] for k in ("labels", "groups") if k in core})
    else:
        summary["counts_total"] = {s: 0 for s in SPLIT_VALUES}
        summary["eval_share"] = 0.0
        summary["n_anchors"] = 0
    if message is None:
        c = summary["counts_round"]
        message = (
            f"Round {summary['round']}: {summary['n_assigned']} samples assigned "
            f"(train {c['train']}, validation {c['validation']}, test {c['test']}, "
            f"duplicates {c['duplicate']}); eval share {summary['eval_share']:.3f}; "
            f"{summary['new_anchors']} new bubbles, {summary['n_anchors']} in all"
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
            message += f"; {summary['n_errors']} samples failed (see {ERROR_FIELD})"
    summary["message"] = message
    return summary


# --------------------------------------------------------------------------- reset


def reset(samples: foc.SampleCollection, keep_embeddings: bool = False) -> dict[str, Any]:
    """Removes the state, the result fields and the split tags BubbleFence wrote.

    Works on the whole dataset (the state is dataset-wide). Refused while a run holds
    the dataset.
    """
    dataset = samples._root_dataset
    with RunLock(dataset, "reset"):
        assigned: list[str] = []
        if dataset.has_field(ROUND_FIELD):
            assigned = dataset.exists(ROUND_FIELD).values("id")
        n_untagged = 0
        if assigned:
            view = dataset.select(assigned)
            n_untagged = sum(view.count_sample_tags().get(t, 0) for t in SPLIT_TAGS)
            view.untag_samples(list(SPLIT_TAGS))
        removed_runs = [k for k in (RUN_KEY, COMMIT_KEY) if dataset.has_run(k)]
        for key in removed_runs:
            dataset.delete_run(key)
        from .map import delete_map  # here: viz imports this module

        removed_runs += delete_map(dataset)
        fields = list(RESULT_FIELDS)
        if not keep_embeddings:
            fields.append(EMBEDDING_FIELD)
        removed_fields = [f for f in fields if dataset.has_field(f)]
        if removed_fields:
            dataset.delete_sample_fields(removed_fields)
    return {
        "dataset": dataset.name,
        "removed_runs": removed_runs,
        "removed_fields": removed_fields,
        "n_samples_untagged": len(assigned),
        "n_tags_removed": int(n_untagged),
        "kept_embeddings": bool(keep_embeddings and dataset.has_field(EMBEDDING_FIELD)),
    }


# --------------------------------------------------------------------------- export

# Image formats offered in the App; any `fiftyone.types.Dataset` works from Python.
EXPORT_TYPES: dict[str, str] = {
    "FiftyOneDataset": "Full FiftyOne dataset (all fields, ids kept)",
    "ImageDirectory": "Images only",
    "FiftyOneImageClassificationDataset": "Images + classification labels JSON",
    "ImageClassificationDirectoryTree": "One folder per class",
    "COCODetectionDataset": "COCO detection",
    "VOCDetectionDataset": "Pascal VOC detection",
    "YOLOv5Dataset": "YOLOv5 (one folder, a split per export)",
    "CVATImageDataset": "CVAT image",
    "FiftyOneImageDetectionDataset": "Images + detections JSON",
}
# Exporters that write all splits into one directory, selected with `split=`.
_SPLIT_ARG_TYPES = ("YOLOv5Dataset",)


def _dataset_type(dataset_type: str | type) -> tuple[str, type]:
    if isinstance(dataset_type, str):
        cls = getattr(fo.types, dataset_type, None)
        if cls is None:
            raise ValueError(
                f"dataset_type={dataset_type!r} is not a fiftyone.types dataset type; "
                f"for example {sorted(EXPORT_TYPES)}"
            )
        return dataset_type, cls
    return dataset_type.__name__, dataset_type


def export(
    samples: foc.SampleCollection,
    export_dir: str | os.PathLike,
    dataset_type: str | type = "FiftyOneDataset",
    *,
    splits: Iterable[str] | None = None,
    tags: Iterable[str] | None = None,
    label_field: str | None = None,
    export_media: bool | str = True,
    overwrite: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Exports each split (or each of ``tags``) of ``samples`` to ``export_dir/<folder>``.

    Each name becomes a safe folder name (`export_folders`: ``../x`` -> ``x``), and
    every path is checked to stay inside ``export_dir`` before anything is written.
    Also writes ``export_dir/manifest.csv`` (one row per exported sample: id,
    filepath, split, anchor_id, shell, round, duplicate_of from the stored state, and
    export_folders, the sample's names and folders as JSON). A non-empty
    ``export_dir`` is refused unless ``overwrite=True``, which empties it first.
    """
    export_dir = Path(export_dir).expanduser().resolve()
    type_name, type_cls = _dataset_type(dataset_type)
    names = _export_names(tags if tags else splits or SPLIT_TAGS)
    folders = export_folders(names)
    _check_export_kwargs(kwargs)
    for folder in folders.values():
        path_inside(export_dir, export_dir / folder)
    loaded = load_state(samples, embeddings=False)  # a damaged state fails before any write
    table = _table_from_frame(loaded[0].assignments()) if loaded else {"id": []}
    _prepare_export_dir(samples, export_dir, overwrite)

    exported: dict[str, int] = {}
    exported_as: dict[str, dict[str, str]] = {}  # sample id -> {name: folder}, in order
    for name in names:
        view = samples.match_tags(name)
        exported[name] = len(view)
        if not exported[name]:
            continue
        args = dict(kwargs)
        if label_field:
            args["label_field"] = label_field
        if type_name in _SPLIT_ARG_TYPES:
            args.update(export_dir=str(export_dir), split=folders[name])
        else:
            args["export_dir"] = str(export_dir / folders[name])
        if type_name != "FiftyOneDataset" or export_media is not True:
            args["export_media"] = export_media
        view.export(dataset_type=type_cls, **args)
        for sid in view.values("id"):
            exported_as.setdefault(sid, {})[name] = folders[name]

    manifest = export_dir / MANIFEST_NAME
    _write_manifest(samples._root_dataset, exported_as, table, manifest)
    return {
        "export_dir": str(export_dir),
        "dataset_type": type_name,
        "counts": exported,
        "folders": folders,
        "manifest": str(manifest),
        "n_manifest_rows": len(exported_as),
    }


def _export_names(names: Any) -> list[str]:
    if isinstance(names, str):
        names = [names]  # one tag, not its letters
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("nothing to export: give at least one split or tag")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"splits/tags must be non-empty strings, got {bad[:5]}")
    return names


def export_folders(names: Sequence[str]) -> dict[str, str]:
    """A safe folder name per split/tag name: one path component of letters, digits,
    ``.``, ``_`` and ``-`` that is not ``.``, ``..`` or the manifest, unique per name
    (``_2``, ``_3`` on a clash). ``train`` stays ``train``; ``../../x`` becomes ``x``."""
    out: dict[str, str] = {}
    used = {MANIFEST_NAME}
    for name in names:
        base = safe_name(name, "tag")
        folder, k = base, 1
        while folder.lower() in used:
            k += 1
            folder = f"{base}_{k}"
        used.add(folder.lower())  # case-insensitive file systems would merge the two
        out[name] = folder
    return out


def safe_name(text: str, fallback: str) -> str:
    """``text`` as one portable file or folder name (letters, digits, ``.``, ``_``,
    ``-``; no leading dot, so never ``..``), or ``fallback`` when nothing is left."""
    return _UNSAFE_CHARS.sub("_", str(text)).strip("._-")[:_MAX_FOLDER_CHARS] or fallback


def path_inside(root: Path, path: Path) -> Path:
    """``path`` resolved, refused unless it lies strictly inside ``root`` (resolved)."""
    root = root.resolve()
    resolved = path.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise ValueError(f"refusing to write {str(resolved)!r}: it is outside {str(root)!r}")
    return resolved


def _check_export_kwargs(kwargs: dict[str, Any]) -> None:
    """Exporter paths stay relative to the export folder: no absolute path, no ``..``."""
    reserved = sorted({"export_dir", "split"} & set(kwargs))
    if reserved:
        raise ValueError(f"export() sets {reserved} itself; do not pass them")
    for key, value in kwargs.items():
        if (key.endswith(("_path", "_dir")) and isinstance(value, (str, os.PathLike))) and (
            Path(value).is_absolute() or ".." in Path(value).parts
        ):
            raise ValueError(
                f"{key}={str(value)!r} would write outside the export folder; give a path "
                "relative to it, without '..'"
            )


def _prepare_export_dir(samples: foc.SampleCollection, export_dir: Path, overwrite: bool) -> None:
    if export_dir.exists() and not export_dir.is_dir():
        raise ValueError(f"export_dir {str(export_dir)!r} exists and is not a directory")
    if export_dir.exists() and any(export_dir.iterdir()):
        if not overwrite:
            raise ValueError(
                f"export_dir {str(export_dir)!r} is not empty; choose an empty folder or "
                "pass overwrite=True (--overwrite) to replace its contents"
            )
        if export_dir == Path(export_dir.anchor) or export_dir == Path.home():
            raise ValueError(f"refusing to empty {str(export_dir)!r}")
        # Never delete the dataset's own media by exporting onto it.
        prefix = str(export_dir) + os.sep
        if any(str(p).startswith(prefix) for p in samples._root_dataset.values("filepath")):
            raise ValueError(
                f"export_dir {str(export_dir)!r} contains this dataset's media; overwriting "
                "it would delete them. Choose another folder"
            )
        shutil.rmtree(export_dir)
    try:
        export_dir.mkdir(parents=True, exist_ok=True)
        probe = export_dir / f".bubblefence-write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"export_dir {str(export_dir)!r} is not writable: {e}") from e


def _write_manifest(
    dataset: fo.Dataset,
    exported_as: dict[str, dict[str, str]],
    table: dict[str, list],
    path: Path,
) -> None:
    """One row per exported sample. Its assignment comes from ``table``, the stored
    state's (the source of truth; the fields are only a mirror), empty for a sample the
    state does not hold; every cell is neutralised against spreadsheet formulas and
    quoted."""
    ids = list(exported_as)
    position = {sid: k for k, sid in enumerate(table["id"])}
    columns = ("split", "anchor_id", "shell", "round", "duplicate_of")
    paths = dict(zip(*dataset.select(ids).values(["id", "filepath"]), strict=True)) if ids else {}
    with open(path, "x", newline="", encoding="utf-8") as fh:  # "x": never overwrite
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL)
        writer.writerow(MANIFEST_COLUMNS)
        for sid in ids:
            k = position.get(sid)
            state = [None if k is None else table[c][k] for c in columns]
            folders = json.dumps(exported_as[sid], ensure_ascii=False)
            writer.writerow([_csv_cell(v) for v in (sid, paths.get(sid), *state, folders)])


def _csv_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def read_manifest(path: str | os.PathLike) -> list[dict[str, str]]:
    """The manifest's rows, with the quote `_csv_cell` put before formula-like cells removed."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [
            {k: v[1:] if v.startswith("'") else v for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]
