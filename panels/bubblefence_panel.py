"""`bubblefence_panel` ("BubbleFence"): the 2-D map of the split, its bubbles and its figures.

Thin on purpose: the figure and the counts come from `bubblefence_plugin.fo.map`; this
module turns App events into calls of it and into App operations (show or select
samples, open the operators' forms).

Events stay small and cheap on large datasets, because the App answers every change of
a panel's state by saving its spaces and reloading its dataset page (seconds at 30,000
samples, and the reload drops the App's extended selection). So the panel renders from
what this server last drew there (`Shown`, kept per panel), not from its state, which
holds only the App's own input (the exclusion reason): a redraw, a recolour, a bubble
click, an exclusion change nothing the App saves. A server without that record (it
restarted) draws again before it answers (`BubbleFencePanel.execute`).
The figure (at most `map.MAX_POINTS` points) is sent when the view, the split or the
colouring changes, each time to a plot of its own (`_draw`), so the App never copies
it into the panel state, which it sends with every event and view change; a lasso
sends no figure, and the App's repeated view-change events for a view already drawn
get no answer. A bubble click changes neither the App's view nor the panel: the grid
shows the bubble's samples as the App's extended selection (as FiftyOne's Embeddings
panel shows its lasso), and the map stays that of the App's view (`drawn_view`).
The colour choice is a row of buttons (the active one filled), not a form input: a
button sends one event with the choice, while an input's change first copies the
whole form, plot included, into the panel state and sends that along.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone import ViewField as F
from fiftyone.operators.constants import ViewTarget

import bubblefence_plugin.fo as bfo
from bubblefence_plugin.core.config import KNOBS
from bubblefence_plugin.core.layout import METHOD_LABELS, available_methods
from bubblefence_plugin.fo import map as bfmap
from bubblefence_plugin.text import audited_text, escape_markdown, toast

logger = logging.getLogger(__name__)

INTRO = (
    "**BubbleFence**\n\n"
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
LEGEND_HELP = (
    "A **solid** outline holds a whole bubble (its held-out samples) and has the colour "
    "of its outer ring's split; a **dotted** one holds its inner shell, in that shell's "
    "split colour; ◎ marks the bubble's centre."
)
MAP_HELP = (
    "Click a centre or a point to show that bubble's samples in the grid; lasso "
    "points to select them; **Reset view** shows everything again. **Exclude** tags the "
    "selected samples (else the clicked point) `excluded`: they leave their split and "
    "later splits; **Include again** returns them to the next split, which assigns them as "
    "new samples."
)
COLOR_LABELS = {"split": "Split", "round": "Round", "typicality": "Typicality", "region": "Region"}
SELECTION_SCOPE = "bubblefence"  # names the extended selection's owner in the App
PLOT = "plot"  # the prefix of the plot's key in the panel's data (`_draw`)


class BubbleFencePanel(foo.Panel):
    @property
    def config(self) -> foo.PanelConfig:
        return foo.PanelConfig(
            name="bubblefence_panel",
            label="BubbleFence",
            icon="bubble_chart",
            help_markdown="The BubbleFence split on a 2-D map: bubbles, counts, audit figures",
        )

    def execute(self, ctx: Any) -> Any:
        """FiftyOne's event dispatch, with three savings on the App's traffic, and a
        draw first where this server has no record of the panel (`Shown`).

        A view-change event for the view already drawn gets no answer: the App sends
        that event three times per change, and again after a re-render of the panel
        (seen in the browser), so answering it, if only with a re-render, would start
        the next round. An empty lasso gets none either: the plot reports one after
        every click and after its own re-render. And when the App has copied the plot
        into the panel state, the copy is dropped, as every later event would carry it.

        Args:
            ctx: the execution context
        """
        _forget_plot_copy(ctx)
        method = ctx.params.get("__method__")
        if method == "on_change_view" and _draws(ctx, drawn_view(ctx)):
            return None
        if method == "on_lasso" and not _lassoed_ids(ctx):
            return None
        if ctx.panel.id not in _SHOWN and method not in DRAWING_EVENTS:
            self._hydrate(ctx)
        elif method in UNSEEN_EVENTS:
            return getattr(self, method)(ctx)  # nothing the panel shows changed
        return super().execute(ctx)

    def on_unload(self, ctx: Any) -> None:
        _SHOWN.pop(ctx.panel.id, None)
        _CLICKED_POINTS.pop(ctx.panel.id, None)

    # -- hydration ------------------------------------------------------------------

    def on_load(self, ctx: Any) -> None:
        self._hydrate(ctx)

    def on_change_view(self, ctx: Any) -> None:
        self._hydrate(ctx)

    def on_change_dataset(self, ctx: Any) -> None:
        self._hydrate(ctx)

    def refresh(self, ctx: Any) -> None:
        self._hydrate(ctx)

    def after_split(self, ctx: Any) -> None:
        """A round ended: its counts, its points, and its split colours in the App."""
        ctx.trigger("set_color_scheme", bfmap.color_scheme_params(ctx.dataset))
        self._hydrate(ctx)

    def _hydrate(
        self, ctx: Any, samples: Any = None, drawn: bfmap.DrawnPoints | None = None
    ) -> None:
        """Draws the figure and the figures for ``samples`` (default: `drawn_view`);
        the points ``drawn`` if given (`_points_after`), else those it reads."""
        samples = drawn_view(ctx) if samples is None else samples
        shown = Shown(view_key=bfmap.view_key(samples), color_by=_shown(ctx).color_by, drawn=drawn)
        summary = bfo.map_summary(samples)
        if summary is not None:
            shown.has_state = True
            shown.n_not_split = summary["n_not_split"]
            shown.n_failed = summary["n_failed"]
            shown.summary_md = _summary_markdown(summary)
            shown.audit_md = _audit_markdown(ctx.dataset, summary["split_updated_at"])
        self._draw_map(ctx, samples, shown)

    def _draw_map(self, ctx: Any, samples: Any, shown: Shown) -> None:
        """Draws the map of ``samples`` in ``shown.color_by``, and records ``shown``;
        the points of ``shown.drawn`` if it has them (a recolour)."""
        figure, shown.map_error = None, None
        if shown.has_state:
            try:
                figure = bfo.map_figure(samples, shown.color_by, drawn=shown.drawn)
            except ValueError as e:  # e.g. a run of that name not written by BubbleFence
                shown.map_error = f"The map cannot be drawn: {escape_markdown(e)}"
        shown.has_map = figure is not None
        shown.drawn = figure["drawn"] if figure else None
        if figure is not None:
            shown.plot_layout = figure["layout"]
            shown.map_method = figure["stats"]["method"]
            shown.map_note = _map_note(figure["stats"])
        _draw(ctx, figure["data"] if figure else [], shown)

    # -- events ---------------------------------------------------------------------

    def on_color_by(self, ctx: Any) -> None:
        """Redraws the map in the chosen colours, in a new plot (`_draw`), with the
        points already drawn when the view is the one drawn.

        Patching the drawn plot's colours would send less and keep its zoom, but the
        App then copies the whole figure into the panel state and sends it with every
        later event and view change: at 30,000 samples that cost seconds per recolour
        in the browser, the new plot a fraction of one.
        """
        samples = drawn_view(ctx)
        shown = replace(_shown(ctx), color_by=ctx.params.get("value") or "split")
        if not _draws(ctx, samples):
            shown.drawn = None
        self._draw_map(ctx, samples, shown)

    def on_click(self, ctx: Any) -> None:
        """A bubble centre or a point in a bubble: the grid shows that bubble's samples
        (a train point: that sample alone), as the App's extended selection.

        Nothing else changes, the panel's state included (see the module's note): the
        clicked point, what Exclude acts on without a selection, is kept here.
        """
        clicked = ctx.params.get("id")
        if not clicked:
            return
        if not ctx.dataset.has_field(bfo.ANCHOR_FIELD):
            # A map drawn before the split was reset (elsewhere): said, and drawn anew.
            ctx.ops.notify("This dataset has no BubbleFence split any more", variant="warning")
            self._hydrate(ctx)
            return
        if ctx.params.get("trace") == bfo.BUBBLES_TRACE:
            anchor = int(clicked)
        else:
            _CLICKED_POINTS[ctx.panel.id] = clicked
            found = ctx.dataset.select([clicked]).values(bfo.ANCHOR_FIELD)
            anchor = found[0] if found else None
        ids = [clicked] if anchor is None else bubble_view(ctx.dataset, anchor).values("id")
        ctx.ops.set_extended_selection(selection=ids, scope=SELECTION_SCOPE)

    def on_lasso(self, ctx: Any) -> None:
        # Empty selections never get here (`execute`): the App's selection is kept, so
        # Exclude acts on it (Reset view clears it). A bubble click's extended selection
        # goes: the grid showed that bubble while the lasso selected other samples.
        ctx.ops.set_extended_selection(clear=True)
        ctx.ops.set_selected_samples(_lassoed_ids(ctx))

    def exclude(self, ctx: Any) -> None:
        """Tags the selected samples (else the clicked point) `excluded`, with the reason."""
        ids = self._acted_on(ctx)
        if not ids:
            return
        reason = ctx.panel.state.get("curation.exclusion_reason") or None
        points_after = _points_after(ctx, ids)
        try:
            result = bfo.exclude(ctx.dataset.select(ids), reason=reason)
        except (ValueError, bfo.BubbleFenceBusyError) as e:
            ctx.ops.notify(toast(str(e)), variant="error")
            return
        message = f"{result['message']}; {result['n_excluded_total']} excluded in all"
        ctx.ops.notify(toast(message), variant="success")
        _show_new_tags(ctx)
        self._hydrate(ctx, drawn=points_after(result["left_ids"]))

    def include_again(self, ctx: Any) -> None:
        """Removes `excluded` from the selected samples (else the clicked point)."""
        ids = self._acted_on(ctx)
        if not ids:
            return
        points_after = _points_after(ctx, ids)
        try:
            result = bfo.include_again(ctx.dataset.select(ids))
        except (ValueError, bfo.BubbleFenceBusyError) as e:
            ctx.ops.notify(toast(str(e)), variant="error")
            return
        ctx.ops.notify(toast(result["message"]), variant="success")
        _show_new_tags(ctx)
        self._hydrate(ctx, drawn=points_after(result["left_ids"]))

    def _acted_on(self, ctx: Any) -> list[str]:
        ids = list(ctx.selected or [])
        if not ids and ctx.panel.id in _CLICKED_POINTS:
            ids = [_CLICKED_POINTS[ctx.panel.id]]
        if not ids:
            ctx.ops.notify(
                "Lasso points on the map (or select samples in the grid), or click a point first",
                variant="warning",
            )
        return ids

    def run_split(self, ctx: Any) -> None:
        """The split operator's form, on the view the panel counts (`_target_params`); the
        panel re-hydrates when the round is done."""
        ctx.prompt(
            f"{self.plugin_name}/bubblefence_split",
            params=_target_params(ctx),
            on_success=self.after_split,
        )

    def export(self, ctx: Any) -> None:
        """The export operator's form, on the view the panel counts (`_target_params`)."""
        ctx.prompt(f"{self.plugin_name}/bubblefence_export", params=_target_params(ctx))

    def reset_view(self, ctx: Any) -> None:
        """Shows every sample again: clears the bubble shown, the selection, and the
        App's view if it has one; the map is redrawn only if it showed less."""
        _CLICKED_POINTS.pop(ctx.panel.id, None)
        ctx.ops.set_extended_selection(clear=True)
        ctx.ops.clear_selected_samples()
        if ctx.request_params.get("view") or ctx.request_params.get("view_name"):
            ctx.ops.clear_view()
        if not _draws(ctx, ctx.dataset):
            self._hydrate(ctx, ctx.dataset)

    def build_map(self, ctx: Any) -> None:
        self._build(ctx, None)

    def refit_map(self, ctx: Any) -> None:
        self._build(ctx, ctx.params.get("method") or bfmap.DEFAULT_METHOD)

    def _build(self, ctx: Any, method: str | None) -> None:
        try:
            result = bfo.build_map(ctx.dataset, method)
        except (ValueError, bfo.BubbleFenceBusyError) as e:
            ctx.ops.notify(toast(str(e)), variant="error")
            return
        if not result["n_points"]:
            ctx.ops.notify("No split sample is left to draw", variant="warning")
        else:
            ctx.ops.notify(
                f"Map {'refitted' if result['refitted'] else 'updated'} "
                f"({METHOD_LABELS[result['method']]}, {result['n_points']:,} points)",
                variant="success",
            )
        ctx.trigger("set_color_scheme", bfmap.color_scheme_params(ctx.dataset))
        self._hydrate(ctx)

    # -- layout ---------------------------------------------------------------------

    def render(self, ctx: Any) -> types.Property:
        panel = types.Object()
        shown = _shown(ctx)
        if not shown.has_state:
            self._render_intro(panel)
        else:
            if shown.n_not_split:  # first thing in sight: the split is incomplete
                panel.md(
                    f"**{shown.n_not_split:,} samples not split yet** — **Run split** "
                    "assigns them.",
                    name="not_split",
                )
            if shown.n_failed:
                panel.md(
                    f"{shown.n_failed:,} samples failed: their `{bfo.ERROR_FIELD}` field "
                    "says why, and every run tries them again.",
                    name="failed",
                )
            self._render_actions(panel)
            if shown.has_map:
                self._render_map(panel, shown)
            else:
                panel.md(shown.map_error or NO_MAP, name="no_map")
                panel.btn("build_map", label="Compute the map", on_click=self.build_map)
            panel.md(shown.summary_md, name="summary")
            if shown.audit_md:
                panel.md(shown.audit_md, name="audit")
            self._render_map_settings(panel, shown)
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=1))

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
            on_click=self.export,
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

    def _render_map(self, panel: types.Object, shown: Shown) -> None:
        """The colour choice, the exclusion controls, and the plot they act on."""
        colors = panel.h_stack("color_choice", align_x="left", align_y="center", gap=1)
        colors.md("Colour points by", name="color_choice_label")
        for mode, label in COLOR_LABELS.items():
            colors.btn(
                f"color_{mode}",
                label=label,
                variant="contained" if mode == shown.color_by else "outlined",
                on_click=self.on_color_by,
                params={"value": mode},
            )
        # Above the plot: the App focuses the panel's first text input when it opens,
        # and scrolls the panel to it.
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
        # A name of its own: a property named like a state key would show that value.
        panel.md(f"{shown.map_note}\n\n{MAP_HELP}", name="note")
        panel.plot(
            shown.plot_key,
            layout=shown.plot_layout,
            # The mouse wheel scrolls the panel; the toolbar's zoom buttons zoom.
            config={"scrollZoom": False, "displaylogo": False},
            on_click=self.on_click,
            on_selected=self.on_lasso,
            # Not the view's height=480: FiftyOne then sized the plot's grid item to the
            # whole panel, a band of ~400 px under the map. The plot box's inline height
            # wins over its own sx height of 100%, and the item follows it.
            componentsProps={"container": {"style": {"height": "480px"}}},
        )

    def _render_map_settings(self, panel: types.Object, shown: Shown) -> None:
        settings = panel.h_stack("map_settings", align_x="left", align_y="center", gap=1)
        settings.btn(
            "update_map",
            label="Update the map",
            icon="add_location_alt",
            on_click=self.build_map,
        )
        for method in available_methods():
            if method == shown.map_method:
                continue
            settings.btn(
                f"refit_{method}",
                label=f"Redraw as {METHOD_LABELS[method]} (moves every point)",
                icon="scatter_plot",
                on_click=self.refit_map,
                params={"method": method},
            )


