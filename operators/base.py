"""`BubbleFenceOperator`: what every BubbleFence operator shares.

An operator declares a few class attributes, its form (`add_inputs`) and its run (`run`:
call the library, return an `Outcome`); the base does the rest, the same way for all, as
FiftyOne's io and brain plugins do:

- the config, from the class attributes, and execution options that offer a delegated
  worker first above ``delegate_above`` samples (immediate runs time out after 600 s);
- the form: the target-view chooser, then the operator's own inputs; at execution,
  parameters the form does not take are refused (a typo must not run with the default);
- the run: in the App, progress streamed to its progress bar, then reload the dataset,
  send the operator's own App updates (`app_updates`), show the output, notify; on a
  delegated worker, progress into the run's document and the result returned. An
  error becomes an error notice and output, and is raised again so the App, Python
  callers and workers all see that the run failed. What a failed run leaves is the
  library's to keep whole: it checks its inputs before writing, a split round commits
  at its end, an embedding run keeps the chunks it finished;
- `execute_from_python`, what every operator's ``__call__`` ends with.

Every run has one result shape, `Outcome.to_json()`::

    {
        "summary": "<Markdown: what happened, user strings escaped>",
        "result": {...},  # the library's JSON-able return value
        "warnings": [...],  # only when there are any: what the user must not miss
        ...,  # operator-specific output values, e.g. the report's "table"
    }

A run with warnings ends in amber: a warning notification instead of the green success
one, and each warning above the summary in the output view.

It is what the output view shows in the App, the result of a delegated run, and the
``result`` of an immediate run of an operator that does not stream progress.
"""

from __future__ import annotations

from collections.abc import Collection, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone.operators.executor import ExecutionContext, ExecutionResult

from bubblefence_plugin.core.config import unknown_names_message
from bubblefence_plugin.core.progress import Steps, drive, relay
from bubblefence_plugin.fo.fields import app_view, check_collection
from bubblefence_plugin.text import SummaryText, counted, escape_markdown, toast

# Parameters the App adds when a panel's button opens an operator (the panel, its state,
# the button's path): not the user's, so never refused as unknown.
APP_PARAMS = frozenset({"panel_id", "panel_state", "path"})


@dataclass(frozen=True)
class Outcome:
    """What a run produced: its text for the user, the library's result, the
    operator-specific values its output view shows besides the summary, and warnings
    (plain text) that turn the run's ending from green to amber."""

    text: SummaryText
    result: Mapping[str, Any]
    extra: Mapping[str, Any] = field(default_factory=dict)
    warnings: Sequence[str] = ()

    def to_json(self) -> dict[str, Any]:
        warnings = {"warnings": list(self.warnings)} if self.warnings else {}
        return {
            "summary": self.text.markdown(),
            "result": dict(self.result),
            **warnings,
            **self.extra,
        }


