"""`bubblefence_split`: one incremental BubbleFence round on the dataset, view or selection."""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from typing import Any

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

import bubblefence_plugin.fo.dataset as bfd
import bubblefence_plugin.fo.shards as bfs
from bubblefence_plugin.core.config import CHOICES, FROZEN_AFTER_FIRST_ROUND, BubbleFenceConfig

from ._common import refuse_unknown_params, run_sdk, summary_lines

# (knob, label, description) of the common section; everything else of
# BubbleFenceConfig is in the folded "advanced" section (ADVANCED below).
COMMON = (
    ("eval_ratio", "Eval ratio", "Share of the kept samples held out for validation + test"),
    (
        "validation_ratio",
        "Validation ratio",
        "Share of the held-out samples that go to validation (the rest is test)",
    ),
    (
        "shell_layout",
        "Shell layout",
        "Which shell of a bubble is validation: inner_val, inner_test, or a seeded coin "
        "per bubble (random)",
    ),
    (
        "dedup_threshold",
        "Dedup threshold",
        "Cosine similarity at or above which a new sample is a duplicate of an earlier one",
    ),
    (
        "dedup_policy",
        "Duplicate policy",
        "exclude: marked split=duplicate, in no split; follow: takes its original's split",
    ),
    ("seed", "Seed", "Drives every random choice; same data + config + seed = same split"),
)

ADVANCED = {
    "eval_tolerance": "Allowed overshoot of the eval share before a bubble is shrunk",
    "min_eval_per_batch": "Share of every new batch held out even when the quota is met",
    "dedup_enabled": "Detect near-duplicates at all",
    "class_aware": "Near twins with different labels are not duplicates (needs a label field)",
    "label_aware": "With a label field, meet the eval quota per label too (rare labels first)",
    "min_label_count": "Labels with fewer samples are not pursued into eval",
    "anchor_method": "How bubble centres are proposed: quasi-random (qmc), random, kmeans",
    "qmc_sequence": "Quasi-random sequence for qmc proposals",
    "snap_strategy": "Snap proposals to the nearest sample, or pick among k by 1/LID",
    "lid_snap_k": "Neighbours considered by lid_weighted snapping",
    "min_anchor_distance": "Minimum cosine distance between bubble centres",
    "pca_dims": "Dimensions of the PCA space proposals are drawn in",
    "radius_mode": "adaptive (from local density) or fixed (base radius)",
    "adaptive_method": "Local scale used by adaptive radii",
    "base_radius": "Base bubble radius (cosine distance)",
    "radius_scale_factor": "Multiplier applied to every adaptive radius",
    "min_radius": "Smallest bubble radius (cosine distance)",
    "max_radius": "Largest bubble radius (cosine distance)",
    "lid_k": "Neighbours used to estimate local intrinsic dimension",
    "bubble_size": "Target samples per bubble (empty: from the radius rule)",
    "leak_threshold": "A bubble edge never separates two samples this similar (cosine)",
    "batch_size": "Images per embedding batch",
    "device": "Where the model runs: auto picks CUDA when present",
}

_RANGES: dict[str, tuple[float | None, float | None]] = {
    "eval_ratio": (0.01, 0.99),
    "validation_ratio": (0.0, 1.0),
    "dedup_threshold": (0.5, 1.0),
    "eval_tolerance": (0.0, 1.0),
    "min_eval_per_batch": (0.0, 1.0),
    "leak_threshold": (0.5, 1.0),
    "min_anchor_distance": (0.0, 2.0),
    "base_radius": (0.0, 2.0),
    "min_radius": (0.0, 2.0),
    "max_radius": (0.0, 2.0),
    "seed": (0, None),
    "lid_snap_k": (1, None),
    "pca_dims": (1, None),
    "lid_k": (3, None),
    "min_label_count": (1, None),
    "batch_size": (1, None),
}

DELEGATE_ABOVE = 5000  # samples

KNOBS = tuple(f.name for f in dataclasses.fields(BubbleFenceConfig))


