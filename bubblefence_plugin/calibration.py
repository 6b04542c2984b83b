"""How similar the chosen encoder finds edited copies of one image: the leak threshold, measured.

Two samples at cosine >= ``leak_threshold`` (0.95) are near twins, which a split never
puts on both sides of the train/eval line. Whether an edited copy of an image (re-saved
as a JPEG, mirrored, cropped a little, brightened...) reaches that similarity depends
on the encoder, not on the split: on the photos that ship with installed packages,
EfficientNet-Lite0 puts a JPEG re-save at quality 40 at a median cosine of 0.95 to its
original and 5 % of such copies below 0.87, so a default threshold lets many copies
fall on both sides. A threshold is only as good as this measurement, so it is made on
the user's own images with the split's own model.

`calibrate` applies `EDITS` to a seeded sample of images, embeds the originals (from
their files, as a split reads them) and the copies (in memory), and reports, per edit,
the copies' similarity to their original; the share of copies the threshold holds as
near twins; the highest threshold that holds ``keep`` of them (the suggestion, never
above the threshold in use: one that already holds them is kept); and what the
suggestion costs: the share of pairs of sampled images (different files) that are as
similar, which a split then ties together too. The dataset's own copies and bursts
are among those pairs, so a few percent is the data; where the share is high, the
encoder does not tell copies from different images apart, and a lower threshold
cannot fix it. A lower threshold also ties look-alikes that are no copies (crops of
one scene), so fewer, larger units are held out: bench/bench_calibration.py measures
both sides.

Nothing here imports FiftyOne (`bubblefence_plugin.fo.calibrate` reads a dataset's
images and its split's model and threshold).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from .core.config import check_int
from .core.neighbors import iter_similarity_blocks
from .core.progress import Progress, ProgressCallback, Steps, drive
from .embedder import read_rgb

# Images sampled by default: the 5th percentile of their 600 copies rests on 30 of them,
# and embedding them and their copies takes about half a minute on two CPU cores.
DEFAULT_IMAGES = 100
# Below this many images read the measure is said to be rough: the 5th percentile of
# their 6 x 20 = 120 copies rests on 6 copies.
FEW_IMAGES = 20
# Images held at once: originals, their copies and their pixels stay a few hundred MB.
IMAGES_PER_BATCH = 8
# An image's longer side before it is edited: the encoder sees ~224 px, and a 12 MP
# photo edited six times at full size would cost ~300 MB for nothing it can see.
EDIT_SIDE = 1024
# Share of copies a suggested threshold holds as near twins: the copies a split then
# keeps on one side (the rest, the edits the encoder sees as most different, may not be).
DEFAULT_KEEP = 0.95
# Share of pairs of sampled images at the suggestion beyond which it is said that the
# encoder puts different images as close as copies. A dataset's own copies and bursts
# make a few percent (bench_calibration's 252 crops of 21 photos with 7 copies each:
# 1.9 % at 0.84, the pairs of crops of one photo); far past that, the model ties them.
PAIRS_WARN = 0.05
# The suggestion is rounded down to this step: a threshold is given to two decimals.
THRESHOLD_STEP = 0.01


def _jpeg(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=40)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _mirrored(image: Image.Image) -> Image.Image:
    return ImageOps.mirror(image)


def _cropped(image: Image.Image) -> Image.Image:
    dx, dy = image.width // 20, image.height // 20
    return image.crop((dx, dy, image.width - dx, image.height - dy))


def _brighter(image: Image.Image) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(1.2)


def _half(image: Image.Image) -> Image.Image:
    size = (max(1, image.width // 2), max(1, image.height // 2))
    return image.resize(size, Image.Resampling.BILINEAR)


def _rotated(image: Image.Image) -> Image.Image:
    return image.rotate(3, resample=Image.Resampling.BICUBIC)


# Copies a dataset plausibly holds of one image, each named by what made it.
EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "JPEG re-save (quality 40)": _jpeg,  # an upload, a messaging app
    "mirrored": _mirrored,  # a flipped copy: augmentation, a selfie camera
    "cropped to 90%": _cropped,  # a slightly tighter crop, 5 % off each side
    "brighter (x1.2)": _brighter,  # an exposure edit, a filter
    "half size": _half,  # a thumbnail, a resized copy
    "rotated 3 degrees": _rotated,  # a rescan or a re-shot print, a little tilted
}


@dataclass(frozen=True)
class EditSimilarity:
    """How similar one edit's copies are to their originals."""

    edit: str
    median: float
    low: float  # the 5th percentile
    least: float
    share_held: float  # of its copies at >= the threshold in use


