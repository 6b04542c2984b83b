"""The leak threshold measured on a dataset's own images (`bubblefence_plugin.calibration`).

The model and threshold measured are the split's: those of the stored state once a
round ran, else the split's defaults (or the ones given). A split built from a vector
field the user filled has no model of ours, so one must be named.
"""

from __future__ import annotations

import fiftyone.core.collections as foc

from ..calibration import DEFAULT_IMAGES, DEFAULT_KEEP, Calibration, check_options, iter_calibrate
from ..core.config import BubbleFenceConfig
from ..core.progress import Progress, ProgressCallback, Steps, drive
from ..text import counted
from .embeddings import get_embedder, kept_model
from .fields import EXCLUDED_TAG, check_collection
from .state import state_info


def calibrate_threshold(
    samples: foc.SampleCollection,
    model: str | None = None,
    *,
    n_images: int = DEFAULT_IMAGES,
    seed: int = 0,
    keep: float = DEFAULT_KEEP,
    device: str = "auto",
    progress: ProgressCallback | None = None,
) -> Calibration:
    """How similar the split's model finds edited copies of a sample of ``samples``'
    images, and the leak threshold that holds ``keep`` of them as near twins.

    Example usage::

        import bubblefence_plugin.fo as bf

        found = bf.calibrate_threshold(dataset, "efficientnet-lite0")
        if found.lower:
            bf.split(dataset, model_name="efficientnet-lite0",
                     leak_threshold=found.suggested_threshold)

    Args:
        samples: a dataset or view (samples tagged ``excluded`` are not read)
        model (None): the model; by default the stored split's, else the split's
            default (CLIP ViT-B/32)
        n_images (100): images sampled
        seed (0): the sampling seed
        keep (0.95): share of copies the suggested threshold must hold
        device ("auto"): where the model runs
        progress (None): called as ``progress(fraction, label)`` as images are read

    Raises:
        ValueError: on a bad parameter, or a split built from the user's own vectors
            with no model named
        ModelUnavailableError: when the model cannot be loaded
    """
    steps = iter_calibrate_threshold(
        samples, model, n_images=n_images, seed=seed, keep=keep, device=device
    )
    return drive(steps, progress)


def iter_calibrate_threshold(
    samples: foc.SampleCollection,
    model: str | None = None,
    *,
    n_images: int = DEFAULT_IMAGES,
    seed: int = 0,
    keep: float = DEFAULT_KEEP,
    device: str = "auto",
) -> Steps[Calibration]:
    """`calibrate_threshold` as a generator of `Progress` events; the `Calibration` is
    its return value."""
    check_options(n_images, seed, keep)
    dataset = check_collection(samples)
    info = state_info(dataset) or {}
    config = BubbleFenceConfig.from_dict(info["config"]) if info else BubbleFenceConfig()
    if info and not info.get("model_name"):  # the user's own vectors: their model, if known
        model = model or kept_model(dataset, info.get("embeddings_field"))
        if model is None:
            raise ValueError(
                f"the split of dataset {dataset.name!r} reads vectors of field "
                f"{info.get('embeddings_field')!r}, which BubbleFence did not compute: name "
                "the model that computed them, to measure how it sees edited copies"
            )
    model = model or info.get("model_name") or config.model_name
    paths = samples.match_tags(EXCLUDED_TAG, bool=False).values("filepath")
    if len(paths) < 2:  # before a model is loaded
        raise ValueError(
            f"{counted(len(paths), 'image')} here ({EXCLUDED_TAG!r} ones aside); calibrating "
            "needs at least 2"
        )
    yield Progress(0.0, f"Loading the model {model}")
    embedder = get_embedder(model, device, config.batch_size)
    return (
        yield from iter_calibrate(
            paths,
            embedder,
            leak_threshold=config.leak_threshold,
            n_images=n_images,
            seed=seed,
            keep=keep,
        )
    )
