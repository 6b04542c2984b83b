"""Embeddings on the FiftyOne side: the cached model, embedding the samples that lack
a vector, and reading (checked) vectors from a field.
"""

from __future__ import annotations

import io
import zlib
from typing import TYPE_CHECKING, Any

import fiftyone as fo
import fiftyone.core.collections as foc
import fiftyone.core.utils as fou
import numpy as np

from ..core.progress import Progress, Steps
from .fields import EMBEDDING_FIELD, id_chunks, values_by_id, write_embeddings_once

if TYPE_CHECKING:
    from ..embedder import EmbeddingResult
from .runs import RESET_HOW, RunLock

EMBED_CHUNK = 256  # images per embedding call: embeddings are saved after each chunk
MAX_ERRORS_SHOWN = 20  # per-sample messages in a summary or report; all are in ERROR_FIELD

_EMBEDDER_CACHE: dict[tuple, Any] = {}


class ModelUnavailableError(RuntimeError):
    """The embedding model could not be loaded (offline, not cached, bad folder)."""


def get_embedder(model: str, device: str = "auto", batch_size: int = 64) -> Any:
    """A cached `ImageEmbedder`: the App server re-runs the operator, not the model load.

    Args:
        model: a Hugging Face model name or a local model folder
        device: ``auto``, ``cpu``, ``cuda``...
        batch_size: images per forward pass

    Raises:
        ModelUnavailableError: if the model cannot be loaded
    """
    key = (str(model), str(device), int(batch_size))
    if key not in _EMBEDDER_CACHE:
        from ..embedder import ImageEmbedder, ModelLoadError

        try:
            embedder = ImageEmbedder(model=model, device=device, batch_size=batch_size)
        except ValueError:
            raise
        except ModelLoadError as e:  # already one paragraph: what was tried, what to do
            raise ModelUnavailableError(str(e)) from e
        except Exception as e:
            raise ModelUnavailableError(
                f"could not load the embedding model {model!r}: {str(e).rstrip('.')}. "
                "Alternatives: a local model folder (--model /path/to/clip, or the split "
                "form's Model field), or an existing embeddings field"
            ) from e
        _EMBEDDER_CACHE.clear()  # keep at most one model in memory
        _EMBEDDER_CACHE[key] = embedder
    return _EMBEDDER_CACHE[key]


def holds_vectors(dataset: fo.Dataset, field: str | None) -> bool:
    """Whether ``field`` exists and can hold a vector per sample: a `VectorField` or an
    `ArrayField`, as FiftyOne writes embeddings, or a list of numbers, as
    ``set_values`` stores Python lists.

    Args:
        dataset: the dataset
        field: a field name, or None
    """
    f = dataset.get_field(field) if field else None
    if isinstance(f, (fo.VectorField, fo.ArrayField)):
        return True
    return isinstance(f, fo.ListField) and (
        f.field is None or isinstance(f.field, (fo.FloatField, fo.IntField))
    )


def vector_fields(dataset: fo.Dataset) -> list[str]:
    """The dataset's fields that can hold a vector per sample (`holds_vectors`), sorted.

    Args:
        dataset: the dataset
    """
    return sorted(name for name in dataset.get_field_schema() if holds_vectors(dataset, name))


def check_vector_field(dataset: fo.Dataset, field: str) -> None:
    """Refuses ``field`` unless it exists and can hold vectors (`holds_vectors`).

    Args:
        dataset: the dataset
        field: the embeddings field's name
    """
    f = dataset.get_field(field)
    if f is None:
        raise ValueError(
            f"embeddings field {field!r} does not exist on dataset {dataset.name!r}; "
            f"vector fields: {vector_fields(dataset)}"
        )
    if not holds_vectors(dataset, field):
        kind = type(f).__name__
        if isinstance(f, fo.ListField) and f.field is not None:
            kind = f"{kind} of {type(f.field).__name__}"
        raise ValueError(f"embeddings field {field!r} is of type {kind}, not a vector field")