class BubbleFenceSplit(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="bubblefence_split",
            label="BubbleFence split",
            description="Leak-free train/validation/test splits by holding out bubbles of "
            "embedding space; re-run after adding samples to assign only the new ones",
            icon="/assets/icon.svg",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def __call__(
        self,
        sample_collection: Any,
        embeddings_field: str | None = None,
        model_name: str | None = None,
        label_field: str | None = None,
        group_field: str | None = None,
        delegate: bool = False,
        **knobs: Any,
    ) -> Any:
        """Runs the operator from Python, like the App does.

        Example::

            op = foo.get_operator("@bubblefence/bubblefence/bubblefence_split")
            op(dataset, embeddings_field="clip", eval_ratio=0.2)
            op(dataset.match_tags("new"), delegate=True)   # queue for a worker

        ``knobs`` are `BubbleFenceConfig` fields. The round's summary is in the
        ``show_output`` request of the result (immediate) or the delegated run's
        result; `bubblefence_plugin.fo.dataset.split` returns it directly.
        """
        unknown = sorted(set(knobs) - set(KNOBS))
        if unknown:
            raise ValueError(f"unknown BubbleFence parameters: {unknown}")
        params: dict[str, Any] = dict(knobs)
        if embeddings_field and embeddings_field != bfd.EMBEDDING_FIELD:
            params.update(embeddings="field", embeddings_field=embeddings_field)
        else:
            params["embeddings"] = "model"
        if model_name:
            params["model_name"] = model_name
        if label_field:
            params["label_field"] = label_field
        if group_field:
            params["group_field"] = group_field
        return run_sdk(self, sample_collection, params, delegate)

    def resolve_execution_options(self, ctx: Any) -> foo.ExecutionOptions:
        # Embedding thousands of images outlasts the App's 600 s immediate timeout:
        # suggest a delegated worker then, as the brain plugin does for its runs.
        large = ctx.dataset is not None and len(ctx.dataset) > DELEGATE_ABOVE
        return foo.ExecutionOptions(
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=large,
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Split")
        info = bfd.state_info(ctx.dataset)
        stored = BubbleFenceConfig.from_dict(info["config"]) if info else None
        defaults = stored or BubbleFenceConfig()
        _state_notice(ctx, inputs, info)
        _embeddings_inputs(ctx, inputs, info, defaults)
        _pending_shards_input(ctx, inputs, info)
        for name, label, description in COMMON:
            _knob_input(ctx, inputs, name, label, description, defaults, stored)
        _label_group_inputs(ctx, inputs, info)
        inputs.bool(
            "show_advanced",
            default=False,
            label="Advanced settings",
            description="Anchor placement, radii, tolerance, per-label quota, device",
            view=types.SwitchView(),
        )
        if ctx.params.get("show_advanced", False):
            _advanced_inputs(ctx, inputs, defaults, stored)
        return types.Property(inputs, view=types.View(label="BubbleFence split"))

    def execute(self, ctx: Any) -> Any:
        # while_embedding outlives the shards it was chosen for: accepted once they are done.
        refuse_unknown_params(ctx, self.resolve_input(ctx), (*KNOBS, "while_embedding"))
        # A delegated worker has no App to stream to: it returns the summary for
        # `resolve_output` and reports progress in the run document instead.
        if ctx.delegated:
            return self._execute_delegated(ctx)
        return self._execute_live(ctx)

    def _execute_live(self, ctx: Any) -> Generator[Any, None, None]:
        for event in _wait_for_shards(ctx):
            yield ctx.ops.set_progress(progress=event.fraction, label=event.label)
        gen = bfd.iter_split(_split_target(ctx), **_split_kwargs(ctx))
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                summary = stop.value
                break
            yield ctx.ops.set_progress(progress=event.fraction, label=event.label)
        yield ctx.ops.reload_dataset()
        yield ctx.ops.show_output(_outputs(summary).to_json(), {"summary": summary_lines(summary)})
        yield ctx.ops.notify(summary["message"], variant="success")

    def _execute_delegated(self, ctx: Any) -> dict[str, Any]:
        def progress(fraction: float, label: str) -> None:
            ctx.set_progress(progress=fraction, label=label)

        bfd.drive(_wait_for_shards(ctx), progress)
        summary = bfd.split(_split_target(ctx), progress=progress, **_split_kwargs(ctx))
        return {"summary": summary_lines(summary), "result": summary}

    def resolve_output(self, ctx: Any) -> types.Property:
        return _outputs(ctx.results or {})


def _outputs(summary: dict[str, Any]) -> types.Property:
    outputs = types.Object()
    outputs.str("summary", label="BubbleFence round", view=types.MarkdownView())
    return types.Property(outputs, view=types.View(label="BubbleFence split"))


def _split_kwargs(ctx: Any) -> dict[str, Any]:
    params = ctx.params
    knobs = {k: params[k] for k in KNOBS if params.get(k) is not None}
    if params.get("embeddings", "model") == "field":
        field = params.get("embeddings_field")
        if not field:
            raise ValueError("choose the embeddings field to use")
    else:
        field = None
    return {
        "embeddings_field": field,
        "label_field": params.get("label_field") or None,
        "group_field": params.get("group_field") or None,
        **knobs,
    }


def _source_field(ctx: Any, info: dict[str, Any] | None = None) -> str | None:
    """The field the split reads: its own embeddings, or the chosen (else stored) field."""
    stored = (info or {}).get("embeddings_field")
    default = "field" if stored and stored != bfd.EMBEDDING_FIELD else "model"
    if ctx.params.get("embeddings", default) == "field":
        return ctx.params.get("embeddings_field") or stored
    return bfd.EMBEDDING_FIELD


def _pending_shards_input(ctx: Any, inputs: types.Object, info: dict[str, Any] | None) -> None:
    """Embedding shards still writing the source field: say so, offer to wait for them
    or to split only the samples embedded so far (the rest join a later round)."""
    field = _source_field(ctx, info)
    pending = bfs.pending_shards(ctx.dataset, field) if field else []
    missing = ctx.target_view().exists(field, False).count() if pending else 0
    if not missing:
        return
    running = sum(p.state == "running" for p in pending)
    inputs.view(
        "shards_notice",
        types.Warning(
            label=f"{missing} samples still lack `{field}` while {len(pending)} embedding "
            f"shards are queued or running ({running} running)"
        ),
    )
    choices = types.RadioGroup()
    choices.add_choice(
        "wait",
        label="Wait for the shards",
        description="Wait until the queued and running shards finish, then split. "
        "Scheduled, this split holds a worker while it waits: with a single worker the "
        "shards cannot run (workers take the newest operation first)",
    )
    choices.add_choice(
        "embedded",
        label="Split only what is embedded",
        description="Split the samples embedded so far; the others join a later round",
    )
    inputs.enum(
        "while_embedding",
        choices.values(),
        default="wait",
        label="Embedding in progress",
        view=choices,
    )


def _wait_for_shards(ctx: Any) -> Generator[bfd.Progress, None, None]:
    if ctx.params.get("while_embedding") == "wait":
        yield from bfs.iter_wait_for_shards(ctx.dataset, _source_field(ctx))


def _split_target(ctx: Any) -> Any:
    view = ctx.target_view()
    if ctx.params.get("while_embedding") == "embedded":
        view = view.exists(_source_field(ctx))
    return view


def _state_notice(ctx: Any, inputs: types.Object, info: dict[str, Any] | None) -> None:
    if info is None:
        inputs.view(
            "state_notice",
            types.Notice(label="First round: bubbles will be created for this dataset"),
        )
        return
    inputs.view(
        "state_notice",
        types.Notice(
            label=f"Incremental round: {info.get('n_samples', 0)} samples already assigned "
            f"(last change {info.get('updated_at', '?')}). Only samples not yet assigned "
            "are embedded and split; earlier samples never change"
        ),
    )


def _embeddings_inputs(
    ctx: Any, inputs: types.Object, info: dict[str, Any] | None, defaults: BubbleFenceConfig
) -> None:
    stored_field = info.get("embeddings_field") if info else None
    fields = sorted(
        f
        for f in ctx.dataset.get_field_schema(ftype=fo.VectorField)
        if f != bfd.EMBEDDING_FIELD and not f.startswith("bubblefence_")
    )
    choices = types.RadioGroup()
    choices.add_choice(
        "model",
        label="Compute with a model",
        description=f"Embeds samples lacking `{bfd.EMBEDDING_FIELD}` and stores them there",
    )
    if fields:
        choices.add_choice(
            "field", label="Existing vector field", description="Use embeddings you computed"
        )
    default = "field" if stored_field and stored_field != bfd.EMBEDDING_FIELD else "model"
    inputs.enum(
        "embeddings",
        choices.values(),
        default=default,
        label="Embeddings source",
        description="Where the embeddings come from; fixed after the first round",
        view=choices,
    )
    if ctx.params.get("embeddings", default) == "field":
        dd = types.DropdownView()
        for f in fields:
            dd.add_choice(f, label=f)
        prop = inputs.enum(
            "embeddings_field",
            dd.values(),
            required=True,
            default=stored_field if stored_field in fields else (fields[0] if fields else None),
            label="Embeddings field",
            description="A vector field holding one embedding per sample",
            view=dd,
        )
        chosen = ctx.params.get("embeddings_field")
        if info and chosen and stored_field and chosen != stored_field:
            prop.invalid = True
            prop.error_message = (
                f"The state was built from {stored_field!r}; reset to switch fields"
            )
    else:
        prop = inputs.str(
            "model_name",
            default=defaults.model_name,
            label="Model",
            description="Hugging Face model name or local folder (CLIP ViT-B/32 by default)",
        )
        _flag_frozen(ctx, prop, "model_name", info and BubbleFenceConfig.from_dict(info["config"]))


def _knob_input(
    ctx: Any,
    inputs: types.Object,
    name: str,
    label: str,
    description: str,
    defaults: BubbleFenceConfig,
    stored: BubbleFenceConfig | None,
) -> None:
    default = getattr(defaults, name)
    field_type = {f.name: f.type for f in dataclasses.fields(BubbleFenceConfig)}[name]
    low, high = _RANGES.get(name, (None, None))
    if name in CHOICES:
        choices = types.Dropdown()
        for c in CHOICES[name]:
            choices.add_choice(c, label=c)
        prop = inputs.enum(
            name,
            choices.values(),
            default=default,
            label=label,
            description=description,
            view=choices,
        )
    elif isinstance(default, bool) or field_type in ("bool", bool):
        prop = inputs.bool(name, default=default, label=label, description=description)
    elif isinstance(default, int) or field_type in ("int", "int | None"):
        kwargs = {k: v for k, v in (("min", low), ("max", high)) if v is not None}
        prop = inputs.int(
            name, default=default, label=label, description=description, required=False, **kwargs
        )
    elif isinstance(default, float):
        kwargs = {k: v for k, v in (("min", low), ("max", high)) if v is not None}
        prop = inputs.float(name, default=default, label=label, description=description, **kwargs)
    else:
        prop = inputs.str(name, default=default, label=label, description=description)
    _flag_frozen(ctx, prop, name, stored)


def _flag_frozen(ctx: Any, prop: Any, name: str, stored: BubbleFenceConfig | None) -> None:
    """Knobs that would change earlier assignments are refused after round one: say so here."""
    if stored is None or name not in FROZEN_AFTER_FIRST_ROUND:
        return
    value = ctx.params.get(name)
    if value is not None and value != getattr(stored, name):
        prop.invalid = True
        prop.error_message = (
            f"Fixed at {getattr(stored, name)!r} by earlier rounds; reset to change it"
        )


def _advanced_inputs(
    ctx: Any, inputs: types.Object, defaults: BubbleFenceConfig, stored: BubbleFenceConfig | None
) -> None:
    for name, description in ADVANCED.items():
        if name in KNOBS:
            label = name.replace("_", " ").capitalize()
            _knob_input(ctx, inputs, name, label, description, defaults, stored)


def _label_group_inputs(ctx: Any, inputs: types.Object, info: dict[str, Any] | None) -> None:
    """Optional label and group field choosers; the fields of earlier rounds are preselected."""
    for name, label, description, multi_ok in (
        (
            "label_field",
            "Label field",
            "Optional. Eval covers every label: the quota is met per label too, rare labels "
            "first (a classification, the objects of a detections field, or a string field)",
            True,
        ),
        (
            "group_field",
            "Group field",
            "Optional. A group (video, drive, patient) goes whole to train or to one eval "
            "split, in this round and every later one",
            False,
        ),
    ):
        choices = bfd.label_field_choices(ctx.dataset, multi_ok=multi_ok)
        if not choices:
            description += ". This dataset has no suitable field yet"
        dd = types.DropdownView()
        for f in choices:
            dd.add_choice(f, label=f)
        stored = (info or {}).get(name)
        inputs.enum(
            name,
            dd.values(),
            required=False,
            default=stored if stored in choices else None,
            label=label,
            description=description,
            view=dd,
        )
