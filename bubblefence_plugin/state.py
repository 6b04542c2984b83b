"""Step 9: persist the state atomically, as npy arrays plus JSON, never pickle.

One `.npz` file (a zip of `.npy` members) holds every array and a `meta.json`
member as bytes. It is written to a temporary file in the same folder, flushed to
disk and renamed over the target, so a reader sees the old state or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1


def write_state(path: str | Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise ValueError(f"state array {name!r} has dtype object, which needs pickle")
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


def read_state(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with np.load(Path(path), allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(arrays.pop("meta_json").tobytes().decode("utf-8"))
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: state format version {version!r} is not supported "
            f"(this BubbleFence reads version {FORMAT_VERSION}); reset and re-run the split"
        )
    return meta, arrays


def _meta_bytes(meta: dict[str, Any]) -> bytes:
    return json.dumps({**meta, "format_version": FORMAT_VERSION}).encode("utf-8")
