"""Sharded, resumable embedding on FiftyOne's delegated-operation workers.

Embedding is where a large dataset spends its time (a CPU embeds tens of images per
second; the split of a million takes a minute). Users who outgrow one machine already
run FiftyOne's delegated operations: documents queued in the database and executed by
``fiftyone delegated launch`` workers on every machine they have. `queue_shards`
queues one **BubbleFence embed** operation per shard there; each worker runs `embed`
on its shard. No scheduler of our own.

Partition. Sample ``id`` belongs to shard ``blake2b(id) mod num_shards``. A hash of
the id rather than sorted-id ranges fixed when the shards are queued, because then
membership depends on the id and ``num_shards`` only: every worker on every machine
computes it with no stored plan, a shard rerun after samples were added still covers
exactly its own ids (ranges would send every new sample to the last shard), and the
shards are balanced to sampling noise whatever the id allocation. blake2b, not
Python's ``hash``, which is salted per process.

Never two writers. Shards of one ``num_shards`` are disjoint by construction. Beyond
that, every embedding write (here and in the split's own embedding) is conditional on
the sample having none yet, atomic per document in MongoDB
(`fields.write_embeddings_once`): shards of two different layouts, or a
split racing its shards, never both write a sample, and a stored vector never changes.

Resume. A shard lists its samples still lacking the field, embeds them in chunks and
writes each chunk before the next: killed mid-way, a rerun (``fiftyone delegated
rerun``, or the same call) embeds only what is missing. Per-sample failures go to
``bubblefence_error`` as in the split, and are retried by the next run.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import numpy as np

from ..core.config import BubbleFenceConfig, check_int
from ..core.progress import Progress, ProgressCallback, Steps, drive, within
from .embeddings import (
    EMBED_CHUNK,
    MAX_ERRORS_SHOWN,
    get_embedder,
    iter_embed_missing,
    kept_model,
    prepare_embeddings_field,
)
from .fields import (
    EMBEDDING_FIELD,
    ERROR_FIELD,
    RESULT_FIELDS,
    check_collection,
    declare_fields,
    errors_by_filepath,
    serialized_view,
)
from .runs import LOCK_TTL_S

EMBED_OPERATOR = "@bubblefence/bubblefence/bubblefence_embed"
# Run states of a delegated operation that has not finished: SCHEDULED is what a
# remote orchestrator's queue shows, QUEUED the local one's.
PENDING_STATES = ("scheduled", "queued", "running")
POLL_S = 2.0  # between looks at the shards while waiting; each look is one small query
# Seconds a wait gives queued shards to start before it says no worker is taking them: a
# `fiftyone delegated launch` worker looks for work every few seconds. A split chosen to
# wait in the App sat at "Waiting for 2 embedding shards (0 running)" for the lock's 15
# minutes where no worker was running (found by a tester).
START_S = 120.0
# Fields that hold something else: never an embeddings target.
_RESERVED = {"id", "_id", "filepath", "tags", "metadata", "created_at", "last_modified_at"}


@dataclass
class ShardReport:
    """What one `embed` call did: JSON-able via `to_dict` (operator and CLI output)."""

    dataset: str
    embeddings_field: str
    model_name: str
    num_shards: int
    shard_index: int
    n_todo: int  # samples of this shard lacking embeddings when it started
    n_written: int  # embeddings this call wrote (others may have been written meanwhile)
    n_errors: int
    errors: dict[str, str] = field(default_factory=dict)  # the first ones, by file
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ShardOp:
    """One queued or running embedding shard, as FiftyOne's delegation records it."""

    id: str
    state: str
    dataset: str
    embeddings_field: str
    num_shards: int
    shard_index: int
    progress: float | None
    label: str | None


def shard_of(ids: Sequence[str], num_shards: int) -> np.ndarray:
    """The shard (0 .. num_shards - 1) of each sample id; see the module docstring.

    Args:
        ids: sample ids
        num_shards: how many shards
    """
    check_int("num_shards", num_shards, 1)
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "big")
            % num_shards
            for i in ids
        ),
        dtype=np.int64,
        count=len(ids),
    )


# --------------------------------------------------------------------------- embedding