def bubble_view(dataset: Any, anchor_id: int) -> Any:
    """The samples of one bubble (its validation and test members).

    Args:
        dataset: the dataset
        anchor_id: the bubble's anchor id
    """
    return dataset.match(F(bfo.ANCHOR_FIELD) == int(anchor_id))


def drawn_view(ctx: Any) -> Any:
    """What the panel draws and counts: the App's view without its extended selection
    (a bubble click's, or a lasso's in FiftyOne's Embeddings panel), which the grid
    shows within this map (see the module's note).

    Args:
        ctx: the execution context
    """
    params = ctx.request_params
    if not params.get("extended") and not (params.get("view_name") and params.get("filters")):
        return ctx.view
    return bfo.app_view(ctx.dataset, params)


def _target_params(ctx: Any) -> dict[str, Any]:
    """The target of an operator the panel opens: the view it counts (`drawn_view`), not
    the selection a lasso left (only those samples were split, the new ones left out;
    after an Exclude, the export's target was the samples just excluded). A sidebar
    filter is part of that view: with one alone, the whole dataset was split (both found
    by testers in the App)."""
    has_view = any(ctx.request_params.get(k) for k in ("view", "view_name", "filters"))
    return {"view_target": ViewTarget.CURRENT_VIEW if has_view else ViewTarget.DATASET}


