"""Export: each split (or tag) to its own folder, with a manifest of the assignments.

Every name a user gives becomes a safe folder name, and every path is checked to stay
inside the export folder before anything is written. The manifest's assignments come
from the stored state (the source of truth), its exported paths from the exporter
itself (`record_exported_media`: FiftyOne's exporters name their files), and its cells
are neutralised against spreadsheet formulas.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import fiftyone.utils.data as foud
from fiftyone import ViewField as F

from ..core.progress import Progress, ProgressCallback, Steps, drive, within
from ..text import counted
from .fields import (
    ASSIGNMENT_COLUMNS,
    EXCLUDED_TAG,
    SPLIT_FIELD,
    SPLIT_TAGS,
    label_source,
    record_exported_media,
    role_of,
    root_dataset,
    table_from_frame,
    values_by_id,
)
from .runs import BubbleFenceBusyError, is_locked, reloaded
from .state import STATE_RUN, load_state

# Image formats offered in the App; any `fiftyone.types.Dataset` works from Python.
EXPORT_TYPES: dict[str, str] = {
    "FiftyOneDataset": "Full FiftyOne dataset (all fields, ids kept)",
    "ImageDirectory": "Images only",
    "FiftyOneImageClassificationDataset": "Images + classification labels JSON",
    "ImageClassificationDirectoryTree": "One folder per class",
    "COCODetectionDataset": "COCO detection",
    "VOCDetectionDataset": "Pascal VOC detection",
    "YOLOv5Dataset": "YOLOv5 (one folder, a split per export)",
    "CVATImageDataset": "CVAT image",
    "FiftyOneImageDetectionDataset": "Images + detections JSON",
}
# Exporters that write all splits into one directory, selected with `split=`.
_SPLIT_ARG_TYPES = ("YOLOv5Dataset",)
# The split names those formats' trainers read from `dataset.yaml` (YOLO's `train`, `val`,
# `test`): a `validation` key is one no YOLO trainer looks for (found by a tester).
_SPLIT_ARG_NAMES = {"validation": "val"}
# Formats whose exporters write the media files themselves (`supported_modes` without
# False in `fiftyone.utils.data.exporters`, FiftyOne 1.22).
_MEDIA_IS_THE_EXPORT = (
    "ImageDirectory",
    "VideoDirectory",
    "MediaDirectory",
    "ImageClassificationDirectoryTree",
    "VideoClassificationDirectoryTree",
    "FiftyOneImageLabelsDataset",
    "FiftyOneVideoLabelsDataset",
)
# Lies in an export folder until its manifest is written: a folder an export left when
# it was stopped says so, and the next export into it names it.
UNFINISHED_MARK = ".bubblefence-export-unfinished"
UNFINISHED_TEXT = (
    "A BubbleFence export into this folder has not finished (or was stopped): its "
    "contents are incomplete. manifest.csv is written last.\n"
)
# Beside an export folder NAME, as `.NAME<infix><id>`: what an overwrite moved aside
# (put back if it fails), and the same once the overwrite succeeded, being deleted
# (`_discard`; the next export into the folder removes one whose deletion was stopped).
REPLACED_INFIX = ".replaced-"
DISCARDED_INFIX = ".discarded-"
# Arguments `SampleCollection.export` takes itself rather than passing to the exporter.
_VIEW_EXPORT_ARGS = ("frame_labels_field", "progress")

MANIFEST_NAME = "manifest.csv"
# `source_filepath` is the sample's media where the dataset has it; `exported_filepath`
# the file the exporter wrote for it, relative to the export folder (see `export`).
MANIFEST_COLUMNS = (
    "id",
    "source_filepath",
    "exported_filepath",
    "split",
    "anchor_id",
    "shell",
    "round",
    "duplicate_of",
    "export_folders",
)
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, CSV
# injection); the quote is added to cells starting with it too, so a reader strips
# exactly one quote back.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
# Export folder names: one path component, portable characters only.
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_FOLDER_CHARS = 100  # well under every file system's 255-byte name limit


def export(
    samples: foc.SampleCollection,
    export_dir: str | os.PathLike,
    dataset_type: str | type = "FiftyOneDataset",
    *,
    splits: Iterable[str] | None = None,
    tags: Iterable[str] | None = None,
    label_field: str | None = None,
    export_media: bool | str = True,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Exports each split (or each of ``tags``) of ``samples`` to ``export_dir/<folder>``.

    Each name becomes a safe folder name (`export_folders`: ``../x`` -> ``x``), and
    every path is checked to stay inside ``export_dir`` before anything is written.
    Also writes ``export_dir/manifest.csv``: one row per exported sample, then one per
    duplicate the state set aside (not exported: ``split`` is ``duplicate`` and
    ``duplicate_of`` names the kept original), with id, source_filepath (the sample's
    media), exported_filepath, split, anchor_id, shell, round and duplicate_of from the
    stored state, and export_folders, the sample's names and folders as JSON. Cells that
    a spreadsheet would run as a formula start with one added quote (`safe_csv_cell`).

    ``exported_filepath`` is the file the exporter wrote for the sample, relative to
    ``export_dir`` with ``/`` separators (the folder can be moved or archived whole), as
    the exporter named it: ``train/data/cat-2.jpg`` for a second ``cat.jpg``. A sample
    exported under several tags has a file in each of their folders, one per line in
    the order of ``tags``. It is empty for a duplicate and where the exporter wrote no
    file of the sample's media (``export_media=False`` or ``"manifest"``, image
    patches).

    A labelled format needs a label field of the type it writes: without
    ``label_field``, the one such field of the dataset is used; none or several is an
    error before anything is written. YOLOv5's splits share one class list (the
    dataset's ``classes`` or ``default_classes``, else every label exported, sorted)
    unless ``classes`` is given. An exporter that fails leaves no export folder
    behind that this call created.

    Splits are exported by their tags, aliases included (``val`` is validation, as
    for the audit), which must agree with the stored split: a sample whose split tag
    was removed, moved or added by hand, or that is tagged ``excluded`` but has not left
    the split yet, is refused before anything is written (the next split restores the
    tags and takes excluded samples out). Of a split that is not BubbleFence's (tags of
    the user's, no stored state), samples tagged ``excluded`` are left out, and counted.

    Example usage::

        import bubblefence_plugin.fo as bf

        bf.export(dataset, "/data/out")  # out/train, out/validation, out/test
        bf.export(dataset, "/data/yolo", "YOLOv5Dataset", label_field="ground_truth")
        bf.export(dataset, "/data/picks", "ImageDirectory", tags=["to_label"])

    Args:
        samples: a dataset or view
        export_dir: the folder to write; must be empty unless ``overwrite``
        dataset_type: a `fiftyone.types` dataset type or its name (see `EXPORT_TYPES`)
        splits: the splits to export (default: train, validation, test)
        tags: sample tags to export instead of splits
        label_field: the label field the exporter writes (default: the dataset's one
            field of the type the format takes)
        export_media: as FiftyOne's ``export_media`` (True copies the media)
        overwrite: empty a non-empty ``export_dir`` first (never one holding the
            dataset's media)
        progress: called as ``progress(fraction, label)`` as each name is exported
        **kwargs: further exporter arguments; paths among them must be relative to
            ``export_dir``, without ``..``

    Returns:
        ``export_dir``, ``dataset_type``, ``counts`` and ``folders`` per name,
        ``manifest`` (its path), ``n_manifest_rows`` and ``n_excluded_left_out``
    """
    steps = iter_export(
        samples,
        export_dir,
        dataset_type,
        splits=splits,
        tags=tags,
        label_field=label_field,
        export_media=export_media,
        overwrite=overwrite,
        **kwargs,
    )
    return drive(steps, progress)


