"""BubbleFence's stored runs: one store for the split state, audit reports, the map's
layout and the curation regions, and the lock that keeps two runs off one dataset.

Typed runs. Each kind of run is a `RunType` (key, format, version) declared by the
module that owns it (`state.STATE_RUN`, `audit.REPORT_RUN`, `map.LAYOUT_RUN`,
`curate.REGIONS_RUN`). Its parameters live in the run's config (cheap to read), its
arrays in the run's results as npy bytes in base64 text (`to_npy_text`: never pickled;
text, so the runs travel through a FiftyOneDataset export's JSON). A run whose
format is not the type's was not written by BubbleFence and is refused; one whose
version is newer than the type's was written by a newer BubbleFence and is refused too.

Crash safety. ``save_run_results(overwrite=True)`` deletes the old GridFS file before
writing the new one, so a kill in between would lose the run. `RunType.commit`
therefore writes a complete copy to ``<key>_commit`` first (the commit point), then
overwrites ``<key>``, then drops the copy; `RunType.read_committed` prefers a complete
copy and `RunType.finish_interrupted_commit` rolls it forward.

Concurrency. Two runs on one dataset are refused through a lock document in the
dataset's ExecutionStore (``set_if_absent`` is a MongoDB insert on a unique index, so
exactly one run wins). The lock carries an expiry that the holder refreshes while it
works, and host/pid, so a run that was killed does not block the next one.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import fiftyone as fo
import numpy as np

from ..core.state import array_from_npy_bytes, damaged
from .fields import dataset_id

logger = logging.getLogger(__name__)

# How to reset, for every front end a refusal may reach.
RESET_HOW = (
    "(App: BubbleFence reset; shell: `python -m bubblefence_plugin reset --dataset NAME`; "
    "Python: `bubblefence_plugin.fo.reset(dataset)`)"
)
RESET_HINT = f"reset the dataset's BubbleFence state to start over {RESET_HOW}"
LOCK_STORE = "bubblefence"
LOCK_KEY = "run_lock"
LOCK_TTL_S = 15 * 60  # longer than any single step between heartbeats (one ingest call)
HEARTBEAT_S = 30.0


# --------------------------------------------------------------------------- npy blobs


def to_npy_text(array: np.ndarray) -> str:
    """npy bytes without pickle (object arrays are refused, not silently pickled), as
    base64 text: run results travel through JSON when a dataset is exported as a
    FiftyOneDataset, and raw bytes made FiftyOne's own ``dataset.export`` fail.

    Args:
        array: a numeric or fixed-width string array
    """
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def npy_bytes(stored: Any, where: str = "a stored BubbleFence array") -> bytes:
    """The npy bytes of a stored array: base64 text (`to_npy_text`), or the raw bytes
    that runs written before base64 text hold.

    Args:
        stored: the stored value
        where: what the array is, for the error message
    """
    if isinstance(stored, (bytes, bytearray, memoryview)):
        return bytes(stored)
    if isinstance(stored, str):
        try:
            return base64.b64decode(stored.encode("ascii"), validate=True)
        except (ValueError, binascii.Error) as e:
            raise damaged(where, f"not base64 text ({e})", RESET_HINT) from e
    raise damaged(where, f"a {type(stored).__name__} where npy bytes belong", RESET_HINT)


def from_npy_text(stored: Any, where: str = "a stored BubbleFence array") -> np.ndarray:
    """The array, after its npy header was checked against the bytes present (a crafted
    header cannot make this allocate more than the blob holds).

    Args:
        stored: as `to_npy_text` wrote it (or raw npy bytes: `npy_bytes`)
        where: what the array is, for the error message
    """
    return array_from_npy_bytes(npy_bytes(stored, where), where, RESET_HINT)


# --------------------------------------------------------------------------- run lock


class BubbleFenceBusyError(RuntimeError):
    """Another BubbleFence run holds this dataset."""


class RunLock:
    """Exclusive, crash-tolerant lock on one dataset's BubbleFence runs.

    Use as a context manager. A lock is stale (and taken over atomically with
    compare-and-set) when its expiry has passed, or when it was taken on this host by
    a process that no longer exists.

    Args:
        dataset: the dataset to lock
        purpose: what the holder does (``split``, ``reset``...), shown to a refused run
        ttl: seconds the lock lives without a `heartbeat`
    """

    def __init__(self, dataset: fo.Dataset, purpose: str = "split", ttl: int = LOCK_TTL_S):
        from fiftyone.operators.store import ExecutionStore

        self._store = ExecutionStore.create(LOCK_STORE, dataset_id=dataset_id(dataset))
        self._dataset = dataset
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
        """Takes the lock, or raises `BubbleFenceBusyError` naming the live holder."""
        value = self._new_value()
        for _ in range(3):
            if self._store.set_if_absent(LOCK_KEY, value, ttl=self._ttl):
                break
            current = self._store.get(LOCK_KEY)
            if current is None:
                continue  # released or expired between the two calls
            if not _lock_is_stale(current):
                started, expires = (
                    time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(current.get(k, 0)))
                    for k in ("started", "expires")
                )
                # A live run renews its lock; one whose process is gone on another host
                # cannot be told from it here, so the message gives the hour it lapses.
                raise BubbleFenceBusyError(
                    f"another BubbleFence {current.get('purpose', 'run')} is in progress on "
                    f"dataset {self._dataset_name!r} (host {current.get('host')}, pid "
                    f"{current.get('pid')}, started {started}); wait for it to finish. If "
                    "that run was stopped (its process killed, its machine down), the "
                    f"dataset is free at {expires}, when its lock expires."
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
        reloaded(self._dataset)  # the holder works on the runs and fields as stored now

    def heartbeat(self, force: bool = False) -> None:
        """Extends the expiry; raises if the lock was lost (then nothing may be committed).

        Args:
            force: extend now, even if the last heartbeat was less than `HEARTBEAT_S` ago
        """
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
        """Gives the lock back, unless another run has taken it over meanwhile."""
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
    """Whether a live BubbleFence run currently holds ``dataset``.

    Args:
        dataset: the dataset
    """
    from fiftyone.operators.store import ExecutionStore

    current = ExecutionStore.create(LOCK_STORE, dataset_id=dataset_id(dataset)).get(LOCK_KEY)
    return current is not None and not _lock_is_stale(current)


# --------------------------------------------------------------------------- runs


def run_params(dataset: fo.Dataset, key: str) -> dict[str, Any]:
    """The parameters stored in the config of run ``key``, whoever wrote it.

    Args:
        dataset: the dataset
        key: a run key the dataset has
    """
    config = dataset.get_run_info(key).config
    return {k: v for k, v in config.serialize().items() if k not in ("cls", "type")}


def reloaded(dataset: fo.Dataset) -> fo.Dataset:
    """``dataset`` with its runs as stored now, and returns it. FiftyOne keeps one object
    per dataset in a process and reads its runs from that object's copy: a notebook that
    opened the dataset before a CLI split (another process) saw no state, or a state whose
    results had been replaced, and was told the state was damaged and to reset. The lock
    and the public reads (`state.load_state`, `state.state_info`, a report) call it once
    each (6 ms at 30,000 samples); under the lock no other run writes the runs.

    Args:
        dataset: the dataset
    """
    dataset.reload()
    return dataset


def put_run(dataset: fo.Dataset, key: str, params: dict[str, Any], payload: dict) -> None:
    """Writes run ``key``: its config from ``params``, its results from ``payload``,
    replacing what was there.

    Args:
        dataset: the dataset
        key: the run key
        params: JSON-able parameters (the run's config)
        payload: keyword values of the run's results, e.g. ``meta`` and ``arrays``
    """
    config = dataset.init_run(**params)
    if dataset.has_run(key):
        dataset.update_run_config(key, config)
    else:
        dataset.register_run(key, config)
    results = dataset.init_run_results(key, **payload)
    dataset.save_run_results(key, results, overwrite=True, cache=False)


@dataclass(frozen=True)
class RunType:
    """One kind of custom run BubbleFence stores: its key, format and version.

    Args:
        key: the run key, also the run's ``method`` (audit reports: their keys'
            prefix, as there is one run per report)
        format: the ``format`` parameter that marks a run as this kind
        version: the newest layout this code writes and reads
        version_param: the parameter that holds the version (each kind has kept its
            own name since its first release)
    """

    key: str
    format: str
    version: int
    version_param: str

    @property
    def commit_key(self) -> str:
        """The key of the write-ahead copy `commit` writes first."""
        return f"{self.key}_commit"

    def new_params(self, **fields: Any) -> dict[str, Any]:
        """Parameters of a new run of this kind: method, format, version and ``fields``.

        Args:
            **fields: the kind's own JSON-able parameters
        """
        return {
            "method": self.key,
            "format": self.format,
            self.version_param: self.version,
            **fields,
        }

    def check(
        self, dataset: fo.Dataset, params: dict[str, Any], key: str | None = None
    ) -> dict[str, Any]:
        """``params``, refused unless this kind (format) at a version this code reads.

        Args:
            dataset: the dataset, for the messages
            params: the stored parameters
            key: the run's key (default: the kind's key)
        """
        key = key or self.key
        if params.get("format") != self.format:
            raise ValueError(
                f"run {key!r} on dataset {dataset.name!r} was not written by BubbleFence; "
                f"delete it with dataset.delete_run({key!r})"
            )
        version = int(params.get(self.version_param, 0))
        if version > self.version:
            raise ValueError(
                f"run {key!r} on dataset {dataset.name!r} has version {version}, written by a "
                f"newer BubbleFence (this one reads up to {self.version}); upgrade the plugin"
            )
        return params

    def params(self, dataset: fo.Dataset, key: str | None = None) -> dict[str, Any]:
        """The checked parameters (`check`) of the stored run.

        Args:
            dataset: the dataset; it has the run
            key: the run's key (default: the kind's key)
        """
        return self.check(dataset, run_params(dataset, key or self.key), key)

    def info(self, dataset: fo.Dataset) -> dict[str, Any] | None:
        """The parameters of the committed run (`read_committed`'s) when it is of this
        kind, else None. Cheap: reads no results, but those of a write-ahead copy (there
        only during a commit or after one was stopped), whose completeness tells whether
        it was committed: a copy half-written was not, one complete was (the run beside
        it still holds the round before).

        Args:
            dataset: the dataset
        """
        if dataset.has_run(self.commit_key):
            found = self.read_complete(dataset, self.commit_key)
            if found is not None and found[0].get("format") == self.format:
                return found[0]
        if dataset.has_run(self.key):
            params = run_params(dataset, self.key)
            if params.get("format") == self.format:
                return params
        return None

    def stored(self, dataset: fo.Dataset) -> list[tuple[str, dict[str, Any]]]:
        """(key, parameters) of every run of this kind, for kinds with a run per item.

        Args:
            dataset: the dataset
        """
        found = ((key, run_params(dataset, key)) for key in dataset.list_runs(method=self.key))
        return [(key, params) for key, params in found if params.get("format") == self.format]

    def put(
        self, dataset: fo.Dataset, params: dict[str, Any], payload: dict, key: str | None = None
    ) -> None:
        """Writes the run (`put_run`), without the two-phase `commit`: for runs that can
        be rebuilt or that are never overwritten.

        Args:
            dataset: the dataset
            params: the parameters, from `new_params`
            payload: keyword values of the run's results
            key: the run's key (default: the kind's key)
        """
        put_run(dataset, key or self.key, params, payload)

    def update_params(
        self, dataset: fo.Dataset, params: dict[str, Any], key: str | None = None
    ) -> None:
        """Replaces the stored run's parameters, leaving its results as they are.

        Args:
            dataset: the dataset; it has the run
            params: the new parameters
            key: the run's key (default: the kind's key)
        """
        dataset.update_run_config(key or self.key, dataset.init_run(**params))

    def results(self, dataset: fo.Dataset, key: str | None = None) -> Any:
        """The stored run's results, read afresh (never FiftyOne's cached copy).

        Args:
            dataset: the dataset; it has the run
            key: the run's key (default: the kind's key)
        """
        return dataset.load_run_results(key or self.key, cache=False, load_view=False)

    def commit(self, dataset: fo.Dataset, params: dict[str, Any], payload: dict) -> None:
        """Writes the run crash-safely: the write-ahead copy first (the commit point),
        then the run, then the copy is dropped (see the module docstring).

        Args:
            dataset: the dataset
            params: the parameters, from `new_params`
            payload: the run's results: ``meta`` and ``arrays``
        """
        put_run(dataset, self.commit_key, params, payload)  # <- the commit point
        put_run(dataset, self.key, params, payload)
        dataset.delete_run(self.commit_key)

    def read_committed(self, dataset: fo.Dataset) -> tuple[dict[str, Any], Any] | None:
        """(parameters, results) of the committed run: the write-ahead copy when it is
        complete (a commit was interrupted after its commit point), else the run; None
        when neither is there and complete.

        Args:
            dataset: the dataset
        """
        return self.read_complete(dataset, self.commit_key) or self.read_complete(dataset, self.key)

    def finish_interrupted_commit(self, dataset: fo.Dataset) -> None:
        """Rolls a complete write-ahead copy forward; drops a half-written one (it was
        never committed). Call under the dataset's `RunLock`.

        Args:
            dataset: the dataset
        """
        found = self.read_complete(dataset, self.commit_key)
        if found is None:
            if dataset.has_run(self.commit_key):
                dataset.delete_run(self.commit_key)
            return
        params, results = found
        logger.info("Finishing an interrupted BubbleFence commit on %s", dataset.name)
        put_run(dataset, self.key, params, {"meta": results.meta, "arrays": results.arrays})
        dataset.delete_run(self.commit_key)

    def delete(self, dataset: fo.Dataset) -> list[str]:
        """Deletes the run and its write-ahead copy; returns the keys deleted.

        Args:
            dataset: the dataset
        """
        removed = [k for k in (self.key, self.commit_key) if dataset.has_run(k)]
        for key in removed:
            dataset.delete_run(key)
        return removed

    def read_complete(
        self, dataset: fo.Dataset, key: str | None = None
    ) -> tuple[dict[str, Any], Any] | None:
        """(parameters, results) of run ``key`` (default: the kind's key), or None when
        it is not there or its results are not whole: FiftyOne writes a run's parameters
        before its results, and deletes the old results first, so a stopped write
        leaves parameters without results, or a reference to a deleted file.

        Args:
            dataset: the dataset
            key: the run's key
        """
        key = key or self.key
        if not dataset.has_run(key):
            return None
        try:
            results = self.results(dataset, key)
        except Exception as e:  # its GridFS file was deleted by an interrupted overwrite
            logger.warning("BubbleFence run %r is unreadable (%s)", key, e)
            return None
        if results is None or getattr(results, "arrays", None) is None:
            return None
        return run_params(dataset, key), results
