"""`bubblefence_split`: one incremental BubbleFence round on the dataset, view or selection."""

from __future__ import annotations

from typing import Any

import fiftyone as fo
import fiftyone.operators.types as types
from fiftyone.operators.executor import ExecutionContext, ExecutionResult

import bubblefence_plugin.fo as bfo
from bubblefence_plugin.core.config import KNOBS, BubbleFenceConfig, Knob, check_knob
from bubblefence_plugin.core.progress import Steps
from bubblefence_plugin.fo import map as bfmap
from bubblefence_plugin.text import round_text, round_warnings

from .base import BubbleFenceOperator, Outcome
from .inputs import embeddings_field_choices, field_input

DELEGATE_ABOVE = 5000  # samples: embedding more outlasts the App's immediate timeout

# Shown with the embeddings source it belongs to, not among the other common knobs.
MODEL_KNOB = "model_name"


class BubbleFenceSplit(BubbleFenceOperator):
    needs_images = True
    name = "bubblefence_split"
    label = "BubbleFence split"
    description = (
        "Leak-free train/validation/test splits by holding out bubbles of embedding space; "
        "re-run after adding samples to assign only the new ones"
    )
    target_action = "Split"
    delegate_above = DELEGATE_ABOVE
    # Advanced knobs are in the form only while unfolded; the choice made about shards
    # still embedding is accepted after the shards are done.
    optional_params = frozenset({*KNOBS, "while_embedding", "embeddings_field"})
    output_label = "BubbleFence round"

    def __call__(
        self,
        sample_collection: fo.Dataset | fo.DatasetView,
        embeddings_field: str | None = None,
        model_name: str | None = None,
        label_field: str | None = None,
        group_field: str | None = None,
        delegate: bool = False,
        **knobs: Any,
    ) -> ExecutionResult:
        """Runs one BubbleFence round on the samples of ``sample_collection`` not yet
        assigned, as the App does.

        Example usage::

            import fiftyone.operators as foo

            split = foo.get_operator("@bubblefence/bubblefence/bubblefence_split")
            split(dataset, embeddings_field="clip", eval_ratio=0.2)
            split(dataset.match_tags("new"), delegate=True)  # queue for a worker

        The round's summary is the ``show_output`` request of an immediate run and the
        result of a delegated one; `bubblefence_plugin.fo.dataset.split` returns it.

        Args:
            sample_collection: a dataset or view; the view chooses which new samples join
            embeddings_field (None): an existing vector field to split by, instead of
                computing ``bubblefence_embedding`` with the model
            model_name (None): the model that computes the embeddings (default: CLIP
                ViT-B/32)
            label_field (None): meet the eval quota per label of this field too
                (default: the field of earlier rounds)
            group_field (None): never split a group of this field (default: the field
                of earlier rounds)
            delegate (False): whether to queue the round for a delegated worker
            **knobs: `bubblefence_plugin.core.config.KNOBS`, e.g. ``eval_ratio=0.3``
        """
        self.refuse_unknown_keywords(knobs, KNOBS)
        from_field = bool(embeddings_field) and embeddings_field != bfo.EMBEDDING_FIELD
        params = {
            **knobs,
            "embeddings": "field" if from_field else "model",
            "embeddings_field": embeddings_field if from_field else None,
            MODEL_KNOB: model_name,
            # "" drops a stored field in the library, but is no choice of the form.
            "label_field": label_field or None,
            "group_field": group_field or None,
        }
        return self.execute_from_python(sample_collection, params, delegate)

    def add_inputs(self, ctx: ExecutionContext, inputs: types.Object) -> None:
        info = bfo.state_info(ctx.dataset)
        stored = BubbleFenceConfig.from_dict(info["config"]) if info else None
        _state_notice(inputs, info, bfo.is_locked(ctx.dataset))
        _embeddings_inputs(ctx, inputs, info, stored)
        _pending_shards_input(ctx, inputs, info)
        for name, knob in KNOBS.items():
            if not knob.advanced and name != MODEL_KNOB:
                _knob_input(ctx, inputs, name, knob, stored)
        _label_group_inputs(ctx, inputs, info)
        _advanced_inputs(ctx, inputs, stored)

    def run(self, ctx: ExecutionContext) -> Steps[Outcome]:
        if ctx.params.get("while_embedding") == "wait":
            yield from bfo.iter_wait_for_shards(ctx.dataset, _source_field(ctx))
        target = _split_target(ctx)
        if ctx.params.get("while_embedding") == "embedded" and not len(target):
            # Else "the target view is empty (0 samples)", of a target of 40 samples.
            raise ValueError(
                f"none of the {len(ctx.target_view())} samples of the target has "
                f"{_source_field(ctx)!r} yet: wait for the embedding shards, or split once "
                "some are done"
            )
        summary = yield from bfo.iter_split(target, **_split_kwargs(ctx))
        return Outcome(round_text(summary), summary, warnings=round_warnings(summary))

    def app_updates(self, ctx: ExecutionContext, outcome: Outcome) -> list[Any]:
        # A committed round stored the split colours in the dataset's colour scheme
        # (`apply_split_colors`); an open App reads that scheme only when it loads the
        # dataset. A delegated round has no App to tell: the stored scheme shows when
        # the App next loads the dataset.
        if not outcome.result.get("n_assigned"):
            return []
        return [ctx.trigger("set_color_scheme", bfmap.color_scheme_params(ctx.dataset))]


