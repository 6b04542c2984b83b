"""`bubblefence_report`: audit any split (ours, tags, any string field) against a random split
at the same ratios; optionally beside FiftyOne Brain's `compute_leaky_splits`; HTML report."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

import bubblefence_plugin.fo.audit as bfa
import bubblefence_plugin.fo.dataset as bfd
from bubblefence_plugin.core import metrics
from bubblefence_plugin.core.config import BubbleFenceConfig
from bubblefence_plugin.text import escape_markdown

from ._common import parse_path, refuse_unknown_params, run_sdk

# Reading a million 512-d embeddings from the database and measuring them takes minutes.
DELEGATE_ABOVE = 200_000  # samples

SETTINGS = ("eval_ratio", "validation_ratio", "max_queries", "seed", "min_label_count")


class BubbleFenceReport(foo.Operator):
    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="bubblefence_report",
            label="BubbleFence report",
            description="Audit a split: leakage, ratio, balance, label coverage, groups, "
            "stability and diversity, beside a random split at the same ratios",
            icon="/assets/icon.svg",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def __call__(
        self,
        sample_collection: Any,
        split_source: str | None = None,
        embeddings_field: str | None = None,
        label_field: str | None = None,
        group_field: str | None = None,
        thresholds: list[float] | None = None,
        brain: bool = False,
        html_path: str | None = None,
        delegate: bool = False,
        **settings: Any,
    ) -> Any:
        """Runs the operator from Python, like the App does.

        Example::

            op = foo.get_operator("@bubblefence/bubblefence/bubblefence_report")
            op(dataset, split_source="tags", embeddings_field="clip", brain=True,
               html_path="/tmp/report.html")

        ``settings``: eval_ratio, validation_ratio, max_queries (0 = all), seed,
        min_label_count. `bubblefence_plugin.fo.audit.report` returns the report directly.
        """
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise ValueError(f"unknown report parameters {unknown}; allowed: {list(SETTINGS)}")
        params: dict[str, Any] = {
            "split_source": split_source,
            "embeddings_field": embeddings_field,
            "label_field": label_field,
            "group_field": group_field,
            "brain": bool(brain),
            "html_path": html_path,
            **settings,
        }
        if thresholds is not None:
            params["thresholds"] = list(thresholds)
        params = {k: v for k, v in params.items() if v is not None}
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
        inputs.view_target(ctx, action_description="Audit")
        latest = bfa.list_reports(ctx.dataset)
        if latest:
            inputs.view(
                "latest_notice",
                types.Notice(
                    label=f"Last report: {latest[0]['created_at']} on {latest[0]['source']!r} "
                    f"({len(latest)} stored)"
                ),
            )
        vector_fields = sorted(
            f
            for f in ctx.dataset.get_field_schema(ftype=fo.VectorField)
            if f == bfd.EMBEDDING_FIELD or not f.startswith("bubblefence_")
        )
        if not vector_fields:
            inputs.view(
                "no_embeddings",
                types.Error(
                    label="No vector field with embeddings: run BubbleFence split first, "
                    "or compute embeddings into a vector field"
                ),
            )
            return types.Property(inputs, view=types.View(label="BubbleFence report"))
        _source_inputs(ctx, inputs, vector_fields)
        _target_inputs(ctx, inputs)
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
        inputs.bool(
            "brain",
            default=False,
            label="Also run FiftyOne Brain compute_leaky_splits",
            description="Its leak count beside ours in its own meaning (cosine distance "
            "1 - t on mean-centred embeddings); its cost grows with the square of the samples",
        )
        if ctx.params.get("brain") and len(ctx.target_view()) > bfa.BRAIN_QUADRATIC_ABOVE:
            inputs.view(
                "brain_warning",
                types.Warning(
                    label=f"More than {bfa.BRAIN_QUADRATIC_ABOVE} samples: the Brain's search "
                    "takes minutes and several GB here (see bench/RESULTS.md); consider "
                    "delegating"
                ),
            )
        inputs.str(
            "html_path",
            required=False,
            label="HTML report path",
            description="Write a self-contained HTML report (tables + interactive figure) to "
            "this file, or into this folder; empty: no HTML",
        )
        return types.Property(inputs, view=types.View(label="BubbleFence report"))

    def execute(self, ctx: Any) -> Any:
        refuse_unknown_params(ctx, self.resolve_input(ctx), SETTINGS)
        if ctx.delegated:
            return self._execute_delegated(ctx)
        return self._execute_live(ctx)

    def _execute_live(self, ctx: Any) -> Generator[Any, None, None]:
        gen = bfa.iter_report(ctx.target_view(), **_report_kwargs(ctx))
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            yield ctx.ops.set_progress(progress=event.fraction, label=event.label)
        yield ctx.ops.show_output(_outputs().to_json(), _output_values(result))
        yield ctx.ops.notify(_headline(result), variant="success")

    def _execute_delegated(self, ctx: Any) -> dict[str, Any]:
        def progress(fraction: float, label: str) -> None:
            ctx.set_progress(progress=fraction, label=label)

        result = bfa.report(ctx.target_view(), progress=progress, **_report_kwargs(ctx))
        return {**_output_values(result), "report": result}

    def resolve_output(self, ctx: Any) -> types.Property:
        return _outputs()


def _report_kwargs(ctx: Any) -> dict[str, Any]:
    p = ctx.params
    max_queries = int(p.get("max_queries", metrics.DEFAULT_MAX_QUERIES))
    return {
        "split_source": p.get("split_source") or None,
        "embeddings_field": p.get("embeddings_field") or None,
        "label_field": p.get("label_field") or None,
        "group_field": p.get("group_field") or None,
        "thresholds": p.get("thresholds") or metrics.DEFAULT_THRESHOLDS,
        "eval_ratio": p.get("eval_ratio"),
        "validation_ratio": p.get("validation_ratio"),
        "min_label_count": int(p.get("min_label_count", metrics.MIN_LABEL_COUNT)),
        "max_queries": None if max_queries == 0 else max_queries,
        "seed": int(p.get("seed", 0)),
        "brain": bool(p.get("brain", False)),
        "html_path": parse_path(ctx, "html_path"),
    }


def _headline(result: dict[str, Any]) -> str:
    m = result["metrics"]
    thresholds = m["thresholds"]
    k = thresholds.index(0.95) if 0.95 in thresholds else 0
    ours, base = m["split"]["eval_train"], m["baseline"]["eval_train"]
    leak = (
        "no eval→train pair"
        if ours is None
        else (
            f"leakage@{thresholds[k]:g} eval→train {ours['fraction'][k]:.4f} "
            f"(random split {base['fraction'][k]:.4f})"
        )
    )
    return f"BubbleFence report on {result['n_audited']} samples of {result['source']!r}: {leak}"


def _output_values(result: dict[str, Any]) -> dict[str, Any]:
    lines = [f"**{escape_markdown(_headline(result))}**", ""]
    if result.get("run_key"):
        lines.append(f"- Stored as run `{result['run_key']}` ({result['created_at']})")
    lines += [f"- {escape_markdown(w)}" for w in result["warnings"] + result["metrics"]["notes"]]
    return {
        "summary": "\n".join(lines),
        "table": bfa.summary_rows(result),
        "html_path": result.get("html_path") or "(none written)",
    }


def _outputs() -> types.Property:
    outputs = types.Object()
    outputs.str("summary", label="BubbleFence report", view=types.MarkdownView())
    row = types.Object()
    for key in ("metric", "split", "baseline"):
        row.str(key)
    table = types.TableView()
    table.add_column("metric", label="Measure")
    table.add_column("split", label="This split")
    table.add_column("baseline", label="Random split, same ratios")
    outputs.list("table", row, label="Audit", view=table)
    outputs.str("html_path", label="HTML report")
    return types.Property(outputs, view=types.View(label="BubbleFence report"))


def _source_inputs(ctx: Any, inputs: types.Object, vector_fields: list[str]) -> None:
    sources = bfa.split_sources(ctx.dataset)
    dd = types.DropdownView()
    for s in sources:
        dd.add_choice(s, label="sample tags" if s == bfa.TAGS_SOURCE else s)
    inputs.enum(
        "split_source",
        dd.values(),
        default=bfd.SPLIT_FIELD if bfd.SPLIT_FIELD in sources else bfa.TAGS_SOURCE,
        label="Split source",
        description="BubbleFence's `split` field, the sample tags, or any string field "
        "holding train / validation / test (aliases val, valid, dev, training, testing)",
        view=dd,
    )
    info = bfd.state_info(ctx.dataset)
    stored = info.get("embeddings_field") if info else None
    default = next(
        (f for f in (stored, bfd.EMBEDDING_FIELD) if f in vector_fields), vector_fields[0]
    )
    dd = types.DropdownView()
    for f in vector_fields:
        dd.add_choice(f, label=f)
    inputs.enum(
        "embeddings_field",
        dd.values(),
        required=True,
        default=default,
        label="Embeddings field",
        description="Vector field the similarities are measured in",
        view=dd,
    )
    categorical = sorted(
        name
        for name, field in ctx.dataset.get_field_schema().items()
        if name not in bfd.RESULT_FIELDS
        and name != "filepath"
        and (
            isinstance(field, (fo.StringField, fo.IntField))
            or (
                isinstance(field, fo.EmbeddedDocumentField)
                and issubclass(field.document_type, fo.Classification)
            )
        )
    )
    for name, label, description in (
        ("label_field", "Label field", "Adds label coverage (labels with >= 20 samples)"),
        ("group_field", "Group field", "Adds group violations (groups split across train/eval)"),
    ):
        dd = types.AutocompleteView()
        for f in categorical:
            dd.add_choice(f, label=f)
        inputs.str(name, required=False, label=label, description=description, view=dd)


def _target_inputs(ctx: Any, inputs: types.Object) -> None:
    info = bfd.state_info(ctx.dataset)
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


def _threshold_input(ctx: Any, inputs: types.Object) -> None:
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
