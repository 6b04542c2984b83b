"""The BubbleFence panel's events on a large dataset: seconds and bytes per event (issue 14).

    .venv/bin/python bench/bench_panel.py                  # 30k samples, appends to RESULTS.md
    .venv/bin/python bench/bench_panel.py --n 3000 --no-append

Builds a dataset of generated 512-d embeddings (8 clusters, `bench_core.make_data`; no
images: the panel never reads media) in a throwaway database, runs one split round on
the embeddings field (which fits the 2-D map), then plays the events of a user session
through FiftyOne's own executor, as the App would send them: open the panel, recolour
by round and back, click a bubble (the click, then the view change the App sends after
it), reset the view, lasso points, exclude them, include them again; then the library
calls of the last two alone, to show what of them the panel cannot save, and, as the
baseline in the same run, the same two through a full load of the state (every vector
read back from the field, the rows dropped, the state saved: what exclusion did before
`state.forget_excluded`).

A small stand-in for the App (`AppClient`) keeps the panel's state and data between
events the way the App does (each ``patch_panel_*`` request's keys are paths set one by
one), and sends the state back with every event. Per event: the handler's seconds (the
server side; the browser's drawing is not included), the bytes the server sends (the
JSON of the operations the event triggers) and the bytes the App sends (the event's
parameters with the panel state).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fo_sandbox import sandbox  # noqa: E402

_TMP = sandbox("bubblefence-bench-panel-")

import fiftyone as fo  # noqa: E402
import fiftyone.operators as foo  # noqa: E402
import pydash  # noqa: E402
from bench_core import append_results, make_data, peak_rss_mb, reset_peak_rss  # noqa: E402

import bubblefence_plugin.fo as bfo  # noqa: E402
from bubblefence_plugin.core.layout import METHOD_LABELS  # noqa: E402
from bubblefence_plugin.fo import map as viz  # noqa: E402
from bubblefence_plugin.fo import state  # noqa: E402
from bubblefence_plugin.fo.fields import clear_excluded_fields  # noqa: E402
from bubblefence_plugin.fo.runs import RunLock  # noqa: E402

PANEL = "@bubblefence/bubblefence/bubblefence_panel"
N_CLUSTERS = 8  # the user's report: 8 visual classes
LASSO_POINTS = 1_000
EXCLUDED_POINTS = 200
TARGET_S = 2.0
# What the user measured in the App before this work (issue 14), for the table.
BASELINE = {
    "recolour by round": "20 s, 2.7 MB",
    "bubble click": "35 s (click and view change), 2.7 MB",
}


@dataclass
class EventCost:
    """One event: the handler's seconds and the JSON bytes each way (None: no event,
    a library call timed alone)."""

    name: str
    seconds: float
    peak_mb: float
    bytes_down: int | None = None
    bytes_up: int | None = None


@dataclass
class AppClient:
    """The App's side of the panel: its state and data, sent back with each event."""

    dataset: fo.Dataset
    view: Any = None
    state: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    costs: list[EventCost] = field(default_factory=list)

    def event(
        self, name: str, method: str, selected: list[str] | None = None, **params: Any
    ) -> dict[str, list[dict]]:
        """Runs panel event ``method`` and applies what it sends; returns the other
        operations it triggered, by operator URI.

        Args:
            name: the event's name in the table
            method: the panel method the event calls
            selected: the App's selected sample ids
            **params: the event's parameters
        """
        request = {"__method__": method, "panel_id": "bench", "panel_state": self.state, **params}
        ctx: dict[str, Any] = {"params": request, "selected": selected or []}
        if self.view is not None:
            ctx["view"] = self.view
        else:
            ctx["dataset"] = self.dataset
        bytes_up = len(json.dumps(request, default=str))
        reset_peak_rss()
        start = time.perf_counter()
        result = foo.execute_operator(PANEL, ctx=ctx)
        seconds = time.perf_counter() - start
        sent = result.executor.to_json()
        self.costs.append(EventCost(name, seconds, peak_rss_mb(), len(json.dumps(sent)), bytes_up))
        others: dict[str, list[dict]] = {}
        for op in sent["requests"]:
            uri, op_params = op["operator_uri"], op["params"]
            if uri in ("patch_panel_state", "patch_panel_data"):
                target = self.state if uri.endswith("state") else self.data
                key = "state" if uri.endswith("state") else "data"
                for path, value in op_params[key].items():
                    pydash.set_(target, path, value)
            else:
                others.setdefault(uri, []).append(op_params)
        if "set_view" in others:
            self.view = fo.DatasetView._build(self.dataset, others["set_view"][-1]["view"])
        if "clear_view" in others:
            self.view = None
        return others


def build_dataset(n: int) -> tuple[fo.Dataset, float, float]:
    """The dataset, split once; with the seconds of the round and of a map refit."""
    x, _ = make_data(n, 0, k=N_CLUSTERS)
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=f"/bench/{i}.jpg") for i in range(n)])
    ds.set_values("emb", list(x))
    start = time.perf_counter()
    bfo.split(ds, embeddings_field="emb")
    split_s = time.perf_counter() - start
    start = time.perf_counter()
    viz.build_map(ds, bfo.DEFAULT_METHOD)
    return ds, split_s, time.perf_counter() - start