def kept_model(dataset: fo.Dataset, field_name: str = EMBEDDING_FIELD) -> str | None:
    """The model whose vectors a field holds (recorded in its info by a round or an
    embed, and kept by a reset), or None: a first round or an embed that names no model
    embeds with it, so the kept vectors are used rather than refused as another model's.

    Args:
        dataset: the dataset
        field_name: the vector field (default: ``bubblefence_embedding``)
    """
    field = dataset.get_field(field_name)
    return (getattr(field, "info", None) or {}).get("model_name")


def prepare_embeddings_field(
    dataset: fo.Dataset, model_name: str, dim: int, name: str = EMBEDDING_FIELD
) -> None:
    """Declares the vector field a model writes, recording that model in its info, and
    refuses a field that holds another model's vectors, so vectors of two models never mix.

    Args:
        dataset: the dataset
        model_name: the embedder's model name
        dim: the embedder's dimension
        name: the field's name
    """
    field = dataset.get_field(name)
    info = {"model_name": model_name, "dim": int(dim)}
    if field is None:
        dataset.add_sample_field(name, fo.VectorField, info=info)
        return
    if not isinstance(field, fo.VectorField):
        raise ValueError(
            f"field {name!r} is of type {type(field).__name__}; embeddings are written to a "
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


def iter_embed_missing(
    dataset: fo.Dataset,
    ids: list[str],
    embedder: Any,
    lock: RunLock | None,
    field: str = EMBEDDING_FIELD,
    chunk_size: int = EMBED_CHUNK,
) -> Steps[tuple[int, int, dict[str, str]]]:
    """Embeds the samples among ``ids`` that lack ``field``, saving per chunk.

    Saving each chunk means a killed run keeps the work done; the next run embeds
    only what is still missing. One `Progress` event per chunk.

    Args:
        dataset: the dataset
        ids: the samples to embed where they have no vector yet
        embedder: an `ImageEmbedder` (`get_embedder`)
        lock: the caller's `RunLock`, kept alive between chunks, or None
        field: the vector field, declared (`prepare_embeddings_field`)
        chunk_size: images embedded and saved at a time

    Returns:
        (samples tried, embeddings this call wrote, errors by sample id); the two
        counts differ when another writer (an embedding shard) got to some samples first
    """
    todo_ids: list[str] = []
    paths: list[str] = []
    for chunk in id_chunks(ids):  # one view of every id could pass MongoDB's limit
        missing = dataset.select(chunk).exists(field, False)
        found_ids, found_paths = missing.values(["id", "filepath"])
        todo_ids += found_ids
        paths += found_paths
    errors: dict[str, str] = {}
    done = written = 0
    for start in range(0, len(todo_ids), chunk_size):
        chunk_ids = todo_ids[start : start + chunk_size]
        out = embedder.embed_paths(paths[start : start + chunk_size])
        written += write_embeddings_once(dataset, field, chunk_ids, out)
        errors.update({chunk_ids[row]: msg for row, msg in out.errors.items()})
        done += len(chunk_ids)
        if lock is not None:
            lock.heartbeat()
        yield Progress(done / len(todo_ids), f"Embedded {done}/{len(todo_ids)} images")
    return len(todo_ids), written, errors


def read_embeddings(
    dataset: fo.Dataset, ids: list[str], field: str, dim: int | None
) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """Embeddings of ``ids`` from ``field``, checked: bad rows become per-sample errors.

    Args:
        dataset: the dataset
        ids: sample ids
        field: a vector field
        dim: the dimension the vectors must have (the split state's), or None for any

    Returns:
        (ids of the usable rows in the order of ``ids``, their unit vectors as rows, errors by
        sample id)
    """
    ordered_ids, (stored,) = values_by_id(dataset, ids, [field], raw=True)
    vectors = decode_vectors(stored)
    hint = (
        f". The BubbleFence state of this dataset holds {dim}-d embeddings; mixing "
        f"dimensions (another model) is refused. Reset the state {RESET_HOW} to split "
        "with this field from scratch"
    )
    checked = checked_vectors(vectors, field, dim, hint if dim else "")
    # A few rows of another length are per-sample errors like unreadable images; a
    # field where no row fits the state is refused above (another model).
    ok_ids = [ordered_ids[i] for i in checked.indices]
    errors = {ordered_ids[i]: f"{field}: {m}" for i, m in checked.errors.items()}
    return ok_ids, checked.embeddings, errors


def checked_vectors(
    vectors: Any, field: str, dim: int | None = None, hint: str = ""
) -> EmbeddingResult:
    """`embedder.embeddings_from_array` of the vectors read from ``field``: a refusal
    (another model's vectors, no row of ``dim``) names the field, then says ``hint``.

    Args:
        vectors: the vectors, one per sample (None where missing)
        field: the field they were read from
        dim: the dimension they must have, or None for the most common one
        hint: what to do, appended to a refusal
    """
    from ..embedder import embeddings_from_array

    try:
        return embeddings_from_array(vectors, dim=dim)
    except ValueError as e:
        raise ValueError(f"embeddings field {field!r} cannot be used: {e}{hint}") from e


def read_vectors(samples: foc.SampleCollection, field: str) -> tuple[list[str], list[Any]]:
    """``samples.values(["id", field])``: the ids and the vectors, decoded faster.

    FiftyOne stores a numpy array per sample as zlib-compressed ``.npy`` bytes, and
    decoding them one by one (`np.load` parses each header) took 3.3 s of a 3.5 s read
    of 30,000 512-d vectors; read raw and decoded by `decode_vectors`, 1.3 s.

    Args:
        samples: a dataset or view
        field: a vector field (a list field's values come back as they are stored)
    """
    # `_raw`: FiftyOne's own flag for values as stored (not through `to_python`).
    ids, stored = samples.values(["id", field], _raw=True)
    return ids, decode_vectors(stored)


def decode_vectors(stored: list[Any]) -> list[Any]:
    """Stored vector values as `VectorField.to_python` gives them, in place (each
    stored value is freed as soon as it is decoded) and returned: an array per sample
    stored as bytes (read-only: a view of its decompressed bytes), the rest (None, a
    list) unchanged.

    The arrays of a field share one or a few ``.npy`` headers (dtype and shape): each
    header is parsed once, and a 1-D array under it read straight from its buffer;
    anything else goes through FiftyOne's own `deserialize_numpy_array`.

    Args:
        stored: the raw values of a vector field, one per sample
    """
    layouts: dict[bytes, tuple[np.dtype, int] | None] = {}  # header -> (dtype, bytes)
    for k, value in enumerate(stored):
        if not isinstance(value, bytes):  # None or a list (bson's Binary is bytes)
            continue
        buffer = zlib.decompress(value)
        header = buffer[: _npy_header_length(buffer)]
        if header not in layouts:
            layouts[header] = _flat_layout(buffer) if header else None
        layout = layouts[header]
        if layout is not None and len(buffer) == len(header) + layout[1]:
            stored[k] = np.frombuffer(buffer, dtype=layout[0], offset=len(header))
        else:
            stored[k] = fou.deserialize_numpy_array(value)
    return stored


def _npy_header_length(buffer: bytes) -> int:
    """Bytes before the data in ``.npy`` ``buffer`` (format 1.0: a 2-byte length, later
    formats 4), 0 if it is not one."""
    if not buffer.startswith(b"\x93NUMPY") or len(buffer) < 12:
        return 0
    if buffer[6] == 1:
        return 10 + int.from_bytes(buffer[8:10], "little")
    return 12 + int.from_bytes(buffer[8:12], "little")


def _flat_layout(buffer: bytes) -> tuple[np.dtype, int] | None:
    """(dtype, data bytes) of the 1-D numeric array in ``.npy`` ``buffer``, else None."""
    array = np.load(io.BytesIO(buffer))
    if array.ndim != 1 or array.dtype.kind not in "fiu":
        return None
    return array.dtype, array.nbytes