# Panel id -> the sample id of the point last clicked there, what Exclude and Include
# again act on without a selection. Not in the panel state, whose every change makes the
# App reload its dataset page, which drops the bubble the click shows.
_CLICKED_POINTS: dict[str, str] = {}


@dataclass
class Shown:
    """What a panel shows, as this server last drew it there (the module's note)."""

    view_key: str | None = None  # `map.view_key` of the samples drawn
    has_state: bool = False  # whether they have a split to show
    n_not_split: int = 0
    n_failed: int = 0  # not split: their media or embedding failed
    summary_md: str = ""
    audit_md: str | None = None
    has_map: bool = False
    map_error: str | None = None
    map_method: str | None = None
    map_note: str = NO_MAP
    plot_key: str | None = None  # the figure's key in the panel data
    plot_layout: dict[str, Any] | None = None
    color_by: str = "split"
    drawn: bfmap.DrawnPoints | None = None  # the points drawn, for a recolour


# Panel id -> what this server last drew there.
_SHOWN: dict[str, Shown] = {}

# The events that draw the panel anyway: the others draw first where `_SHOWN` has no
# record of the panel.
DRAWING_EVENTS = ("on_load", "on_change_view", "on_change_dataset", "refresh", "after_split")


# Events that change nothing the panel shows: no re-render follows them (the App would
# re-render the plot, 5,000 WebGL points, for nothing).
UNSEEN_EVENTS = ("on_click", "on_lasso")


