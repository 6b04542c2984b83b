"""`bubblefence_embed`: embed the samples still lacking embeddings, here or as N shards
queued for FiftyOne's delegated-operation workers (`bubblefence_plugin.fo.shards`)."""

from __future__ import annotations

from typing import Any

import fiftyone as fo
import fiftyone.operators.types as types
from fiftyone.operators.executor import ExecutionContext, ExecutionResult

import bubblefence_plugin.fo as bfo
from bubblefence_plugin.core.config import BubbleFenceConfig
from bubblefence_plugin.core.progress import Progress, Steps
from bubblefence_plugin.fo.fields import root_dataset
from bubblefence_plugin.text import SummaryText, error_lines, queued_shards_text

from .base import BubbleFenceOperator, Outcome
from .inputs import given
from .split import DELEGATE_ABOVE

MODES = ("run", "queue")
DEFAULT_QUEUED_SHARDS = 4  # a few workers' worth; the form shows how many images each gets


class BubbleFenceEmbed(BubbleFenceOperator):
    needs_images = True
    name = "bubblefence_embed"
    label = "BubbleFence embed"
    description = (
        "Embed the samples that lack embeddings, here or as shards queued for delegated "
        "workers (`fiftyone delegated launch` on each machine)"
    )
    target_action = "Embed"
    # Embedding thousands of images outlasts the App's immediate-execution timeout.
    delegate_above = DELEGATE_ABOVE
    # Hidden while queueing, where it means nothing; the App still sends the value the
    # form showed before (refused as unknown, "Queue shards" could never run).
    optional_params = frozenset({"shard_index"})

    def __call__(
        self,
        sample_collection: fo.Dataset | fo.DatasetView,
        model_name: str | None = None,
        embeddings_field: str = bfo.EMBEDDING_FIELD,
        num_shards: int = 1,
        shard_index: int = 0,
        queue: bool = False,
        batch_size: int | None = None,
        device: str = "auto",
        delegate: bool = False,
    ) -> ExecutionResult:
        """Embeds the samples of ``sample_collection`` that lack embeddings, or queues
        shards of them for delegated workers.

        Example usage::

            import fiftyone.operators as foo

            embed = foo.get_operator("@bubblefence/bubblefence/bubblefence_embed")
            embed(dataset, model_name="/models/clip", num_shards=4, queue=True)  # 4 shards
            embed(dataset, model_name="/models/clip", num_shards=4, shard_index=1)  # one here

        Args:
            sample_collection: the dataset or view whose samples are embedded
            model_name (None): Hugging Face name or local model folder (default: the
                model the field's vectors come from, else CLIP ViT-B/32)
            embeddings_field ("bubblefence_embedding"): the vector field written
            num_shards (1): how many disjoint shards the samples are cut into
            shard_index (0): the shard to embed (0-based), when not queueing
            queue (False): whether to queue ``num_shards`` delegated operations instead
                of embedding here
            batch_size (None): images per forward pass (default: the config's)
            device ("auto"): ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``
            delegate (False): whether to run this operation itself on a delegated worker
        """
        params = {
            "mode": "queue" if queue else "run",
            "model_name": model_name
            or default_model(root_dataset(sample_collection), embeddings_field),
            "embeddings_field": embeddings_field,
            "num_shards": num_shards,
            "shard_index": None if queue else shard_index,
            "batch_size": batch_size,
            "device": device,
        }
        return self.execute_from_python(sample_collection, params, delegate)

    def prefers_delegation(self, ctx: ExecutionContext) -> bool:
        # Queueing is quick: the shards themselves run on the workers.
        return super().prefers_delegation(ctx) and ctx.params.get("mode") != "queue"

    def resolve_run_name(self, ctx: ExecutionContext) -> str:
        n = _shown_shards(ctx.params)
        if ctx.params.get("mode") == "queue":
            return f"BubbleFence embed: queue {n} shards"
        return bfo.shard_label(_shown_count(ctx.params.get("shard_index"), 0), n)

    def add_inputs(self, ctx: ExecutionContext, inputs: types.Object) -> None:
        defaults = BubbleFenceConfig()
        named = ctx.params.get("embeddings_field")
        inputs.str(
            "model_name",
            # A field name that is not a string is refused below (`_field_input`).
            default=default_model(ctx.dataset, named if isinstance(named, str) else None),
            required=True,
            label="Model",
            description="Hugging Face model name or local folder; every worker must "
            "reach it (a folder on a shared path, or the same hub cache)",
        )
        field = _field_input(ctx, inputs)
        _pending_notice(ctx, inputs, field)
        _shard_inputs(ctx, inputs)
        inputs.int(
            "batch_size",
            default=defaults.batch_size,
            min=1,
            label="Batch size",
            description="Images per forward pass",
        )
        inputs.str(
            "device",
            default="auto",
            label="Device",
            description="auto (CUDA when the worker has it), cpu, cuda, cuda:N or mps",
        )

    def run(self, ctx: ExecutionContext) -> Steps[Outcome]:
        kwargs = _embed_kwargs(ctx.params)
        if ctx.params.get("mode") == "queue":
            yield Progress(0.0, f"Queueing {kwargs['num_shards']} shards")
            return _queue(ctx.target_view(), kwargs)
        report = yield from bfo.iter_embed(ctx.target_view(), **kwargs)
        text = SummaryText(report.message, error_lines(report.errors, report.n_errors))
        return Outcome(text, report.to_dict())


