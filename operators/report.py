"""`bubblefence_report`: audit any split (ours, tags, any string field) against a random split
at the same ratios; optionally beside FiftyOne Brain's `compute_leaky_splits`; HTML report.

A split that leaves a class without eval, validation or test samples, or cuts a group across
the train/eval line, ends in amber (`bubblefence_plugin.fo.split_warnings`), not green. The
leaking eval samples are the saved view ``bubblefence_leaks``, which the summary names.
"""

from __future__ import annotations

from typing import Any

import fiftyone as fo
import fiftyone.operators.types as types
from fiftyone.operators.executor import ExecutionContext, ExecutionResult

import bubblefence_plugin.fo as bfo
from bubblefence_plugin.core import metrics
from bubblefence_plugin.core.config import BubbleFenceConfig
from bubblefence_plugin.core.progress import Steps
from bubblefence_plugin.text import report_text

from .base import BubbleFenceOperator, Outcome
from .inputs import embeddings_field_choices, field_input, given, parse_path

# Reading a million 512-d embeddings from the database and measuring them takes minutes.
DELEGATE_ABOVE = 200_000  # samples

SETTINGS = ("eval_ratio", "validation_ratio", "max_queries", "seed", "min_label_count")


class BubbleFenceReport(BubbleFenceOperator):
    name = "bubblefence_report"
    label = "BubbleFence report"
    description = (
        "Audit a split: leakage, ratio, balance, label coverage, groups, stability and "
        "diversity, beside a random split at the same ratios"
    )
    target_action = "Audit"
    delegate_above = DELEGATE_ABOVE
    reloads_dataset = False  # it stores a run, no sample field
    optional_params = frozenset({"min_label_count"})  # Python only

    def __call__(
        self,
        sample_collection: fo.Dataset | fo.DatasetView,
        split_source: str | None = None,
        embeddings_field: str | None = None,
        label_field: str | None = None,
        group_field: str | None = None,
        thresholds: list[float] | None = None,
        brain: bool = False,
        html_path: str | None = None,
        delegate: bool = False,
        **settings: Any,
    ) -> ExecutionResult:
        """Audits the split of ``sample_collection`` beside a random split at the same
        ratios, as the App does.

        Example usage::

            import fiftyone.operators as foo

            report = foo.get_operator("@bubblefence/bubblefence/bubblefence_report")
            report(dataset, split_source="tags", embeddings_field="clip", brain=True,
                   html_path="/tmp/report.html")

        `bubblefence_plugin.fo.audit.report` returns the report directly.

        Args:
            sample_collection: a dataset or view
            split_source (None): ``"split"``, ``"tags"`` or a string field holding
                train / validation / test (default: BubbleFence's ``split`` if present)
            embeddings_field (None): the vector field similarities are measured in
            label_field (None): adds label coverage: a Classification's label, every
                object label of a Detections-like field, or a string field (None: none,
                as a form field left empty; the form pre-fills our split's)
            group_field (None): adds group violations (None: none, likewise)
            thresholds (None): the cosine similarities leakage is counted at
            brain (False): whether to also run FiftyOne Brain's ``compute_leaky_splits``
            html_path (None): a file or folder to write a self-contained HTML report to
            delegate (False): whether to queue the audit for a delegated worker
            **settings: ``eval_ratio``, ``validation_ratio``, ``max_queries`` (0: all),
                ``seed``, ``min_label_count``
        """
        self.refuse_unknown_keywords(settings, SETTINGS)
        params = {
            "split_source": split_source,
            "embeddings_field": embeddings_field,
            "label_field": label_field,
            "group_field": group_field,
            "thresholds": None if thresholds is None else list(thresholds),
            "brain": bool(brain),
            "html_path": html_path,
            **settings,
        }
        return self.execute_from_python(sample_collection, params, delegate)

    def add_inputs(self, ctx: ExecutionContext, inputs: types.Object) -> None:
        _latest_notice(ctx, inputs)
        vector_fields = embeddings_field_choices(ctx.dataset)
        if not vector_fields:
            inputs.view(
                "no_embeddings",
                types.Error(
                    label="No vector field with embeddings: run BubbleFence split first, "
                    "or compute embeddings into a vector field"
                ),
            )
            return
        info = bfo.state_info(ctx.dataset)
        _source_inputs(ctx, inputs, info, vector_fields)
        _target_inputs(inputs, info)
        _threshold_input(ctx, inputs)
        inputs.int(
            "max_queries",
            default=metrics.DEFAULT_MAX_QUERIES,
            min=0,
            label="Eval samples checked per direction",
            description="Leakage is measured exactly for at most this many sampled eval "
            "samples (each against the whole train split), with a standard error; "
            "0 = all of them (slow on large splits)",
        )
        inputs.int(
            "seed",
            default=0,
            min=0,
            label="Seed",
            description="For the random baseline split and the sampled queries",
        )
        _brain_input(ctx, inputs)
        inputs.str(
            "html_path",
            required=False,
            label="HTML report path",
            description="Write a self-contained HTML report (tables + interactive figure) to "
            "this file, or into this folder; empty: no HTML",
        )

    def add_outputs(self, outputs: types.Object) -> None:
        row = types.Object()
        for key in ("metric", "split", "baseline"):
            row.str(key)
        table = types.TableView()
        table.add_column("metric", label="Measure")
        table.add_column("split", label="This split")
        table.add_column("baseline", label="Random split, same ratios")
        outputs.list("table", row, label="Audit", view=table)
        outputs.str("html_path", label="HTML report")

    def run(self, ctx: ExecutionContext) -> Steps[Outcome]:
        options = bfo.AuditOptions(**_report_kwargs(ctx.params))
        result = yield from bfo.iter_report(ctx.target_view(), options)
        extra = {
            "table": bfo.summary_rows(result),
            "html_path": result.get("html_path") or "(none written)",
        }
        return Outcome(report_text(result), result, extra, bfo.split_warnings(result))