@dataclass(frozen=True)
class Calibration:
    """What `calibrate` measured and suggests (see the module docstring)."""

    model: str
    n_images: int
    leak_threshold: float
    keep: float
    edits: list[EditSimilarity]
    share_held: float  # of all copies at >= leak_threshold
    suggested_threshold: float  # leak_threshold where it holds `keep` of the copies
    pairs_at_suggested: float  # share of pairs of sampled images (two files) that similar
    pairs_q99: float  # 99th percentile of their similarity
    errors: dict[str, str]  # image path -> why it was not read

    @property
    def lower(self) -> bool:
        """Whether the suggestion is below the threshold in use."""
        return self.suggested_threshold < self.leak_threshold

    @property
    def ties_many_images(self) -> bool:
        """Whether pairs of sampled images are, too often, as similar as the suggestion
        (`PAIRS_WARN`): the encoder, not the threshold, is what falls short."""
        return self.pairs_at_suggested > PAIRS_WARN


def check_options(n_images: int, seed: int, keep: float) -> None:
    """Refuses a bad option by name, before any model is loaded.

    Args:
        n_images: images to sample, at least 2
        seed: the sampling seed, at least 0
        keep: share of copies a suggested threshold holds, in (0, 1)
    """
    check_int("n_images", n_images, 2)
    check_int("seed", seed, 0)
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep < 1.0:
        raise ValueError(f"keep={keep!r} must be a number in (0, 1)")


def sample_paths(paths: Sequence[str], n_images: int, seed: int) -> list[str]:
    """``n_images`` of ``paths`` (all of them when fewer), the same for the same paths
    and seed whatever their order.

    Args:
        paths: image file paths
        n_images: how many to sample
        seed: the sampling seed
    """
    ordered = sorted(set(map(str, paths)))
    if len(ordered) <= n_images:
        return ordered
    chosen = np.random.default_rng(seed).choice(len(ordered), n_images, replace=False)
    return [ordered[i] for i in sorted(chosen.tolist())]


def calibrate(
    paths: Sequence[str],
    embedder: object,
    *,
    leak_threshold: float = 0.95,
    n_images: int = DEFAULT_IMAGES,
    seed: int = 0,
    keep: float = DEFAULT_KEEP,
    progress: ProgressCallback | None = None,
) -> Calibration:
    """Measures how similar ``embedder`` finds `EDITS` copies of a sample of ``paths``.

    Example usage::

        from bubblefence_plugin.calibration import calibrate
        from bubblefence_plugin.embedder import ImageEmbedder

        found = calibrate(paths, ImageEmbedder("efficientnet-lite0"))
        print(found.suggested_threshold, found.share_held)

    Args:
        paths: image file paths (a sample of ``n_images`` is read, `sample_paths`)
        embedder: an `ImageEmbedder` (``embed_paths`` and ``embed_images``)
        leak_threshold: the threshold in use, whose hold on copies is measured
        n_images: images sampled; at least 2
        seed: the sampling seed
        keep: share of copies the suggested threshold must hold, in (0, 1)
        progress: called as ``progress(fraction, label)`` after each batch of images

    Raises:
        ValueError: on a bad parameter, or when fewer than 2 of the sampled images
            can be read
    """
    steps = iter_calibrate(
        paths, embedder, leak_threshold=leak_threshold, n_images=n_images, seed=seed, keep=keep
    )
    return drive(steps, progress)