def _shown(ctx: Any) -> Shown:
    return _SHOWN.get(ctx.panel.id) or Shown()


def _draws(ctx: Any, samples: Any) -> bool:
    """Whether the panel already shows the map and counts of ``samples``."""
    return bfmap.view_key(samples) == _shown(ctx).view_key


def _draw(ctx: Any, traces: list[dict[str, Any]], shown: Shown) -> None:
    """Sets the figure under a new key in the panel data, empties the old one, and
    records ``shown`` with that key as what the panel shows.

    The App copies a plot's data into the panel state whenever that data changes
    under a mounted plot (its form re-initialises every input whose value changed
    since the previous render, and a plot counts as one), then sends the state,
    figure included, with every event and view change, and stores it with the App's
    spaces: 1.2 MB at 30,000 samples. A plot mounted with its data has nothing to
    copy, so each figure gets a key, and a plot, of its own.

    That key is also the figure's ``datarevision``. The App renders the panel again
    when an event starts and when it ends, each time with fresh copies of the
    figure's arrays, which Plotly takes for new data unless the data revision says
    otherwise: it redrew all the points twice per event (0.3 s and more of software
    WebGL each at 30,000 samples, seen in the browser). A figure never changes under
    its key, so with its key as revision those renders redraw nothing.
    """
    old = _shown(ctx).plot_key
    if old:
        ctx.panel.data.set(old, None)
    shown.plot_key = f"{PLOT}_{uuid.uuid4().hex[:8]}"
    if shown.plot_layout is not None:
        shown.plot_layout = {**shown.plot_layout, "datarevision": shown.plot_key}
    ctx.panel.data.set(shown.plot_key, traces)
    _SHOWN[ctx.panel.id] = shown


