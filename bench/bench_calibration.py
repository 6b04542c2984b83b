"""The leak threshold `calibrate` suggests against the default, on families of edited
copies of real photos.

Data: square crops of the photos that ship with installed packages
(`cli.packaged_images`), each crop a *family*: the crop and copies a dataset plausibly
holds of it, made with edits whose kinds and strengths differ from the ones
`calibration.EDITS` measures (so the suggestion is not tested on what it was fitted
to): JPEG quality 30 and 60, brightness x0.8 and x1.25, contrast x1.3, a 6 % crop, a
mirror image re-saved at quality 70. All embedded with EfficientNet-Lite0, the offline
model. Then, in this one process, one round each of:

  * ours at the default leak_threshold (0.95);
  * ours at the threshold `calibrate` suggests on the same files (what a user runs);
  * a seeded random split at the same eval share;
  * the oracle: each family one group (the split's own group rule), at 0.95.

Per split: families with members on both sides of the train/eval line, eval samples
with a train sample at cosine >= 0.95 and >= the calibrated threshold, the eval share
and labels (photos) reaching eval, seconds. Appends a table to bench/RESULTS.md.

    .venv/bin/python bench/bench_calibration.py            # 21 photos x 12 crops x 8
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_core import append_results, peak_rss_mb, reset_peak_rss, square_crop  # noqa: E402

from bubblefence_plugin import BubbleFence, BubbleFenceConfig  # noqa: E402
from bubblefence_plugin.calibration import calibrate  # noqa: E402
from bubblefence_plugin.cli import packaged_images  # noqa: E402
from bubblefence_plugin.core.metrics import leakage  # noqa: E402
from bubblefence_plugin.embedder import EFFICIENTNET_LITE0, ImageEmbedder  # noqa: E402


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _crop(image: Image.Image, share: float) -> Image.Image:
    dx, dy = int(image.width * share / 2), int(image.height * share / 2)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


# Not calibration.EDITS: other kinds (contrast, darker, flip then re-save) and strengths.
COPIES = {
    "jpeg30": lambda im: _jpeg(im, 30),
    "jpeg60": lambda im: _jpeg(im, 60),
    "darker0.8": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "brighter1.25": lambda im: ImageEnhance.Brightness(im).enhance(1.25),
    "contrast1.3": lambda im: ImageEnhance.Contrast(im).enhance(1.3),
    "crop6": lambda im: _crop(im, 0.06),
    "mirror+jpeg70": lambda im: _jpeg(ImageOps.mirror(im), 70),
}


def write_families(
    folder: Path, crops_per_photo: int, seed: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(file paths, family of each, photo of each): a 224-px crop and its `COPIES`."""
    rng = np.random.default_rng(seed)
    paths, family, photo = [], [], []
    for p, source in enumerate(packaged_images()):
        with Image.open(source) as image:
            image = image.convert("RGB")
        for c in range(crops_per_photo):
            crop = square_crop(image, rng, 0.4, 0.85)
            for name, edit in {"original": lambda im: im, **COPIES}.items():
                path = folder / f"p{p:02d}_c{c:02d}_{name}.jpg"
                edit(crop).save(path, quality=92)
                paths.append(str(path))
                family.append(p * 1000 + c)
                photo.append(p)
    return paths, np.asarray(family), np.asarray(photo)


def straddling(family: np.ndarray, split: np.ndarray) -> int:
    """Families with members in train and in validation or test."""
    is_eval = np.isin(split, ("validation", "test"))
    is_train = split == "train"
    return sum(
        1 for f in np.unique(family) if is_eval[family == f].any() and is_train[family == f].any()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=12, help="crops per photo (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        paths, family, photo = write_families(Path(tmp), args.crops, args.seed)
        embedder = ImageEmbedder(EFFICIENTNET_LITE0, device="cpu")
        start = time.perf_counter()
        x = embedder.embed_paths(paths).embeddings
        embed_s = time.perf_counter() - start
        reset_peak_rss()
        start = time.perf_counter()
        found = calibrate(paths, embedder, n_images=100, seed=args.seed)
        calibrate_s = time.perf_counter() - start
        calibrate_mb = peak_rss_mb()
    t = found.suggested_threshold
    print(f"{len(paths)} images, {len(np.unique(family))} families; embedded in {embed_s:.1f} s")
    print(
        f"calibrate: {t} suggested ({found.share_held:.0%} of copies held at 0.95), "
        f"{calibrate_s:.1f} s"
    )

    rows = []

    def record(name: str, split: np.ndarray, seconds: float | None, mb: float | None) -> None:
        leak = leakage(x, split, (t, 0.95))
        is_eval = np.isin(split, ("validation", "test"))
        kept = split != "duplicate"
        rows.append(
            f"| {name} | {straddling(family, split)} | {leak[0.95]:.4f} | {leak[t]:.4f} | "
            f"{is_eval[kept].mean():.3f} | {len(np.unique(photo[is_eval]))} of "
            f"{len(np.unique(photo))} | {'-' if seconds is None else f'{seconds:.2f}'} | "
            f"{'-' if mb is None else f'{mb:.0f}'} |"
        )
        print(rows[-1])

    for name, threshold, groups in (
        ("ours, leak_threshold 0.95 (default)", 0.95, None),
        (f"ours, leak_threshold {t} (calibrated)", t, None),
        ("oracle: each family one group, 0.95", 0.95, family),
    ):
        reset_peak_rss()
        start = time.perf_counter()
        bf = BubbleFence(BubbleFenceConfig(seed=args.seed, leak_threshold=threshold))
        split = np.asarray(bf.ingest(x, groups=groups).split)
        record(name, split, time.perf_counter() - start, peak_rss_mb())
    rng = np.random.default_rng(args.seed)
    random_split = rng.choice(["train", "validation", "test"], size=len(x), p=[0.8, 0.1, 0.1])
    record("random split", random_split, None, None)

    lines = [
        f"## Calibrated leak threshold on families of edited copies "
        f"({dt.datetime.now():%Y-%m-%d %H:%M})",
        "",
        f"`bench/bench_calibration.py --crops {args.crops}`; 2-core CPU. {len(paths)} images: "
        f"{len(np.unique(family))} families (a 224-px crop of one of the "
        f"{len(np.unique(photo))} packaged photos and its {len(COPIES)} copies: "
        f"{', '.join(COPIES)}), embedded with EfficientNet-Lite0 in {embed_s:.1f} s. "
        f"`calibrate` (100 images, seed {args.seed}; its own six edits, not these): "
        f"{found.share_held:.0%} of its copies held at 0.95, **{t}** suggested, "
        f"{found.pairs_at_suggested:.1%} of pairs of its sampled images as similar; "
        f"{calibrate_s:.1f} s, peak RSS {calibrate_mb:.0f} MB. Straddling: families with "
        "members in train and in eval. Leak@t: eval samples with a train sample at cosine "
        f">= t. Photos in eval: of the {len(np.unique(photo))} source photos.",
        "",
        f"| split | families straddling | leak@0.95 | leak@{t} | eval share | photos in eval | "
        "seconds | peak MB |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
        *rows,
    ]
    if not args.no_record:
        append_results(lines)


if __name__ == "__main__":
    main()
