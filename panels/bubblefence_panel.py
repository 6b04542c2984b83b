"""`bubblefence_panel` ("BubbleFence"): the 2-D map of the split, its bubbles and its figures.

Thin on purpose: the figure and the counts come from `bubblefence_plugin.fo.map`; this
module turns App events into calls of it and into App operations (set the view, select
samples, open the operators' forms).
"""

from __future__ import annotations

import logging
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone import ViewField as F

import bubblefence_plugin.fo as bfo
from bubblefence_plugin.core.layout import available_methods
from bubblefence_plugin.text import escape_markdown

logger = logging.getLogger(__name__)

INTRO = (
    "### BubbleFence\n"
    "This dataset has no BubbleFence split yet. BubbleFence holds out whole regions "
    "(*bubbles*) of embedding space for validation and test, so near-duplicates never "
    "straddle the train/eval line. Run **BubbleFence split** to create the bubbles; this "
    "panel then shows them on a 2-D map of the embeddings, with the counts per split "
    "and round."
)
NO_MAP = (
    "The split exists but its 2-D map does not (it was split before the map existed, "
    "or the map's runs were deleted). Compute it from the stored embeddings:"
)
MAP_HELP = (
    "Click a bubble centre or a point to show that bubble's samples in the grid; lasso "
    "points to select them; **Reset view** shows everything again. **Exclude** tags the "
    "selected samples (else the clicked point) `excluded`: they leave their split and "
    "later splits; **Include again** undoes it."
)