def embed(
    samples: foc.SampleCollection,
    model: str | None = None,
    embeddings_field: str = EMBEDDING_FIELD,
    num_shards: int = 1,
    shard_index: int = 0,
    *,
    batch_size: int | None = None,
    device: str = "auto",
    chunk_size: int = EMBED_CHUNK,
    progress: ProgressCallback | None = None,
) -> ShardReport:
    """Embeds the samples of ``samples`` in shard ``shard_index`` that lack embeddings.

    With the defaults (one shard) it embeds everything missing. Idempotent: a rerun
    embeds only what is still missing, and a stored vector is never replaced.

    Example usage::

        import bubblefence_plugin.fo as bf

        bf.embed(dataset, model="/models/clip")  # everything missing, here
        bf.embed(dataset, model="/models/clip", num_shards=4, shard_index=2)  # one shard

        # or let `fiftyone delegated launch` workers do the four shards
        bf.queue_shards(dataset, 4, model="/models/clip")
        bf.wait_for_shards(dataset)

    Args:
        samples: a dataset or view
        model: a Hugging Face model name or a local model folder (default: the model
            the field's vectors come from, recorded in its info; else the split's CLIP)
        embeddings_field: the vector field written (default: the split's own)
        num_shards: how many shards the samples are divided into (`shard_of`)
        shard_index: the shard this call embeds, 0 .. ``num_shards`` - 1
        batch_size: images per forward pass (default: the config's)
        device: ``auto``, ``cpu`` or ``cuda``
        chunk_size: images embedded and saved at a time
        progress: called as ``progress(fraction, label)`` after each chunk; an
            exception it raises stops the shard after that chunk was saved

    Returns:
        a `ShardReport`
    """
    return drive(
        iter_embed(
            samples,
            model,
            embeddings_field,
            num_shards,
            shard_index,
            batch_size=batch_size,
            device=device,
            chunk_size=chunk_size,
        ),
        progress,
    )


def iter_embed(
    samples: foc.SampleCollection,
    model: str | None = None,
    embeddings_field: str = EMBEDDING_FIELD,
    num_shards: int = 1,
    shard_index: int = 0,
    *,
    batch_size: int | None = None,
    device: str = "auto",
    chunk_size: int = EMBED_CHUNK,
) -> Steps[ShardReport]:
    """`embed` as a generator of `Progress` events; the report is its return value.

    Args:
        samples: a dataset or view
        model: as for `embed`; so are the other arguments
    """
    dataset = check_collection(samples)
    model, batch_size = _check_params(
        kept_model(dataset, embeddings_field) if model is None else model,
        embeddings_field,
        num_shards,
        shard_index,
        batch_size,
        chunk_size,
    )
    existing = dataset.get_field(embeddings_field)
    if existing is not None and not isinstance(existing, fo.VectorField):
        raise ValueError(
            f"embeddings_field {embeddings_field!r} is of type {type(existing).__name__} on "
            f"dataset "
            f"{dataset.name!r}; embeddings are written to a VectorField: choose another name"
        )
    yield Progress(0.0, f"Listing shard {shard_index + 1}/{num_shards}")
    missing = samples.exists(embeddings_field, False).values("id")
    mine = shard_of(missing, num_shards) == shard_index
    ids = [i for i, m in zip(missing, mine, strict=True) if m]
    report = ShardReport(
        dataset=dataset.name,
        embeddings_field=embeddings_field,
        model_name=model,
        num_shards=num_shards,
        shard_index=shard_index,
        n_todo=len(ids),
        n_written=0,
        n_errors=0,
    )
    if not ids:
        why = (
            f"every sample of this shard has {embeddings_field!r}"
            if missing or samples.count()
            else "there are no samples"
        )
        report.message = _shard_said(shard_index, num_shards, f"nothing to embed, {why}")
        yield Progress(1.0, "Done")
        return report
    yield Progress(0.02, f"Loading the model {model}")
    embedder = get_embedder(model, device, batch_size)
    prepare_embeddings_field(dataset, embedder.model_name, embedder.dim, embeddings_field)
    declare_fields(dataset, {ERROR_FIELD: RESULT_FIELDS[ERROR_FIELD]})
    embedding = iter_embed_missing(dataset, ids, embedder, None, embeddings_field, chunk_size)
    _, written, errors = yield from within(embedding, 0.05, 1.0)
    yield Progress(1.0, "Done")
    report.n_written = written
    report.n_errors = len(errors)
    report.errors = errors_by_filepath(dataset, dict(list(errors.items())[:MAX_ERRORS_SHOWN]))
    report.message = _shard_said(
        shard_index,
        num_shards,
        f"embedded {written} of {len(ids)} samples into {embeddings_field!r}"
        + (f"; {len(errors)} failed (see {ERROR_FIELD})" if errors else ""),
    )
    return report