def iter_export(
    samples: foc.SampleCollection,
    export_dir: str | os.PathLike,
    dataset_type: str | type = "FiftyOneDataset",
    *,
    splits: Iterable[str] | None = None,
    tags: Iterable[str] | None = None,
    label_field: str | None = None,
    export_media: bool | str = True,
    overwrite: bool = False,
    **kwargs: Any,
) -> Steps[dict[str, Any]]:
    """`export` as a generator of `Progress` events (for live progress in the App); the
    result is the generator's return value.

    Args:
        samples: as for `export`; so are the other arguments
    """
    export_dir = Path(export_dir).expanduser().resolve()
    type_name, type_cls = _dataset_type(dataset_type)
    _check_export_kwargs(kwargs)
    _refuse_no_media_where_media_is_the_export(type_name, export_media)
    label_field = _label_field_for(samples, type_name, type_cls, label_field)
    names = _export_names(tags if tags else splits or SPLIT_TAGS)
    not_splits = [name for name in names if name not in SPLIT_TAGS]
    if not tags and not_splits:
        raise ValueError(
            f"splits={not_splits}: a split is one of {', '.join(map(repr, SPLIT_TAGS))}; "
            "export other tags with tags=[...] (--tags)"
        )
    folders = export_folders(names)
    if type_name in _SPLIT_ARG_TYPES and not tags:
        folders = {name: _SPLIT_ARG_NAMES.get(name, folder) for name, folder in folders.items()}
    for folder in folders.values():
        path_inside(export_dir, export_dir / folder)
    counts = samples.count_sample_tags()  # read once for the checks and the views
    _refuse_nothing_to_export(samples, counts, names, asked_tags=bool(tags))
    if not tags:
        _refuse_two_splits(samples, counts)
    views, n_excluded = _views_to_export(samples, counts, names, by_tags=bool(tags))
    dataset = root_dataset(samples)
    _refuse_while_a_run_holds(dataset)
    version = STATE_RUN.info(reloaded(dataset))
    loaded = load_state(samples, embeddings=False)  # a damaged state fails before any write
    if loaded and not tags:
        _refuse_an_unfinished_round(dataset, *loaded)
    table = table_from_frame(loaded[0].assignments()) if loaded else {"id": []}
    if loaded and not tags:
        _refuse_tags_off_the_state(samples, table)
        _refuse_duplicates_of_deleted(dataset, table)
    kwargs = _one_class_list(samples, type_name, label_field, kwargs)
    created = _outermost_missing(export_dir)
    try:
        replaced = _prepare_export_dir(samples, export_dir, overwrite)
    except Exception:
        _remove_created(created)
        raise
    try:
        each = _export_each(
            export_dir,
            type_name,
            type_cls,
            views,
            folders,
            label_field,
            export_media,
            kwargs,
        )
        exported, exported_as, exported_files = yield from within(each, 0.0, 0.95)
        # The export reads the tags as it goes: a run that changed them meanwhile (it
        # took the lock after the check above) leaves a mix of two splits.
        _refuse_while_a_run_holds(dataset, during=True)
        if STATE_RUN.info(reloaded(dataset)) != version:
            raise BubbleFenceBusyError(
                f"the BubbleFence split of dataset {dataset.name!r} changed during the export"
            )
        manifest = export_dir / MANIFEST_NAME
        splits = table.get("split", [None] * len(table["id"]))
        duplicates = [
            sid for sid, split in zip(table["id"], splits, strict=True) if split == "duplicate"
        ]
        # The state holds the whole dataset's: only those in the exported view are
        # listed, and for tags only the duplicates of samples exported.
        duplicates = values_by_id(samples, duplicates, [])[0]
        if tags and duplicates:
            original = dict(zip(table["id"], table["duplicate_of"], strict=True))
            duplicates = [sid for sid in duplicates if original[sid] in exported_as]
        yield Progress(0.95, f"Writing {MANIFEST_NAME}")
        _write_manifest(dataset, exported_as, exported_files, duplicates, table, manifest)
        (export_dir / UNFINISHED_MARK).unlink()
    except BaseException as e:
        # Half an export is worse than none: remove what this call wrote (the folders it
        # made above the export folder too), and put back the folder's contents an
        # overwrite moved aside; on Ctrl-C too.
        if created:
            _remove_created(created)
        else:
            shutil.rmtree(export_dir) if replaced else _empty(export_dir)
        if replaced:
            replaced.rename(export_dir)
        if not isinstance(e, Exception):  # Ctrl-C, a closed generator: cleaned up, stop
            raise
        kept = "the folder's earlier contents are back" if replaced else "nothing was kept"
        if isinstance(e, BubbleFenceBusyError):
            raise BubbleFenceBusyError(f"{e}; {kept}: export again") from e
        raise ValueError(f"exporting as {type_name} failed, {kept}: {e}") from e
    if replaced:
        _discard(replaced)
    yield Progress(1.0, "Done")
    return {
        "export_dir": str(export_dir),
        "dataset_type": type_name,
        "counts": exported,
        "folders": folders,
        "manifest": str(manifest),
        "n_manifest_rows": len(exported_as) + len(duplicates),
        "n_excluded_left_out": n_excluded,
    }