def _points_after(ctx: Any, ids: list[str]) -> Callable[[list[str]], bfmap.DrawnPoints | None]:
    """Called before samples ``ids`` are excluded or included again: a function that,
    called after with the samples that left the split on the side (`map.recategorized`'s
    ``also``), gives the points the panel drew updated for the change, rather than read
    from every sample of the view again; None where the panel shows another view or no
    map (it then draws anew)."""
    samples, drawn = drawn_view(ctx), _shown(ctx).drawn
    if drawn is None or not _draws(ctx, samples):
        return lambda also: None
    before = bfmap.point_status(samples, ids)
    return lambda also: bfmap.recategorized(samples, drawn, ids, before, also)


def _show_new_tags(ctx: Any) -> None:
    """Has the App show the samples' new tags and values: the whole dataset page
    (`reload_dataset`). `reload_samples` refreshed the sidebar's counts but not the grid:
    its thumbnails kept their old tags ("train" on excluded samples) until Reset view
    (seen in headless Chromium, FiftyOne 1.22)."""
    ctx.ops.reload_dataset()


def _lassoed_ids(ctx: Any) -> list[str]:
    """The sample ids of the points a lasso event selected."""
    return [
        p["id"]
        for p in ctx.params.get("data") or []
        if p.get("id") and p.get("trace") == bfmap.POINTS_TRACE
    ]


def _forget_plot_copy(ctx: Any) -> None:
    """Drops the App's copy of the drawn plot from the panel state, if it made one
    (the reason's input copies the whole form into the state when it is typed in).

    Besides its weight, a copy is wrong: the App renders the panel from its state
    deep-merged with its data, array index by array index, so a stale copy would keep
    an old figure's tail under a smaller new one, and old legend entries under a
    recolour's.
    """
    key = _shown(ctx).plot_key
    if key and ctx.panel.state.get(key) is not None:
        ctx.panel.state.set(key, None)


