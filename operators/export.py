"""`bubblefence_export`: each split (or chosen tags) to a folder, plus manifest.csv."""

from __future__ import annotations

import os

import fiftyone as fo
import fiftyone.operators.types as types
from fiftyone.operators.executor import ExecutionContext, ExecutionResult

import bubblefence_plugin.fo as bfo
from bubblefence_plugin.core.progress import Progress, Steps
from bubblefence_plugin.text import export_text

from .base import BubbleFenceOperator, Outcome
from .inputs import field_input, given, parse_path, to_path

DEFAULT_TYPE = "FiftyOneDataset"


class BubbleFenceExport(BubbleFenceOperator):
    name = "bubblefence_export"
    label = "BubbleFence export"
    description = (
        "Export each split to its own folder in a FiftyOne dataset format, with a manifest.csv"
    )
    target_action = "Export"
    reloads_dataset = False

    def __call__(
        self,
        sample_collection: fo.Dataset | fo.DatasetView,
        export_dir: str | os.PathLike,
        dataset_type: str = DEFAULT_TYPE,
        names: list[str] | None = None,
        label_field: str | None = None,
        export_media: bool = True,
        overwrite: bool = False,
        delegate: bool = False,
    ) -> ExecutionResult:
        """Exports each split of ``sample_collection`` (or each of ``names``) to its own
        folder of ``export_dir``, with ``export_dir/manifest.csv``.

        Example usage::

            import fiftyone.operators as foo

            export = foo.get_operator("@bubblefence/bubblefence/bubblefence_export")
            export(dataset, "/tmp/splits")  # train/, validation/, test/, manifest.csv
            export(dataset, "/tmp/yolo", dataset_type="YOLOv5Dataset", label_field="gt")

        Args:
            sample_collection: a dataset or view
            export_dir: an empty folder (or any folder, with ``overwrite``)
            dataset_type ("FiftyOneDataset"): a ``fiftyone.types`` dataset type name
            names (None): splits or sample tags to export, one folder each (default:
                train, validation and test)
            label_field (None): the labels to export, for formats that carry labels
            export_media (True): whether to copy the media
            overwrite (False): whether to empty a non-empty ``export_dir`` first
            delegate (False): whether to queue the export for a delegated worker
        """
        params = {
            "export_dir": to_path(export_dir),
            "dataset_type": dataset_type,
            "names": list(names or bfo.SPLIT_TAGS),
            "label_field": label_field,
            "export_media": export_media,
            "overwrite": overwrite,
        }
        return self.execute_from_python(sample_collection, params, delegate)

    def add_inputs(self, ctx: ExecutionContext, inputs: types.Object) -> None:
        stopped = bfo.unfinished_round(bfo.state_info(ctx.dataset))
        message = None  # what the export refuses, said before Execute
        if bfo.is_locked(ctx.dataset):
            message = "A BubbleFence run is in progress on this dataset: export when it ends"
        elif stopped is not None:
            message = (
                f"Round {stopped} was saved, but its split fields and tags were not all "
                "written (the run was stopped): run BubbleFence split once to finish it "
                "(nothing new is needed), then export"
            )
        if message is not None:
            refused = inputs.view("refused_now", types.Error(label=message))
            refused.invalid, refused.error_message = True, message
        _destination_inputs(ctx, inputs)
        inputs.list(
            "names",
            types.String(),
            default=list(bfo.SPLIT_TAGS),
            label="Splits or tags",
            description="One export per name: train, validation, test, or any sample tag",
        )
        _format_input(inputs)
        # Any label field a format may write (masks and heatmaps too); not pre-filled
        # from the split, whose labels need not be ones the chosen format can write.
        field_input(
            inputs,
            "label_field",
            sorted(ctx.dataset.get_field_schema(embedded_doc_type=fo.Label)),
            None,
            label="Label field",
            description="Labels to export, for formats that carry labels",
        )
        inputs.bool("export_media", default=True, label="Copy media", description="Copy the images")

    def run(self, ctx: ExecutionContext) -> Steps[Outcome]:
        export_dir = parse_path(ctx.params, "export_dir")
        if not export_dir:
            raise ValueError("export_dir is required")
        yield Progress(0.0, f"Exporting to {export_dir}")
        names = ctx.params.get("names") or None
        # Split names go as splits, checked against the stored split as the command line
        # checks them; any other name as a tag.
        as_splits = names is None or set(names) <= set(bfo.SPLIT_TAGS)
        result = yield from bfo.iter_export(
            ctx.target_view(),
            export_dir,
            given(ctx.params, "dataset_type", DEFAULT_TYPE),
            splits=names if as_splits else None,
            tags=None if as_splits else names,
            label_field=ctx.params.get("label_field") or None,
            export_media=bool(ctx.params.get("export_media", True)),
            overwrite=bool(ctx.params.get("overwrite", False)),
        )
        return Outcome(export_text(result), result)


def _destination_inputs(ctx: ExecutionContext, inputs: types.Object) -> None:
    """The export folder, refused while it is not empty unless Overwrite is ticked."""
    label = "Export directory"
    description = "An empty folder; each split goes to a sub-folder of its name"
    if isinstance(ctx.params.get("export_dir"), str):
        # A path as text (an `execute_operator` call): FiftyOne's check of a file
        # input reads the explorer's {"absolute_path": ...} and failed on a string.
        prop = inputs.str("export_dir", required=True, label=label, description=description)
    else:
        prop = inputs.file(
            "export_dir",
            required=True,
            label=label,
            description=description,
            view=types.FileExplorerView(choose_dir=True, button_label="Choose a directory..."),
        )
    inputs.bool(
        "overwrite",
        default=False,
        label="Overwrite",
        description="Replace the contents of a non-empty export directory",
    )
    path = parse_path(ctx.params, "export_dir")
    # Checked here too, not only by the run: a delegated run is queued once the form is
    # valid and would fail on its worker.
    if path and os.path.exists(path) and not os.path.isdir(path):
        prop.invalid = True
        prop.error_message = "A file, not a folder: choose a folder"
    elif path and os.path.isdir(path) and os.listdir(path) and not ctx.params.get("overwrite"):
        prop.invalid = True
        prop.error_message = "Not empty: choose another folder or tick Overwrite"


def _format_input(inputs: types.Object) -> None:
    formats = types.DropdownView()
    for name, label in bfo.EXPORT_TYPES.items():
        formats.add_choice(name, label=name, description=label)
    inputs.enum(
        "dataset_type",
        formats.values(),
        default=DEFAULT_TYPE,
        label="Format",
        description="FiftyOne dataset type of each export",
        view=formats,
    )