def _outermost_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet: what
    an export that fails removes, so that it leaves no empty folders behind; None when
    ``path`` exists."""
    missing = None
    while not path.exists() and path != path.parent:
        missing, path = path, path.parent
    return missing


def _remove_created(created: Path | None) -> None:
    if created is not None and created.exists():
        shutil.rmtree(created)


def _refuse_while_a_run_holds(dataset: fo.Dataset, during: bool = False) -> None:
    """Refuses while a split, exclusion or reset holds the dataset: the export would read
    its tags half written. Checked before and after (`during`) the export, which does not
    hold the lock itself: a large export outlasts the lock's expiry, and it writes
    nothing on the dataset."""
    if is_locked(dataset):
        when = "ran during the export" if during else "is in progress"
        raise BubbleFenceBusyError(
            f"a BubbleFence run (split, exclusion or reset) {when} on dataset "
            f"{dataset.name!r}; export when it has finished"
        )


def _refuse_an_unfinished_round(dataset: fo.Dataset, bf: Any, params: dict[str, Any]) -> None:
    """Refuses when the state holds a round whose split fields and tags were not written
    (a split stopped between its commit and its writes): the tags the export reads would
    leave that round's samples out. The next split writes them, with nothing new to add."""
    frame = bf.assignments()
    last_round = int(frame["round"].max()) if len(frame) else -1
    if int(params.get("fields_round", -1)) < last_round:
        raise ValueError(
            f"round {last_round} of dataset {dataset.name!r} was saved, but its split fields "
            "and tags were not all written (the run was stopped): run the split again to "
            "finish it (nothing new is needed), then export"
        )


def _split_tags(counts: Mapping[str, int]) -> dict[str, list[str]]:
    """Per split, the tags of ``counts`` (a collection's `count_sample_tags`) read as it
    (`role_of`: ``val`` and ``Val`` for validation, as the audit reads a user's split)."""
    return {split: sorted(t for t in counts if role_of(t) == split) for split in SPLIT_TAGS}


