"""Helpers shared by the operators (same role as the brain plugin's module-level helpers)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from bubblefence_plugin.text import escape_markdown


def sdk_context(sample_collection: Any) -> dict[str, Any]:
    """Execution context for `execute_operator` from a dataset or a view (io plugin style)."""
    if isinstance(sample_collection, fo.DatasetView):
        return {"view": sample_collection}
    return {"dataset": sample_collection}


def run_sdk(
    operator: foo.Operator, sample_collection: Any, params: dict[str, Any], delegate: bool
) -> Any:
    ctx = sdk_context(sample_collection)
    return foo.execute_operator(operator.uri, ctx, params=params, request_delegation=delegate)


def to_path(path: Any) -> dict[str, str] | None:
    """A path as the App's FileExplorerView sends it."""
    if path is None:
        return None
    return {"absolute_path": os.path.abspath(os.path.expanduser(os.fspath(path)))}


def parse_path(ctx: Any, name: str) -> str | None:
    """Reads a path param sent by the App (``{"absolute_path": ...}``) or from Python (str)."""
    value = ctx.params.get(name)
    if isinstance(value, dict):
        value = value.get("absolute_path") or value.get("path")
    if not value:
        return None
    return os.path.abspath(os.path.expanduser(str(value)))


def refuse_unknown_params(ctx: Any, inputs: types.Property, extra: Iterable[str] = ()) -> None:
    """Refuses, by name, parameters that neither the form nor ``extra`` takes: a typo such
    as ``eval_ration`` must not run silently with the default."""
    known = set(inputs.type.properties) | set(extra)
    unknown = sorted(k for k, v in ctx.params.items() if k not in known and v is not None)
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; this operator takes {sorted(known)}")


def summary_lines(summary: dict[str, Any]) -> str:
    """Markdown for an operator's output view (user strings escaped)."""
    lines = [f"**{escape_markdown(summary.get('message', ''))}**", ""]
    for key, label in (
        ("counts_round", "This round"),
        ("counts_total", "All rounds"),
    ):
        counts = summary.get(key)
        if counts:
            parts = ", ".join(f"{k} {v}" for k, v in counts.items())
            lines.append(f"- {label}: {parts}")
    for key, label in (
        ("eval_share", "Eval share"),
        ("new_anchors", "New bubbles"),
        ("n_anchors", "Bubbles in all"),
        ("n_embedded", "Images embedded"),
        ("n_errors", "Samples with errors"),
        ("n_forgotten", "Deleted samples dropped from the state"),
    ):
        if key in summary:
            lines.append(f"- {label}: {summary[key]}")
    lines += label_group_lines(summary)
    return "\n".join(lines)


def label_group_lines(summary: dict[str, Any]) -> list[str]:
    """Markdown bullets: label coverage and shares, group violations (when given)."""
    lines = []
    labels = summary.get("labels")
    if labels:
        covered = labels["covered"]
        lines.append(
            f"- Labels with >= {labels['min_label_count']} samples: {labels['n_eligible']}; "
            f"in eval {covered['eval']}, validation {covered['validation']}, "
            f"test {covered['test']}"
        )
        lines.append(
            f"- Per-label eval share error: max {labels['share_error_max']}, "
            f"mean {labels['share_error_mean']}"
        )
        shares = ", ".join(
            f"{escape_markdown(k)} {v:.3f}" for k, v in labels["eval_shares"].items()
        )
        if shares:
            lines.append(f"- Eval share per label (rarest first): {shares}")
    groups = summary.get("groups")
    if groups:
        lines.append(f"- Groups: {groups['n_groups']}, violations {groups['violations']}")
    return lines
