"""`bubblefence_embed`: embed the samples still lacking embeddings, here or as N shards
queued for FiftyOne's delegated-operation workers (`bubblefence_plugin.fo.shards`)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

import bubblefence_plugin.fo.dataset as bfd
import bubblefence_plugin.fo.shards as bfs
from bubblefence_plugin.core.config import BubbleFenceConfig

from ._common import refuse_unknown_params, run_sdk
from .split import DELEGATE_ABOVE

MODES = ("run", "queue")
DEFAULT_QUEUED_SHARDS = 4  # a few workers' worth; the form shows how many images each gets


class BubbleFenceEmbed(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="bubblefence_embed",
            label="BubbleFence embed",
            description="Embed the samples that lack embeddings, here or as shards queued "
            "for delegated workers (`fiftyone delegated launch` on each machine)",
            icon="/assets/icon.svg",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def __call__(
        self,
        sample_collection: Any,
        model_name: str | None = None,
        embeddings_field: str = bfd.EMBEDDING_FIELD,
        num_shards: int = 1,
        shard_index: int = 0,
        queue: bool = False,
        batch_size: int | None = None,
        device: str = "auto",
        delegate: bool = False,
    ) -> Any:
        """Runs the operator from Python, like the App does.

        Example usage::

            op = foo.get_operator("@bubblefence/bubblefence/bubblefence_embed")
            op(dataset, model_name="/models/clip", num_shards=4, queue=True)  # 4 shards
            op(dataset, model_name="/models/clip", num_shards=4, shard_index=1)  # one here

        Args:
            sample_collection: the dataset or view whose samples are embedded
            model_name: Hugging Face name or local model folder (default: CLIP ViT-B/32)
            embeddings_field: the vector field written (the split's own by default)
            num_shards: how many disjoint shards the samples are cut into
            shard_index: the shard to embed (0-based), when not queueing
            queue: queue ``num_shards`` delegated operations instead of embedding here
            batch_size: images per forward pass
            device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``
            delegate: run this operation itself on a delegated worker
        """
        params = {
            "mode": "queue" if queue else "run",
            "model_name": model_name or BubbleFenceConfig().model_name,
            "embeddings_field": embeddings_field,
            "num_shards": num_shards,
            "batch_size": batch_size or BubbleFenceConfig().batch_size,
            "device": device,
        }
        if not queue:
            params["shard_index"] = shard_index
        return run_sdk(self, sample_collection, params, delegate)

    def resolve_execution_options(self, ctx: Any) -> foo.ExecutionOptions:
        # Embedding thousands of images outlasts the App's 600 s immediate timeout.
        large = ctx.dataset is not None and len(ctx.dataset) > DELEGATE_ABOVE
        queueing = ctx.params.get("mode") == "queue"
        return foo.ExecutionOptions(
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=large and not queueing,
        )

    def resolve_run_name(self, ctx: Any) -> str:
        n = int(ctx.params.get("num_shards") or 1)
        if ctx.params.get("mode") == "queue":
            return f"BubbleFence embed: queue {n} shards"
        return bfs.shard_label(int(ctx.params.get("shard_index") or 0), n)

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Embed")
        defaults = BubbleFenceConfig()
        inputs.str(
            "model_name",
            default=defaults.model_name,
            required=True,
            label="Model",
            description="Hugging Face model name or local folder; every worker must "
            "reach it (a folder on a shared path, or the same hub cache)",
        )
        field = _field_input(ctx, inputs)
        _pending_notice(ctx, inputs, field)
        _shard_inputs(ctx, inputs, field)
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
        return types.Property(inputs, view=types.View(label="BubbleFence embed"))

    def execute(self, ctx: Any) -> Any:
        refuse_unknown_params(ctx, self.resolve_input(ctx))
        # A delegated worker has no App to stream to: it returns the report and
        # records progress in its operation document instead.
        if ctx.delegated:
            return self._execute_delegated(ctx)
        return self._execute_live(ctx)

    def _execute_live(self, ctx: Any) -> Generator[Any, None, None]:
        if ctx.params.get("mode") == "queue":
            result = _queue(ctx)
        else:
            gen = bfs.iter_embed(ctx.target_view(), **_embed_kwargs(ctx))
            while True:
                try:
                    event = next(gen)
                except StopIteration as stop:
                    result = _report_result(stop.value)
                    break
                yield ctx.ops.set_progress(progress=event.fraction, label=event.label)
            yield ctx.ops.reload_dataset()
        yield ctx.ops.show_output(_outputs().to_json(), {"summary": result["summary"]})
        yield ctx.ops.notify(result["message"], variant="success")

    def _execute_delegated(self, ctx: Any) -> dict[str, Any]:
        if ctx.params.get("mode") == "queue":
            return _queue(ctx)

        def progress(fraction: float, label: str) -> None:
            ctx.set_progress(progress=fraction, label=label)

        report = bfs.embed(ctx.target_view(), progress=progress, **_embed_kwargs(ctx))
        return _report_result(report)

    def resolve_output(self, ctx: Any) -> types.Property:
        return _outputs()


def _outputs() -> types.Property:
    outputs = types.Object()
    outputs.str("summary", label="BubbleFence embed", view=types.MarkdownView())
    return types.Property(outputs, view=types.View(label="BubbleFence embed"))


def _embed_kwargs(ctx: Any) -> dict[str, Any]:
    p = ctx.params
    return {
        "model": p.get("model_name") or None,
        "embeddings_field": p.get("embeddings_field") or bfd.EMBEDDING_FIELD,
        "num_shards": int(p.get("num_shards") or 1),
        "shard_index": int(p.get("shard_index") or 0),
        "batch_size": p.get("batch_size") or None,
        "device": p.get("device") or "auto",
    }


def _queue(ctx: Any) -> dict[str, Any]:
    kwargs = _embed_kwargs(ctx)
    kwargs.pop("shard_index")
    n = kwargs.pop("num_shards")
    ids = bfs.queue_shards(ctx.target_view(), n, **kwargs)
    message = (
        f"Queued {n} embedding shards for delegated workers; follow them with "
        "`fiftyone delegated list` (workers: `fiftyone delegated launch`)"
    )
    lines = [f"**{message}**", ""]
    lines += [f"- {bfs.shard_label(i, n)}: `{op}`" for i, op in enumerate(ids)]
    return {"summary": "\n".join(lines), "message": message, "operation_ids": ids}


def _report_result(report: bfs.ShardReport) -> dict[str, Any]:
    lines = [f"**{report.message}**", ""]
    lines += [f"- error {sid}: {msg}" for sid, msg in report.errors.items()]
    return {"summary": "\n".join(lines), "message": report.message, "result": report.to_dict()}


def _field_input(ctx: Any, inputs: types.Object) -> str | None:
    prop = inputs.str(
        "embeddings_field",
        default=bfd.EMBEDDING_FIELD,
        required=True,
        label="Embeddings field",
        description=f"Vector field to write. The split computes and reads "
        f"`{bfd.EMBEDDING_FIELD}`; another name is split with 'Existing vector field'",
    )
    field = ctx.params.get("embeddings_field", bfd.EMBEDDING_FIELD)
    try:
        bfs.check_embeddings_field(field)
    except ValueError as e:
        prop.invalid = True
        prop.error_message = str(e)
        return None
    return field


def _pending_notice(ctx: Any, inputs: types.Object, field: str | None) -> None:
    if field is None:
        return
    missing = ctx.target_view().exists(field, False).count()
    pending = bfs.pending_shards(ctx.dataset, field)
    text = f"{missing} samples of the target lack `{field}`"
    if pending:
        running = sum(p.state == "running" for p in pending)
        text += (
            f"; {len(pending)} shards for this field are already queued or running "
            f"({running} running): queueing more is refused until they finish"
        )
    inputs.view("missing_notice", types.Notice(label=text))


def _shard_inputs(ctx: Any, inputs: types.Object, field: str | None) -> None:
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
    inputs.enum(
        "mode",
        list(MODES),
        default="run",
        label="Where",
        view=choices,
    )
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
    n = ctx.params.get("num_shards") or 1
    prop = inputs.int(
        "shard_index",
        default=0,
        min=0,
        required=True,
        label="Shard index",
        description=f"Which shard to embed here: 0 .. {n - 1}",
    )
    index = ctx.params.get("shard_index") or 0
    if isinstance(n, int) and isinstance(index, int) and index >= n:
        prop.invalid = True
        prop.error_message = f"Must be below the number of shards ({n})"