def _views_to_export(
    samples: foc.SampleCollection, counts: Mapping[str, int], names: list[str], by_tags: bool
) -> tuple[dict[str, foc.SampleCollection], int]:
    """(per name, the samples exported under it; how many samples with a split were left
    out as excluded). Tags (``by_tags``) are exported as tagged. A split takes the
    samples of every tag read as it (`_split_tags`), less those tagged `EXCLUDED_TAG`:
    an excluded sample is in no split. BubbleFence's own split lets them go when they are
    excluded (`_refuse_tags_off_the_state` refuses those that have not yet); a split of
    the user's keeps its tags, and exported whole it shipped what was excluded."""
    if by_tags:
        return {name: samples.match_tags(name) for name in names}, 0
    tags = _split_tags(counts)
    kept = samples.match_tags(EXCLUDED_TAG, bool=False)
    # A split no tag is read as matches its own name, which no sample carries.
    views = {name: kept.match_tags(tags[name] or [name]) for name in names}
    asked = sorted({t for name in names for t in tags[name]})
    n_excluded = samples.match_tags(EXCLUDED_TAG).match_tags(asked).count() if asked else 0
    return views, n_excluded


def _refuse_two_splits(samples: foc.SampleCollection, counts: Mapping[str, int]) -> None:
    """Refuses samples that carry tags of two splits (tags merged from another split of
    the same images, a tag added by hand, ``train`` and ``val``): the export would write
    each into two splits, a leak of its own making, while the manifest lists it once."""
    in_split = [
        (F("tags").filter(F().is_in(tags)).length() > 0).if_else(1, 0)
        for tags in _split_tags(counts).values()
        if tags
    ]
    if len(in_split) < 2:
        return
    splits_held = in_split[0]
    for held in in_split[1:]:
        splits_held = splits_held + held
    both = samples.match(splits_held > 1)
    n_both = both.count()
    if n_both:
        shown = ", ".join(repr(p) for p in both.limit(3).values("filepath"))
        raise ValueError(
            f"{counted(n_both, 'sample')} carr{'ies' if n_both == 1 else 'y'} the tags of two "
            "or more splits of 'train', "
            f"'validation', 'test' (or an alias, such as 'val') (e.g. {shown}), so they "
            "would be exported into each of those splits. Keep "
            f"one: for BubbleFence's split, the {SPLIT_FIELD!r} field's, e.g. in Python: "
            f"for t in ('train', 'validation', 'test'): dataset.match_tags(t).match("
            f"F({SPLIT_FIELD!r}) != t).untag_samples(t)"
        )


def _refuse_tags_off_the_state(samples: foc.SampleCollection, table: dict[str, list]) -> None:
    """Refuses samples whose split tags are not the stored split's (the export goes by
    tags, the manifest by the state): a tag removed, moved or added by hand, or a sample
    tagged `EXCLUDED_TAG` that has not left the split yet (tagged by hand, or an
    exclusion that was stopped). Exported, they would leave a split short, put a sample
    on the other side of the line, or ship what was excluded, unsaid."""
    held = dict(zip(table["id"], table["split"], strict=True))
    off: list[tuple[str, str]] = []
    for sid, sample_tags in zip(*samples.values(["id", "tags"]), strict=True):
        tagged = sorted({role_of(tag) for tag in sample_tags or []} - {""})
        split = held.get(sid)
        if tagged and EXCLUDED_TAG in sample_tags:
            off.append((sid, f"tagged {EXCLUDED_TAG!r}, still in {split or tagged[0]}"))
        elif tagged != ([split] if split in SPLIT_TAGS else []):
            where = f"in {split}" if split in SPLIT_TAGS else f"split {split or 'not yet'}"
            off.append((sid, f"tagged {', '.join(tagged) or 'with no split'}, {where}"))
    if not off:
        return
    found, (paths,) = values_by_id(samples, [sid for sid, _ in off[:3]], ["filepath"])
    path = dict(zip(found, paths, strict=True))
    shown = "; ".join(f"{path.get(sid)!r} {why}" for sid, why in off[:3])
    raise ValueError(
        f"the split tags of {len(off)} samples disagree with the BubbleFence split (e.g. "
        f"{shown}). Run the split again: it writes BubbleFence's tags back and takes the "
        f"samples tagged {EXCLUDED_TAG!r} out of the split (a split value changed by hand "
        "stays, and is said: set it back, or reset to split anew). To export tags of your "
        "own, name them with tags=[...] (--tags)"
    )