def _shard_said(shard_index: int, num_shards: int, what: str) -> str:
    """``what`` a shard did, under its number where there are shards: one run over
    every sample said "Shard 1/1", which reads as if shards were involved."""
    if num_shards > 1:
        return f"Shard {shard_index + 1}/{num_shards}: {what}"
    return what[0].upper() + what[1:]


def check_embeddings_field(name: Any) -> None:
    """Refuses a name that is not a plain top-level field or that holds something else.

    Args:
        name: the embeddings field's name, as a user gave it
    """
    if (
        not isinstance(name, str)
        or not name.isidentifier()
        or name in _RESERVED
        or name in RESULT_FIELDS
    ):
        raise ValueError(
            "embeddings_field must be a field name (letters, digits, underscores) other "
            f"than {sorted(_RESERVED | set(RESULT_FIELDS))}, got {name!r}"
        )


def _check_params(
    model: str | None,
    embeddings_field: str,
    num_shards: int,
    shard_index: int,
    batch_size: int | None,
    chunk_size: int,
) -> tuple[str, int]:
    """Validates everything before any work; returns the model and batch size to use."""
    defaults = BubbleFenceConfig()
    model = defaults.model_name if model is None else model
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a Hugging Face name or a local folder, got {model!r}")
    check_embeddings_field(embeddings_field)
    check_int("num_shards", num_shards, 1)
    check_int("shard_index", shard_index, 0, num_shards - 1)
    batch_size = defaults.batch_size if batch_size is None else batch_size
    check_int("batch_size", batch_size, 1)
    check_int("chunk_size", chunk_size, 1)
    return model, int(batch_size)


# --------------------------------------------------------------------------- delegation


def queue_shards(
    samples: foc.SampleCollection,
    num_shards: int,
    model: str | None = None,
    embeddings_field: str = EMBEDDING_FIELD,
    *,
    batch_size: int | None = None,
    device: str = "auto",
) -> list[str]:
    """Queues ``num_shards`` **BubbleFence embed** operations for delegated workers.

    Returns their delegated-operation ids. Each is an ordinary FiftyOne delegated
    operation (``fiftyone delegated list``), run by any ``fiftyone delegated launch``
    worker with this plugin installed and the media reachable. Refused while shards
    for the same dataset and field are still pending, so a double click does not
    queue the work twice.

    The operations are queued with `DelegatedOperationService.queue_operation`, the
    call ``execute_operator(..., request_delegation=True)`` ends in, with the context it
    builds: that call cannot be made from inside a running operator's event loop, and
    this one is made from the App's operator as well as from Python. Workers validate
    the parameters against the operator's form before running a shard.

    Args:
        samples: a dataset or view
        num_shards: how many shards (operations) to queue
        model: as for `embed`
        embeddings_field: as for `embed`
        batch_size: as for `embed`
        device: as for `embed`
    """
    from fiftyone.operators.delegated import DelegatedOperationService

    dataset = check_collection(samples)
    model, batch_size = _check_params(
        kept_model(dataset, embeddings_field) if model is None else model,
        embeddings_field,
        num_shards,
        0,
        batch_size,
        1,
    )
    # More shards than samples would queue empty operations (2**40 of them queued
    # until the process was killed).
    check_int("num_shards", num_shards, 1, max(1, samples.count()))
    pending = pending_shards(dataset, embeddings_field)
    if pending:
        raise ValueError(
            f"{len(pending)} embedding shards for {embeddings_field!r} of dataset "
            f"{dataset.name!r} are still queued or running ({[p.id for p in pending]}); "
            "wait for them, or mark stuck ones failed with `fiftyone delegated fail <id>`"
        )
    stages = serialized_view(samples)
    service = DelegatedOperationService()
    ids = []
    for index in range(num_shards):
        params = {
            "mode": "run",
            "model_name": model,
            "embeddings_field": embeddings_field,
            "num_shards": num_shards,
            "shard_index": index,
            "batch_size": batch_size,
            "device": device,
        }
        request = {
            "dataset_name": dataset.name,
            "view": stages,
            "params": params,
            "delegated": True,
        }
        op = service.queue_operation(
            operator=EMBED_OPERATOR,
            label=shard_label(index, num_shards),
            context={"request_params": request},
            metadata={"inputs_schema": None, "outputs_schema": None},
        )
        ids.append(str(op.id))
    return ids