def _split_kwargs(ctx: ExecutionContext) -> dict[str, Any]:
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


def _source_field(ctx: ExecutionContext, info: dict[str, Any] | None = None) -> str | None:
    """The field the split reads: its own embeddings, or the chosen (else stored) field."""
    stored = (info or {}).get("embeddings_field")
    if ctx.params.get("embeddings", _default_source(ctx, info)) == "field":
        return ctx.params.get("embeddings_field") or stored
    return bfo.EMBEDDING_FIELD


def _user_vector_fields(ctx: ExecutionContext) -> list[str]:
    # The split's own field is what "Compute with a model" fills.
    return [f for f in embeddings_field_choices(ctx.dataset) if f != bfo.EMBEDDING_FIELD]


def _default_source(ctx: ExecutionContext, info: dict[str, Any] | None) -> str:
    """What earlier rounds used; in a first round, a vector field the dataset already
    has (embeddings a user computed are cheaper than a model run, and need no model)."""
    if info:
        stored = info.get("embeddings_field")
        return "field" if stored and stored != bfo.EMBEDDING_FIELD else "model"
    return "field" if _user_vector_fields(ctx) else "model"


def _split_target(ctx: ExecutionContext) -> fo.DatasetView:
    view = ctx.target_view()
    if ctx.params.get("while_embedding") == "embedded":
        view = view.exists(_source_field(ctx))
    return view


# --------------------------------------------------------------------------- form


def _state_notice(inputs: types.Object, info: dict[str, Any] | None, locked: bool) -> None:
    if info is None:
        label = "First round: bubbles will be created for this dataset"
    else:
        label = (
            f"Incremental round: {info.get('n_samples', 0)} samples already assigned "
            f"(last change {info.get('updated_at', '?')}). Only samples not yet assigned "
            "are embedded and split; earlier samples never change"
        )
        stopped = bfo.unfinished_round(info)
        if locked:
            # A round being written looks like one stopped half-way until its run ends.
            label += ". A BubbleFence run is in progress on this dataset: wait for it to end"
        elif stopped is not None:
            label += (
                f". Round {stopped} was saved, but its split fields and tags were not all "
                "written (the run was stopped): this run writes them first"
            )
    inputs.view("state_notice", types.Notice(label=label))


def _embeddings_inputs(
    ctx: ExecutionContext,
    inputs: types.Object,
    info: dict[str, Any] | None,
    stored: BubbleFenceConfig | None,
) -> None:
    """Embeddings computed by a model (which one) or read from a vector field (which)."""
    stored_field = info.get("embeddings_field") if info else None
    fields = _user_vector_fields(ctx)
    choices = types.RadioGroup()
    choices.add_choice(
        "model",
        label="Compute with a model",
        description=f"Embeds samples lacking `{bfo.EMBEDDING_FIELD}` and stores them there",
    )
    # The state's own field, deleted or renamed since: still the choice the state holds,
    # so the form can say what is wrong (with no field offered, the App said only
    # "embeddings='field' is not one of the choices: 'model'").
    gone = stored_field not in (None, bfo.EMBEDDING_FIELD, *fields)
    if fields or gone:
        choices.add_choice(
            "field", label="Existing vector field", description="Use embeddings you computed"
        )
    default = _default_source(ctx, info)
    source = inputs.enum(
        "embeddings",
        choices.values(),
        default=default,
        label="Embeddings source",
        description="Where the embeddings come from; fixed after the first round",
        view=choices,
    )
    if gone:
        source.invalid = True
        source.error_message = (
            f"The state was built from the field {stored_field!r}, which this dataset no "
            "longer has (deleted or renamed): restore it, with the same vectors, or reset "
            "the split to start over"
        )
        return
    if ctx.params.get("embeddings", default) == "model":
        if stored_field and stored_field != bfo.EMBEDDING_FIELD:
            source.invalid = True
            source.error_message = (
                f"The state was built from the field {stored_field!r}; reset to compute "
                "embeddings with a model instead"
            )
        kept = None if info else bfo.kept_model(ctx.dataset)
        _knob_input(ctx, inputs, MODEL_KNOB, KNOBS[MODEL_KNOB], stored, default=kept)
        return
    # Pre-filled, so not marked required: the server validates the form once before the
    # App has put the pre-filled value in the params, and a required dropdown then read
    # "Required property" under a chosen field (seen in the App). An empty choice is
    # refused when the split runs (`_split_kwargs`).
    prop = field_input(
        inputs,
        "embeddings_field",
        fields,
        info,
        label="Embeddings field",
        description="A vector field holding one embedding per sample",
        prefill_first=True,
    )
    chosen = ctx.params.get("embeddings_field")
    if info and chosen and stored_field and chosen != stored_field:
        prop.invalid = True
        prop.error_message = f"The state was built from {stored_field!r}; reset to switch fields"
    # The model is hidden with a field, but one given wrong (from Python) is flagged here
    # rather than queued and failed on a worker, as a hidden advanced knob is.
    if _knob_problem(MODEL_KNOB, KNOBS[MODEL_KNOB], ctx.params.get(MODEL_KNOB), stored):
        _knob_input(ctx, inputs, MODEL_KNOB, KNOBS[MODEL_KNOB], stored)