def _refuse_duplicates_of_deleted(dataset: fo.Dataset, table: dict[str, list]) -> None:
    """Refuses while an original the split holds was deleted and no split has run since:
    its duplicates wait for its place (`BubbleFence.forget` gives it to the earliest at
    the next split), so exported now their images would be in no split, listed as
    duplicates of a sample that is gone (found by a lifecycle fuzz)."""
    # Only copies set aside ("duplicate") wait; one with a split of its own (policy
    # follow) is exported, and a copy deleted too waits for nothing.
    waiting = {
        sid: original
        for sid, split, original in zip(
            table["id"], table["split"], table["duplicate_of"], strict=True
        )
        if original and split == "duplicate"
    }
    if not waiting:
        return
    originals = sorted(set(waiting.values()))
    gone = set(originals) - set(values_by_id(dataset, originals, [])[0])
    copies = [sid for sid, original in waiting.items() if original in gone]
    copies_here = set(values_by_id(dataset, copies, [])[0]) if copies else set()
    gone = sorted({waiting[sid] for sid in copies_here})
    if gone:
        raise ValueError(
            f"{counted(len(gone), 'split sample')} with duplicates "
            f"{'was' if len(gone) == 1 else 'were'} deleted since the last split (e.g. "
            f"{gone[0]!r}); run the split again: the earliest duplicate of each takes its "
            "place, and its image is exported"
        )


def _one_class_list(
    samples: foc.SampleCollection, type_name: str, label_field: str | None, kwargs: dict
) -> dict[str, Any]:
    """``kwargs`` with ``classes`` for a format whose splits share one class list
    (YOLOv5's ``dataset.yaml``): the dataset's own (``classes``, ``default_classes``),
    else every label of the exported samples, sorted. FiftyOne lists each split's
    classes as they appear and refuses a second split whose list differs."""
    if type_name not in _SPLIT_ARG_TYPES or "classes" in kwargs or not label_field:
        return kwargs
    dataset = root_dataset(samples)
    classes = dataset.classes.get(label_field) or dataset.default_classes
    if not classes:
        path, _ = label_source(dataset, label_field, "label_field")
        classes = sorted(samples.distinct(path))
    return {**kwargs, "classes": list(classes)}


def _refuse_nothing_to_export(
    samples: foc.SampleCollection, counts: Mapping[str, int], names: list[str], asked_tags: bool
) -> None:
    """Refuses, before anything is written, tags asked for that no sample carries (a
    typo) and an export of splits where no sample carries any (never split): either
    would write an empty folder and report success."""
    if asked_tags:
        missing = [name for name in names if not counts.get(name)]
    else:
        tags = _split_tags(counts)
        missing = [name for name in names if not tags[name]]
    # The splits asked for by name (the App's form names them) on samples never split.
    never_split = not any(map(role_of, counts)) and set(names) <= set(SPLIT_TAGS)
    if asked_tags and missing and not never_split:
        present = ", ".join(map(repr, sorted(counts))) or "none"
        raise ValueError(
            f"no sample is tagged {', '.join(map(repr, missing))}, so there is nothing to "
            f"export under it; the tags these samples carry: {present}"
        )
    if len(missing) == len(names):
        raise ValueError(
            "no sample is tagged 'train', 'validation' or 'test': nothing to export. "
            + _why_no_split(samples, counts.get(EXCLUDED_TAG, 0))
        )


def _why_no_split(samples: foc.SampleCollection, n_excluded: int) -> str:
    """What to do when the samples to export hold no split: split the dataset, or, where
    it has a split, export other samples (a selection of samples just excluded was told
    to run the split first, found by a tester)."""
    other = " (or export other tags with tags=[...], --tags)"
    if not any(map(role_of, root_dataset(samples).count_sample_tags())):
        return "Run the BubbleFence split first" + other
    excluded = f", {n_excluded} of them excluded" if n_excluded else ""
    return (
        f"The dataset has a split, but none of these {len(samples)} samples is in it"
        f"{excluded}: export the dataset, or a view of split samples{other}"
    )


def _export_each(
    export_dir: Path,
    type_name: str,
    type_cls: type,
    views: dict[str, foc.SampleCollection],
    folders: dict[str, str],
    label_field: str | None,
    export_media: bool | str,
    kwargs: dict[str, Any],
) -> Steps[tuple[dict[str, int], dict[str, dict[str, str]], dict[str, list[str]]]]:
    """Exports each name's samples (``views``), a `Progress` event for each; returns
    counts per name and, per exported sample id
    (in export order), its names and folders, and its exported files (relative to
    ``export_dir``, one per name that wrote one)."""
    exported: dict[str, int] = {}
    exported_as: dict[str, dict[str, str]] = {}  # sample id -> {name: folder}, in order
    exported_files: dict[str, list[str]] = {}
    for k, (name, view) in enumerate(views.items()):
        exported[name] = len(view)
        if not exported[name]:
            continue
        yield Progress(k / len(views), f"Exporting {name}: {exported[name]:,} samples")
        args = dict(kwargs)
        if type_name in _SPLIT_ARG_TYPES:
            args.update(export_dir=str(export_dir), split=folders[name])
        else:
            args["export_dir"] = str(export_dir / folders[name])
        if type_name != "FiftyOneDataset" or export_media is not True:
            args["export_media"] = export_media
        # What `view.export(dataset_type=...)` does, with the exporter in hand so that
        # it can say which file it wrote for each sample.
        view_args = {k: args.pop(k) for k in _VIEW_EXPORT_ARGS if k in args}
        exporter, unused = foud.build_dataset_exporter(type_cls, warn_unused=False, **args)
        written = record_exported_media(exporter)
        with _quiet_merge_notices(export_dir):
            view.export(dataset_exporter=exporter, label_field=label_field, **view_args, **unused)
        for sid, source in zip(*view.values(["id", "filepath"]), strict=True):
            exported_as.setdefault(sid, {})[name] = folders[name]
            file = _inside_export(written.get(source), export_dir)
            if file:
                exported_files.setdefault(sid, []).append(file)
    return exported, exported_as, exported_files