def _report_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    max_queries = given(params, "max_queries", metrics.DEFAULT_MAX_QUERIES)
    if isinstance(max_queries, int) and not isinstance(max_queries, bool) and max_queries == 0:
        max_queries = None  # the form's "0 = all of them"; the library checks the rest
    return {
        "split_source": params.get("split_source") or None,
        "embeddings_field": params.get("embeddings_field") or None,
        # The form pre-fills our split's fields; one left empty means none ("").
        "label_field": params.get("label_field") or "",
        "group_field": params.get("group_field") or "",
        "thresholds": params.get("thresholds") or metrics.DEFAULT_THRESHOLDS,
        "eval_ratio": params.get("eval_ratio"),
        "validation_ratio": params.get("validation_ratio"),
        "min_label_count": params.get("min_label_count"),
        "max_queries": max_queries,
        "seed": given(params, "seed", 0),
        "brain": bool(params.get("brain", False)),
        "html_path": parse_path(params, "html_path"),
    }


def _latest_notice(ctx: ExecutionContext, inputs: types.Object) -> None:
    latest = bfo.list_reports(ctx.dataset)
    if latest:
        inputs.view(
            "latest_notice",
            types.Notice(
                label=f"Last report: {latest[0]['created_at']} on {latest[0]['source']!r} "
                f"({len(latest)} stored)"
            ),
        )


