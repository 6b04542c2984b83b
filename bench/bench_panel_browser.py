"""The BubbleFence panel in the real App at 30k samples: seconds from a click to its
result on screen, and the App's traffic per click (issue 14).

    .venv/bin/python bench/bench_panel_browser.py                 # 30k, appends to RESULTS.md
    .venv/bin/python bench/bench_panel_browser.py --n 3000 --no-append --shots /tmp/shots

Builds a dataset of generated 512-d embeddings (`bench_core.make_data`, 8 clusters) whose
samples share 8 small PNGs, in a throwaway database; splits it once (which fits the map);
starts the App server on a free 127.0.0.1 port and opens the dataset in headless Debian
Chromium (Playwright with ``executable_path``, software WebGL). Then, as a user would:
open the panel, recolour by round and back by split, click the largest bubble's centre
(the grid must then show one bubble's samples), reset the view, recolour by round and
by split again, lasso points (the drag, drawn by the browser alone, then the release,
until the App has stored the selection), exclude them, include them again. For
comparison, the App alone: the same kind of view change from the sidebar (the grid
filtered by the ``validation`` tag, then the filter cleared) before the panel is opened,
and that filter again at the end, with the panel open.

Per step: seconds from the click to the result on screen (the panel's text or legend, the
grid's count and thumbnails), measured in Python around Playwright's waits; and every
request the App started from the click until it was quiet (panel events by method,
GraphQL queries by operation, other calls): how many, the bytes each way, and when, in
seconds after the click; and, from Chromium's trace, how long the page waited on its GPU
process meanwhile (`GpuWaits`). The next step starts once the App is quiet. Also the App
server's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from app_server import app_server  # noqa: E402
from fo_sandbox import sandbox  # noqa: E402

_TMP = sandbox("bubblefence-bench-browser-")

import fiftyone as fo  # noqa: E402
import numpy as np  # noqa: E402
from bench_core import append_results, make_data  # noqa: E402

import bubblefence_plugin.fo as bfo  # noqa: E402

N_CLUSTERS = 8
N_IMAGES = 8
LASSO_SHARE = 0.05  # of the plot's width: a small lasso near the left edge
LASSO_MOVES = 6  # mouse moves per side of the lasso's outline
TARGET_S = 2.0
QUIET_S = 3.0  # a step ends when no request has started for this long
SETTLE_MAX_S = 60.0
UI_TIMEOUT_MS = 120_000
# A first App start on this machine builds its schema: a minute or two.
APP_START_TIMEOUT_S = 180
# The browser test's flags (tests/test_browser_e2e.py): headless, software WebGL.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-unsafe-swiftshader",
]
# Relay sends the operation's text, not its name: "query DatasetPageQuery(...)".
GRAPHQL_OPERATION = re.compile(r"(?:query|mutation|subscription)\s+(\w+)")
GRID_PAINTED = """() => {
  const items = [...document.querySelectorAll('[data-cy=looker]')];
  return items.length > 0 && items.every(e => e.querySelector('canvas[canvas-loaded=true]'));
}"""


@dataclass
class Request:
    """One request the App sent: what it was, its bytes each way, its seconds."""

    kind: str
    up: int
    start: float
    end: float | None = None
    down: int = 0


@dataclass
class Step:
    """One user action: seconds to each visible result, and the requests meanwhile."""

    name: str
    start: float
    seconds: dict[str, float]
    requests: list[Request] = field(default_factory=list)
    gpu_wait_s: float = 0.0  # of those seconds, the page waiting on the GPU process

    def traffic(self) -> str:
        """Per kind of request: how many, bytes each way, and when, in seconds after
        the click (the first start to the last end)."""
        groups: dict[str, list[Request]] = defaultdict(list)
        for r in self.requests:
            groups[r.kind].append(r)
        parts = []
        for kind, rs in groups.items():
            up, down = sum(r.up for r in rs), sum(r.down for r in rs)
            first = min(r.start for r in rs) - self.start
            last = max(r.end or r.start for r in rs) - self.start
            sizes = f"{_kb(up)} up, {_kb(down)} down"
            parts.append(f"{kind} ×{len(rs)} ({sizes}, {first:.1f}–{last:.1f} s)")
        return "; ".join(parts)


def _kb(n: int) -> str:
    return f"{n / 1000:,.0f} kB" if n >= 1000 else f"{n} B"


class Recorder:
    """Collects the page's requests (panel events named by method, GraphQL by operation)."""

    def __init__(self, page: Any):
        self.page = page
        self.gpu = GpuWaits(page)
        self.requests: list[Request] = []
        self._open: dict[Any, Request] = {}
        page.on("request", self._started)
        page.on("requestfinished", self._finished)
        page.on("requestfailed", self._finished)

    def _started(self, request: Any) -> None:
        url = request.url
        body = request.post_data or ""
        if "/operators/execute" in url:
            try:
                params = json.loads(body).get("params", {})
            except ValueError:
                params = {}
            method = params.get("__method__")
            kind = f"panel {method}" if method else f"operator {json.loads(body)['operator_uri']}"
        elif url.endswith("/graphql"):
            named = GRAPHQL_OPERATION.search(body)
            kind = f"graphql {named.group(1) if named else '?'}"
        elif "/media" in url or "/fonts" in url or url.endswith((".png", ".woff2")):
            return  # thumbnails: drawn from the browser's cache, not the point here
        else:
            kind = url.split("?")[0].rsplit("/", 2)[-1] or url
        record = Request(kind, len(body.encode()), time.perf_counter())
        self._open[request] = record
        self.requests.append(record)

    def _finished(self, request: Any) -> None:
        record = self._open.pop(request, None)
        if record is None:
            return
        record.end = time.perf_counter()
        try:
            record.down = int(request.sizes()["responseBodySize"])
        except Exception:  # a failed or streamed request has no sizes
            record.down = 0

    def settle(self, since: float) -> None:
        """Waits until no request has started for `QUIET_S` and none started ``since``
        is open (at most `SETTLE_MAX_S`): the App's follow-up work of a click
        (view-change events, refetches, the plot's drawing) would otherwise slow the
        next click down."""
        began = time.perf_counter()
        while time.perf_counter() - began < SETTLE_MAX_S:
            self.page.wait_for_timeout(250)
            last = max((r.start for r in self.requests), default=0.0)
            # The App's event stream stays open for good: only this step's requests count.
            busy = any(r.start >= since for r in self._open.values())
            if not busy and time.perf_counter() - last >= QUIET_S:
                return

    def since(self, start: float) -> list[Request]:
        return [r for r in self.requests if r.start >= start]

    def answered(self, kind: str) -> Callable[[], None]:
        """A wait for the end of a request of ``kind`` started from now on."""
        since = time.perf_counter()

        def wait() -> None:
            while not any(r.kind == kind and r.end for r in self.since(since)):
                if time.perf_counter() - since > UI_TIMEOUT_MS / 1000:
                    raise TimeoutError(f"no {kind} request ended")
                self.page.wait_for_timeout(50)

        return wait


