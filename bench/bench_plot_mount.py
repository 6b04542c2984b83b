"""How long the browser takes to mount the panel's map figure, by the kind of its traces,
in the same run (issue 14; `map.POINTS_TRACE_TYPE`, `map.OUTLINE_TRACE_TYPE`).

    .venv/bin/python bench/bench_plot_mount.py               # 30k samples, appends to RESULTS.md
    .venv/bin/python bench/bench_plot_mount.py --n 3000 --no-append

The panel mounts a new plot for every figure it sends (a recolour, an exclusion, a view
change: see `panels/bubblefence_panel._draw`), so the mount is part of every such
event's time on screen. Builds the dataset of `bench_panel_browser.py` (generated
512-d embeddings in 8 clusters over 8 small PNGs, split once) in a throwaway database,
takes the panel's figure for it (`map.map_figure`, coloured by split), and times
``Plotly.newPlot`` into a fresh 900 x 480 div until the next animation frame, in
headless Debian Chromium with software WebGL (no GPU), with the plotly.js that ships
in the ``plotly`` Python package. Variants, alternated, each `REPEATS` times: the
figure as the panel sends it (WebGL points, SVG outlines), the same with its outlines
as WebGL too (what the panel sent before), and with its points as SVG too. The App
runs the same plotly.js major version (3). A mount is not all of an event's cost:
5,000 SVG points mount fastest, yet in the App every later panel event took seconds
longer with them (a `bench_panel_browser.py` run, noted in `bench/RESULTS.md`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import plotly  # noqa: E402
from bench_core import append_results  # noqa: E402

# Opens the throwaway database before anything imports fiftyone.
from bench_panel_browser import _TMP, CHROMIUM_ARGS, build_dataset  # noqa: E402

from bubblefence_plugin.fo import map as viz  # noqa: E402

REPEATS = 5
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
# Mounts into a fresh div (the old plot purged first, as the App unmounts it) and
# resolves at the next animation frame after plotly's promise: the plot is on screen.
MOUNT = """async (figure) => {
  const old = document.getElementById('plot');
  if (old) { Plotly.purge(old); old.remove(); }
  const div = document.createElement('div');
  div.id = 'plot';
  div.style.width = '900px';
  div.style.height = '480px';
  document.body.appendChild(div);
  const start = performance.now();
  await Plotly.newPlot(div, figure.data, figure.layout);
  await new Promise(done => requestAnimationFrame(() => setTimeout(done, 0)));
  return performance.now() - start;
}"""


def with_types(data: list[dict[str, Any]], points: str, outlines: str) -> list[dict[str, Any]]:
    """The figure with its points trace of type ``points`` and its outline traces of
    type ``outlines``, everything else unchanged."""
    return [
        {**t, "type": points}
        if t["name"] == viz.POINTS_TRACE
        else {**t, "type": outlines}
        if t.get("mode") == "lines"
        else t
        for t in data
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=30_000, help="samples")
    parser.add_argument("--no-append", action="store_true", help="do not write RESULTS.md")
    parser.add_argument(
        "--chromium", default=os.environ.get("CHROMIUM") or shutil.which("chromium")
    )
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    start = time.perf_counter()
    ds = build_dataset(args.n, _TMP / "images")
    split_s = time.perf_counter() - start
    figure = viz.map_figure(ds, "split")
    ds.delete()
    stats = figure["stats"]
    variants = {
        f"the panel's: points {viz.POINTS_TRACE_TYPE}, outlines {viz.OUTLINE_TRACE_TYPE}": (
            figure["data"]
        ),
        "before: points and outlines scattergl": with_types(
            figure["data"], "scattergl", "scattergl"
        ),
        "points and outlines scatter (SVG)": with_types(figure["data"], "scatter", "scatter"),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_content("<html><body></body></html>")
            page.add_script_tag(path=str(PLOTLY_JS))
            version = page.evaluate("() => Plotly.version")
            for _ in range(REPEATS):
                for name, data in variants.items():
                    ms = page.evaluate(MOUNT, {"data": data, "layout": figure["layout"]})
                    times[name].append(ms / 1000)
        finally:
            browser.close()
    lines = [
        f"\n## The panel's map figure: mount time in the browser, {args.n:,} samples "
        f"({time.strftime('%Y-%m-%d %H:%M')})\n",
        f"`bench/bench_plot_mount.py`; {os.cpu_count()}-core CPU, no GPU; headless Debian "
        f"Chromium (software WebGL), plotly.js {version}. The panel's figure of "
        f"{args.n:,} samples split once ({split_s:.0f} s): {stats['n_drawn']:,} points, "
        f"{stats['n_bubbles']} bubbles ({stats['method']} map). Seconds from "
        "`Plotly.newPlot` to the next frame, into a fresh div; variants alternated, "
        f"{REPEATS} mounts each.\n",
        "| traces | median s | min s | max s |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in times.items():
        lines.append(
            f"| {name} | {statistics.median(seconds):.3f} | {min(seconds):.3f} | "
            f"{max(seconds):.3f} |"
        )
    print("\n".join(lines), flush=True)
    if not args.no_append:
        append_results(lines)


if __name__ == "__main__":
    main()