def _source_inputs(
    ctx: ExecutionContext,
    inputs: types.Object,
    info: dict[str, Any] | None,
    vector_fields: list[str],
) -> None:
    """What is audited: the split source, the embeddings, optional label and group fields."""
    sources = bfo.split_sources(ctx.dataset)
    dropdown = types.DropdownView()
    for s in sources:
        dropdown.add_choice(s, label="sample tags" if s == bfo.TAGS_SOURCE else s)
    prop = inputs.enum(
        "split_source",
        dropdown.values(),
        default=bfo.SPLIT_FIELD if bfo.SPLIT_FIELD in sources else bfo.TAGS_SOURCE,
        label="Split source",
        description="BubbleFence's `split` field, the sample tags, or any string field "
        "holding train / validation / test (aliases val, valid, dev, training, testing)",
        view=dropdown,
    )
    chosen = ctx.params.get("split_source") or prop.default
    ours = chosen == bfo.SPLIT_FIELD and info is not None
    # Checked here, not after Execute: every string field is offered (which hold a split
    # is a query per field), so the chosen one is checked alone; our own split needs none.
    if chosen in sources and not ours and not bfo.names_a_split(ctx.target_view(), chosen):
        where = "in the sample tags" if chosen == bfo.TAGS_SOURCE else f"in {chosen!r}"
        prop.invalid = True
        prop.error_message = (
            f"No sample here has a split name {where} (train, validation, test, or an "
            "alias such as val): choose the source that holds the split"
        )
    field_input(
        inputs,
        "embeddings_field",
        vector_fields,
        info,
        label="Embeddings field",
        description="Vector field the similarities are measured in",
        # Pre-filled, so not marked required (see the split form's field): none chosen
        # reads the field the split was built from, as `bfo.report` does.
        prefill_first=True,
    )
    field_input(
        inputs,
        "label_field",
        bfo.label_field_choices(ctx.dataset, asked=ctx.params.get("label_field")),
        info,
        label="Label field",
        description="Adds label coverage (labels with >= 20 samples): a classification, "
        "the objects' labels of detections, or a string field",
    )
    field_input(
        inputs,
        "group_field",
        bfo.label_field_choices(ctx.dataset, multi_ok=False, asked=ctx.params.get("group_field")),
        info,
        label="Group field",
        description="Adds group violations (groups split across train/eval)",
    )


def _target_inputs(inputs: types.Object, info: dict[str, Any] | None) -> None:
    """The target ratios, BubbleFence's settings by default."""
    config = BubbleFenceConfig.from_dict(info["config"]) if info else BubbleFenceConfig()
    inputs.float(
        "eval_ratio",
        default=config.eval_ratio,
        min=0.0,
        max=1.0,
        label="Target eval ratio",
        description="Target of the ratio error (BubbleFence's setting by default)",
    )
    inputs.float(
        "validation_ratio",
        default=config.validation_ratio,
        min=0.0,
        max=1.0,
        label="Target validation ratio",
        description="Target share of validation in eval, for the val/test balance",
    )


def _threshold_input(ctx: ExecutionContext, inputs: types.Object) -> None:
    prop = inputs.list(
        "thresholds",
        types.Number(),
        default=list(metrics.DEFAULT_THRESHOLDS),
        label="Leakage thresholds",
        description="Cosine similarities: an eval sample leaks at t when its most similar "
        "train sample is at least t similar",
    )
    values = ctx.params.get("thresholds")
    if values is not None and (
        not values or any(not isinstance(t, (int, float)) or not 0 < t <= 1 for t in values)
    ):
        prop.invalid = True
        prop.error_message = "Each threshold must be in (0, 1]"


def _brain_input(ctx: ExecutionContext, inputs: types.Object) -> None:
    inputs.bool(
        "brain",
        default=False,
        label="Also run FiftyOne Brain compute_leaky_splits",
        description="Its leak count beside ours in its own meaning (cosine distance "
        "1 - t on mean-centred embeddings); its cost grows with the square of the samples",
    )
    if ctx.params.get("brain") and len(ctx.target_view()) > bfo.BRAIN_QUADRATIC_ABOVE:
        inputs.view(
            "brain_warning",
            types.Warning(
                label=f"More than {bfo.BRAIN_QUADRATIC_ABOVE} samples: the Brain's search "
                "takes minutes and several GB here (see bench/RESULTS.md); consider "
                "delegating"
            ),
        )