def iter_calibrate(
    paths: Sequence[str],
    embedder: object,
    *,
    leak_threshold: float = 0.95,
    n_images: int = DEFAULT_IMAGES,
    seed: int = 0,
    keep: float = DEFAULT_KEEP,
) -> Steps[Calibration]:
    """`calibrate` as a generator of `Progress` events; the `Calibration` is its return
    value."""
    check_options(n_images, seed, keep)
    if not 0.0 < leak_threshold <= 1.0:
        raise ValueError(f"leak_threshold={leak_threshold!r} must be a number in (0, 1]")
    chosen = sample_paths(paths, n_images, seed)
    originals, copies, errors = yield from _embed_sample(chosen, embedder)
    if len(originals) < 2:
        raise ValueError(
            f"{len(originals)} of the {len(chosen)} sampled images could be read; "
            f"calibrating needs at least 2 ({_first_error(errors)})"
        )
    by_edit = {name: np.asarray([c[k] for c in copies]) for k, name in enumerate(EDITS)}
    every = np.concatenate(list(by_edit.values()))
    step_down = math.floor(float(np.quantile(every, 1.0 - keep)) / THRESHOLD_STEP)
    # On the grid, in the knob's range (0, 1], never above the threshold in use.
    suggested = min(leak_threshold, max(THRESHOLD_STEP, round(step_down * THRESHOLD_STEP, 2)))
    pairs = _pair_similarities(np.stack(originals))
    return Calibration(
        model=str(getattr(embedder, "model_name", embedder)),
        n_images=len(originals),
        leak_threshold=float(leak_threshold),
        keep=float(keep),
        edits=[
            EditSimilarity(
                edit=name,
                median=float(np.median(sims)),
                low=float(np.quantile(sims, 0.05)),
                least=float(sims.min()),
                share_held=float(np.mean(sims >= leak_threshold)),
            )
            for name, sims in by_edit.items()
        ],
        share_held=float(np.mean(every >= leak_threshold)),
        suggested_threshold=float(suggested),
        pairs_at_suggested=float(np.mean(pairs >= suggested)),
        pairs_q99=float(np.quantile(pairs, 0.99)),
        errors=errors,
    )


def _embed_sample(
    chosen: list[str], embedder: object
) -> Steps[tuple[list[np.ndarray], list[np.ndarray], dict[str, str]]]:
    """(each readable image's vector, its copies' similarities to it in `EDITS` order,
    errors by path), a batch of `IMAGES_PER_BATCH` images at a time."""
    originals: list[np.ndarray] = []
    copies: list[np.ndarray] = []
    errors: dict[str, str] = {}
    for start in range(0, len(chosen), IMAGES_PER_BATCH):
        batch = chosen[start : start + IMAGES_PER_BATCH]
        found = embedder.embed_paths(batch)
        errors.update({batch[i]: message for i, message in found.errors.items()})
        read = [(batch[i], row) for i, row in zip(found.indices, found.embeddings, strict=True)]
        edited: list[Image.Image] = []
        for path, _ in read:
            # The pixels the embedder read the original from: a copy of a 16-bit or a
            # transparent image converted otherwise (all white) was no copy at all.
            image = read_rgb(path, EDIT_SIDE)
            edited += [edit(image) for edit in EDITS.values()]
        if read:
            vectors = embedder.embed_images(edited).dense()
            for k, (_, row) in enumerate(read):
                originals.append(row)
                copies.append(vectors[k * len(EDITS) : (k + 1) * len(EDITS)] @ row)
        done = min(start + IMAGES_PER_BATCH, len(chosen))
        yield Progress(done / len(chosen), f"{done} of {len(chosen)} images and their copies")
    return originals, copies, errors


def _first_error(errors: dict[str, str]) -> str:
    if not errors:
        return "too few images"
    path, message = next(iter(errors.items()))
    return f"e.g. {os.path.basename(path)}: {message}"


def _pair_similarities(x: np.ndarray) -> np.ndarray:
    """Cosine of every pair of different rows: the sample's pairs (`DEFAULT_IMAGES`
    images give 4,950), never the dataset's."""
    parts = []
    for rows, sims in iter_similarity_blocks(x, x):
        for k, i in enumerate(range(rows.start, rows.stop)):
            parts.append(sims[k, i + 1 :].copy())  # the block's buffer is reused
    return np.concatenate(parts) if parts else np.zeros(0)
