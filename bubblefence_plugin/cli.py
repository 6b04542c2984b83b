"""Command-line front end of the FiftyOne side: ``split``, ``export``, ``reset``, ``demo``.

`add_subcommands(subparsers)` adds them to the package's ``python -m bubblefence_plugin``
parser; every command's handler is ``args.func(args)`` and returns an exit code
(0 ok, 2 refused: bad input, busy dataset, model unavailable). FiftyOne is imported
only when a command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import mimetypes
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEMO_NAME = "bubblefence-demo"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


# --------------------------------------------------------------------------- parsers


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``split``, ``export``, ``reset`` and ``demo`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "split",
        help="run a BubbleFence round on a FiftyOne dataset (optionally adding folders first)",
        description="Adds the images of each --folder to the dataset (creating it if "
        "needed), then assigns every sample not yet assigned. Run again with the next "
        "folder: only its images are embedded and split; earlier samples never change.",
    )
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument(
        "--folder",
        action="append",
        default=[],
        metavar="DIR",
        help="add this folder's images (recursively) first; repeatable",
    )
    p.add_argument("--config", metavar="YAML", help="config file (ours or the original's layout)")
    p.add_argument(
        "--embeddings-field",
        metavar="FIELD",
        help="use this existing vector field instead of computing embeddings",
    )
    p.add_argument("--model", help="model name or local folder (default: CLIP ViT-B/32)")
    p.add_argument(
        "--label-field",
        help="meet the quota per label of this field too (classification, detections, "
        "string); remembered for later rounds",
    )
    p.add_argument(
        "--group-field",
        help="never split a group of this field (video, drive, patient) across train/eval "
        "or validation/test; remembered for later rounds ('' to drop)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help="override one config knob, e.g. --set eval_ratio=0.3 (YAML value syntax)",
    )
    p.set_defaults(func=cmd_split)

    p = subparsers.add_parser(
        "export", help="export each split to DIR/<split> plus DIR/manifest.csv"
    )
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument("--dir", required=True, metavar="DIR", help="empty output folder")
    p.add_argument(
        "--format",
        default="FiftyOneDataset",
        help="a fiftyone.types dataset type name (default FiftyOneDataset)",
    )
    p.add_argument("--tags", nargs="+", help="export these tags instead of the three splits")
    p.add_argument("--label-field", help="label field for formats that carry labels")
    p.add_argument("--no-media", action="store_true", help="do not copy the images")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DIR")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser(
        "reset", help="remove the BubbleFence state, split fields and split tags"
    )
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument("--keep-embeddings", action="store_true", help="keep bubblefence_embedding")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_reset)

    p = subparsers.add_parser(
        "demo",
        help="build a small dataset from images shipped with installed packages, split it "
        "in two rounds",
    )
    p.add_argument("--name", default=DEMO_NAME, help=f"dataset name (default {DEMO_NAME})")
    p.add_argument(
        "--model",
        help="model name or local folder saved with save_pretrained (default: CLIP ViT-B/32, "
        "which must be in the Hugging Face cache when offline)",
    )
    p.add_argument("--dir", metavar="DIR", help="where to write the demo images")
    p.set_defaults(func=cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry with only these commands (the package's __main__ has more)."""
    parser = argparse.ArgumentParser(prog="python -m bubblefence_plugin")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


# --------------------------------------------------------------------------- helpers