def _pending_shards_input(
    ctx: ExecutionContext, inputs: types.Object, info: dict[str, Any] | None
) -> None:
    """Embedding shards still writing the source field: say so, offer to wait for them
    or to split only the samples embedded so far (the rest join a later round)."""
    field = _source_field(ctx, info)
    pending = bfo.pending_shards(ctx.dataset, field) if field else []
    missing = ctx.target_view().exists(field, False).count() if pending else 0
    if not missing:
        return
    running = sum(p.state == "running" for p in pending)
    # With no shard running, no worker may be taking them: waiting is not the default.
    idle = "" if running else "; is a `fiftyone delegated launch` worker running?"
    inputs.view(
        "shards_notice",
        types.Warning(
            label=f"{missing} samples still lack `{field}` while {len(pending)} embedding "
            f"shards are queued or running ({running} running){idle}"
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
        default="wait" if running else "embedded",
        label="Embedding in progress",
        view=choices,
    )


def _knob_input(
    ctx: ExecutionContext,
    inputs: types.Object,
    name: str,
    knob: Knob,
    stored: BubbleFenceConfig | None,
    default: Any = None,
) -> None:
    """One knob as the table describes it, its default ``default`` if given, else the
    stored config's value."""
    kwargs: dict[str, Any] = {
        "default": default if default is not None else getattr(stored or BubbleFenceConfig(), name),
        "label": knob.label,
        "description": knob.help,
        "required": False,
    }
    if knob.choices:
        choices = types.Dropdown()
        for choice in knob.choices:
            choices.add_choice(choice, label=choice)
        prop = inputs.enum(name, choices.values(), view=choices, **kwargs)
    elif knob.kind is bool:
        prop = inputs.bool(name, **kwargs)
    elif knob.kind in (int, float):
        # The form's bounds are closed; the library refuses an open bound's own value.
        bounds = {k: v for k, v in (("min", knob.low), ("max", knob.high)) if v is not None}
        add = inputs.int if knob.kind is int else inputs.float
        prop = add(name, **bounds, **kwargs)
    else:
        prop = inputs.str(name, **kwargs)
    problem = _knob_problem(name, knob, ctx.params.get(name), stored)
    if problem:
        prop.invalid = True
        prop.error_message = problem


def _knob_problem(
    name: str, knob: Knob, value: Any, stored: BubbleFenceConfig | None
) -> str | None:
    """Why a knob's value in the form cannot run, else None: out of its range (an open
    bound, an eval share of 0, passes the form's closed min/max: said with the library's
    own message before the user presses Execute), or a frozen knob changed."""
    if value is None:
        return None
    try:
        check_knob(name, value)
    except ValueError as error:
        return str(error)
    if stored is not None and knob.refuses(getattr(stored, name), value):
        if knob.rises_only:
            return f"At least {getattr(stored, name)!r} after earlier rounds; reset to lower it"
        return f"Fixed at {getattr(stored, name)!r} by earlier rounds; reset to change it"
    return None


def _label_group_inputs(
    ctx: ExecutionContext, inputs: types.Object, info: dict[str, Any] | None
) -> None:
    """Optional label and group field choosers; the fields of earlier rounds are preselected."""
    field_input(
        inputs,
        "label_field",
        bfo.label_field_choices(ctx.dataset, asked=ctx.params.get("label_field")),
        info,
        label="Label field",
        description="Optional. Eval covers every label: the quota is met per label too, rare "
        "labels first (a classification, the objects of a detections field, or a string field)",
    )
    field_input(
        inputs,
        "group_field",
        bfo.label_field_choices(ctx.dataset, multi_ok=False, asked=ctx.params.get("group_field")),
        info,
        label="Group field",
        description="Optional. A group (video, drive, patient) goes whole to train or to one "
        "eval split, in this round and every later one",
    )


def _advanced_inputs(
    ctx: ExecutionContext, inputs: types.Object, stored: BubbleFenceConfig | None
) -> None:
    """The advanced knobs, folded behind a switch."""
    inputs.bool(
        "show_advanced",
        default=False,
        label="Advanced settings",
        description="Anchor placement, radii, tolerance, per-label quota, device",
        view=types.SwitchView(),
    )
    advanced = {name: knob for name, knob in KNOBS.items() if knob.advanced}
    # Shown when one given is wrong (from Python, or before the switch was turned off):
    # it is flagged in the form rather than queued and failed on the worker.
    wrong = any(_knob_problem(n, k, ctx.params.get(n), stored) for n, k in advanced.items())
    if not (ctx.params.get("show_advanced", False) or wrong):
        return
    for name, knob in advanced.items():
        _knob_input(ctx, inputs, name, knob, stored)