class GpuWaits:
    """Seconds the page's main thread waits on Chromium's GPU process, from its trace
    (``CommandBufferHelper::Finish`` on the renderer's main thread, category ``gpu``).

    Without a GPU, WebGL runs in software (SwiftShader) in that process: a new WebGL
    plot compiles its shaders and draws its points there, and the software compositor
    reads every redrawn WebGL canvas back, while the page waits. With a GPU these
    waits are short; here they are part of every step that mounts a plot.
    """

    def __init__(self, page: Any):
        self.page = page
        self.cdp = page.context.new_cdp_session(page)
        self.events: list[dict[str, Any]] = []
        self.complete = False
        self.cdp.on("Tracing.dataCollected", lambda params: self.events.extend(params["value"]))
        self.cdp.on("Tracing.tracingComplete", lambda _: setattr(self, "complete", True))

    def start(self) -> None:
        self.events, self.complete = [], False
        self.cdp.send("Tracing.start", {"categories": "gpu", "transferMode": "ReportEvents"})

    def stop(self) -> float:
        self.cdp.send("Tracing.end")
        while not self.complete:
            self.page.wait_for_timeout(50)
        main = {
            (e["pid"], e["tid"])
            for e in self.events
            if e.get("ph") == "M" and e.get("args", {}).get("name") == "CrRendererMain"
        }
        waits = (
            e["dur"]
            for e in self.events
            if e.get("ph") == "X"
            and e.get("name") == "CommandBufferHelper::Finish"
            and (e["pid"], e["tid"]) in main
        )
        return sum(waits) / 1e6