def shard_label(shard_index: int, num_shards: int) -> str:
    """The run name of a shard, as `fiftyone delegated list` and the App show it.

    Args:
        shard_index: the shard, from 0
        num_shards: how many shards
    """
    return f"BubbleFence embed shard {shard_index + 1}/{num_shards}"


def pending_shards(dataset: fo.Dataset, embeddings_field: str | None = None) -> list[ShardOp]:
    """Embedding shards of ``dataset`` (writing ``embeddings_field``, or any) not finished.

    Args:
        dataset: the dataset
        embeddings_field: only the shards writing this field, or None for all
    """
    from fiftyone.operators.delegated import DelegatedOperationService

    service = DelegatedOperationService()
    out = []
    for state in PENDING_STATES:
        for doc in service.list_operations(
            operator=EMBED_OPERATOR, dataset_name=dataset.name, run_state=state
        ):
            params = (doc.context.request_params or {}).get("params", {}) if doc.context else {}
            op = ShardOp(
                id=str(doc.id),
                state=str(doc.run_state),
                dataset=dataset.name,
                embeddings_field=params.get("embeddings_field", EMBEDDING_FIELD),
                num_shards=int(params.get("num_shards", 1)),
                shard_index=int(params.get("shard_index", 0)),
                progress=getattr(doc.status, "progress", None),
                label=getattr(doc.status, "label", None),
            )
            if params.get("mode", "run") == "run" and embeddings_field in (
                None,
                op.embeddings_field,
            ):
                out.append(op)
    return out


def wait_for_shards(
    dataset: fo.Dataset,
    embeddings_field: str | None = None,
    poll_s: float = POLL_S,
    stall_s: float = LOCK_TTL_S,
    progress: ProgressCallback | None = None,
    start_s: float = START_S,
) -> None:
    """Blocks until no shard of ``dataset`` is pending (see `iter_wait_for_shards`).

    Args:
        dataset: the dataset
        embeddings_field: wait only for the shards writing this field, or None for all
        poll_s: seconds between looks
        stall_s: seconds without any change after which it gives up
        progress: called as ``progress(fraction, label)`` after each look
        start_s: seconds after which it gives up while no shard has started
    """
    steps = iter_wait_for_shards(dataset, embeddings_field, poll_s, stall_s, start_s)
    drive(steps, progress)


def iter_wait_for_shards(
    dataset: fo.Dataset,
    embeddings_field: str | None = None,
    poll_s: float = POLL_S,
    stall_s: float = LOCK_TTL_S,
    start_s: float = START_S,
) -> Steps[None]:
    """Waits for the pending shards, one `Progress` per look (see `wait_for_shards` for
    the arguments).

    Raises `TimeoutError` when no shard has started for ``start_s`` seconds (no worker
    is taking them), or when nothing changed (no shard started, advanced or ended) for
    ``stall_s`` seconds: a worker died holding a shard. The default stall is the split's
    lock expiry, far longer than one chunk of images.
    """
    last, changed_at = None, time.monotonic()
    begun, first, started = changed_at, None, False
    while True:
        pending = pending_shards(dataset, embeddings_field)
        if not pending:
            return
        first = first or {p.id for p in pending}
        started = started or any(p.state == "running" for p in pending)
        started = started or not first <= {p.id for p in pending}  # one ended
        if not started and time.monotonic() - begun > start_s:
            raise TimeoutError(
                f"none of the {len(pending)} embedding shards of dataset {dataset.name!r} "
                f"started in {start_s:.0f} s: no `fiftyone delegated launch` worker is "
                "taking them. Start one, or split only the samples embedded so far"
            )
        seen = sorted((p.id, p.state, p.progress) for p in pending)
        if seen != last:
            last, changed_at = seen, time.monotonic()
        elif time.monotonic() - changed_at > stall_s:
            raise TimeoutError(
                f"{len(pending)} embedding shards of dataset {dataset.name!r} made no "
                f"progress for {stall_s:.0f} s: is a `fiftyone delegated launch` worker "
                "running? Mark dead ones failed (`fiftyone delegated fail <id>`): "
                f"{[p.id for p in pending]}"
            )
        running = sum(p.state == "running" for p in pending)
        done = np.mean([p.progress or 0.0 for p in pending])
        yield Progress(
            float(done),
            f"Waiting for {len(pending)} embedding shards ({running} running)",
        )
        time.sleep(poll_s)
