"""`bubblefence_sample`: tag a curated pick (diverse, typical, outliers, similar, balanced...)."""

from __future__ import annotations

from typing import Any

import fiftyone as fo
import fiftyone.operators.types as types
from fiftyone.operators.executor import ExecutionContext, ExecutionResult

import bubblefence_plugin.fo as bfo
from bubblefence_plugin.core.curation import STRATEGIES, TYPICALITY_K
from bubblefence_plugin.core.progress import Steps
from bubblefence_plugin.text import pick_text

from .base import BubbleFenceOperator, Outcome
from .inputs import embeddings_field_choices, field_input, given

DELEGATE_ABOVE = 50_000  # samples: typicality of more outlasts the App's immediate timeout


class BubbleFenceSample(BubbleFenceOperator):
    needs_images = True
    name = "bubblefence_sample"
    label = "BubbleFence sample"
    description = (
        "Tag a pick of samples chosen from their embeddings: diverse, typical, outliers, "
        "similar to a query, class-balanced, by a numeric field, or combined"
    )
    target_action = "Pick from"
    delegate_above = DELEGATE_ABOVE
    # Shown only for some choices: one strategy or a strength each, the options of the
    # strategies chosen, the split filter once there is a split, the regions' rebuild once
    # there are regions; k from Python only.
    optional_params = frozenset(
        {
            "strategy",
            *(f"strength_{name}" for name in STRATEGIES),
            "label_field",
            "target",
            "query_tag",
            "metadata_field",
            "rebuild_regions",
            "from_split",
            "k",
        }
    )

    def __call__(
        self,
        sample_collection: fo.Dataset | fo.DatasetView,
        strategy: str = "diverse",
        count: int = 100,
        tag: str = bfo.DEFAULT_TAG,
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
        rebuild_regions: bool = False,
        delegate: bool = False,
    ) -> ExecutionResult:
        """Tags a curated pick of ``sample_collection``, as the App does.

        Example usage::

            import fiftyone.operators as foo

            sample = foo.get_operator("@bubblefence/bubblefence/bubblefence_sample")
            sample(dataset, strategy="diverse", count=500, tag="to_label", from_split="train")
            sample(dataset, strengths={"diverse": 1.0, "typical": 0.5}, count=100, tag="mix")

        Args:
            sample_collection: a dataset or view
            strategy ("diverse"): one of ``curation.STRATEGIES``
            count (100): how many samples to tag
            tag ("bubblefence_sample"): a tag no sample has yet (unless ``replace``)
            strengths (None): strategy -> strength, to combine several
            embeddings_field (None): the vector field the pick is computed from
                (default: the split's)
            from_split (None): pick only among this split's samples
            start_from (None): a tag or split counted as already picked (``diverse``)
            label_field (None): one label per sample, for ``balance``
            target ("uniform"): ``"uniform"``, ``"input"``, or ``"cat: 0.5, dog: 0.5"``
            query_tag (None): the query samples' tag, for ``similar``
            metadata_field (None): a numeric field, for ``metadata``
            seed (0): drives every random choice
            replace (False): whether to move an existing tag to this pick
            rebuild_regions (False): whether to fit the regions afresh from
                ``embeddings_field`` (once they were built from another)
            delegate (False): whether to queue the run for a delegated worker
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
            "rebuild_regions": rebuild_regions,
        }
        for name, value in (strengths or {}).items():
            params[f"strength_{name}"] = value
        return self.execute_from_python(sample_collection, params, delegate)

    def add_inputs(self, ctx: ExecutionContext, inputs: types.Object) -> None:
        info = bfo.state_info(ctx.dataset)
        active = _strategy_inputs(ctx, inputs)
        _pick_inputs(ctx, inputs)
        _source_inputs(ctx, inputs, info)
        _strategy_options(ctx, inputs, info, active)

    def run(self, ctx: ExecutionContext) -> Steps[Outcome]:
        summary = yield from bfo.iter_sample(ctx.target_view(), **_sample_kwargs(ctx.params))
        # The pick is the tag; its ids would only bloat the result of a large pick.
        result = {k: v for k, v in summary.items() if k != "picked_ids"}
        return Outcome(pick_text(summary), result)


def _sample_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """`bfo.sample` keyword arguments from the form's (or the Python call's) params."""
    strategy = params.get("strategy") or "diverse"
    strengths = None
    if params.get("combine"):
        strengths = {name: v for name in STRATEGIES if (v := _strength(params, name))}
        strategy = []
    return {
        "strategy": strategy,
        "strengths": strengths,
        "count": given(params, "count", 100),
        "tag": params.get("tag") or bfo.DEFAULT_TAG,
        "embeddings_field": params.get("embeddings_field") or None,
        "from_split": params.get("from_split") or None,
        "start_from": params.get("start_from") or None,
        "label_field": params.get("label_field") or None,
        "target": bfo.parse_target(params.get("target") or "uniform"),
        "query_tag": params.get("query_tag") or None,
        "metadata_field": params.get("metadata_field") or None,
        "seed": given(params, "seed", 0),
        "k": given(params, "k", TYPICALITY_K),
        "replace": bool(params.get("replace", False)),
        "rebuild_regions": bool(params.get("rebuild_regions", False)),
    }


def _strategy_inputs(ctx: ExecutionContext, inputs: types.Object) -> set[str]:
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
        # Pre-filled, so not marked required (as the split form's field; so are the
        # count and the tag): the App read "Required property" under the pre-filled values
        # for 2-3 s after opening the form. An empty value takes the default (`_sample_kwargs`).
        inputs.enum(
            "strategy",
            choices.values(),
            default="diverse",
            label="Strategy",
            description="How samples are chosen",
            view=choices,
        )
        return {ctx.params.get("strategy") or "diverse"}
    active = set()
    for name, description in STRATEGIES.items():
        inputs.float(
            f"strength_{name}",
            default=_default_strength(name),
            label=f"Strength: {name}",
            description=description,
        )
        if _strength(ctx.params, name):
            active.add(name)
    return active


def _default_strength(strategy: str) -> float:
    """A combined pick starts from a diverse one: the other strengths at 0."""
    return 1.0 if strategy == "diverse" else 0.0


def _strength(params: dict[str, Any], strategy: str) -> float:
    """A strategy's strength in a combined pick: the one sent, else the form's default (a
    Python call sends only those it sets)."""
    value = params.get(f"strength_{strategy}")
    return _default_strength(strategy) if value is None else value


def _pick_inputs(ctx: ExecutionContext, inputs: types.Object) -> None:
    inputs.int("count", default=100, min=1, label="Count", description="Samples to tag")
    prop = inputs.str(
        "tag",
        default=bfo.DEFAULT_TAG,
        label="Tag",
        description="Tag written on the pick; it must not exist yet (or tick Replace)",
    )
    inputs.bool(
        "replace", default=False, label="Replace", description="Move an existing tag to this pick"
    )
    tag = ctx.params.get("tag") or bfo.DEFAULT_TAG
    if not isinstance(tag, str):
        prop.invalid = True
        prop.error_message = f"tag must be a non-empty string, got {tag!r}"
    elif bfo.is_reserved_tag(tag):
        prop.invalid = True
        what = "the exclusion tag" if tag.strip().lower() == bfo.EXCLUDED_TAG else "a split's name"
        prop.error_message = f"{tag!r} is reserved ({what}); choose another tag"
    elif not ctx.params.get("replace") and ctx.dataset.count_sample_tags().get(tag, 0):
        prop.invalid = True
        prop.error_message = f"{tag!r} exists already: choose a new tag or tick Replace"


def _source_inputs(
    ctx: ExecutionContext, inputs: types.Object, info: dict[str, Any] | None
) -> None:
    """Where the pick comes from: the embeddings, a split, what is already picked."""
    # Not required: from Python, no field means the library's choice (the split's field).
    field_input(
        inputs,
        "embeddings_field",
        embeddings_field_choices(ctx.dataset),
        info,
        label="Embeddings field",
        description="Vector field the pick is computed from",
        prefill_first=True,
    )
    if info:
        splits = types.Dropdown()
        for s in bfo.SPLIT_TAGS:
            splits.add_choice(s, label=s)
        inputs.enum(
            "from_split",
            splits.values(),
            required=False,
            label="Only from split",
            description="Pick only among this split's samples (e.g. train samples to label first)",
            view=splits,
        )
    tags = _tag_choices(ctx.dataset)
    inputs.enum(
        "start_from",
        tags.values(),
        required=False,
        label="Already picked",
        description="Samples with this tag count as picked: a diverse pick adds what they lack",
        view=tags,
    )
    inputs.int("seed", default=0, min=0, label="Seed", description="Same data + seed = same pick")
    regions = bfo.load_regions(ctx.dataset)
    if regions is not None:
        inputs.bool(
            "rebuild_regions",
            default=False,
            label="Rebuild regions",
            description="Fit the regions afresh from the embeddings field above (they were "
            f"built from {regions[1].get('embeddings_field')!r})",
        )


def _strategy_options(
    ctx: ExecutionContext, inputs: types.Object, info: dict[str, Any] | None, active: set[str]
) -> None:
    """The options of the strategies chosen."""
    if "balance" in active:
        field_input(
            inputs,
            "label_field",
            bfo.label_field_choices(
                ctx.dataset, multi_ok=False, asked=ctx.params.get("label_field")
            ),
            info,
            label="Label field",
            description="One label per sample; the pick follows the target distribution of its "
            "labels",
            required=True,
        )
        inputs.str(
            "target",
            default="uniform",
            label="Target distribution",
            description="uniform, input (the candidates' own shares), or 'cat: 0.5, dog: 0.5'",
        )
    if "similar" in active:
        tags = _tag_choices(ctx.dataset)
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
        dropdown = types.DropdownView()
        for f in numeric:
            dropdown.add_choice(f, label=f)
        inputs.enum(
            "metadata_field",
            dropdown.values(),
            required=True,
            label="Numeric field",
            description="Higher first; a negative strength puts lower values first",
            view=dropdown,
        )


def _tag_choices(dataset: fo.Dataset) -> types.Dropdown:
    tags = types.Dropdown()
    for tag in sorted(dataset.count_sample_tags()):
        tags.add_choice(tag, label=tag)
    return tags