def play_session(ds: fo.Dataset) -> list[EventCost]:
    """The events of one user session, in order."""
    app = AppClient(ds)
    app.event("open the panel", "on_load")
    app.event("recolour by round", "on_color_by", value="round")
    app.event("recolour by split", "on_color_by", value="split")
    largest = ds.count_values(bfo.ANCHOR_FIELD)
    anchor = max((a for a in largest if a is not None), key=lambda a: largest[a])
    app.event("bubble click", "on_click", trace=bfo.BUBBLES_TRACE, id=str(anchor), idx=0)
    app.event("view change after the click", "on_change_view")
    app.event("reset view", "reset_view")
    ids = ds.take(LASSO_POINTS, seed=0).values("id")
    lassoed = [{"id": i, "trace": viz.POINTS_TRACE, "idx": k} for k, i in enumerate(ids)]
    app.event("lasso", "on_lasso", data=lassoed)
    app.event("exclude", "exclude", selected=ids[:EXCLUDED_POINTS])
    app.event("include again", "include_again", selected=ids[:EXCLUDED_POINTS])
    # The library calls those two events make, alone: what the panel cannot save.
    others = ds.select(ids[EXCLUDED_POINTS : 2 * EXCLUDED_POINTS])
    for name, call in (("exclude", bfo.exclude), ("include again", bfo.include_again)):
        reset_peak_rss()
        start = time.perf_counter()
        call(others)
        seconds = time.perf_counter() - start
        app.costs.append(EventCost(f"{name}: `bfo.{call.__name__}` alone", seconds, peak_rss_mb()))
    # Other samples again: those above left the state, so they would not leave it twice.
    baseline = ds.select(ids[2 * EXCLUDED_POINTS : 3 * EXCLUDED_POINTS])
    for name, tagging in (("exclude", "tag_samples"), ("include again", "untag_samples")):
        reset_peak_rss()
        start = time.perf_counter()
        getattr(baseline, tagging)(bfo.EXCLUDED_TAG)
        _apply_through_full_load(ds)
        seconds = time.perf_counter() - start
        app.costs.append(EventCost(f"{name}: baseline, full state load", seconds, peak_rss_mb()))
    return app.costs


def _apply_through_full_load(ds: fo.Dataset) -> None:
    """The state leaves out the samples tagged excluded, through a full `load_state`."""
    with RunLock(ds, "exclude"):
        bf, params = bfo.load_state(ds)
        before = list(params.get("excluded_ids", []))
        if state.leave_split_if_excluded(ds, bf, params):
            params["n_samples"] = int(bf.n_samples)
            state.save_state(ds, bf, params)
        elif params["excluded_ids"] != before:
            state.STATE_RUN.update_params(ds, params)
        clear_excluded_fields(ds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=30_000, help="samples")
    parser.add_argument("--no-append", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()
    ds, split_s, refit_s = build_dataset(args.n)
    costs = play_session(ds)
    stats = viz.map_figure(ds)["stats"]
    lines = [
        f"\n## BubbleFence panel events, {args.n:,} samples ({time.strftime('%Y-%m-%d %H:%M')})\n",
        f"`bench/bench_panel.py`; {os.cpu_count()}-core CPU, no GPU, throwaway database; "
        f"{args.n:,} generated 512-d embeddings in {N_CLUSTERS} clusters, one split round "
        f"({split_s:.1f} s with the map), map refit with the default method "
        f"({METHOD_LABELS[bfo.DEFAULT_METHOD]}: {refit_s:.1f} s); {stats['n_drawn']:,} of "
        f"{stats['n_view']:,} points drawn, {stats['n_bubbles']} bubbles. Seconds: the "
        "panel's handler through FiftyOne's executor (the browser's drawing not included). "
        "Peak RSS: this process's high-water mark during the event (it also holds the "
        "dataset's objects). Bytes: JSON sent by the server (the operations the event "
        "triggers) and by the App (the event's parameters and the panel state). Target: "
        f"every event under {TARGET_S:.0f} s.\n",
        "| event | seconds | peak RSS MB | bytes from the server | bytes from the App | before "
        "(the user's App, issue 14) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for cost in costs:
        down, up = (f"{n:,}" if n is not None else "—" for n in (cost.bytes_down, cost.bytes_up))
        lines.append(
            f"| {cost.name} | {cost.seconds:.2f} | {cost.peak_mb:.0f} | {down} | {up} | "
            f"{BASELINE.get(cost.name, '')} |"
        )
    print("\n".join(lines), flush=True)
    slow = [c.name for c in costs if c.seconds >= TARGET_S and c.bytes_down is not None]
    print(f"events at or over {TARGET_S:.0f} s: {slow or 'none'}")
    if not args.no_append:
        append_results(lines)


if __name__ == "__main__":
    main()