class BubbleFencePanel(foo.Panel):
    @property
    def config(self) -> foo.PanelConfig:
        return foo.PanelConfig(
            name="bubblefence_panel",
            label="BubbleFence",
            icon="bubble_chart",
            help_markdown="The BubbleFence split on a 2-D map: bubbles, counts, audit figures",
        )

    # -- hydration ------------------------------------------------------------------

    def on_load(self, ctx: Any) -> None:
        self._hydrate(ctx)

    def on_change_view(self, ctx: Any) -> None:
        self._hydrate(ctx)

    def on_change_dataset(self, ctx: Any) -> None:
        self._hydrate(ctx)

    def refresh(self, ctx: Any) -> None:
        self._hydrate(ctx)

    def _hydrate(self, ctx: Any, samples: Any = None) -> None:
        samples = ctx.view if samples is None else samples
        # The App copies the plot's data into the panel state and deep-merges new data
        # over that copy index by index, so a shorter new trace would keep the old one's
        # tail. Dropping the copy first makes the new data replace it.
        ctx.panel.state.plot = None
        summary = bfo.map_summary(samples)
        ctx.panel.state.has_state = summary is not None
        if summary is None:
            ctx.panel.state.has_map = False
            ctx.panel.data.plot = []
            return
        try:
            figure = bfo.map_figure(samples, ctx.panel.state.color_by or "split")
        except ValueError as e:  # e.g. a run of the same name not written by BubbleFence
            figure = None
            ctx.panel.state.map_error = f"The map cannot be drawn: {escape_markdown(e)}"
        else:
            ctx.panel.state.map_error = None
        ctx.panel.state.has_map = figure is not None
        ctx.panel.data.plot = figure["data"] if figure else []
        ctx.panel.state.plot_layout = figure["layout"] if figure else None
        ctx.panel.state.map_note = _map_note(figure["stats"]) if figure else NO_MAP
        ctx.panel.state.summary_md = _summary_markdown(summary)
        ctx.panel.state.audit_md = _audit_markdown(ctx.dataset)

    # -- events ---------------------------------------------------------------------

    def on_color_by(self, ctx: Any) -> None:
        ctx.panel.state.color_by = ctx.params.get("value") or "split"
        self._hydrate(ctx)

    def on_click(self, ctx: Any) -> None:
        """A bubble centre or a point in a bubble: the grid shows that bubble's samples."""
        clicked = ctx.params.get("id")
        if not clicked:
            return
        if ctx.params.get("trace") == bfo.BUBBLES_TRACE:
            anchor = int(clicked)
        else:
            ctx.panel.state.clicked_id = clicked  # what Exclude acts on without a selection
            found = ctx.dataset.select([clicked]).values(bfo.ANCHOR_FIELD)
            anchor = found[0] if found else None
        if anchor is None:  # a train point: show it alone
            ctx.ops.set_view(ctx.dataset.select([clicked]))
        else:
            ctx.ops.set_view(bubble_view(ctx.dataset, anchor))

    def on_lasso(self, ctx: Any) -> None:
        ids = [
            p["id"]
            for p in ctx.params.get("data") or []
            if p.get("id") and p.get("trace") != bfo.BUBBLES_TRACE
        ]
        # The plot re-renders after a lasso and reports an empty selection then: keeping
        # the selection lets Exclude act on it (Reset view clears it).
        if ids:
            ctx.ops.set_selected_samples(ids)

    def exclude(self, ctx: Any) -> None:
        """Tags the selected samples (else the clicked point) `excluded`, with the reason."""
        ids = self._acted_on(ctx)
        if not ids:
            return
        reason = ctx.panel.state.get("curation.exclusion_reason") or None
        try:
            result = bfo.exclude(ctx.dataset.select(ids), reason=reason)
        except (ValueError, bfo.BubbleFenceBusyError) as e:
            ctx.ops.notify(str(e), variant="error")
            return
        ctx.ops.notify(
            f"{result['message']}; {result['n_excluded_total']} excluded in all", variant="success"
        )
        ctx.ops.reload_dataset()
        self._hydrate(ctx)

    def include_again(self, ctx: Any) -> None:
        """Removes `excluded` from the selected samples (else the clicked point)."""
        ids = self._acted_on(ctx)
        if not ids:
            return
        try:
            result = bfo.include_again(ctx.dataset.select(ids))
        except (ValueError, bfo.BubbleFenceBusyError) as e:
            ctx.ops.notify(str(e), variant="error")
            return
        ctx.ops.notify(result["message"], variant="success")
        ctx.ops.reload_dataset()
        self._hydrate(ctx)

    def _acted_on(self, ctx: Any) -> list[str]:
        ids = list(ctx.selected or [])
        if not ids and ctx.panel.state.clicked_id:
            ids = [ctx.panel.state.clicked_id]
        if not ids:
            ctx.ops.notify(
                "Lasso points on the map (or select samples in the grid), or click a point first",
                variant="warning",
            )
        return ids

    def run_split(self, ctx: Any) -> None:
        """The split operator's form; the panel re-hydrates when the round is done."""
        ctx.prompt(f"{self.plugin_name}/bubblefence_split", on_success=self.refresh)

    def reset_view(self, ctx: Any) -> None:
        ctx.panel.state.clicked_id = None
        ctx.ops.clear_selected_samples()
        ctx.ops.clear_view()
        self._hydrate(ctx, ctx.dataset)

    def build_map(self, ctx: Any) -> None:
        self._build(ctx, None)

    def refit_map(self, ctx: Any) -> None:
        method = ctx.panel.state.get("map_settings.layout_method") or bfo.DEFAULT_METHOD
        self._build(ctx, method)

    def _build(self, ctx: Any, method: str | None) -> None:
        try:
            result = bfo.build_map(ctx.dataset, method)
        except (ValueError, bfo.BubbleFenceBusyError) as e:
            ctx.ops.notify(str(e), variant="error")
            return
        if not result["n_points"]:
            ctx.ops.notify("No split sample is left to draw", variant="warning")
        else:
            ctx.ops.notify(
                f"Map {'refitted' if result['refitted'] else 'updated'} "
                f"({result['method'].upper()}, {result['n_points']} points)",
                variant="success",
            )
        self._hydrate(ctx)

    # -- layout ---------------------------------------------------------------------

    def render(self, ctx: Any) -> types.Property:
        panel = types.Object()
        state = ctx.panel.state
        if not state.has_state:
            self._render_intro(panel)
        else:
            self._render_actions(panel)
            if state.has_map:
                self._render_map(panel, state)
            else:
                panel.md(state.map_error or NO_MAP, name="no_map")
                panel.btn("build_map", label="Compute the map", on_click=self.build_map)
            panel.md(state.summary_md or "", name="summary")
            if state.audit_md:
                panel.md(state.audit_md, name="audit")
            self._render_map_settings(panel)
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2))

    def _render_intro(self, panel: types.Object) -> None:
        panel.md(INTRO, name="intro")
        self._add_run_split_button(panel, "Run BubbleFence split")

    def _render_actions(self, panel: types.Object) -> None:
        actions = panel.h_stack("actions", align_x="left", gap=1)
        self._add_run_split_button(actions, "Run split")
        actions.btn(
            "export",
            label="Export",
            icon="download",
            variant="outlined",
            on_click=f"{self.plugin_name}/bubblefence_export",
            prompt=True,
        )
        actions.btn("reset_view", label="Reset view", icon="restart_alt", on_click=self.reset_view)
        actions.btn("refresh", label="Refresh", icon="refresh", on_click=self.refresh)

    def _add_run_split_button(self, container: types.Object, label: str) -> None:
        container.btn(
            "run_split",
            label=label,
            icon="bubble_chart",
            variant="contained",
            on_click=self.run_split,
        )

    def _render_map(self, panel: types.Object, state: Any) -> None:
        """The colour choice, the plot, and the exclusion controls acting on it."""
        colors = types.RadioGroup(orientation="horizontal")
        colors.add_choice("split", label="Split")
        colors.add_choice("round", label="Ingestion round")
        colors.add_choice("typicality", label="Typicality")
        colors.add_choice("region", label="Region")
        panel.enum(
            "color_by",
            colors.values(),
            default="split",
            label="Colour points by",
            view=colors,
            on_change=self.on_color_by,
        )
        # A name of its own: a property named like a state key would show that value.
        panel.md(f"{state.map_note}\n\n{MAP_HELP}", name="note")
        panel.plot(
            "plot",
            layout=state.plot_layout,
            config={"scrollZoom": True, "displaylogo": False},
            on_click=self.on_click,
            on_selected=self.on_lasso,
            height=520,
        )
        curation = panel.h_stack("curation", align_x="left", align_y="center", gap=1)
        curation.str(
            "exclusion_reason",
            label="Reason (optional)",
            description=f"Stored in {bfo.REASON_FIELD}",
        )
        curation.btn(
            "exclude", label="Exclude", icon="block", variant="outlined", on_click=self.exclude
        )
        curation.btn(
            "include_again", label="Include again", icon="undo", on_click=self.include_again
        )

    def _render_map_settings(self, panel: types.Object) -> None:
        methods = types.Dropdown()
        for method in available_methods():
            methods.add_choice(method, label=method.upper())
        settings = panel.h_stack("map_settings", align_x="left", align_y="center", gap=1)
        settings.enum(
            "layout_method",
            methods.values(),
            default=bfo.DEFAULT_METHOD,
            label="Map method",
            view=methods,
        )
        settings.btn(
            "update_map",
            label="Update the map",
            icon="add_location_alt",
            on_click=self.build_map,
        )
        settings.btn(
            "refit_map",
            label="Refit the map (moves every point)",
            icon="scatter_plot",
            on_click=self.refit_map,
        )


