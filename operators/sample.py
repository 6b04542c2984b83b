"""`bubblefence_sample`: tag a curated pick (diverse, typical, outliers, similar, balanced...)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

import bubblefence_plugin.fo.dataset as bfd
from bubblefence_plugin.core.curation import STRATEGIES, TYPICALITY_K
from bubblefence_plugin.fo import curate

from ._common import run_sdk

DELEGATE_ABOVE = 50_000  # samples: typicality of more outlasts the App's immediate timeout


class BubbleFenceSample(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="bubblefence_sample",
            label="BubbleFence sample",
            description="Tag a pick of samples chosen from their embeddings: diverse, typical, "
            "outliers, similar to a query, class-balanced, by a numeric field, or combined",
            icon="/assets/icon.svg",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def __call__(
        self,
        sample_collection: Any,
        strategy: str = "diverse",
        count: int = 100,
        tag: str = curate.DEFAULT_TAG,
        strengths: dict[str, float] | None = None,
        embeddings_field: str | None = None,
        from_split: str | None = None,
        start_from: str | None = None,
        label_field: str | None = None,
        target: str = "uniform",
        query_tag: str | None = None,
        metadata_field: str | None = None,
        seed: int = 0,
        replace: bool = False,
        delegate: bool = False,
    ) -> Any:
        """Tags a curated pick of ``sample_collection``, like the App does.

        Example usage::

            op = foo.get_operator("@bubblefence/bubblefence/bubblefence_sample")
            op(dataset, strategy="diverse", count=500, tag="to_label", from_split="train")
            op(dataset, strengths={"diverse": 1.0, "typical": 0.5}, count=100, tag="mix")

        Args:
            sample_collection: a dataset or view
            strategy: one of ``curation.STRATEGIES``
            count: how many samples to tag
            tag: a tag no sample has yet (unless ``replace``)
            strengths: strategy -> strength, to combine several
            embeddings_field: vector field (default: the split's embeddings field)
            from_split: pick only among this split's samples
            start_from: a tag or split counted as already picked (``diverse``)
            label_field: one label per sample, for ``balance``
            target: ``uniform``, ``input``, or ``"cat: 0.5, dog: 0.5"``
            query_tag: the query samples' tag, for ``similar``
            metadata_field: a numeric field, for ``metadata``
            seed: drives every random choice
            replace: move an existing tag to this pick
            delegate: queue the run for a delegated worker
        """
        params = {
            "strategy": strategy,
            "count": count,
            "tag": tag,
            "combine": bool(strengths),
            "embeddings_field": embeddings_field,
            "from_split": from_split,
            "start_from": start_from,
            "label_field": label_field,
            "target": target,
            "query_tag": query_tag,
            "metadata_field": metadata_field,
            "seed": seed,
            "replace": replace,
        }
        for name, value in (strengths or {}).items():
            params[f"strength_{name}"] = value
        return run_sdk(self, sample_collection, params, delegate)

    def resolve_execution_options(self, ctx: Any) -> foo.ExecutionOptions:
        large = ctx.dataset is not None and len(ctx.dataset) > DELEGATE_ABOVE
        return foo.ExecutionOptions(
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=large,
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Pick from")
        active = _strategy_inputs(ctx, inputs)
        _pick_inputs(ctx, inputs)
        _source_inputs(ctx, inputs)
        _strategy_options(ctx, inputs, active)
        return types.Property(inputs, view=types.View(label="BubbleFence sample"))

    def execute(self, ctx: Any) -> Any:
        if ctx.delegated:
            return self._execute_delegated(ctx)
        return self._execute_live(ctx)

    def _execute_live(self, ctx: Any) -> Generator[Any, None, None]:
        gen = curate.iter_sample(ctx.target_view(), **sample_kwargs(ctx.params))
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                summary = stop.value
                break
            yield ctx.ops.set_progress(progress=event.fraction, label=event.label)
        yield ctx.ops.reload_dataset()
        yield ctx.ops.show_output(_outputs().to_json(), _result(summary))
        yield ctx.ops.notify(summary["message"], variant="success")

    def _execute_delegated(self, ctx: Any) -> dict[str, Any]:
        def progress(fraction: float, label: str) -> None:
            ctx.set_progress(progress=fraction, label=label)

        summary = curate.sample(ctx.target_view(), progress=progress, **sample_kwargs(ctx.params))
        return _result(summary)

    def resolve_output(self, ctx: Any) -> types.Property:
        return _outputs()


def sample_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """`curate.sample` keyword arguments from the form's (or the SDK call's) params."""
    strategy = params.get("strategy") or "diverse"
    strengths = None
    if params.get("combine"):
        strengths = {
            name: float(params[f"strength_{name}"])
            for name in STRATEGIES
            if params.get(f"strength_{name}") not in (None, 0, 0.0)
        }
        strategy = []
    return {
        "strategy": strategy,
        "strengths": strengths,
        "count": int(params.get("count") or 100),
        "tag": params.get("tag") or curate.DEFAULT_TAG,
        "embeddings_field": params.get("embeddings_field") or None,
        "from_split": params.get("from_split") or None,
        "start_from": params.get("start_from") or None,
        "label_field": params.get("label_field") or None,
        "target": curate.parse_target(params.get("target") or "uniform"),
        "query_tag": params.get("query_tag") or None,
        "metadata_field": params.get("metadata_field") or None,
        "seed": int(params.get("seed") or 0),
        "k": int(params.get("k") or TYPICALITY_K),
        "replace": bool(params.get("replace", False)),
    }


def _result(summary: dict[str, Any]) -> dict[str, Any]:
    lines = [f"**{summary['message']}**", ""]
    if summary.get("quotas"):
        lines.append("- Per class: " + ", ".join(f"{k} {v}" for k, v in summary["quotas"].items()))
    lines.append(f"- Regions: {summary['n_regions']}")
    return {
        "summary": "\n".join(lines),
        "result": {k: v for k, v in summary.items() if k != "picked_ids"},
    }


def _outputs() -> types.Property:
    outputs = types.Object()
    outputs.str("summary", label="BubbleFence sample", view=types.MarkdownView())
    return types.Property(outputs, view=types.View(label="BubbleFence sample"))


def _strategy_inputs(ctx: Any, inputs: types.Object) -> set[str]:
    """One strategy, or a strength per strategy when combining; returns the active ones."""
    inputs.bool(
        "combine",
        default=False,
        label="Combine strategies",
        description="Give several strategies a strength instead of choosing one",
        view=types.SwitchView(),
    )
    if not ctx.params.get("combine", False):
        choices = types.Dropdown()
        for name, description in STRATEGIES.items():
            choices.add_choice(name, label=name, description=description)
        inputs.enum(
            "strategy",
            choices.values(),
            default="diverse",
            required=True,
            label="Strategy",
            description="How samples are chosen",
            view=choices,
        )
        return {ctx.params.get("strategy") or "diverse"}
    active = set()
    for name, description in STRATEGIES.items():
        inputs.float(
            f"strength_{name}",
            default=1.0 if name == "diverse" else 0.0,
            label=f"Strength: {name}",
            description=description,
        )
        if ctx.params.get(f"strength_{name}", 1.0 if name == "diverse" else 0.0):
            active.add(name)
    return active


def _pick_inputs(ctx: Any, inputs: types.Object) -> None:
    inputs.int(
        "count", default=100, min=1, required=True, label="Count", description="Samples to tag"
    )
    prop = inputs.str(
        "tag",
        default=curate.DEFAULT_TAG,
        required=True,
        label="Tag",
        description="Tag written on the pick; it must not exist yet (or tick Replace)",
    )
    inputs.bool(
        "replace", default=False, label="Replace", description="Move an existing tag to this pick"
    )
    tag = ctx.params.get("tag") or curate.DEFAULT_TAG
    if tag in curate.RESERVED_TAGS:
        prop.invalid = True
        prop.error_message = f"{tag!r} is reserved; choose another tag"
    elif not ctx.params.get("replace") and ctx.dataset.count_sample_tags().get(tag, 0):
        prop.invalid = True
        prop.error_message = f"{tag!r} exists already: choose a new tag or tick Replace"


def _source_inputs(ctx: Any, inputs: types.Object) -> None:
    info = bfd.state_info(ctx.dataset) or {}
    fields = sorted(ctx.dataset.get_field_schema(ftype=fo.VectorField))
    dd = types.DropdownView()
    for f in fields:
        dd.add_choice(f, label=f)
    stored = info.get("embeddings_field")
    inputs.enum(
        "embeddings_field",
        dd.values(),
        default=stored if stored in fields else (fields[0] if fields else None),
        required=True,
        label="Embeddings field",
        description="Vector field the pick is computed from",
        view=dd,
    )
    if info:
        splits = types.Dropdown()
        for s in bfd.SPLIT_TAGS:
            splits.add_choice(s, label=s)
        inputs.enum(
            "from_split",
            splits.values(),
            required=False,
            label="Only from split",
            description="Pick only among this split's samples (e.g. train samples to label first)",
            view=splits,
        )
    tags = types.Dropdown()
    for t in sorted(ctx.dataset.count_sample_tags()):
        tags.add_choice(t, label=t)
    inputs.enum(
        "start_from",
        tags.values(),
        required=False,
        label="Already picked",
        description="Samples with this tag count as picked: a diverse pick adds what they lack",
        view=tags,
    )
    inputs.int("seed", default=0, min=0, label="Seed", description="Same data + seed = same pick")


def _strategy_options(ctx: Any, inputs: types.Object, active: set[str]) -> None:
    if "balance" in active:
        dd = types.DropdownView()
        for f in bfd.label_field_choices(ctx.dataset, multi_ok=False):
            dd.add_choice(f, label=f)
        inputs.enum("label_field", dd.values(), required=True, label="Label field", view=dd)
        inputs.str(
            "target",
            default="uniform",
            label="Target distribution",
            description="uniform, input (the candidates' own shares), or 'cat: 0.5, dog: 0.5'",
        )
    if "similar" in active:
        tags = types.Dropdown()
        for t in sorted(ctx.dataset.count_sample_tags()):
            tags.add_choice(t, label=t)
        inputs.enum(
            "query_tag",
            tags.values(),
            required=True,
            label="Query tag",
            description="Samples with this tag are the query; the most similar others are picked",
            view=tags,
        )
    if "metadata" in active:
        numeric = sorted(ctx.dataset.get_field_schema(ftype=(fo.IntField, fo.FloatField)))
        dd = types.DropdownView()
        for f in numeric:
            dd.add_choice(f, label=f)
        inputs.enum(
            "metadata_field",
            dd.values(),
            required=True,
            label="Numeric field",
            description="Higher first; a negative strength puts lower values first",
            view=dd,
        )
