"""`bubblefence_reset`: forget the split (state, fields, split tags), optionally keep embeddings."""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

import bubblefence_plugin.fo.dataset as bfd

from ._common import refuse_unknown_params, run_sdk


class BubbleFenceReset(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="bubblefence_reset",
            label="BubbleFence reset",
            description="Remove the BubbleFence state, split fields and split tags",
            icon="/assets/icon.svg",
            dynamic=True,
            view_target=False,  # the state is dataset-wide: no target choice
        )

    def __call__(
        self, sample_collection: Any, keep_embeddings: bool = False, delegate: bool = False
    ) -> Any:
        """Resets from Python (confirmation implied by the call)."""
        params = {"confirm": True, "keep_embeddings": keep_embeddings}
        return run_sdk(self, sample_collection, params, delegate)

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        info = bfd.state_info(ctx.dataset)
        n = info.get("n_samples", 0) if info else 0
        inputs.view(
            "warning",
            types.Warning(
                label=f"Removes the BubbleFence state of the whole dataset ({n} samples "
                f"assigned), the fields {', '.join(bfd.RESULT_FIELDS)} and the "
                "train/validation/test tags BubbleFence wrote. The next split starts over"
            ),
        )
        inputs.bool(
            "keep_embeddings",
            default=True,
            label="Keep embeddings",
            description=f"Keep `{bfd.EMBEDDING_FIELD}` so the next split need not recompute it",
        )
        prop = inputs.bool(
            "confirm",
            default=False,
            required=True,
            label="I understand the split will be removed",
            view=types.CheckboxView(),
        )
        if not ctx.params.get("confirm", False):
            prop.invalid = True
            prop.error_message = "Tick to confirm"
        return types.Property(inputs, view=types.View(label="BubbleFence reset"))

    def execute(self, ctx: Any) -> dict[str, Any]:
        refuse_unknown_params(ctx, self.resolve_input(ctx))
        if not ctx.params.get("confirm", False):
            raise ValueError("reset not confirmed: set confirm=True")
        result = bfd.reset(ctx.dataset, keep_embeddings=bool(ctx.params.get("keep_embeddings")))
        ctx.ops.reload_dataset()
        return result

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        outputs.list("removed_fields", types.String(), label="Removed fields")
        outputs.int("n_samples_untagged", label="Samples untagged")
        outputs.bool("kept_embeddings", label="Embeddings kept")
        return types.Property(outputs, view=types.View(label="BubbleFence reset"))