def _refused(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turns expected failures into one clear line on stderr and exit code 2."""

    def wrapper(args: argparse.Namespace) -> int:
        from .dataset import BubbleFenceBusyError, ModelUnavailableError

        try:
            return func(args)
        except (ValueError, BubbleFenceBusyError, ModelUnavailableError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


class _Bar:
    """A tqdm bar driven by (fraction, label) progress events."""

    def __init__(self, desc: str) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=1000, desc=desc, unit="‰", leave=True, file=sys.stderr)

    def __call__(self, fraction: float, label: str) -> None:
        self._bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
        self._bar.set_postfix_str(label, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def _load_dataset(name: str, create: bool = False) -> Any:
    import fiftyone as fo

    if fo.dataset_exists(name):
        return fo.load_dataset(name)
    if not create:
        raise ValueError(f"no FiftyOne dataset named {name!r} (see `fiftyone datasets list`)")
    ds = fo.Dataset(name)
    ds.persistent = True
    return ds


def _list_images(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise FileNotFoundError(f"--folder {str(folder)!r} is not a directory")
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            p = Path(root) / f
            mime = mimetypes.guess_type(f)[0] or ""
            if p.suffix.lower() in IMAGE_EXTENSIONS or mime.startswith("image/"):
                out.append(str(p.resolve()))
    return out


def add_folder(dataset: Any, folder: str | os.PathLike) -> int:
    """Adds the folder's images not already in the dataset (by path); returns how many."""
    import fiftyone as fo

    known = set(dataset.values("filepath"))
    new = [p for p in _list_images(Path(folder).expanduser()) if p not in known]
    if new:
        dataset.add_samples([fo.Sample(filepath=p) for p in new])
    return len(new)


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KNOB=VALUE")
        out[key.strip()] = yaml.safe_load(value)  # safe_load: numbers/bools, never code
    return out


def _print_summary(summary: dict[str, Any]) -> None:
    print(summary["message"])
    totals = summary.get("counts_total") or {}
    if totals:
        print("  totals: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    labels = summary.get("labels")
    if labels:
        covered = labels["covered"]
        print(
            f"  labels: {labels['n_eligible']} with >= {labels['min_label_count']} samples; "
            f"in eval {covered['eval']}, validation {covered['validation']}, test "
            f"{covered['test']}; eval share error max {labels['share_error_max']}"
        )
    groups = summary.get("groups")
    if groups:
        print(f"  groups: {groups['n_groups']}, violations {groups['violations']}")
    for sid, msg in list((summary.get("errors") or {}).items())[:5]:
        print(f"  error {sid}: {msg}")


def _run_split(dataset: Any, **kwargs: Any) -> dict[str, Any]:
    from .dataset import split

    bar = _Bar(f"BubbleFence {dataset.name}")
    try:
        return split(dataset, progress=bar, **kwargs)
    finally:
        bar.close()


# --------------------------------------------------------------------------- commands


@_refused
def cmd_split(args: argparse.Namespace) -> int:
    """``split --dataset NAME [--folder DIR ...] [--config cfg.yaml]``."""
    overrides = _parse_sets(args.set)
    if args.model:
        overrides["model_name"] = args.model
    dataset = _load_dataset(args.dataset, create=bool(args.folder))
    for folder in args.folder:
        print(f"Added {add_folder(dataset, folder)} new images from {folder}")
    summary = _run_split(
        dataset,
        config=args.config,
        embeddings_field=args.embeddings_field,
        label_field=args.label_field,
        group_field=args.group_field,
        **overrides,
    )
    _print_summary(summary)
    return 0


@_refused
def cmd_export(args: argparse.Namespace) -> int:
    """``export --dataset NAME --dir DIR [--format TYPE] [--tags ...] [--overwrite]``."""
    from .dataset import export

    dataset = _load_dataset(args.dataset)
    result = export(
        dataset,
        args.dir,
        args.format,
        tags=args.tags,
        label_field=args.label_field,
        export_media=not args.no_media,
        overwrite=args.overwrite,
    )
    counts = ", ".join(f"{k} {v}" for k, v in result["counts"].items())
    print(f"Exported {counts} to {result['export_dir']} ({result['dataset_type']})")
    print(f"Manifest: {result['manifest']}")
    return 0


@_refused
def cmd_reset(args: argparse.Namespace) -> int:
    """``reset --dataset NAME [--keep-embeddings] [--yes]``."""
    from .dataset import reset

    dataset = _load_dataset(args.dataset)
    if not args.yes:
        answer = input(f"Remove the BubbleFence split of {dataset.name!r}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing changed.")
            return 1
    result = reset(dataset, keep_embeddings=args.keep_embeddings)
    print(
        f"Reset {dataset.name}: removed {result['removed_fields'] or 'no fields'}, "
        f"untagged {result['n_samples_untagged']} samples"
        + ("; embeddings kept" if result["kept_embeddings"] else "")
    )
    return 0


# --------------------------------------------------------------------------- demo


def packaged_images() -> list[Path]:
    """Photos that ship inside installed packages (scikit-learn, matplotlib, scikit-image)."""
    import importlib.util

    found: list[Path] = []

    def add_dir(module: str, sub: str, names: Sequence[str] | None = None) -> None:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            return
        folder = Path(next(iter(spec.submodule_search_locations))) / sub
        if not folder.is_dir():
            return
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in (".jpg", ".png") and (names is None or p.stem in names):
                found.append(p)

    add_dir("sklearn", "datasets/images")
    add_dir("matplotlib", "mpl-data/sample_data", ["grace_hopper"])
    # Colour photos only: the grey/synthetic skimage samples would make a lopsided map.
    add_dir(
        "skimage",
        "data",
        [
            "astronaut",
            "chelsea",
            "coffee",
            "rocket",
            "motorcycle_left",
            "motorcycle_right",
            "hubble_deep_field",
            "retina",
            "immunohistochemistry",
            "ihc",
            "color",
            "brick",
            "grass",
            "gravel",
            "coins",
            "camera",
            "moon",
            "page",
            "text",
        ],
    )
    return found


def build_demo_images(out_dir: Path, n_images: int = 160, seed: int = 0) -> tuple[list, list]:
    """Crops of the packaged photos, written to ``round1/`` and ``round2/``.

    The second half of the source photos only appears in round 2, so the second round
    brings new regions of embedding space (new bubbles), like a new drive would.
    """
    import numpy as np
    from PIL import Image

    sources = packaged_images()
    if not sources:
        raise FileNotFoundError("no sample images found in scikit-learn/matplotlib/skimage")
    rng = np.random.default_rng(seed)
    per_source = max(4, n_images // len(sources))
    cut = max(1, (len(sources) * 2) // 3)
    rounds: tuple[list, list] = ([], [])
    for k, src in enumerate(sources):
        with Image.open(src) as im:
            im = im.convert("RGB")
            w, h = im.size
            target = out_dir / ("round1" if k < cut else "round2")
            target.mkdir(parents=True, exist_ok=True)
            for j in range(per_source):
                side = int(min(w, h) * rng.uniform(0.35, 0.8))
                x = int(rng.integers(0, w - side + 1))
                y = int(rng.integers(0, h - side + 1))
                crop = im.crop((x, y, x + side, y + side)).resize((128, 128))
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                path = target / f"{src.stem}_{j:02d}.jpg"
                crop.save(path, quality=90)
                rounds[0 if k < cut else 1].append(str(path))
    return rounds


@_refused
def cmd_demo(args: argparse.Namespace) -> int:
    """``demo [--model DIR]``: two rounds on a small persistent dataset, then how to view it."""
    import fiftyone as fo

    from .config import BubbleFenceConfig
    from .dataset import get_embedder

    model = args.model or BubbleFenceConfig().model_name
    print(f"Loading the embedding model {model} ...")
    # Load first: a missing model must fail before anything is written.
    get_embedder(model, "auto", BubbleFenceConfig().batch_size)

    out_dir = Path(args.dir or Path(fo.config.default_dataset_dir) / args.name).expanduser()
    round1, round2 = build_demo_images(out_dir)
    print(f"Wrote {len(round1) + len(round2)} demo images under {out_dir}")
    if fo.dataset_exists(args.name):
        print(f"Replacing the existing dataset {args.name!r}")
        fo.delete_dataset(args.name)
    dataset = _load_dataset(args.name, create=True)

    for k, folder in enumerate(("round1", "round2"), start=1):
        added = add_folder(dataset, out_dir / folder)
        print(f"\nRound {k}: added {added} images from {out_dir / folder}")
        summary = _run_split(dataset, model_name=model)
        _print_summary(summary)

    print(
        f"\nDataset {args.name!r} is saved. Open it in the App with:\n"
        f"  fiftyone app launch {args.name}\n"
        "then filter by the train/validation/test sample tags, colour by `split`, "
        "or run the BubbleFence operators from the operator browser (backtick key)."
    )
    return 0
