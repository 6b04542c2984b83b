"""`bubblefence_reset`: forget the split (state, fields, split tags); embeddings optionally kept."""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators.types as types
from fiftyone.operators.executor import ExecutionContext, ExecutionResult

import bubblefence_plugin.fo as bfo
from bubblefence_plugin.core.progress import Progress, Steps
from bubblefence_plugin.text import reset_text

from .base import BubbleFenceOperator, Outcome


class BubbleFenceReset(BubbleFenceOperator):
    name = "bubblefence_reset"
    label = "BubbleFence reset"
    description = "Remove the BubbleFence state, split fields and split tags"
    allow_delegated = False  # a few quick deletes
    streams_progress = False
    target_action = None  # the state is dataset-wide

    def __call__(
        self, sample_collection: fo.Dataset | fo.DatasetView, keep_embeddings: bool = False
    ) -> ExecutionResult:
        """Removes the BubbleFence split of the dataset of ``sample_collection``.

        Example usage::

            import fiftyone.operators as foo

            reset = foo.get_operator("@bubblefence/bubblefence/bubblefence_reset")
            reset(dataset)  # a clean slate: the next split embeds every image again
            reset(dataset, keep_embeddings=True)  # the next split reuses the embeddings

        Args:
            sample_collection: a dataset or view; the whole dataset is reset (calling
                implies the confirmation the App asks for)
            keep_embeddings (False): whether to keep ``bubblefence_embedding``
        """
        params = {"confirm": True, "keep_embeddings": keep_embeddings}
        return self.execute_from_python(sample_collection, params, delegate=False)

    def add_inputs(self, ctx: ExecutionContext, inputs: types.Object) -> None:
        _warning(ctx, inputs)
        inputs.bool(
            "keep_embeddings",
            default=False,
            label="Keep embeddings",
            description=f"Keep `{bfo.EMBEDDING_FIELD}`: the next split then reuses it instead "
            "of embedding every image again (off: a clean slate)",
        )
        _confirmation(ctx, inputs)

    def run(self, ctx: ExecutionContext) -> Steps[Outcome]:
        yield Progress(0.0, f"Removing the BubbleFence split of {ctx.dataset.name}")
        result = bfo.reset(ctx.dataset, keep_embeddings=bool(ctx.params.get("keep_embeddings")))
        return Outcome(reset_text(result), result)


def _warning(ctx: ExecutionContext, inputs: types.Object) -> None:
    info = bfo.state_info(ctx.dataset)
    n = info.get("n_samples", 0) if info else 0
    inputs.view(
        "warning",
        types.Warning(
            label=f"Removes the BubbleFence state of the whole dataset ({n} samples "
            f"assigned), the fields {', '.join(bfo.RESULT_FIELDS)} and the "
            "train/validation/test tags BubbleFence wrote. The next split starts over"
        ),
    )


def _confirmation(ctx: ExecutionContext, inputs: types.Object) -> None:
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