def _shown_count(value: Any, default: int) -> int:
    """A shard count or index to show in a label: ``value`` where it is one (an int
    >= 0), else ``default``; the run refuses a bad one, naming it."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else default


def _shown_shards(params: dict[str, Any]) -> int:
    """The number of shards to show in a label or a range: at least one."""
    return max(_shown_count(params.get("num_shards"), 1), 1)


def _embed_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """`bfo.iter_embed` keyword arguments; None takes the library's default."""
    return {
        "model": params.get("model_name") or None,
        "embeddings_field": params.get("embeddings_field") or bfo.EMBEDDING_FIELD,
        "num_shards": given(params, "num_shards", 1),
        "shard_index": given(params, "shard_index", 0),
        "batch_size": params.get("batch_size") or None,
        "device": params.get("device") or "auto",
    }


def _queue(samples: fo.DatasetView, kwargs: dict[str, Any]) -> Outcome:
    kwargs = dict(kwargs)
    del kwargs["shard_index"]
    n = kwargs.pop("num_shards")
    ids = bfo.queue_shards(samples, n, **kwargs)
    labels = [bfo.shard_label(i, n) for i in range(n)]
    return Outcome(queued_shards_text(ids, labels), {"operation_ids": ids, "num_shards": n})


def default_model(dataset: fo.Dataset, embeddings_field: str | None) -> str:
    """The model the field's vectors come from (its info), else the split's CLIP: the
    form offered CLIP beside a field of EfficientNet vectors, which the run refused."""
    field = embeddings_field or bfo.EMBEDDING_FIELD
    return bfo.kept_model(dataset, field) or BubbleFenceConfig().model_name


def _field_input(ctx: ExecutionContext, inputs: types.Object) -> str | None:
    """The vector field to write (a new name or an existing one); None if refused."""
    prop = inputs.str(
        "embeddings_field",
        default=bfo.EMBEDDING_FIELD,
        required=True,
        label="Embeddings field",
        description=f"Vector field to write. The split computes and reads "
        f"`{bfo.EMBEDDING_FIELD}`; another name is split with 'Existing vector field'",
    )
    field = ctx.params.get("embeddings_field", bfo.EMBEDDING_FIELD)
    try:
        bfo.check_embeddings_field(field)
    except ValueError as e:
        prop.invalid = True
        prop.error_message = str(e)
        return None
    return field


def _pending_notice(ctx: ExecutionContext, inputs: types.Object, field: str | None) -> None:
    if field is None:
        return
    missing = ctx.target_view().exists(field, False).count()
    pending = bfo.pending_shards(ctx.dataset, field)
    text = f"{missing} samples of the target lack `{field}`"
    if pending:
        running = sum(p.state == "running" for p in pending)
        text += (
            f"; {len(pending)} shards for this field are already queued or running "
            f"({running} running): queueing more is refused until they finish"
        )
    inputs.view("missing_notice", types.Notice(label=text))


def _shard_inputs(ctx: ExecutionContext, inputs: types.Object) -> None:
    choices = types.RadioGroup()
    choices.add_choice(
        "run",
        label="Embed here",
        description="Embed one shard (all samples with 1 shard) in this operation",
    )
    choices.add_choice(
        "queue",
        label="Queue shards for workers",
        description="Queue one delegated operation per shard; every machine running "
        "`fiftyone delegated launch` with this plugin takes shards until none is left",
    )
    inputs.enum("mode", list(MODES), default="run", label="Where", view=choices)
    queueing = ctx.params.get("mode", "run") == "queue"
    inputs.int(
        "num_shards",
        default=DEFAULT_QUEUED_SHARDS if queueing else 1,
        min=1,
        required=True,
        label="Number of shards",
        description="Samples are cut into this many disjoint shards by a hash of their id",
    )
    if queueing:
        return
    n = _shown_shards(ctx.params)
    prop = inputs.int(
        "shard_index",
        default=0,
        min=0,
        required=True,
        label="Shard index",
        description=f"Which shard to embed here: 0 .. {n - 1}",
    )
    index = ctx.params.get("shard_index") or 0
    if isinstance(index, int) and index >= n:
        prop.invalid = True
        prop.error_message = f"Must be below the number of shards ({n})"