def _map_note(stats: dict[str, Any]) -> str:
    method = METHOD_LABELS[stats["method"]]
    if stats["subsampled"]:
        drawn = (
            f"Showing **{stats['n_drawn']:,}** of the {stats['n_on_map']:,} samples of the "
            f"view on the map (a fixed random subsample; the counts below use all)."
        )
    else:
        excluded = stats["n_excluded_drawn"]
        drawn = f"Showing all **{stats['n_drawn'] - excluded:,}** split samples in the view" + (
            f" and {excluded:,} excluded ones (grey)." if excluded else "."
        )
    plural = "" if stats["n_bubbles"] == 1 else "s"
    note = f"{method} map. {drawn} {stats['n_bubbles']} bubble{plural}"
    if stats["faded"]:
        note += f" (over {bfmap.FADE_ABOVE_BUBBLES}: drawn faint and unlabelled)"
    note += f". {LEGEND_HELP}"
    if not stats["has_outlines"]:
        note += (
            " This map was stored by an earlier BubbleFence without bubble outlines: "
            "**Update the map** draws them."
        )
    if stats["n_unplaced"]:
        note += (
            f" **{stats['n_unplaced']:,}** split samples have no point yet: **Update the "
            "map** places them."
        )
    return note


def _summary_markdown(summary: dict[str, Any]) -> str:
    splits = bfo.SPLIT_VALUES
    lines = [
        "**Counts in the view**",
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
        f"{KNOBS['eval_ratio'].label} **{summary['eval_share']:.3f}** "
        f"(target {_fmt(summary['eval_target'])}); "
        f"{KNOBS['validation_ratio'].label.lower()} **{summary['validation_share']:.3f}** "
        f"(target {_fmt(summary['validation_target'])})."
    )
    bubbles = f"Bubbles: **{summary['n_bubbles_in_view']}** in the view"
    if summary["n_bubbles"] is not None:
        bubbles += f", {summary['n_bubbles']} in all"
    lines.append("")
    lines.append(
        f"{bubbles}. Excluded: {summary['n_excluded']:,}. Not split yet: "
        f"{summary['n_not_split']:,}."
        + (f" Failed: {summary['n_failed']:,}." if summary["n_failed"] else "")
    )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "?" if value is None else f"{float(value):.2f}"


# --------------------------------------------------------------------------- audit

# The measures of the latest audit the panel shows beside the map (`summary_rows` keys).
AUDIT_ROWS = ("leakage_", "similarity_", "diversity")


def _audit_markdown(dataset: Any, split_updated_at: str | None) -> str | None:
    """Leakage and diversity rows of the latest stored audit report, if there is one,
    marked stale when the split was saved after it.

    Args:
        dataset: the dataset
        split_updated_at: when the split state was last saved (``map_summary``'s
            ``split_updated_at``), or None
    """
    try:
        report = bfo.latest_report(dataset)
        if not report:
            return None
        rows = [r for r in bfo.summary_rows(report) if r["key"].startswith(AUDIT_ROWS)]
    except Exception as e:  # a broken report must not take the map down with it
        logger.exception("BubbleFence panel: could not read the audit report")
        return f"**Audit**\n\nThe latest audit report could not be read: {escape_markdown(e)}"
    source = escape_markdown(report.get("source"))  # a field name: the user's
    created = report.get("created_at")
    # How many it measured, in the report's own words: a report of a small view reads
    # differently from the dataset's, and duplicates or samples not split are not measured.
    audited = f": {audited_text(report)}" if isinstance(report.get("n_audited"), int) else ""
    lines = [f"**Audit of {created or '?'}** (split source {source}){audited}", ""]
    if _is_before(created, split_updated_at):
        lines += [
            f"⚠ **Stale:** the split changed after this audit (last saved {split_updated_at}); "
            "run **BubbleFence report** again for current figures.",
            "",
        ]
    lines += ["| measure | this split | random split |", "|---|---|---|"]
    lines += [f"| {r['metric']} | {r['split']} | {r['baseline']} |" for r in rows]
    return "\n".join(lines)


def _is_before(earlier: str | None, later: str | None) -> bool:
    """Whether UTC time stamp ``earlier`` is before ``later`` (False if either is unknown)."""
    if not earlier or not later:
        return False
    try:
        return _utc(earlier) < _utc(later)
    except ValueError:  # not a time stamp BubbleFence wrote: no claim either way
        return False


def _utc(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
