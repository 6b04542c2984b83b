"""Step 9: persist the state atomically, as npy arrays plus JSON, never pickle; read it
back only after checking it.

One `.npz` file (a zip of `.npy` members) holds every array and a `meta.json`
member as bytes. It is written to a temporary file in the same folder, flushed to
disk and renamed over the target, so a reader sees the old state or the new one.

A state file or a dataset's stored state may have been damaged or crafted. Before an
array is allocated, its npy header is read and checked against the state's header
(`check_layout`): dtypes, shapes, that the per-sample arrays all have one row per
sample id and the anchor columns one row per bubble, and that no member claims more
bytes than it holds. Then the index columns are checked (`check_values`). Any failure
is one `StateDamagedError` that names the problem and says to reset.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
import unicodedata
import weakref
import zipfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

FORMAT_VERSION = 1

# Arrays with one row per sample, in the order of `ids` (the core's columns, the
# dataset state's checksum). The one list of them: add a new per-sample column here.
PER_SAMPLE_ARRAYS = frozenset(
    {
        "ids",
        "embeddings",
        "embedding_checks",
        "split",
        "anchor",
        "shell",
        "round",
        "duplicate_of",
        "labels",
        "groups",
        "region",
    }
)
# Dtype kinds of the columns that hold ids and codes: a state whose ids were floats loaded,
# and its next round failed with "ids are required" (found by a tester). Pointer columns
# are checked as integers with their values (`INDEX_ARRAYS`).
CODE_KINDS = {"ids": "iuUS", "split": "iu", "shell": "iu", "round": "iu"}
# Columns of the bubble table (`AnchorTable` fields, prefixed): one row per bubble.
ANCHOR_PREFIX = "anchor_"
# Integer columns that point into another table: their values are checked before use,
# so a crafted pointer is refused here rather than raising IndexError mid-round.
INDEX_ARRAYS = {
    "duplicate_of": "samples",
    "anchor": "bubbles",
    "anchor_centre_row": "samples",
    "region": "regions",
}
# dtype kinds a stored array may hold: bool, integers, floats, unicode and byte strings
# (the audit stores ids as bytes). Never object (pickle) or void.
ALLOWED_KINDS = "biufUS"
# Longest string a state column may hold: sample ids, and a sample's label set joined
# (a multi-label sample with a hundred labels stays far below).
MAX_STRING_CHARS = 4096
# Widest embedding a state may hold (the largest image models give 4096-d vectors).
MAX_DIM = 65536
# The JSON header: config plus a record per round, a few kB each.
MAX_META_BYTES = 64 * 2**20
# np.savez stores members uncompressed; a member that inflates more than this is a
# zip bomb, whatever its header says. Small members are exempt (tiny arrays compress
# well and cost nothing).
MAX_INFLATION = 64
SMALL_MEMBER_BYTES = 2**20
# Capacity of an embeddings buffer, relative to the rows it holds when it is allocated:
# the next round appends its rows in place instead of copying the earlier ones (2 GB
# at 1M x 512). Capacity never written costs no memory.
BUFFER_GROWTH = 1.5
# Bytes of a member read per call when it is read straight into a buffer.
READ_CHUNK = 16 * 2**20
# A model id ("org/name") as the Hugging Face hub allows it, or a local folder; either
# way printable, bounded by the longest path a file system takes.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9._-]{1,96})?$")
MAX_MODEL_NAME = 4096


class StateDamagedError(ValueError):
    """A stored BubbleFence state failed its checks; the way on is to reset it."""


def damaged(where: str, problem: str, remedy: str) -> StateDamagedError:
    """The one message a damaged state gives: what was found, and to reset."""
    return StateDamagedError(f"{where} is damaged ({problem}); {remedy}")


# --------------------------------------------------------------------------- buffers


def buffer_with_room(n_rows: int, dim: int) -> np.ndarray:
    """An uninitialised float32 buffer of ``dim`` columns with room for `BUFFER_GROWTH`
    times ``n_rows`` rows."""
    return np.empty((max(n_rows, int(n_rows * BUFFER_GROWTH)), dim), np.float32)


# Rows a reader filled at the head of a buffer (`rows_with_room`), by id, until claimed.
_UNCLAIMED: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()


def rows_with_room(n_rows: int, dim: int) -> np.ndarray:
    """Uninitialised (``n_rows``, ``dim``) float32 rows at the head of a
    `buffer_with_room`, for a reader to fill; `claim_buffer` gives the buffer to the
    state that takes these rows, so its next round appends without copying them."""
    rows = buffer_with_room(n_rows, dim)[:n_rows]
    _UNCLAIMED[id(rows)] = rows
    return rows


def claim_buffer(rows: np.ndarray) -> np.ndarray | None:
    """The buffer under ``rows`` if they are this very array from `rows_with_room` and
    no one claimed it before, else None. One owner only: two states appending into
    one buffer would overwrite each other's rows, and a slice of the rows is not
    claimed (the rows after it are someone's)."""
    if _UNCLAIMED.get(id(rows)) is not rows:
        return None
    del _UNCLAIMED[id(rows)]
    return rows.base


# --------------------------------------------------------------------------- writing


def write_state(path: str | Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise ValueError(f"state array {name!r} has dtype object, which needs pickle")
    if "ids" in arrays:  # the header's sample count bounds every array when reading
        meta = {**meta, "n_samples": len(arrays["ids"])}
    payload = {"meta_json": np.frombuffer(_meta_bytes(meta), dtype=np.uint8), **arrays}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _meta_bytes(meta: dict[str, Any]) -> bytes:
    return json.dumps({**meta, "format_version": FORMAT_VERSION}).encode("utf-8")


# --------------------------------------------------------------------------- reading


def read_state(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Meta and arrays of a state file, checked before any array is allocated."""
    path = Path(path)
    where = f"state file {str(path)!r}"
    remedy = "delete it and start a new BubbleFence (reset)"
    try:
        with zipfile.ZipFile(path) as archive:
            headers = {}
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                if not info.filename.endswith(".npy") or name in headers:
                    raise damaged(where, f"unexpected member {info.filename!r}", remedy)
                with archive.open(info) as fh:
                    headers[name] = _member_header(fh, info, where, remedy)
            if "meta_json" not in headers:
                raise damaged(where, "no meta_json member", remedy)
            shape, dtype = headers.pop("meta_json")
            if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_META_BYTES:
                raise damaged(where, f"meta_json is {dtype} {shape}", remedy)
            with archive.open("meta_json.npy") as fh:
                blob = np.lib.format.read_array(fh, allow_pickle=False)
            meta = _parse_meta(blob.tobytes(), where, remedy)
            ids_shape = headers.get("ids", ((), None))[0]
            n_samples = meta.get("n_samples", ids_shape[0] if ids_shape else -1)
            check_layout(headers, meta, n_samples, where, remedy)
            arrays = {}
            for name in headers:
                with archive.open(f"{name}.npy") as fh:
                    if name == "embeddings":
                        arrays[name] = _read_rows_with_room(fh, headers[name][0], where, remedy)
                    else:
                        arrays[name] = np.lib.format.read_array(fh, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise damaged(where, f"not a readable npz: {e}", remedy) from e
    check_values(arrays, where, remedy)
    return meta, arrays


def _read_rows_with_room(fh: IO[bytes], shape: tuple, where: str, remedy: str) -> np.ndarray:
    """The embeddings member read into `rows_with_room`, so the next round does not
    copy them into a buffer with room (at 1M x 512, 11.8 s of a 35 s round here, the
    copy's fresh pages; bench/RESULTS.md). Float32 in C order, as `write_state` writes
    them, is read straight in; any other float matrix is read whole and converted."""
    if len(shape) != 2:
        raise damaged(where, f"embeddings of shape {shape}, not (samples, dimension)", remedy)
    rows = rows_with_room(shape[0], shape[1])
    stored, dtype, _, fortran = read_npy_header(fh, where, remedy)
    if fortran or dtype != np.float32:
        rows[...] = _array_data(fh, stored, dtype, fortran)
        return rows
    data = memoryview(rows.reshape(-1)).cast("B")
    filled = 0
    while filled < len(data):
        got = fh.readinto(data[filled : filled + READ_CHUNK])
        if not got:
            raise damaged(where, "the embeddings member ends early", remedy)
        filled += got
    return rows


def _array_data(fh: IO[bytes], shape: tuple, dtype: np.dtype, fortran: bool) -> np.ndarray:
    """The data after an npy header `read_npy_header` has read, as numpy reads it."""
    flat = np.frombuffer(fh.read(_nbytes(shape, dtype)), dtype=dtype)
    return flat.reshape(shape, order="F" if fortran else "C")


def _parse_meta(raw: bytes, where: str, remedy: str) -> dict[str, Any]:
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise damaged(where, f"its JSON header does not parse: {e}", remedy) from e
    if not isinstance(meta, dict):
        raise damaged(where, "its JSON header is not an object", remedy)
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{where}: state format version {version!r} is not supported "
            f"(this BubbleFence reads version {FORMAT_VERSION}); reset and re-run the split"
        )
    return meta


def _member_header(fh: IO[bytes], info: zipfile.ZipInfo, where: str, remedy: str) -> tuple:
    """(shape, dtype) of an npz member from its npy header; the data is not read."""
    shape, dtype, offset, _ = read_npy_header(fh, f"{where}: member {info.filename!r}", remedy)
    if info.file_size - offset != _nbytes(shape, dtype):
        raise damaged(
            where,
            f"member {info.filename!r} holds {info.file_size - offset} bytes of data, its "
            f"header says {_nbytes(shape, dtype)}",
            remedy,
        )
    if info.file_size > max(SMALL_MEMBER_BYTES, MAX_INFLATION * info.compress_size):
        raise damaged(
            where,
            f"member {info.filename!r} inflates from {info.compress_size} to "
            f"{info.file_size} bytes",
            remedy,
        )
    return shape, dtype


def read_npy_header(fh: IO[bytes], where: str, remedy: str) -> tuple[tuple, np.dtype, int, bool]:
    """(shape, dtype, data offset, Fortran order) from an npy header; refuses what is
    not a plain array. Either order holds the same array."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        reader = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
        if version not in reader:
            raise ValueError(f"npy version {version} is not written by BubbleFence")
        shape, fortran, dtype = reader[version](fh)
        offset = fh.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise damaged(where, f"not an npy array: {e}", remedy) from e
    if dtype.kind not in ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype:
        raise damaged(where, f"dtype {dtype} (a state holds numbers and strings)", remedy)
    return tuple(int(s) for s in shape), dtype, int(offset), bool(fortran)


def npy_blob_header(blob: Any, where: str, remedy: str) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of npy bytes, refused unless the header matches the bytes present:
    loading it then allocates no more than the blob's size, whatever the header claims."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise damaged(where, f"a {type(blob).__name__}, not npy bytes", remedy)
    buf = io.BytesIO(blob)
    shape, dtype, offset, _ = read_npy_header(buf, where, remedy)
    if len(blob) - offset != _nbytes(shape, dtype):
        raise damaged(
            where,
            f"{len(blob) - offset} bytes of data where its header says {_nbytes(shape, dtype)}",
            remedy,
        )
    return shape, dtype


def array_from_npy_bytes(blob: Any, where: str, remedy: str) -> np.ndarray:
    """An array from npy bytes, after `npy_blob_header` checked them."""
    npy_blob_header(blob, where, remedy)
    return np.load(io.BytesIO(blob), allow_pickle=False)


def _nbytes(shape: tuple, dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


# --------------------------------------------------------------------------- checks


def check_layout(
    headers: Mapping[str, tuple[tuple, np.dtype]],
    meta: Mapping[str, Any],
    n_samples: Any,
    where: str,
    remedy: str,
) -> None:
    """Checks shapes and dtypes from the headers alone, before anything is allocated.

    ``n_samples`` is the sample count the state's header records: `ids` and every
    array of `PER_SAMPLE_ARRAYS` have exactly that many rows; the ``anchor_*`` columns
    share one row count, at most the samples ever ingested (one bubble per centre
    sample); any other array is bounded the same way. 2-D arrays are as wide as the
    embedding (`meta["dim"]`); strings at most `MAX_STRING_CHARS`.
    """
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 0:
        raise damaged(where, f"sample count {n_samples!r}", remedy)
    dim = meta.get("dim")
    if dim is not None and (not isinstance(dim, int) or not 1 <= dim <= MAX_DIM):
        raise damaged(where, f"embedding dimension {dim!r}", remedy)
    if "ids" not in headers:
        raise damaged(where, "no ids array", remedy)
    config = meta.get("config")
    if not isinstance(config, dict):
        raise damaged(where, "no config in its header", remedy)
    check_model_name(config.get("model_name"), where, remedy)
    history = meta.get("history")
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise damaged(where, "its round history is not a list of records", remedy)
    ingested = sum(int(h.get("n_new", 0)) for h in history if _is_count(h.get("n_new", 0)))
    most_rows = max(n_samples, ingested)
    anchor_rows = {name: s[0] for name, (s, _) in headers.items() if _is_anchor(name) and s}
    if len(set(anchor_rows.values())) > 1:
        usual = Counter(anchor_rows.values()).most_common(1)[0][0]
        odd = ", ".join(f"{n!r} {k}" for n, k in anchor_rows.items() if k != usual)
        raise damaged(where, f"bubble columns disagree in length: {odd} rows, not {usual}", remedy)
    for name, (shape, dtype) in headers.items():
        if not shape or len(shape) > 2:
            raise damaged(where, f"array {name!r} has shape {shape}", remedy)
        if name in PER_SAMPLE_ARRAYS and shape[0] != n_samples:
            raise damaged(where, f"{name!r} has {shape[0]} rows for {n_samples} samples", remedy)
        if shape[0] > most_rows:
            raise damaged(
                where, f"{name!r} has {shape[0]} rows; the state holds {most_rows}", remedy
            )
        width = dim or 0  # a state that never ingested has no dimension yet
        if len(shape) == 2 and (dtype.kind != "f" or shape[1] != width):
            raise damaged(
                where, f"{name!r} is {dtype} {shape}, expected ({shape[0]}, {width}) floats", remedy
            )
        chars = dtype.itemsize // 4 if dtype.kind == "U" else dtype.itemsize
        if dtype.kind in "US" and chars > MAX_STRING_CHARS:
            raise damaged(where, f"{name!r} holds strings of {chars} characters", remedy)
        if dtype.kind not in "US" and dtype.itemsize > 8:
            raise damaged(where, f"{name!r} has dtype {dtype}", remedy)
        if dtype.kind not in CODE_KINDS.get(name, ALLOWED_KINDS):
            raise damaged(where, f"{name!r} has dtype {dtype}", remedy)


def check_values(arrays: Mapping[str, np.ndarray], where: str, remedy: str) -> None:
    """Pointer columns point inside their table (-1: none), so indexing cannot fail later."""
    sizes = {"samples": len(arrays["ids"])}
    sizes["bubbles"] = next((len(a) for n, a in arrays.items() if _is_anchor(n)), 0)
    sizes["regions"] = len(arrays.get("region_centres", ()))
    for name, table in INDEX_ARRAYS.items():
        column = arrays.get(name)
        if column is None or not len(column):
            continue
        if column.dtype.kind not in "iu":
            raise damaged(where, f"{name!r} has dtype {column.dtype}, not integers", remedy)
        low, high = int(column.min()), int(column.max())
        if low < -1 or high >= sizes[table]:
            raise damaged(
                where,
                f"{name!r} points at {table} {low}..{high} of {sizes[table]}",
                remedy,
            )


def check_model_name(name: Any, where: str, remedy: str) -> None:
    """A stored model name must be a hub id or a local path, before anything loads it."""
    if name is None:
        return
    ok = isinstance(name, str) and 0 < len(name) <= MAX_MODEL_NAME
    if ok:
        printable = not any(unicodedata.category(c)[0] == "C" for c in name)
        ok = printable and (bool(_HUB_ID.match(name)) or _looks_like_path(name))
    if not ok:
        shown = repr(name)[:120]
        raise damaged(where, f"model name {shown} is neither a model id nor a path", remedy)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "~", ".")) or os.sep in name or (os.altsep or "/") in name


def _is_anchor(name: str) -> bool:
    return name.startswith(ANCHOR_PREFIX)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
