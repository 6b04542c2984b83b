"""`bubblefence_export`: each split (or chosen tags) to a folder, plus manifest.csv."""

from __future__ import annotations

import os
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

import bubblefence_plugin.fo.dataset as bfd

from ._common import parse_path, refuse_unknown_params, run_sdk, to_path


class BubbleFenceExport(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="bubblefence_export",
            label="BubbleFence export",
            description="Export each split to its own folder in a FiftyOne dataset format, "
            "with a manifest.csv",
            icon="/assets/icon.svg",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def __call__(
        self,
        sample_collection: Any,
        export_dir: str,
        dataset_type: str = "FiftyOneDataset",
        names: list[str] | None = None,
        label_field: str | None = None,
        export_media: bool = True,
        overwrite: bool = False,
        delegate: bool = False,
    ) -> Any:
        """Exports from Python; ``names`` are splits or any sample tags."""
        params = {
            "export_dir": to_path(export_dir),
            "dataset_type": dataset_type,
            "names": list(names or bfd.SPLIT_TAGS),
            "label_field": label_field,
            "export_media": export_media,
            "overwrite": overwrite,
        }
        return run_sdk(self, sample_collection, params, delegate)

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Export")
        prop = inputs.file(
            "export_dir",
            required=True,
            label="Export directory",
            description="An empty folder; each split goes to a sub-folder of its name",
            view=types.FileExplorerView(choose_dir=True, button_label="Choose a directory..."),
        )
        inputs.list(
            "names",
            types.String(),
            default=list(bfd.SPLIT_TAGS),
            label="Splits or tags",
            description="One export per name: train, validation, test, or any sample tag",
        )
        dd = types.DropdownView()
        for name, label in bfd.EXPORT_TYPES.items():
            dd.add_choice(name, label=name, description=label)
        inputs.enum(
            "dataset_type",
            dd.values(),
            default="FiftyOneDataset",
            label="Format",
            description="FiftyOne dataset type of each export",
            view=dd,
        )
        inputs.str(
            "label_field",
            required=False,
            label="Label field",
            description="Labels to export, for formats that carry labels",
        )
        inputs.bool("export_media", default=True, label="Copy media", description="Copy the images")
        inputs.bool(
            "overwrite",
            default=False,
            label="Overwrite",
            description="Replace the contents of a non-empty export directory",
        )
        path = parse_path(ctx, "export_dir")
        if path:
            if os.path.isdir(path) and os.listdir(path) and not ctx.params.get("overwrite"):
                prop.invalid = True
                prop.error_message = "Not empty: choose another folder or tick Overwrite"
        return types.Property(inputs, view=types.View(label="BubbleFence export"))

    def execute(self, ctx: Any) -> dict[str, Any]:
        refuse_unknown_params(ctx, self.resolve_input(ctx))
        export_dir = parse_path(ctx, "export_dir")
        if not export_dir:
            raise ValueError("export_dir is required")
        return bfd.export(
            ctx.target_view(),
            export_dir,
            ctx.params.get("dataset_type", "FiftyOneDataset"),
            tags=ctx.params.get("names") or None,
            label_field=ctx.params.get("label_field") or None,
            export_media=bool(ctx.params.get("export_media", True)),
            overwrite=bool(ctx.params.get("overwrite", False)),
        )

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        outputs.str("export_dir", label="Exported to")
        outputs.obj("counts", label="Samples per split/tag", view=types.JSONView())
        outputs.obj("folders", label="Folder per split/tag (safe names)", view=types.JSONView())
        outputs.str("manifest", label="Manifest")
        return types.Property(outputs, view=types.View(label="BubbleFence export"))
