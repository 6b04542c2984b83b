"""`bubblefence_calibrate`: how similar the split's model finds edited copies of the
dataset's images, and the leak threshold to split with (`bubblefence_plugin.calibration`)."""

from __future__ import annotations

import dataclasses

import fiftyone as fo
import fiftyone.operators.types as types
from fiftyone.operators.executor import ExecutionContext, ExecutionResult

import bubblefence_plugin.fo as bfo
from bubblefence_plugin.calibration import DEFAULT_IMAGES, DEFAULT_KEEP
from bubblefence_plugin.core.progress import Steps
from bubblefence_plugin.text import calibration_text, calibration_warnings

from .base import BubbleFenceOperator, Outcome
from .embed import default_model
from .inputs import given


class BubbleFenceCalibrate(BubbleFenceOperator):
    needs_images = True
    name = "bubblefence_calibrate"
    label = "BubbleFence calibrate"
    description = (
        "Measure how similar the model finds edited copies of your images (JPEG re-save, "
        "mirror, crop...) and the leak threshold that keeps them on one side"
    )
    target_action = "Calibrate on"
    reloads_dataset = False  # it writes nothing

    def __call__(
        self,
        sample_collection: fo.Dataset | fo.DatasetView,
        model_name: str | None = None,
        n_images: int = DEFAULT_IMAGES,
        keep: float = DEFAULT_KEEP,
        seed: int = 0,
        delegate: bool = False,
    ) -> ExecutionResult:
        """Measures the leak threshold on a sample of ``sample_collection``'s images.

        Example usage::

            import fiftyone.operators as foo

            calibrate = foo.get_operator("@bubblefence/bubblefence/bubblefence_calibrate")
            calibrate(dataset, model_name="efficientnet-lite0")
            calibrate(dataset.take(500, seed=0), n_images=500, delegate=True)

        The measure is the ``show_output`` request of an immediate run and the result
        of a delegated one; `bubblefence_plugin.fo.calibrate_threshold` returns it.

        Args:
            sample_collection: the dataset or view whose images are sampled
            model_name (None): the model (default: the split's, else CLIP ViT-B/32)
            n_images (100): images sampled
            keep (0.95): share of copies the suggested threshold holds
            seed (0): the sampling seed
            delegate (False): whether to run on a delegated worker
        """
        params = {"model_name": model_name, "n_images": n_images, "keep": keep, "seed": seed}
        return self.execute_from_python(sample_collection, params, delegate)

    def add_inputs(self, ctx: ExecutionContext, inputs: types.Object) -> None:
        _model_input(ctx, inputs)
        inputs.int(
            "n_images",
            default=DEFAULT_IMAGES,
            min=2,
            label="Images",
            description="Images sampled; each gets six edited copies",
        )
        inputs.float(
            "keep",
            default=DEFAULT_KEEP,
            min=0.01,
            max=0.99,
            label="Copies to hold",
            description="Share of the copies the suggested threshold keeps as near twins",
        )
        inputs.int("seed", default=0, min=0, label="Seed", description="The sampling seed")

    def run(self, ctx: ExecutionContext) -> Steps[Outcome]:
        params = ctx.params
        found = yield from bfo.iter_calibrate_threshold(
            ctx.target_view(),
            params.get("model_name") or None,
            n_images=given(params, "n_images", DEFAULT_IMAGES),
            keep=given(params, "keep", DEFAULT_KEEP),
            seed=given(params, "seed", 0),
        )
        text = calibration_text(found)
        return Outcome(text, dataclasses.asdict(found), {}, calibration_warnings(found))


def _model_input(ctx: ExecutionContext, inputs: types.Object) -> None:
    """The model, pre-filled with the split's (else the split's default). A split built
    from the user's own vectors has none of ours: the model that computed them is asked
    for, pre-filled only where the field records it."""
    info = bfo.state_info(ctx.dataset) or {}
    field = info.get("embeddings_field")
    own_vectors = bool(info) and not info.get("model_name")
    if own_vectors:
        inputs.view(
            "own_vectors",
            types.Notice(
                label=f"The split reads vectors of field '{field}', which BubbleFence did "
                "not compute: name the model that computed them"
            ),
        )
        default = bfo.kept_model(ctx.dataset, field)
    else:
        default = info.get("model_name") or default_model(ctx.dataset, None)
    inputs.str(
        "model_name",
        default=default,
        required=own_vectors,
        label="Model",
        description="The model the split embeds with (Hugging Face name, local folder, "
        "or efficientnet-lite0, offline): the threshold belongs to it",
    )
