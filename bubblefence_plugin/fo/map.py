"""The 2-D map on the FiftyOne side: stored positions, bubble outlines, the panel's figure.

Two stored pieces, both cloned with the dataset and removed by `reset`:

* the FiftyOne Brain visualization run ``bubblefence_viz`` holds one 2-D point per
  sample of the BubbleFence state, so FiftyOne's own Embeddings panel can show the map,
  colour it by ``split`` and lasso from it;
* the custom run ``bubblefence_layout`` holds the layout (method, seed, PCA mean and
  axes as npy bytes, see `bubblefence_plugin.core.layout`) and, per bubble, its 2-D
  centre, its outline and its inner shell's (convex hulls of the members' points), and
  the figures the panel's hover shows (radius, LID, counts).

After each split round `update_after_round` places the round's new samples with the
stored layout; earlier points are copied from the stored run, never recomputed, so
they do not move. The layout is fitted once (with `core.layout.default_method`:
t-SNE, PCA for very small or very large states and for nearly identical vectors),
unless `build_map` is asked for another method, which refits everything. Keeping
this out of the state's commit path means a failure here never loses a split: the
round notes it and the panel offers to rebuild the map.

The panel's figure is built so that its events stay small (`map_figure`): at most
`MAX_POINTS` points in one WebGL trace; the bubbles are a few SVG polyline traces,
never shapes in the plot's layout (which the App sends back with every event).

`apply_split_colors` gives the dataset one colour per split (`SPLIT_COLORS`) in its
App colour scheme, so the grid's tags, the sidebar, FiftyOne's Embeddings panel, this
panel and the HTML report agree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fiftyone as fo
import fiftyone.brain as fob
import fiftyone.core.collections as foc
import numpy as np
import pandas as pd
from fiftyone import ViewField as F

from ..core.layout import (
    Layout,
    bubble_outlines,
    bubble_radii,
    check_method,
    fit_layout,
)
from .fields import (
    ANCHOR_FIELD,
    ERROR_FIELD,
    EXCLUDED_TAG,
    ROUND_FIELD,
    SPLIT_FIELD,
    SPLIT_TAGS,
    SPLIT_VALUES,
    is_filtered,
    root_dataset,
    serialized_view,
)
from .runs import RunLock, RunType, from_npy_text, to_npy_text
from .state import load_state, state_embeddings, state_info

logger = logging.getLogger(__name__)

VIZ_KEY = "bubblefence_viz"
# Version 2: the bubbles' outlines (version 1 runs are read, and drawn without them).
LAYOUT_RUN = RunType("bubblefence_layout", "bubblefence-layout", 2, "layout_version")
LAYOUT_KEY = LAYOUT_RUN.key
# The method of a refit that names none; a first map uses `core.layout.default_method`.
DEFAULT_METHOD = "tsne"

# Points the panel draws; a larger view is drawn as a seeded random subsample. Every
# point costs its id and coordinates in the figure the App receives and re-draws, and
# beyond a few thousand a map shows no more structure, only more overlap.
MAX_POINTS = 5_000
# The points are one WebGL trace; the bubble outlines are SVG polylines. The panel
# mounts a new plot for each figure (see the panel's `_draw`), and WebGL lines cost
# each mount more than SVG ones: in headless Chromium without a GPU
# (software WebGL), the 30,000-sample figure (5,000 points, 639 bubbles) mounted in a
# median 0.83 s with WebGL outlines and 0.64 s with SVG ones (`bench/bench_plot_mount.py`).
# The points stay WebGL: as 5,000 SVG markers they mounted faster still (0.53 s), but
# in the App every panel event then took seconds longer (`bench/bench_panel_browser.py`).
POINTS_TRACE_TYPE = "scattergl"
OUTLINE_TRACE_TYPE = "scatter"
# Above this many bubbles in the view their outlines are faint and unlabelled: dozens
# of labelled outlines over each other are unreadable.
FADE_ABOVE_BUBBLES = 60
# Closest two bubble numbers are drawn, as a share of the map's extent: about 25 px on
# the panel's ~600 px map, where a two-digit number at size 10 is ~14 px wide.
LABEL_GAP = 0.04

# One colour per split value, used wherever a split is drawn (see `apply_split_colors`).
SPLIT_COLORS = {
    "train": "#6f8fb3",
    "validation": "#ff9f1c",
    "test": "#e8467c",
    "duplicate": "#8c8c8c",
    "excluded": "#d0d0d0",
}
ROUND_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)
# Drawing order: train underneath, the held-out splits on top.
POINT_CATEGORIES = ("train", "duplicate", "validation", "test", "excluded")
COLOR_BY = ("split", "round", "typicality", "region")
# Score fields written by `bubblefence_plugin.fo.curate`, coloured by value.
SCORE_COLOR_FIELDS = {"typicality": "bubblefence_typicality", "region": "bubblefence_region"}
NO_SCORE_COLOR = "#bdbdbd"
# The legend's entry when no drawn point has the score yet: where it comes from.
NOT_COMPUTED = "{what} not computed yet: the BubbleFence sample operator writes it"
POINTS_TRACE = "points"
BUBBLES_TRACE = "bubble centres"
# Per-bubble columns of `BubbleFence.anchors` kept for the panel's hover text.
ANCHOR_COLUMNS = ("radius", "inner_radius", "layout", "lid", "round", "n_validation", "n_test")
# The dark theme of the App: the hover box and the legend's text.
HOVER_STYLE = {"bgcolor": "#1f1f1f", "bordercolor": "#5a5a5a", "font": {"color": "#ececec"}}
LEGEND_TEXT_COLOR = "#c8c8c8"
CENTRE_COLOR = "#cfcfcf"
# The centres' hover box; the figures are in each centre's customdata, once each.
CENTRE_HOVER = (
    "bubble %{customdata[0]}<br>radius %{customdata[1]} (cosine distance)<br>"
    "%{customdata[2]}<br>LID %{customdata[3]}<br>validation %{customdata[4]}, "
    "test %{customdata[5]}<br>created in round %{customdata[6]}<extra></extra>"
)

# FiftyOne caches one Dataset object per name in a process, and a run's results are
# read through a file handle on its document: the App server runs panel events in
# threads, and two events reading one run at once corrupted each other's read (seen in
# the browser test). Reads of the map's runs therefore take turns.
_RESULTS_READ_LOCK = threading.Lock()


@dataclass
class StoredLayout:
    """The ``bubblefence_layout`` run: the fitted layout and the per-bubble digest.

    ``anchors`` has, per bubble: anchor_id, its centre (x, y), its drawn radii (r2d,
    inner_r2d: circles for drawings that need them), the corners of its outline and of
    its inner shell's in ``outline_vertices`` (outer_start, outer_count, inner_start,
    inner_count; version 2 runs) and `ANCHOR_COLUMNS`.
    """

    layout: Layout
    params: dict[str, Any]
    anchors: pd.DataFrame
    outline_vertices: np.ndarray | None  # (k, 2); None in a version 1 run

    def outline(self, row: Any, shell: str = "outer") -> np.ndarray:
        """The (m, 2) corners of a bubble's outline, or of its inner shell's.

        Args:
            row: the bubble's row of `anchors` (a named tuple or a Series)
            shell: "outer" (the whole bubble) or "inner"
        """
        if self.outline_vertices is None:
            return np.empty((0, 2), np.float32)
        start, count = int(getattr(row, f"{shell}_start")), int(getattr(row, f"{shell}_count"))
        return self.outline_vertices[start : start + count]


# --------------------------------------------------------------------------- reading


def load_layout(dataset: fo.Dataset) -> StoredLayout | None:
    """The stored layout, or None when there is none (or its write was stopped before
    its results were saved).

    Args:
        dataset: the dataset
    """
    if not dataset.has_run(LAYOUT_KEY):
        return None
    params = LAYOUT_RUN.params(dataset)  # refuses a run not written by BubbleFence
    with _RESULTS_READ_LOCK:
        found = LAYOUT_RUN.read_complete(dataset)
    if found is None:
        return None
    _, results = found
    # A layout written before results carried their revision has none to compare.
    if getattr(results, "revision", params.get("revision")) != params.get("revision"):
        return None
    arrays = {k: from_npy_text(v) for k, v in results.arrays.items()}
    layout = Layout.from_state(results.meta, arrays)
    anchors = pd.DataFrame(
        {k.removeprefix("anchor_"): v for k, v in arrays.items() if k.startswith("anchor_")}
    )
    return StoredLayout(layout, params, anchors, arrays.get("outline_vertices"))


def load_points(dataset: fo.Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """(sample ids, their 2-D points) of the ``bubblefence_viz`` run, or None (also
    when its write was stopped before its results were saved).

    Args:
        dataset: the dataset
    """
    if not dataset.has_brain_run(VIZ_KEY):
        return None
    with _RESULTS_READ_LOCK:
        try:
            results = dataset.load_brain_results(VIZ_KEY, cache=False, load_view=False)
        except Exception as e:  # its file deleted by a write that was stopped
            logger.warning("The BubbleFence map's points are unreadable (%s)", e)
            return None
    if results is None:
        return None
    return np.asarray(results.sample_ids).astype(str), np.asarray(results.points, np.float32)


def map_lacks_samples(dataset: fo.Dataset, n_samples: int) -> bool:
    """Whether the map is missing, holds fewer points than the state's ``n_samples`` (a
    round was stopped after its commit, before it placed its samples: `update_map`), or
    lacks the results its parameters describe (stopped while writing it: FiftyOne
    writes a run's parameters before its results). Reads both runs' results: 0.01 s at
    30,000 samples.

    Args:
        dataset: the dataset
        n_samples: the samples its state holds
    """
    params = LAYOUT_RUN.info(dataset)
    if params is None or int(params.get("n_points", 0)) < n_samples:
        return True
    return load_layout(dataset) is None or load_points(dataset) is None


def has_map(dataset: fo.Dataset) -> bool:
    """Whether the dataset has both runs of the map.

    Args:
        dataset: the dataset
    """
    return dataset.has_run(LAYOUT_KEY) and dataset.has_brain_run(VIZ_KEY)


# --------------------------------------------------------------------------- writing


def update_map(dataset: fo.Dataset, bf: Any, refit_method: str | None = None) -> dict[str, Any]:
    """Places the state's samples that have no point yet, or refits with ``refit_method``.

    ``bf`` is the dataset's committed `BubbleFence`. Without ``refit_method`` the stored
    layout is extended (fitted with `core.layout.default_method` when there is none):
    stored points are kept as they are. With it, every point is recomputed by a new
    layout. The bubbles' outlines are recomputed either way (a round adds members).
    Call it while holding the dataset's `RunLock`.

    Args:
        dataset: the dataset
        bf: its committed `BubbleFence`, loaded with embeddings
        refit_method: a layout method (`core.layout`) to refit every point with, or None
    """
    if refit_method is not None:
        check_method(refit_method)
    if dataset.has_run(LAYOUT_KEY):
        LAYOUT_RUN.params(dataset)  # never overwrite a run of this name that is not ours
    frame = bf.assignments()
    if not len(frame):
        # Every sample excluded or deleted: nothing to draw, and the stored points kept,
        # so samples included again take their places (deleting them meant a refit).
        return {"method": None, "refitted": False, "n_points": 0, "n_new_points": 0}
    ids = frame["id"].astype(str).to_numpy()
    embeddings = state_embeddings(bf)
    stored = None if refit_method else _usable_layout(dataset, bf.dim)
    xy = np.full((len(ids), 2), np.nan, np.float32)
    placed = np.zeros(len(ids), bool)
    if stored is not None:
        old = load_points(dataset)
        if old is not None:
            rows = pd.Index(old[0]).get_indexer(ids)
            placed = rows >= 0
            xy[placed] = old[1][rows[placed]]
    # A UMAP/t-SNE layout whose points were lost cannot place anything: start over.
    refitted = stored is None or (stored.layout.method != "pca" and not placed.any())
    if refitted:
        method = refit_method or (stored.layout.method if stored else None)
        layout, xy = fit_layout(embeddings, method, seed=int(bf.config.seed))
        fitted_at = _now()
        n_new = len(ids)
    else:
        layout = stored.layout
        fitted_at = stored.params.get("fitted_at")
        new = ~placed
        n_new = int(new.sum())
        if n_new:
            # Only the placed samples the placement compares with: a copy of all of them
            # was the round's largest allocation at its end (the matrix again).
            base = np.flatnonzero(placed)[layout.placement_base(int(placed.sum()))]
            xy[new] = layout.place(embeddings[new], embeddings[base], xy[base])

    anchors, outline_vertices = _anchor_digest(bf, frame, xy, embeddings, layout)
    fob.compute_visualization(dataset, points=dict(zip(ids, xy, strict=True)), brain_key=VIZ_KEY)
    meta, arrays = layout.to_state()
    arrays["outline_vertices"] = outline_vertices
    for column in anchors.columns:
        values = anchors[column].to_numpy()
        # pandas keeps strings as objects, which npy could only store by pickling
        arrays[f"anchor_{column}"] = values.astype(str) if values.dtype == object else values
    revision = uuid.uuid4().hex
    params = LAYOUT_RUN.new_params(
        layout_method=layout.method,
        n_points=len(ids),
        n_anchors=len(anchors),
        fitted_at=fitted_at,
        updated_at=_now(),
        # Names this version of the points: the panel redraws when it changes (`view_key`).
        revision=revision,
    )
    # The results carry the revision too: FiftyOne writes the parameters first, so a
    # write stopped before the results leaves new parameters over old results.
    arrays_text = {k: to_npy_text(v) for k, v in arrays.items()}
    payload = {"meta": meta, "arrays": arrays_text, "revision": revision}
    LAYOUT_RUN.put(dataset, params, payload)
    return {
        "method": layout.method,
        "refitted": refitted,
        "n_points": len(ids),
        "n_new_points": n_new,
    }


def _usable_layout(dataset: fo.Dataset, dim: int | None) -> StoredLayout | None:
    try:
        stored = load_layout(dataset)
    except Exception as e:  # an unreadable layout is rebuilt, not a reason to stop
        logger.warning("Refitting the BubbleFence map: the stored layout is unusable (%s)", e)
        return None
    if stored is not None and stored.layout.dim != dim:
        logger.warning("Refitting the BubbleFence map: the embedding dimension changed")
        return None
    return stored


def _anchor_digest(
    bf: Any, frame: pd.DataFrame, xy: np.ndarray, embeddings: np.ndarray, layout: Layout
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per bubble: 2-D centre (its centre sample's point), drawn radii, where its
    outlines are in the returned corners, and hover figures; and those corners.

    ``frame`` is ``bf.assignments()``, its rows aligned with ``xy`` and ``embeddings``.
    """
    anchors = bf.anchors
    ids = frame["id"].astype(str).to_numpy()
    centre_rows = pd.Index(ids).get_indexer(anchors["centre_id"].astype(str))
    centres = np.empty((len(anchors), 2), np.float32)
    known = centre_rows >= 0
    centres[known] = xy[centre_rows[known]]
    if (~known).any():  # the centre sample was deleted: place its stored vector
        vectors = np.stack(anchors["centre"].to_numpy()[~known])
        centres[~known] = layout.place(vectors, embeddings, xy)
    member_row = frame["anchor_id"].to_numpy()  # anchor ids are the anchors' rows
    in_inner = (frame["shell"] == "inner").to_numpy()
    outer, inner = bubble_radii(
        xy,
        member_row,
        in_inner,
        centres,
        anchors["radius"].to_numpy(),
        anchors["inner_radius"].to_numpy(),
    )
    outlines = bubble_outlines(xy, member_row, in_inner, len(anchors))
    digest = pd.DataFrame(
        {
            "anchor_id": anchors["anchor_id"].to_numpy(np.int64),
            "x": centres[:, 0],
            "y": centres[:, 1],
            "r2d": outer.astype(np.float32),
            "inner_r2d": inner.astype(np.float32),
            "outer_start": outlines.outer[:, 0],
            "outer_count": outlines.outer[:, 1],
            "inner_start": outlines.inner[:, 0],
            "inner_count": outlines.inner[:, 1],
        }
    )
    for column in ANCHOR_COLUMNS:
        digest[column] = anchors[column].to_numpy()
    return digest, outlines.vertices


def update_after_round(dataset: fo.Dataset, bf: Any, summary: dict[str, Any]) -> None:
    """`update_map` and `apply_split_colors` after a committed round (whose split
    fields and tags are written); a failure is logged and noted, never raised.

    Args:
        dataset: the dataset
        bf: its committed `BubbleFence`
        summary: the round's summary; gets ``map``, or ``map_error`` and a note in
            ``message``
    """
    try:
        summary["map"] = update_map(dataset, bf)
    except Exception as e:
        logger.exception("BubbleFence could not update the 2-D map of %s", dataset.name)
        summary["map_error"] = f"{type(e).__name__}: {e}"
        summary["message"] = (
            f"{summary.get('message', '')}; the 2-D map was not updated ({summary['map_error']})"
            " but the split is saved: rebuild the map from the BubbleFence panel"
        )
    try:
        apply_split_colors(dataset)
    except Exception:  # colours are a convenience: the split is saved either way
        logger.exception("BubbleFence could not set the split colours of %s", dataset.name)


def build_map(samples: foc.SampleCollection, method: str | None = None) -> dict[str, Any]:
    """Builds the map from the stored state: extends it, or refits all with ``method``.

    Refitting moves every point (a new layout); it is the user's explicit choice, e.g.
    to switch to PCA. Also sets the split colours (`apply_split_colors`), for datasets
    split before BubbleFence set them. Refused while a split runs on the dataset.

    Args:
        samples: a dataset or view; the map is its dataset's
        method: a layout method (`core.layout`) to refit with, or None to extend
    """
    if method is not None:
        check_method(method)
    dataset = root_dataset(samples)
    with RunLock(dataset, "map"):
        loaded = load_state(dataset)
        if loaded is None:
            raise ValueError(
                f"dataset {dataset.name!r} has no BubbleFence split yet; run BubbleFence split "
                "first"
            )
        result = update_map(dataset, loaded[0], refit_method=method)
    apply_split_colors(dataset)
    return result


def delete_map(dataset: fo.Dataset) -> list[str]:
    """Removes the map's runs; returns the keys removed.

    Args:
        dataset: the dataset
    """
    removed = []
    if dataset.has_brain_run(VIZ_KEY):
        dataset.delete_brain_run(VIZ_KEY)
        removed.append(VIZ_KEY)
    return removed + LAYOUT_RUN.delete(dataset)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --------------------------------------------------------------------------- colours


def apply_split_colors(dataset: fo.Dataset) -> None:
    """Gives the split values and tags their `SPLIT_COLORS` in the dataset's App colour
    scheme (``dataset.app_config.color_scheme``), so the grid's tags, the sidebar,
    FiftyOne's Embeddings panel coloured by ``split``, this panel and the HTML report
    show a split in one colour.

    The rest of the scheme is kept: other fields' and other tags' colours, the colour
    pool. The App colours tags per value only when the scheme colours by value, so a
    scheme that does not say how it colours is set to colour by value; a scheme that
    says so is left to colour as the user chose.

    Args:
        dataset: the dataset
    """
    scheme = dataset.app_config.color_scheme or fo.ColorScheme()
    fields = {entry.get("path"): entry for entry in scheme.fields or []}
    split_colors = [{"value": v, "color": SPLIT_COLORS[v]} for v in SPLIT_VALUES]
    fields[SPLIT_FIELD] = {**fields.get(SPLIT_FIELD, {}), "path": SPLIT_FIELD}
    fields[SPLIT_FIELD]["valueColors"] = split_colors
    ours = (*SPLIT_TAGS, EXCLUDED_TAG)
    tags = fields.get("tags", {})
    others = [v for v in tags.get("valueColors") or [] if v.get("value") not in ours]
    fields["tags"] = {**tags, "path": "tags"}
    fields["tags"]["valueColors"] = [{"value": t, "color": SPLIT_COLORS[t]} for t in ours] + others
    scheme.fields = list(fields.values())
    if scheme.color_by is None:
        scheme.color_by = "value"
    dataset.app_config.color_scheme = scheme
    dataset.save()


def color_scheme_params(dataset: fo.Dataset) -> dict[str, Any]:
    """Parameters of the App's ``set_color_scheme`` operator that show the dataset's
    stored colour scheme, split colours included, in an App that is open: the App
    reads the stored scheme only when it loads the dataset. Trigger it after
    `apply_split_colors` ran in a round or a map build started from the App.

    Args:
        dataset: the dataset
    """
    scheme = dataset.app_config.color_scheme or fo.ColorScheme()
    return {"color_by": scheme.color_by, "fields": list(scheme.fields or [])}


# --------------------------------------------------------------------------- the figure


def map_figure(
    samples: foc.SampleCollection,
    color_by: str = "split",
    max_points: int | None = None,
    drawn: DrawnPoints | None = None,
) -> dict[str, Any] | None:
    """The panel's plotly figure for ``samples``: ``{"data", "layout", "stats",
    "drawn"}``, or None.

    ``data``, in this order: the view's split samples that have a point, in one WebGL
    trace (`POINTS_TRACE`; ids = sample ids; train drawn first, under the held-out
    splits); the legend entries of the points' colours; the outlines of
    the bubbles with a sample in the view, one line trace per style and colour (solid:
    the whole bubble, in the colour of its outer ring's split; dotted: its inner shell,
    in that shell's split's colour); the `BUBBLES_TRACE` of their centres (ids = anchor
    ids, hover = figures, labelled unless there are over `FADE_ABOVE_BUBBLES`, when all
    bubble marks are faint). None when the dataset has no map.

    Args:
        samples: a dataset or view
        color_by: one of `COLOR_BY`
        max_points: draw a seeded random subsample of a larger view (default
            `MAX_POINTS`)
        drawn: the ``"drawn"`` points of an earlier figure of the same samples,
            unchanged since: a recolour reuses them rather than read every sample of
            the view again (a third of a second at 30,000 samples)
    """
    _check_color_by(color_by)
    dataset = root_dataset(samples)
    stored = load_layout(dataset)
    points = load_points(dataset)
    if stored is None or points is None or not dataset.has_field(ROUND_FIELD):
        return None
    if drawn is None:
        drawn = _drawn_points(samples, points, max_points or MAX_POINTS)
    colors = _point_colors(samples, drawn, color_by)
    bubbles = _bubbles_in_view(samples, _held_now(dataset, stored.anchors))
    faded = len(bubbles) > FADE_ABOVE_BUBBLES
    decimals = _decimals(points[1])
    data = [
        _points_trace(drawn, colors, decimals),
        *_legend_entries(colors),
        *_outline_traces(stored, bubbles, faded, decimals),
        _centre_trace(bubbles.sort_values("anchor_id"), faded, decimals),
    ]
    stats = {
        "method": stored.layout.method,
        "n_view": drawn.n_view,
        "n_on_map": drawn.n_on_map,
        "n_drawn": len(drawn.ids),
        "n_excluded_drawn": int(np.count_nonzero(drawn.category == "excluded")),
        "subsampled": drawn.n_on_map > len(drawn.ids),
        "n_unplaced": drawn.n_unplaced,
        "n_bubbles": len(bubbles),
        "faded": faded,
        "has_outlines": stored.outline_vertices is not None,
    }
    return {"data": data, "layout": _figure_layout(), "stats": stats, "drawn": drawn}


def view_key(samples: foc.SampleCollection) -> str:
    """Names what the panel draws and counts for ``samples``: the map's revision, the
    split state's version, the view's definition (its stages, the App's sidebar
    filters among them), how many samples it holds and how many of them are excluded.
    The App repeats view-change events, several per change, each answered only when
    this key changed: so it reads no sample ids (at 30,000 samples that took a tenth
    of a second or more per event), only the stages and two counts. Curation scores
    are not covered: the panel's Refresh redraws after a new score.

    Args:
        samples: a dataset or view
    """
    dataset = root_dataset(samples)
    state = state_info(dataset) or {}
    # A stage's _uuid is the App's handle on it, not part of what it selects.
    stages = [
        {k: v for k, v in stage.items() if k != "_uuid"} for stage in serialized_view(samples)
    ]
    named = [
        (LAYOUT_RUN.info(dataset) or {}).get("revision"),
        state.get("updated_at"),
        stages,
        samples.count(),
        samples.match_tags(EXCLUDED_TAG).count(),
    ]
    text = json.dumps(named, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _check_color_by(color_by: str) -> None:
    if color_by not in COLOR_BY:
        raise ValueError(f"color_by={color_by!r}; use one of {COLOR_BY}")


@dataclass
class DrawnPoints:
    """The samples of a view drawn on the map, in drawing order."""

    n_view: int
    n_on_map: int  # the view's samples with a point and a split (or the excluded tag)
    n_unplaced: int  # split samples without a point: a round whose map update failed
    ids: np.ndarray
    xy: np.ndarray
    rnd: np.ndarray  # round per point, -1 for none
    category: np.ndarray  # split per point, or "excluded"


def _drawn_points(
    samples: foc.SampleCollection, points: tuple[np.ndarray, np.ndarray], max_points: int
) -> DrawnPoints:
    """The view's samples that have a point, a seeded subsample beyond ``max_points``,
    in `POINT_CATEGORIES` order (held-out splits drawn last, on top)."""
    status = _point_status(samples, points)
    on_map = np.flatnonzero(status.on_map)
    chosen = on_map
    if len(on_map) > max_points:
        chosen = on_map[np.sort(np.random.default_rng(0).choice(len(on_map), max_points, False))]
    chosen = chosen[_drawing_order(status.category[chosen])]
    return DrawnPoints(
        n_view=len(status.ids),
        n_on_map=len(on_map),
        n_unplaced=int(status.unplaced.sum()),
        ids=status.ids[chosen],
        xy=points[1][status.rows[chosen]],
        rnd=status.rnd[chosen],
        category=status.category[chosen],
    )


@dataclass
class PointStatus:
    """Per sample of a collection: its place on the map (`point_status`)."""

    ids: np.ndarray
    rows: np.ndarray  # row of its stored point, -1 for none
    rnd: np.ndarray  # its round, -1 for none
    category: np.ndarray  # its split, or "excluded"

    @property
    def on_map(self) -> np.ndarray:
        """Drawn when in the view: it has a point and a split, or is excluded."""
        return (self.rows >= 0) & np.isin(self.category, POINT_CATEGORIES)

    @property
    def unplaced(self) -> np.ndarray:
        """Split in a round and without a point: a round whose map update failed."""
        return (self.rnd >= 0) & (self.rows < 0)


def point_status(samples: foc.SampleCollection, ids: list[str]) -> PointStatus:
    """The place on the map of those of ``ids`` that are in ``samples``: what
    `recategorized` compares after an exclusion or an inclusion.

    Args:
        samples: the dataset or view the map draws
        ids: sample ids
    """
    return _point_status(samples.select(ids), load_points(root_dataset(samples)))


def _point_status(
    samples: foc.SampleCollection, points: tuple[np.ndarray, np.ndarray]
) -> PointStatus:
    ids, split, rnd = samples.values(["id", SPLIT_FIELD, ROUND_FIELD])
    # The excluded ids, not every sample's tags: reading tags lists is 7x slower.
    excluded = set(samples.match_tags(EXCLUDED_TAG).values("id"))
    return PointStatus(
        ids=np.asarray(ids, dtype=object).astype(str),
        rows=pd.Index(points[0]).get_indexer(ids),
        rnd=np.asarray([-1 if r is None else r for r in rnd], np.int64),
        category=np.asarray(
            ["excluded" if i in excluded else str(s) for i, s in zip(ids, split, strict=True)]
        ),
    )


def _drawing_order(category: np.ndarray) -> np.ndarray:
    rank = pd.Index(POINT_CATEGORIES).get_indexer(category)
    return np.argsort(rank, kind="stable")


def recategorized(
    samples: foc.SampleCollection,
    drawn: DrawnPoints,
    ids: list[str],
    before: PointStatus,
    also: Sequence[str] = (),
) -> DrawnPoints:
    """``drawn`` after the samples ``ids`` were excluded or included again, without
    reading the view's other samples (a third of a second and more at 30,000): the
    same subsample, its points of those samples in their new category, or dropped
    where they left the map (or the view); the counts updated.

    Those that joined the map outside the subsample stay undrawn (a drawing of the
    view anew draws another seeded subsample), but are counted. ``also``: samples the
    change moved on the side, on the map before and after (a copy that took an excluded
    original's place, a sample tagged excluded by hand that left with them), whose
    points take their new category; the drawn duplicates are among them whatever is
    said (found by a stress test: an heir stayed "duplicate" on the map).

    Args:
        samples: the dataset or view ``drawn`` holds the points of
        drawn: the points drawn before the change
        ids: the samples changed
        before: their `point_status` in ``samples`` before the change
        also: other samples whose category may have changed
    """
    after = point_status(samples, ids)
    left = set(before.ids[before.on_map]) - set(after.ids[after.on_map])
    joined = set(after.ids[after.on_map]) - set(before.ids[before.on_map])
    position = {i: k for k, i in enumerate(after.ids)}
    side = set(also) | set(drawn.ids[drawn.category == "duplicate"].tolist())
    side = point_status(samples, sorted(side - set(ids)))
    side_at = {i: k for k, i in enumerate(side.ids)}
    changed = np.asarray([position.get(i, -1) for i in drawn.ids], np.int64)
    # As objects: a view drawn all "train" holds 5-character strings, and "excluded"
    # written into them came back "exclu".
    category, rnd = drawn.category.astype(object), drawn.rnd.copy()
    now = changed >= 0
    category[now], rnd[now] = after.category[changed[now]], after.rnd[changed[now]]
    aside = np.asarray([side_at.get(i, -1) for i in drawn.ids], np.int64)
    moved = aside >= 0
    category[moved], rnd[moved] = side.category[aside[moved]], side.rnd[aside[moved]]
    category = category.astype(str)
    keep = np.flatnonzero(~np.isin(drawn.ids, list(left)))
    keep = keep[_drawing_order(category[keep])]
    return DrawnPoints(
        n_view=drawn.n_view + len(after.ids) - len(before.ids),
        n_on_map=drawn.n_on_map + len(joined) - len(left),
        n_unplaced=drawn.n_unplaced + int(after.unplaced.sum()) - int(before.unplaced.sum()),
        ids=drawn.ids[keep],
        xy=drawn.xy[keep],
        rnd=rnd[keep],
        category=category[keep],
    )


@dataclass
class _PointColors:
    """A colouring of the drawn points: their marker, hover text and legend entries."""

    title: str
    marker: dict[str, Any]
    text: list[str]
    legend: list[tuple[str, str]]  # (entry, colour)


def _point_colors(samples: foc.SampleCollection, drawn: DrawnPoints, color_by: str) -> _PointColors:
    """The drawn points coloured by split, by round, or by a curation score."""
    if color_by == "split":
        present = [c for c in POINT_CATEGORIES if (drawn.category == c).any()]
        legend = [(c, SPLIT_COLORS[c]) for c in present]
        return _categorical("split", drawn.category.tolist(), legend, SPLIT_COLORS)
    if color_by == "round":
        labels = [f"round {r}" for r in drawn.rnd]
        return _palette_colors("round", drawn.rnd, labels)
    scores = _score_values(samples, drawn.ids, SCORE_COLOR_FIELDS[color_by])
    if color_by == "region":
        regions = np.asarray([-1 if v is None else int(v) for v in scores], np.int64)
        labels = [f"region {r}" if r >= 0 else "no region" for r in regions]
        # None drawn has a region yet: say where regions come from.
        none = NOT_COMPUTED.format(what="region") if (regions < 0).all() else "no region"
        return _palette_colors("region", regions, labels, none)
    return _scale_colors(scores)


def _categorical(
    title: str, labels: list[str], legend: list[tuple[str, str]], colors: dict[str, str]
) -> _PointColors:
    marker = {"color": [colors[label] for label in labels], "size": 5, "opacity": 0.85}
    return _PointColors(title, marker, labels, legend)


def _palette_colors(
    title: str, values: np.ndarray, labels: list[str], none: str | None = None
) -> _PointColors:
    """Values (>= 0; -1 for none) in the `ROUND_COLORS` palette, one legend entry per
    colour drawn ("round 1, 11" when two values share a colour), "none" in grey, named
    ``none`` (default "no <title>")."""
    colors = {}
    legend = []
    for slot, color in enumerate(ROUND_COLORS):
        shared = [int(v) for v in np.unique(values[values >= 0]) if v % len(ROUND_COLORS) == slot]
        if shared:
            listed = ", ".join(map(str, shared[:3])) + (", ..." if len(shared) > 3 else "")
            legend.append((f"{title} {listed}", color))
    for label, value in zip(labels, values, strict=True):
        colors[label] = ROUND_COLORS[value % len(ROUND_COLORS)] if value >= 0 else NO_SCORE_COLOR
    if (values < 0).any():
        legend.append((none or f"no {title}", NO_SCORE_COLOR))
    return _categorical(title, labels, legend, colors)


def _scale_colors(scores: np.ndarray) -> _PointColors:
    """Typicality on the Viridis scale (computed here, so points without a score can be
    grey in the same trace), with legend entries at five values of the drawn range."""
    has = np.asarray([v is not None for v in scores], bool)
    numbers = np.asarray([v if v is not None else np.nan for v in scores], np.float64)
    low, high = (np.nanmin(numbers), np.nanmax(numbers)) if has.any() else (0.0, 1.0)
    spread = high - low if high > low else 1.0
    colors = np.full(len(scores), NO_SCORE_COLOR, dtype=object)
    if has.any():
        colors[has] = _viridis((numbers[has] - low) / spread)
    if not has.any():
        stops = np.array([])
    elif high > low:
        stops = np.linspace(low, high, 5)
    else:
        stops = np.array([low])
    # As many decimals as keep the stops apart (a narrow range read 0.94 twice).
    places = next((d for d in range(2, 7) if len({f"{v:.{d}f}" for v in stops}) == len(stops)), 6)
    legend = [
        (f"typicality {v:.{places}f}", c)
        for v, c in zip(stops, _viridis((stops - low) / spread), strict=True)
    ]
    if not has.any():
        legend.append((NOT_COMPUTED.format(what="typicality"), NO_SCORE_COLOR))
    elif (~has).any():
        legend.append(("no typicality", NO_SCORE_COLOR))
    labels = [
        f"typicality {v:.3f}" if ok else "no typicality" for v, ok in zip(numbers, has, strict=True)
    ]
    marker = {"color": colors.tolist(), "size": 5, "opacity": 0.85}
    return _PointColors("typicality", marker, labels, legend)


def _viridis(shares: np.ndarray) -> list[str]:
    """Hex colours of the Viridis scale at ``shares`` (0..1)."""
    import plotly.colors

    rgb = plotly.colors.sample_colorscale("Viridis", np.clip(shares, 0.0, 1.0).tolist())
    return ["#{:02x}{:02x}{:02x}".format(*map(round, plotly.colors.unlabel_rgb(c))) for c in rgb]


def _score_values(samples: foc.SampleCollection, ids: np.ndarray, field: str) -> np.ndarray:
    """A curation score per drawn id (None where the sample has none)."""
    dataset = root_dataset(samples)
    if not dataset.has_field(field):
        return np.full(len(ids), None, dtype=object)
    found = dict(zip(*dataset.select(list(ids)).values(["id", field]), strict=True))
    return np.asarray([found.get(i) for i in ids], dtype=object)


def _decimals(xy: np.ndarray) -> int:
    """Decimals that keep coordinates to 1/10,000 of the map's span: far below a pixel,
    even zoomed in, and a smaller figure than full floats."""
    span = float(np.ptp(xy, axis=0).max()) if len(xy) else 0.0
    return max(0, 4 - int(np.floor(np.log10(span)))) if span > 0 else 4


def _rounded(values: Any, decimals: int) -> list[float]:
    return np.round(np.asarray(values, np.float64), decimals).tolist()


def _points_trace(drawn: DrawnPoints, colors: _PointColors, decimals: int) -> dict[str, Any]:
    xy = np.round(drawn.xy.astype(np.float64), decimals)
    return {
        "type": POINTS_TRACE_TYPE,
        "mode": "markers",
        "name": POINTS_TRACE,
        "x": xy[:, 0].tolist(),
        "y": xy[:, 1].tolist(),
        "ids": drawn.ids.tolist(),
        "text": colors.text,
        "hoverinfo": "text",
        "marker": colors.marker,
        "showlegend": False,
    }


def _legend_entries(colors: _PointColors) -> list[dict[str, Any]]:
    """Traces without points: the legend of the points' colours."""
    entries = []
    for k, (name, color) in enumerate(colors.legend):
        slot = {
            "type": "scatter",
            "mode": "markers",
            "name": name,
            "x": [None],
            "y": [None],
            "marker": {"color": color, "size": 9},
            "hoverinfo": "skip",
            "legendgroup": "points",
        }
        if k == 0:
            slot["legendgrouptitle"] = {"text": f"Points by {colors.title}:"}
        entries.append(slot)
    return entries


def _held_now(dataset: fo.Dataset, anchors: pd.DataFrame) -> pd.DataFrame:
    """The stored bubbles that hold a validation or test sample now, with those counted
    from the split fields: the map's counts date from its last update, and an exclusion
    or a deletion since leaves them stale (found by a stress test: every sample
    excluded, the map still drew both bubbles, one with "test 31")."""
    counts = {
        column: anchors["anchor_id"]
        .map(dataset.match(F(SPLIT_FIELD) == split).count_values(ANCHOR_FIELD))
        .fillna(0)
        .astype(np.int64)
        for column, split in (("n_validation", "validation"), ("n_test", "test"))
    }
    now = anchors.assign(**counts)
    return now[(now["n_validation"] + now["n_test"]) > 0]


def _bubbles_in_view(samples: foc.SampleCollection, anchors: pd.DataFrame) -> pd.DataFrame:
    """The stored bubbles with a sample in the view, most held-out samples first."""
    bubbles = anchors
    if is_filtered(samples):
        present = {int(a) for a in samples.distinct(ANCHOR_FIELD)}
        bubbles = bubbles[bubbles["anchor_id"].isin(present)]
    bubbles = bubbles.assign(n_eval=bubbles["n_validation"] + bubbles["n_test"])
    return bubbles.sort_values(["n_eval", "anchor_id"], ascending=[False, True])


def _figure_layout() -> dict[str, Any]:
    # No axis titles or ticks: t-SNE's coordinates mean nothing, and the panel names
    # the method above the plot.
    axis = {"showticklabels": False, "showgrid": False, "zeroline": False, "title": None}
    return {
        "dragmode": "lasso",
        "hovermode": "closest",
        "hoverlabel": HOVER_STYLE,
        "showlegend": True,
        # Below the plot, clear of the App's toolbar in the plot's top right corner.
        "legend": {
            "orientation": "h",
            "x": 0,
            "xanchor": "left",
            "y": -0.02,
            "yanchor": "top",
            "font": {"size": 12, "color": LEGEND_TEXT_COLOR},
            "itemsizing": "constant",
        },
        "margin": {"t": 8, "l": 8, "r": 8, "b": 8},
        "xaxis": axis,
        "yaxis": {**axis, "scaleanchor": "x", "scaleratio": 1},
        "uirevision": "bubblefence",  # keep zoom when the panel re-renders
    }


def shell_splits(layout: str) -> tuple[str, str]:
    """(inner shell's split, outer ring's split) of a bubble's layout."""
    return ("validation", "test") if layout == "inner_val" else ("test", "validation")


def _outline_traces(
    stored: StoredLayout, bubbles: pd.DataFrame, faded: bool, decimals: int
) -> list[dict[str, Any]]:
    """One polyline trace per (shell, split) with outlines in the view: a solid line
    around each whole bubble in its outer ring's split colour, a dotted one around its
    inner shell in that shell's split colour."""
    if stored.outline_vertices is None or not len(bubbles):
        return []
    shells = {"outer": [], "inner": []}
    for row in bubbles.itertuples():
        inner_split, outer_split = shell_splits(row.layout)
        shells["outer"].append((outer_split, stored.outline(row, "outer")))
        shells["inner"].append((inner_split, stored.outline(row, "inner")))
    traces = []
    for shell, dash, legend in (
        ("outer", "solid", "bubble, outer ring"),
        ("inner", "dot", "inner shell"),
    ):
        for split in ("test", "validation"):
            polygons = [p for s, p in shells[shell] if s == split and len(p)]
            if not polygons:
                continue
            xs: list[float | None] = []
            ys: list[float | None] = []
            for polygon in polygons:  # closed, and a None between polygons
                closed = np.round(np.vstack([polygon, polygon[:1]]).astype(np.float64), decimals)
                xs += closed[:, 0].tolist() + [None]
                ys += closed[:, 1].tolist() + [None]
            traces.append(
                {
                    "type": OUTLINE_TRACE_TYPE,
                    "mode": "lines",
                    "name": f"{legend} {split}",
                    "x": xs,
                    "y": ys,
                    "hoverinfo": "skip",
                    "opacity": 0.35 if faded else 0.9,
                    "line": {
                        "color": SPLIT_COLORS[split],
                        "width": 1 if faded else 1.6,
                        "dash": dash,
                    },
                    "legendgroup": "bubbles",
                }
            )
    if traces:
        traces[0]["legendgrouptitle"] = {
            "text": "Bubbles (solid: whole bubble, dotted: inner shell):"
        }
    return traces


def _shells_text(bubble: Any) -> str:
    """What a bubble's shells hold, for its hover (a bubble that holds none is not
    drawn, `_held_now`): only shells that hold samples are named."""
    inner_split, outer_split = shell_splits(bubble.layout)
    held = {"validation": int(bubble.n_validation), "test": int(bubble.n_test)}
    if not held[inner_split]:
        return f"no inner shell, all {outer_split}"
    if not held[outer_split]:  # the outer ring holds no sample: do not name it
        return f"all {inner_split} (inner shell only)"
    radius = f" (radius {bubble.inner_radius:.3g})" if bubble.inner_radius > 0 else ""
    return f"inner shell {inner_split}{radius}, outer ring {outer_split}"


def _centre_trace(bubbles: pd.DataFrame, faded: bool, decimals: int) -> dict[str, Any]:
    """The bubbles' centres: click targets (ids = anchor ids) with the bubble's figures
    on hover, and its number as a label unless ``faded``."""
    figures = []
    for row in bubbles.itertuples():
        shell = _shells_text(row)
        lid = f"{row.lid:.1f}" if np.isfinite(row.lid) else "n/a"
        figures.append(
            [
                int(row.anchor_id),
                f"{row.radius:.3f}",
                shell,
                lid,
                int(row.n_validation),
                int(row.n_test),
                int(row.round),
            ]
        )
    trace = {
        "type": "scatter",
        "mode": "markers" if faded else "markers+text",
        "name": BUBBLES_TRACE,
        "x": _rounded(bubbles["x"], decimals),
        "y": _rounded(bubbles["y"], decimals),
        "ids": [str(int(a)) for a in bubbles["anchor_id"]],
        "customdata": figures,
        "hovertemplate": CENTRE_HOVER,
        "marker": {
            "symbol": "circle-open-dot",
            "size": 7 if faded else 10,
            "color": CENTRE_COLOR,
            "opacity": 0.5 if faded else 1.0,
            "line": {"width": 1.5},
        },
        "legendgroup": "bubbles",
    }
    if not faded:  # labels: the bubble numbers, where they do not cover each other
        shown = _spaced(bubbles)
        trace["text"] = [
            str(int(a)) if keep else "" for a, keep in zip(bubbles["anchor_id"], shown, strict=True)
        ]
        trace["textposition"] = "top center"
        trace["textfont"] = {"size": 10, "color": LEGEND_TEXT_COLOR}
    return trace


def _spaced(bubbles: pd.DataFrame) -> np.ndarray:
    """Which bubbles' numbers are drawn: the largest first (most held-out samples), then
    each whose centre is at least `LABEL_GAP` of the map's extent from every number
    drawn already. Numbers over each other ("18 22 20", "3813" read as one) said nothing;
    every bubble keeps its number on hover."""
    xy = bubbles[["x", "y"]].to_numpy(np.float64)
    if len(xy) < 2:
        return np.ones(len(xy), bool)
    gap = LABEL_GAP * max(float(np.ptp(xy[:, 0])), float(np.ptp(xy[:, 1])), 1e-12)
    held = (bubbles["n_validation"] + bubbles["n_test"]).to_numpy()
    shown = np.zeros(len(xy), bool)
    for i in np.lexsort((bubbles["anchor_id"].to_numpy(), -held)):
        if not shown.any() or np.min(np.linalg.norm(xy[shown] - xy[i], axis=1)) >= gap:
            shown[i] = True
    return shown


# --------------------------------------------------------------------------- summary


def map_summary(samples: foc.SampleCollection) -> dict[str, Any] | None:
    """Counts per split and round, eval share vs target and bubbles, for ``samples``,
    and when the split state was last saved (``split_updated_at``).

    None when the dataset has no BubbleFence state. Counts are over the whole view
    (not the drawn subsample); excluded samples are counted apart, whatever their split.

    Args:
        samples: a dataset or view
    """
    dataset = root_dataset(samples)
    info = state_info(dataset)
    if info is None or not dataset.has_field(ROUND_FIELD):
        return None
    key = F(ROUND_FIELD).to_string().concat(":", F(SPLIT_FIELD))
    # One batch: FiftyOne runs the counts in one pass over the view, not five.
    by_key, n_view, tag_counts, n_split, anchors = samples.aggregate(
        [
            fo.CountValues(key),
            fo.Count(),
            fo.CountValues("tags"),
            fo.Count(ROUND_FIELD),
            fo.Distinct(ANCHOR_FIELD),
        ]
    )
    by_round: dict[int, dict[str, int]] = {}
    for value, n in by_key.items():
        if value is None:
            continue
        round_str, split = value.split(":", 1)
        by_round.setdefault(int(round_str), {})[split] = int(n)
    totals = {s: sum(r.get(s, 0) for r in by_round.values()) for s in SPLIT_VALUES}
    kept = sum(totals[s] for s in SPLIT_TAGS)
    n_eval = totals["validation"] + totals["test"]
    config = info.get("config", {})
    # The number of bubbles is in the map run's parameters: no arrays to read.
    map_params = LAYOUT_RUN.info(dataset) or {}
    # Excluded samples are never split: not "not split yet" (a split would not assign them).
    n_unsplit = n_view - n_split
    if n_unsplit and tag_counts.get(EXCLUDED_TAG):
        n_unsplit -= samples.match_tags(EXCLUDED_TAG).exists(ROUND_FIELD, False).count()
    # Samples whose media or embedding failed are tried at every run, and fail again
    # until fixed: said apart, not as work a run would do.
    n_failed = 0
    if n_unsplit and samples.has_field(ERROR_FIELD):
        unsplit = samples.match_tags(EXCLUDED_TAG, bool=False).exists(ROUND_FIELD, False)
        n_failed = unsplit.exists(ERROR_FIELD).count()
        n_unsplit -= n_failed
    return {
        "n_view": n_view,
        "by_round": {r: by_round[r] for r in sorted(by_round)},
        "totals": totals,
        "n_excluded": int(tag_counts.get(EXCLUDED_TAG, 0)),
        "n_not_split": n_unsplit,
        "n_failed": n_failed,
        "eval_share": n_eval / kept if kept else 0.0,
        "eval_target": config.get("eval_ratio"),
        "validation_share": totals["validation"] / n_eval if n_eval else 0.0,
        "validation_target": config.get("validation_ratio"),
        "n_bubbles_in_view": len(anchors),
        "n_bubbles": map_params.get("n_anchors"),
        "split_updated_at": info.get("updated_at"),
    }