class _MergeNotice(logging.Filter):
    """Drops FiftyOne's "Directory ... already exists; export will be merged" for folders
    inside ``folder``: this export checked it empty (or moved its contents aside) and
    made it, and YOLOv5's splits share it by design; the notice, three times per
    export, read as if an old export were being mixed in."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.prefix = str(folder)

    def filter(self, record: logging.LogRecord) -> bool:
        merging = str(record.msg).startswith("Directory '%s' already exists; export will be")
        return not (merging and str(record.args and record.args[0]).startswith(self.prefix))


@contextlib.contextmanager
def _quiet_merge_notices(folder: Path) -> Iterator[None]:
    notices = logging.getLogger(foc.__name__)
    quiet = _MergeNotice(folder)
    notices.addFilter(quiet)
    try:
        yield
    finally:
        notices.removeFilter(quiet)


def _inside_export(path: str | None, export_dir: Path) -> str | None:
    """``path`` relative to ``export_dir`` with ``/`` separators; None for no path or a
    path outside it (the source itself, where the exporter wrote no media)."""
    if not path or not Path(path).is_relative_to(export_dir):
        return None
    return Path(path).relative_to(export_dir).as_posix()


def _label_field_for(
    samples: foc.SampleCollection, type_name: str, type_cls: type, label_field: str | None
) -> str | None:
    """The label field a labelled format writes, checked (or chosen) before any write.

    The exporter's public ``label_cls`` says which label types the format takes; a
    format without one (media only, or FiftyOne's own) takes any or no field.
    """
    if label_field is not None and not samples.has_field(label_field):
        raise ValueError(f"label_field {label_field!r}: the dataset has no such field")
    exporter = type_cls().get_dataset_exporter_cls()(export_dir=os.devnull)
    accepted = getattr(exporter, "label_cls", None)
    if accepted is None or isinstance(accepted, dict):  # media only, or several fields
        return label_field
    accepted = accepted if isinstance(accepted, tuple) else (accepted,)
    schema = samples.get_field_schema()
    fitting = sorted(
        name for name, field in schema.items() if getattr(field, "document_type", None) in accepted
    )
    kinds = " or ".join(c.__name__ for c in accepted)
    if label_field is not None:
        if label_field not in fitting:
            raise ValueError(
                f"label_field {label_field!r} is not a {kinds} field, which {type_name} "
                f"writes; fields that fit: {fitting or 'none'}"
            )
        return label_field
    if len(fitting) == 1:
        return fitting[0]
    if not fitting:
        raise ValueError(
            f"{type_name} writes {kinds} labels and this dataset has no such field; "
            "export as ImageDirectory (images only) or FiftyOneDataset (everything)"
        )
    raise ValueError(f"{type_name} needs label_field (--label-field): one of {fitting}")


def _empty(folder: Path) -> None:
    for child in folder.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def export_folders(names: Sequence[str]) -> dict[str, str]:
    """A safe folder name per split/tag name: one path component of letters, digits,
    ``.``, ``_`` and ``-`` that is not ``.``, ``..`` or the manifest, unique per name
    (``_2``, ``_3`` on a clash). ``train`` stays ``train``; ``../../x`` becomes ``x``.

    Args:
        names: split or tag names
    """
    out: dict[str, str] = {}
    used = {MANIFEST_NAME}
    for name in names:
        base = safe_name(name, "tag")
        folder, k = base, 1
        while folder.lower() in used:
            k += 1
            folder = f"{base}_{k}"
        used.add(folder.lower())  # case-insensitive file systems would merge the two
        out[name] = folder
    return out


def safe_name(text: str, fallback: str) -> str:
    """``text`` as one portable file or folder name (letters, digits, ``.``, ``_``,
    ``-``; no leading dot, so never ``..``), or ``fallback`` when nothing is left.

    Args:
        text: any text, e.g. a tag or dataset name
        fallback: the name when ``text`` has no portable character
    """
    return _UNSAFE_CHARS.sub("_", str(text)).strip("._-")[:_MAX_FOLDER_CHARS] or fallback


def path_inside(root: Path, path: Path) -> Path:
    """``path`` resolved, refused unless it lies strictly inside ``root`` (resolved).

    Args:
        root: the folder that must contain ``path``
        path: the path to check
    """
    root = root.resolve()
    resolved = path.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise ValueError(f"refusing to write {str(resolved)!r}: it is outside {str(root)!r}")
    return resolved


def safe_csv_cell(value: Any) -> str:
    """``value`` as a manifest cell: "" for None, and one quote added before a cell a
    spreadsheet would run as a formula; a reader strips exactly one leading quote.

    Args:
        value: the cell's value
    """
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _dataset_type(dataset_type: str | type) -> tuple[str, type]:
    """(name, class) of a `fiftyone.types` dataset type that FiftyOne can export."""
    cls = getattr(fo.types, dataset_type, None) if isinstance(dataset_type, str) else dataset_type
    name = dataset_type if isinstance(dataset_type, str) else getattr(cls, "__name__", str(cls))
    if not (isinstance(cls, type) and issubclass(cls, fo.types.Dataset)):
        raise ValueError(
            f"dataset_type={name!r} is not a fiftyone.types dataset type; "
            f"for example {sorted(EXPORT_TYPES)}"
        )
    try:
        cls().get_dataset_exporter_cls()
    except TypeError:  # abstract kinds (Dataset, UnlabeledImageDataset...): import only
        raise ValueError(
            f"dataset_type={name!r} cannot be exported (FiftyOne has no exporter for it); "
            f"for example {sorted(EXPORT_TYPES)}"
        ) from None
    return name, cls


def _refuse_no_media_where_media_is_the_export(type_name: str, export_media: bool | str) -> None:
    """Refuses ``export_media`` False or "manifest" for a format made of the media files
    themselves (FiftyOne's exporters of these take only True, "move" and "symlink", and
    said so in words that name no option)."""
    if export_media in (False, "manifest") and type_name in _MEDIA_IS_THE_EXPORT:
        raise ValueError(
            f"{type_name} is made of the media files themselves, so it cannot be exported "
            f"without them (export_media={export_media!r}, --no-media): export the media, "
            "or choose a format with labels files, e.g. FiftyOneDataset"
        )


def _export_names(names: Any) -> list[str]:
    if isinstance(names, str):
        names = [names]  # one tag, not its letters
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("nothing to export: give at least one split or tag")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"splits/tags must be non-empty strings, got {bad[:5]}")
    return names


def _check_export_kwargs(kwargs: dict[str, Any]) -> None:
    """Exporter paths stay relative to the export folder: no absolute path, no ``..``."""
    reserved = sorted({"export_dir", "split", "dataset_exporter"} & set(kwargs))
    if reserved:
        raise ValueError(f"export() sets {reserved} itself; do not pass them")
    for key, value in kwargs.items():
        if (key.endswith(("_path", "_dir")) and isinstance(value, (str, os.PathLike))) and (
            Path(value).is_absolute() or ".." in Path(value).parts
        ):
            raise ValueError(
                f"{key}={str(value)!r} would write outside the export folder; give a path "
                "relative to it, without '..'"
            )


def _prepare_export_dir(
    samples: foc.SampleCollection, export_dir: Path, overwrite: bool
) -> Path | None:
    """Checks ``export_dir`` and leaves it holding `UNFINISHED_MARK` alone; returns where
    an overwrite moved its contents (a sibling folder, deleted once the export succeeds,
    moved back if it fails), else None."""
    if export_dir.exists() and not export_dir.is_dir():
        raise ValueError(f"export_dir {str(export_dir)!r} exists and is not a directory")
    _refuse_contents_moved_aside(export_dir)
    for discarded in _siblings(export_dir, DISCARDED_INFIX):
        shutil.rmtree(discarded, ignore_errors=True)  # an earlier export's, stopped deleting
    replaced = None
    if export_dir.exists() and any(export_dir.iterdir()):
        if not overwrite:
            stopped = "is not empty"
            if (export_dir / UNFINISHED_MARK).exists():
                stopped = "holds an export that did not finish (it was stopped)"
            raise ValueError(
                f"export_dir {str(export_dir)!r} {stopped}; choose an empty folder or "
                "pass overwrite=True (--overwrite) to replace its contents"
            )
        if export_dir == Path(export_dir.anchor) or export_dir == Path.home():
            raise ValueError(f"refusing to empty {str(export_dir)!r}")
        # Never delete a dataset's media by exporting onto it: this one's, or another's
        # (a dataset imported from an earlier export keeps its media there).
        holders = _datasets_with_media_in(export_dir)
        if holders:
            raise ValueError(
                f"export_dir {str(export_dir)!r} contains the media of dataset(s) "
                f"{', '.join(map(repr, holders))}; overwriting it would delete them. "
                "Choose another folder"
            )
        replaced = export_dir.with_name(f".{export_dir.name}{REPLACED_INFIX}{uuid.uuid4().hex[:8]}")
        try:
            export_dir.rename(replaced)
        except OSError:  # a mount point does not move: emptied in place, as it must be
            replaced = None
            _empty(export_dir)
    try:
        export_dir.mkdir(parents=True, exist_ok=True)
        # The mark is the test that the folder is writable: no other file to leave.
        (export_dir / UNFINISHED_MARK).write_text(UNFINISHED_TEXT, encoding="utf-8")
    except OSError as e:
        if replaced:
            shutil.rmtree(export_dir, ignore_errors=True)
            replaced.rename(export_dir)
        raise ValueError(f"export_dir {str(export_dir)!r} is not writable: {e}") from e
    return replaced


def _refuse_contents_moved_aside(export_dir: Path) -> None:
    """Refuses while an overwrite of ``export_dir`` that was stopped (Ctrl-C, a killed
    process) left the folder's earlier contents in a hidden sibling: the next export
    would hide them for good. Names each, oldest first, and those holding an export
    that was itself stopped."""
    aside = sorted(_siblings(export_dir, REPLACED_INFIX), key=lambda p: p.stat().st_mtime)
    if not aside:
        return
    named = ", ".join(
        repr(str(p)) + (" (a stopped export)" if (p / UNFINISHED_MARK).exists() else "")
        for p in aside
    )
    raise ValueError(
        f"an overwrite of export_dir {str(export_dir)!r} was stopped after it moved the "
        f"folder's earlier contents aside, to {named} (oldest first); move back what you "
        "want to keep and delete the rest, then export again"
    )


def _discard(replaced: Path) -> None:
    """Deletes what an overwrite that succeeded moved aside: renamed first, atomically,
    so that a deletion stopped half-way leaves no half of it under the name the next
    export refuses on (it would be told to move part of an old export back)."""
    discarded = replaced.with_name(replaced.name.replace(REPLACED_INFIX, DISCARDED_INFIX, 1))
    replaced.rename(discarded)
    shutil.rmtree(discarded)


def _siblings(export_dir: Path, infix: str) -> list[Path]:
    """The folders `.NAME<infix>*` beside ``export_dir`` (its name taken literally: an
    export into `exp[1]` globbed nothing)."""
    return list(export_dir.parent.glob(glob.escape(f".{export_dir.name}{infix}") + "*"))


def _datasets_with_media_in(folder: Path) -> list[str]:
    """The datasets (of this database) with a sample whose media lies inside ``folder``."""
    prefix = str(folder) + os.sep
    holders = []
    for name in fo.list_datasets():
        try:
            dataset = fo.load_dataset(name)
        except Exception:  # one that does not load (another version's) holds nothing here
            continue
        if dataset.match(F("filepath").starts_with(prefix)).limit(1).count():
            holders.append(name)
    return holders


def _write_manifest(
    dataset: fo.Dataset,
    exported_as: dict[str, dict[str, str]],
    exported_files: dict[str, list[str]],
    duplicates: list[str],
    table: dict[str, list],
    path: Path,
) -> None:
    """One row per exported sample, then per duplicate (exported nowhere). Assignments
    come from ``table``, the stored state's (the source of truth; the fields are only a
    mirror), empty for a sample the state does not hold but its split where it was
    exported under one (a split of the user's); exported files from ``exported_files``,
    one per line; every cell is neutralised against spreadsheet formulas and quoted."""
    ids = list(exported_as) + [sid for sid in duplicates if sid not in exported_as]
    split_column = ASSIGNMENT_COLUMNS.index("split")
    position = {sid: k for k, sid in enumerate(table["id"])}
    found, (found_paths,) = values_by_id(dataset, ids, ["filepath"])
    paths = dict(zip(found, found_paths, strict=True))
    with open(path, "x", newline="", encoding="utf-8") as fh:  # "x": never overwrite
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL)
        writer.writerow(MANIFEST_COLUMNS)
        for sid in ids:
            k = position.get(sid)
            state = [None if k is None else table[c][k] for c in ASSIGNMENT_COLUMNS]
            splits = [name for name in exported_as.get(sid, {}) if name in SPLIT_TAGS]
            if k is None and len(splits) == 1:
                state[split_column] = splits[0]
            files = "\n".join(exported_files.get(sid, []))
            folders = json.dumps(exported_as.get(sid, {}), ensure_ascii=False)
            row = (sid, paths.get(sid), files, *state, folders)
            writer.writerow([safe_csv_cell(v) for v in row])


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Refuses, before any work is done, a file `write_text_whole` could not write (a
    folder given as ``path`` gets a file inside): the nearest folder above it that exists
    must be a folder this user may write in. An audit that found the file's folder to be
    a file only once its measures were done lost them ("[Errno 17] File exists").

    Args:
        path: the file (or folder) to write
        what: how the user named it, for the error (e.g. "html_path 'x.html'")
    """
    target = Path(path).expanduser().resolve()
    folder = target if target.is_dir() else target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{what} cannot be written: {str(folder)!r} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what} cannot be written: no permission to write in {str(folder)!r}")


def write_text_whole(target: Path, text: str, what: str) -> None:
    """Writes ``text`` to ``target`` whole or not at all (a temporary file renamed), its
    folder made if missing; an error names ``what`` the user gave.

    Args:
        target: the file
        text: its contents
        what: how the user named it, for the error (e.g. "--out 'x.txt'")
    """
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # os.open applies the umask to 0o666, as for any file the user writes; mkstemp's
        # 0600 left a report that nobody else could read.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except OSError as e:
        # Not there, or its folder is a file (unlink then fails too): nothing to remove.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ValueError(f"{what} is not writable: {e}") from e