def build_dataset(n: int, images: Path) -> fo.Dataset:
    """``n`` samples over `N_IMAGES` small PNGs, embeddings in ``emb``, split once."""
    from PIL import Image

    images.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N_IMAGES):
        pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
        paths.append(str(images / f"{i}.png"))
        Image.fromarray(pixels).save(paths[-1])
    x, _ = make_data(n, 0, k=N_CLUSTERS)
    ds = fo.Dataset(f"bench-browser-{os.getpid()}", persistent=True)
    ds.add_samples([fo.Sample(filepath=paths[i % N_IMAGES]) for i in range(n)])
    ds.set_values("emb", list(x))
    bfo.split(ds, embeddings_field="emb")
    return ds


def _peak_rss_mb(pid: int) -> float:
    """A process's RSS high-water mark, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(
    name: str,
    recorder: Recorder,
    action: Callable[[], None],
    results: dict[str, Callable[[], None]],
) -> Step:
    """Runs ``action``, then waits for each visible result in turn; the seconds of each
    are from the start of the action. Then waits until the App is quiet (`settle`):
    its follow-up traffic counts to this step, and the next step starts on an idle App."""
    recorder.gpu.start()
    start = time.perf_counter()
    action()
    seconds = {}
    for label, wait in results.items():
        wait()
        seconds[label] = time.perf_counter() - start
    gpu_wait_s = recorder.gpu.stop()
    recorder.settle(start)
    step = Step(name, start, seconds, recorder.since(start), gpu_wait_s)
    print(f"{name}: {seconds}, GPU waits {gpu_wait_s:.2f} | {step.traffic()}", flush=True)
    return step


def _now() -> None:
    """A result that is on screen once the action returns."""


def _tag_entry(page: Any) -> Any:
    return page.locator("[data-cy=sidebar]").first.get_by_text("validation", exact=True).first


def sidebar_filter(name: str, page: Any, recorder: Recorder, ds: fo.Dataset) -> Step:
    """The grid filtered by the ``validation`` tag from the sidebar: a view change of
    the App's own."""
    from playwright.sync_api import expect

    sidebar = page.locator("[data-cy=sidebar]").first
    if not sidebar.get_by_placeholder("+ filter by sample tag").count():
        sidebar.get_by_text("sample tags", exact=True).click()
    sidebar.get_by_placeholder("+ filter by sample tag").click()
    count = page.locator("[data-cy=entry-counts]").first
    n_validation = ds.count_sample_tags().get("validation", 0)

    def grid_shows() -> None:
        expect(count).to_have_text(f"{n_validation:,} samples", timeout=UI_TIMEOUT_MS)
        page.wait_for_function(GRID_PAINTED, timeout=UI_TIMEOUT_MS)

    return timed(name, recorder, lambda: _tag_entry(page).click(), {"grid": grid_shows})