class BubbleFenceOperator(foo.Operator):
    """Base of the BubbleFence operators; subclasses set the class attributes below and
    implement `add_inputs`, `run` and a documented ``__call__``."""

    name: ClassVar[str]
    label: ClassVar[str]
    description: ClassVar[str]
    icon: ClassVar[str] = "/assets/icon.svg"
    dynamic: ClassVar[bool] = True  # the form changes with the choices made in it
    allow_delegated: ClassVar[bool] = True
    # True: `run` reports progress live, so `execute` is a generator in the App. False:
    # `execute` returns the result, which a Python caller then gets back directly.
    streams_progress: ClassVar[bool] = True
    # The verb of the target-view chooser ("Split" the current view...); None: the
    # operator works on the whole dataset and offers no target.
    target_action: ClassVar[str | None] = "Process"
    # Above this many samples the App offers a delegated worker first.
    delegate_above: ClassVar[int | None] = None
    reloads_dataset: ClassVar[bool] = True  # after a run that wrote fields or tags
    # Parameters the form shows only for some choices (advanced knobs, per-strategy
    # options): accepted even while hidden.
    optional_params: ClassVar[frozenset[str]] = frozenset()
    output_label: ClassVar[str | None] = None  # the summary's label; default: `label`
    # Works on flat image datasets only (`check_collection`): another dataset (video,
    # grouped) gets the refusal in place of the form (`resolve_input`).
    needs_images: ClassVar[bool] = False

    # -- configuration --------------------------------------------------------------

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name=self.name,
            label=self.label,
            description=self.description,
            icon=self.icon,
            dynamic=self.dynamic,
            execute_as_generator=self.streams_progress,
            allow_immediate_execution=True,
            allow_delegated_execution=self.allow_delegated,
            view_target=self.target_action is not None,
        )

    def resolve_execution_options(self, ctx: ExecutionContext) -> foo.ExecutionOptions:
        return foo.ExecutionOptions(
            allow_immediate_execution=True,
            allow_delegated_execution=self.allow_delegated,
            default_choice_to_delegated=self.prefers_delegation(ctx),
        )

    def prefers_delegation(self, ctx: ExecutionContext) -> bool:
        """Whether the App offers a delegated worker first: large runs outlast its
        immediate-execution timeout."""
        return (
            self.allow_delegated
            and self.delegate_above is not None
            and ctx.dataset is not None
            and len(ctx.dataset) > self.delegate_above
        )

    # -- form -----------------------------------------------------------------------

    def resolve_input(self, ctx: ExecutionContext) -> types.Property:
        _follow_sidebar_filters(ctx)
        inputs = types.Object()
        try:
            if self.needs_images and ctx.dataset is not None:
                check_collection(ctx.dataset)
            if self.target_action is not None:
                inputs.view_target(ctx, action_description=self.target_action)
            self.add_inputs(ctx, inputs)
        except ValueError as e:
            # A dataset it cannot work on (video, grouped), a state it cannot read (of a
            # newer BubbleFence, damaged): said in place of the form, before Execute.
            inputs = types.Object()
            refused = inputs.view("refused", types.Error(label=str(e)))
            refused.invalid, refused.error_message = True, str(e)
            return types.Property(inputs, view=types.View(label=self.label))
        _name_the_choices(inputs, ctx.params)
        return types.Property(inputs, view=types.View(label=self.label))

    def add_inputs(self, ctx: ExecutionContext, inputs: types.Object) -> None:
        """Adds the operator's own inputs to its form."""
        raise NotImplementedError

    def resolve_output(self, ctx: ExecutionContext) -> types.Property:
        return self._output_property((ctx.results or {}).get("warnings") or ())

    def _output_property(
        self, warnings: Sequence[str] = (), failed: bool = False
    ) -> types.Property:
        """The output view: the warnings (an alert's label is the view's own, not a value,
        so they are part of the schema), the summary, the operator's outputs (not after a
        failure: they showed as "No data provided" under the error)."""
        outputs = types.Object()
        for k, message in enumerate(warnings):
            outputs.view(f"warning_{k}", types.Warning(label=escape_markdown(message)))
        outputs.str("summary", label=self.output_label or self.label, view=types.MarkdownView())
        if not failed:
            self.add_outputs(outputs)
        return types.Property(outputs, view=types.View(label=self.label))

    def add_outputs(self, outputs: types.Object) -> None:
        """Adds output views for the operator's `Outcome.extra` values, if it has any."""

    # -- execution ------------------------------------------------------------------

    def run(self, ctx: ExecutionContext) -> Steps[Outcome]:
        """Calls the library: a generator of `Progress` events that returns the `Outcome`."""
        raise NotImplementedError

    def execute(self, ctx: ExecutionContext) -> Generator[Any, None, None] | dict[str, Any]:
        _follow_sidebar_filters(ctx)
        if ctx.delegated:
            # A worker has no App to stream to: its progress goes into the run's
            # document (`set_progress(fraction, label)`), its result is the run's result.
            self._refuse_unknown_params(ctx)
            return drive(self.run(ctx), ctx.set_progress).to_json()
        if self.streams_progress:
            return self._execute_streaming(ctx)
        return self._execute_returning(ctx)

    def _execute_streaming(self, ctx: ExecutionContext) -> Generator[Any, None, None]:
        try:
            self._refuse_unknown_params(ctx)
            outcome = yield from relay(
                self.run(ctx),
                lambda e: ctx.ops.set_progress(progress=e.fraction, label=e.label),
            )
        except Exception as error:
            yield from self._show_failure(ctx, error)
            raise
        yield from self._show_outcome(ctx, outcome)

    def _execute_returning(self, ctx: ExecutionContext) -> dict[str, Any]:
        try:
            self._refuse_unknown_params(ctx)
            outcome = drive(self.run(ctx))
        except Exception as error:
            self._show_failure(ctx, error)  # sent to the App with the error
            raise
        self._show_outcome(ctx, outcome)
        return outcome.to_json()  # shown by `resolve_output`

    def _refuse_unknown_params(self, ctx: ExecutionContext) -> None:
        known = set(self.resolve_input(ctx).type.properties) | self.optional_params | APP_PARAMS
        unknown = sorted(k for k, v in ctx.params.items() if k not in known and v is not None)
        if unknown:
            raise ValueError(unknown_names_message(unknown, known, self._param_noun))

    # The App operations end a run. Each `ctx.ops` call queues its operation for the
    # App; a generator also yields it, so that the App gets it at once.

    def _show_outcome(self, ctx: ExecutionContext, outcome: Outcome) -> list[Any]:
        shown = []
        if self.reloads_dataset:
            shown.append(ctx.ops.reload_dataset())
        shown.extend(self.app_updates(ctx, outcome))
        if self.streams_progress:  # else `resolve_output` shows the returned result
            schema = self._output_property(outcome.warnings).to_json()
            shown.append(ctx.ops.show_output(schema, outcome.to_json()))
        if outcome.warnings:
            n = len(outcome.warnings)
            message = f"{outcome.text.headline}; {counted(n, 'warning')}: {outcome.warnings[0]}"
            shown.append(ctx.ops.notify(toast(message), variant="warning"))
        else:
            shown.append(ctx.ops.notify(toast(outcome.text.headline), variant="success"))
        return shown

    def app_updates(self, ctx: ExecutionContext, outcome: Outcome) -> list[Any]:
        """The operator's own App operations after a run that succeeded in the App (a
        delegated run has no App to send them to), e.g. a colour scheme it stored."""
        return []

    def _show_failure(self, ctx: ExecutionContext, error: Exception) -> list[Any]:
        message = " ".join(str(error).split()) or type(error).__name__
        summary = f"**Failed:** {escape_markdown(message)}"
        return [
            ctx.ops.notify(toast(message), variant="error"),
            ctx.ops.show_output(self._output_property(failed=True).to_json(), {"summary": summary}),
        ]

    # -- Python SDK -----------------------------------------------------------------

    def execute_from_python(
        self, sample_collection: fo.Dataset | fo.DatasetView, params: dict[str, Any], delegate: bool
    ) -> ExecutionResult:
        """Runs this operator on a dataset or view as the App would, or queues it for a
        delegated worker (io plugin style). Parameters that are None are left out, so
        the operator uses its default."""
        if isinstance(sample_collection, fo.DatasetView):
            ctx = {"view": sample_collection}
        else:
            ctx = {"dataset": sample_collection}
        params = {k: v for k, v in params.items() if v is not None}
        return foo.execute_operator(self.uri, ctx, params=params, request_delegation=delegate)

    def refuse_unknown_keywords(
        self, keywords: Mapping[str, Any], allowed: Collection[str]
    ) -> None:
        """Refuses ``__call__`` keyword arguments outside ``allowed`` before anything runs
        or is queued (a queued run would only fail later, on a worker)."""
        unknown = sorted(set(keywords) - set(allowed))
        if unknown:
            raise ValueError(unknown_names_message(unknown, allowed, self._param_noun))

    @property
    def _param_noun(self) -> str:
        return f"{self.name.removeprefix('bubblefence_')} parameter"  # "split parameter"


def _follow_sidebar_filters(ctx: ExecutionContext) -> None:
    """Makes the context's current view, and the targets drawn from it (current view,
    selected samples), the view the App's grid shows where a saved view has sidebar
    filters on top, which FiftyOne's `ExecutionContext.view` leaves out
    (`app_view`). FiftyOne keeps the view it builds in ``_view``; there is no
    public way to give a context its view."""
    params = ctx.request_params
    if params.get("view_name") and params.get("filters") and ctx.dataset is not None:
        ctx._view = app_view(ctx.dataset, params)  # noqa: SLF001


def _name_the_choices(inputs: types.Object, params: Mapping[str, Any]) -> None:
    """Flags a value given for a dropdown that is none of its choices with the choices:
    FiftyOne's own check says only "Invalid enum value" (a field name misspelt from
    Python, a field deleted since the form was filled)."""
    for name, prop in inputs.properties.items():
        value = params.get(name)
        if not isinstance(prop.type, types.Enum) or value is None or prop.invalid:
            continue
        choices = list(prop.type.values)
        if value not in choices:
            allowed = ", ".join(map(repr, choices)) if choices else "none on this dataset"
            prop.invalid = True
            prop.error_message = f"{name}={value!r} is not one of the choices: {allowed}"