def bubble_view(dataset: Any, anchor_id: int) -> Any:
    """The samples of one bubble (its validation and test members)."""
    return dataset.match(F(bfo.ANCHOR_FIELD) == int(anchor_id))


def _map_note(stats: dict[str, Any]) -> str:
    if stats["subsampled"]:
        drawn = (
            f"Drawing a seeded random subsample of **{stats['n_drawn']:,}** of the "
            f"{stats['n_view']:,} samples in the view (counts below use all of them)."
        )
    else:
        drawn = f"Drawing all **{stats['n_drawn']:,}** split samples in the view."
    plural = "" if stats["n_bubbles"] == 1 else "s"
    note = f"{drawn} Map: {stats['method'].upper()}; {stats['n_bubbles']} bubble{plural}."
    if stats["n_unplaced"]:
        note += (
            f" **{stats['n_unplaced']:,}** split samples"
            + (" of the subsample" if stats["subsampled"] else "")
            + " have no point yet: **Update the map** places them."
        )
    hidden = stats["n_bubbles"] - stats["n_bubbles_as_shapes"]
    if hidden:
        note += (
            f" The {stats['n_bubbles_as_shapes']} largest have both shells drawn; the "
            f"other {hidden} only their outline."
        )
    return note


def _summary_markdown(summary: dict[str, Any]) -> str:
    splits = bfo.SPLIT_VALUES
    lines = [
        "#### Counts in the view",
        "",
        "| round | " + " | ".join(splits) + " | total |",
        "|---|" + "---:|" * (len(splits) + 1),
    ]
    for rnd, counts in summary["by_round"].items():
        row = [counts.get(s, 0) for s in splits]
        lines.append(f"| {rnd} | " + " | ".join(f"{n:,}" for n in row) + f" | {sum(row):,} |")
    totals = [summary["totals"][s] for s in splits]
    lines.append(
        "| **all** | " + " | ".join(f"**{n:,}**" for n in totals) + f" | **{sum(totals):,}** |"
    )
    lines.append("")
    lines.append(
        f"Eval share **{summary['eval_share']:.3f}** (target {_fmt(summary['eval_target'])}); "
        f"validation share of eval **{summary['validation_share']:.3f}** "
        f"(target {_fmt(summary['validation_target'])})."
    )
    bubbles = f"Bubbles: **{summary['n_bubbles_in_view']}** in the view"
    if summary["n_bubbles"] is not None:
        bubbles += f", {summary['n_bubbles']} in all"
    lines.append("")
    lines.append(
        f"{bubbles}. Excluded: {summary['n_excluded']:,}. Not split yet: "
        f"{summary['n_not_split']:,}."
    )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "?" if value is None else f"{float(value):.2f}"


# --------------------------------------------------------------------------- audit

# The measures of the latest audit the panel shows beside the map (`summary_rows` keys).
AUDIT_ROWS = ("leakage_", "similarity_", "diversity")


def _audit_markdown(dataset: Any) -> str | None:
    """Leakage and diversity rows of the latest stored audit report, if there is one."""
    try:
        report = bfo.latest_report(dataset)
        if not report:
            return None
        rows = [r for r in bfo.summary_rows(report) if r["key"].startswith(AUDIT_ROWS)]
    except Exception as e:  # a broken report must not take the map down with it
        logger.exception("BubbleFence panel: could not read the audit report")
        return f"#### Audit\nThe latest audit report could not be read: {escape_markdown(e)}"
    source = escape_markdown(report.get("source"))  # a field name: the user's
    lines = [
        f"#### Audit of {report.get('created_at', '?')} (split source {source})",
        "",
        "| measure | this split | random split |",
        "|---|---|---|",
    ]
    lines += [f"| {r['metric']} | {r['split']} | {r['baseline']} |" for r in rows]
    return "\n".join(lines)