def play(page: Any, ds: fo.Dataset, shots: Path | None) -> list[Step]:
    from playwright.sync_api import expect

    recorder = Recorder(page)
    panel = page.locator("[data-cy=panel-content-bubblefence_panel]")
    plot = panel.locator(".js-plotly-plot")
    legend = plot.locator(".legend")
    grid_count = page.locator("[data-cy=entry-counts]").first
    n = len(ds)
    n_bubbles = len(ds.distinct(bfo.ANCHOR_FIELD))

    def grid_shows(count: int) -> Callable[[], None]:
        def wait() -> None:
            expect(grid_count).to_have_text(f"{count:,} samples", timeout=UI_TIMEOUT_MS)
            page.wait_for_function(GRID_PAINTED, timeout=UI_TIMEOUT_MS)

        return wait

    def panel_says(text: str) -> Callable[[], None]:
        return lambda: expect(panel).to_contain_text(text, timeout=UI_TIMEOUT_MS)

    def legend_says(text: str) -> Callable[[], None]:
        return lambda: expect(legend).to_contain_text(text, timeout=UI_TIMEOUT_MS)

    def shot(name: str) -> None:
        if shots:
            page.screenshot(path=shots / f"{name}.png")

    steps = [
        sidebar_filter("App alone: sidebar tag filter", page, recorder, ds),
        timed(
            "App alone: clear that filter",
            recorder,
            lambda: _tag_entry(page).click(),
            {"grid": grid_shows(n)},
        ),
    ]

    def open_panel() -> None:
        page.locator("[data-cy=new-panel-btn]").first.click()
        page.locator("[data-cy='new-panel-option-bubblefence_panel']").click()

    steps.append(
        timed(
            "open the panel",
            recorder,
            open_panel,
            {"counts": panel_says("Counts in the view"), "map": legend_says("Points by split:")},
        )
    )
    shot("01-open")
    steps.append(
        timed(
            "recolour by round",
            recorder,
            lambda: panel.get_by_role("button", name="Round", exact=True).click(),
            {"legend": legend_says("Points by round:")},
        )
    )
    steps.append(
        timed(
            "recolour by split",
            recorder,
            lambda: panel.get_by_role("button", name="Split", exact=True).click(),
            {"legend": legend_says("Points by split:")},
        )
    )
    # The largest bubble's centre, clicked where it is drawn; a centre or point drawn over
    # it may take the click, so the result is any one bubble: the grid leaves the full
    # count, and once the App is quiet it still shows one bubble's samples.
    counts = ds.count_values(bfo.ANCHOR_FIELD)
    anchor = max((a for a in counts if a is not None), key=lambda a: counts[a])
    centre = plot.locator(".scatterlayer .trace:last-child .points path").nth(
        sorted(a for a in counts if a is not None).index(anchor)  # centres: by anchor id
    )

    def grid_leaves_full_count() -> None:
        expect(grid_count).not_to_have_text(f"{n:,} samples", timeout=UI_TIMEOUT_MS)
        page.wait_for_function(GRID_PAINTED, timeout=UI_TIMEOUT_MS)

    steps.append(
        timed(
            "bubble click",
            recorder,
            lambda: centre.click(force=True),
            {"grid": grid_leaves_full_count},
        )
    )
    shown = grid_count.inner_text()
    print(f"the grid shows {shown} once the App is quiet after the click", flush=True)
    bubble_sizes = {c for a, c in counts.items() if a is not None}
    if int(shown.split()[0].replace(",", "")) not in bubble_sizes:
        raise SystemExit(f"after the bubble click the grid shows {shown}, not one bubble")
    shot("02-bubble")
    steps.append(
        timed(
            "reset view",
            recorder,
            lambda: panel.get_by_role("button", name="Reset view").click(),
            {
                "panel": panel_says(f"Bubbles: {n_bubbles} in the view"),
                "grid": grid_shows(n),
            },
        )
    )
    # A walk through the App saw the first recolour after a reset take 10.8 s.
    for name, title in (("Round", "Points by round:"), ("Split", "Points by split:")):
        steps.append(
            timed(
                f"recolour by {name.lower()}, after the reset",
                recorder,
                lambda name=name: panel.get_by_role("button", name=name, exact=True).click(),
                {"legend": legend_says(title)},
            )
        )

    def lasso_drag() -> None:
        area = plot.locator(".nsewdrag").first.bounding_box()
        y0 = area["y"] + 5
        x1 = area["x"] + area["width"] * (0.5 + LASSO_SHARE)
        y1 = area["y"] + area["height"] - 5
        x_mid = area["x"] + area["width"] * 0.5
        page.mouse.move(x_mid, y0)
        page.mouse.down()
        for x, y in ((x1, y0), (x1, y1), (x_mid, y1), (x_mid, y0 + 3)):
            page.mouse.move(x, y, steps=LASSO_MOVES)

    # The drag is the browser's alone (plotly redraws its points on every move, no
    # request); the panel's event starts at the release. The App hands the lasso's
    # selection to the server when its plot reports it, at times seconds later: the
    # step waits for that, or Exclude would act on nothing.
    steps.append(timed("lasso: the drag (browser only)", recorder, lasso_drag, {"drawn": _now}))
    steps.append(
        timed(
            "lasso: release",
            recorder,
            page.mouse.up,
            {"selection stored": recorder.answered("graphql setSelectedSamplesMutation")},
        )
    )
    steps.append(
        timed(
            "exclude",
            recorder,
            lambda: panel.get_by_role("button", name="Exclude").click(),
            {
                "toast": lambda: page.locator(
                    "#notistack-snackbar", has_text="left their split"
                ).first.wait_for(timeout=UI_TIMEOUT_MS),
                "panel": panel_says("Excluded: "),
            },
        )
    )
    n_excluded = ds.count_sample_tags().get(bfo.EXCLUDED_TAG, 0)
    shot("03-excluded")
    steps.append(
        timed(
            "include again",
            recorder,
            lambda: panel.get_by_role("button", name="Include again").click(),
            {
                "toast": lambda: page.locator(
                    "#notistack-snackbar", has_text="Included"
                ).first.wait_for(timeout=UI_TIMEOUT_MS),
                "panel": panel_says("Excluded: 0."),
            },
        )
    )
    print(f"lasso excluded {n_excluded} samples", flush=True)
    steps.append(sidebar_filter("sidebar tag filter, panel open", page, recorder, ds))
    # Closed and opened again on the whole dataset: what a user sees from the second
    # opening on, once the browser holds the App's Plotly bundle (4.6 MB) downloaded by
    # the first.
    _tag_entry(page).click()
    grid_shows(n)()
    page.locator("[data-cy='panel-tab-bubblefence_panel']").click(button="middle")
    expect(panel).to_have_count(0, timeout=UI_TIMEOUT_MS)
    recorder.settle(time.perf_counter())
    steps.append(
        timed(
            "open the panel again (Plotly cached)",
            recorder,
            open_panel,
            {"counts": panel_says("Counts in the view"), "map": legend_says("Points by split:")},
        )
    )
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=30_000, help="samples")
    parser.add_argument("--label", default="", help="what this run measures, for the table")
    parser.add_argument("--no-append", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--shots", type=Path, help="save screenshots in this folder")
    parser.add_argument(
        "--chromium", default=os.environ.get("CHROMIUM") or shutil.which("chromium")
    )
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    start = time.perf_counter()
    ds = build_dataset(args.n, _TMP / "images")
    build_s = time.perf_counter() - start
    if args.shots:
        args.shots.mkdir(parents=True, exist_ok=True)
    try:
        with app_server(_TMP / "server.log", APP_START_TIMEOUT_S) as (server, url):
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS
                )
                try:
                    page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
                    page.set_default_timeout(UI_TIMEOUT_MS)
                    page.goto(f"{url}/datasets/{ds.name}")
                    page.wait_for_function(GRID_PAINTED)
                    dismiss = page.get_by_text("Dismiss", exact=True)
                    if dismiss.count():
                        dismiss.first.click()
                    steps = play(page, ds, args.shots)
                finally:
                    browser.close()
            server_peak_mb = _peak_rss_mb(server.pid)
    finally:
        ds.delete()
    lines = [
        f"\n## BubbleFence panel in the App, {args.n:,} samples"
        f"{' — ' + args.label if args.label else ''} ({time.strftime('%Y-%m-%d %H:%M')})\n",
        f"`bench/bench_panel_browser.py`; {os.cpu_count()}-core CPU, no GPU; headless Debian "
        "Chromium (software WebGL) on the App server, both on this machine; "
        f"{args.n:,} generated 512-d embeddings in {N_CLUSTERS} clusters over {N_IMAGES} "
        f"16x16 PNGs, split once ({build_s:.0f} s with the map); the App server's peak "
        f"RSS {server_peak_mb:,.0f} MB. Seconds from the click to each result on screen; "
        "requests the App started from the click until it was quiet (3 s without a new request), "
        "before the next step. Of those seconds, the page's main thread waiting on the GPU "
        "process (software WebGL: `GpuWaits`). "
        f"Target: under {TARGET_S:.0f} s.\n",
        "| step | seconds to the result | waiting on software WebGL | requests (bytes up, down; "
        "seconds after the click) |",
        "|---|---|---:|---|",
    ]
    for step in steps:
        seconds = ", ".join(f"{k} {v:.2f}" for k, v in step.seconds.items())
        lines.append(f"| {step.name} | {seconds} | {step.gpu_wait_s:.2f} | {step.traffic()} |")
    print("\n".join(lines), flush=True)
    if not args.no_append:
        append_results(lines)


if __name__ == "__main__":
    main()
