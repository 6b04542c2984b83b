"""The 2-D map on the FiftyOne side: stored positions, bubble circles, the panel's figure.

Two stored pieces, both cloned with the dataset and removed by `reset`:

* the FiftyOne Brain visualization run ``bubblefence_viz`` holds one 2-D point per
  sample of the BubbleFence state, so FiftyOne's own Embeddings panel can show the map,
  colour it by ``split`` and lasso from it;
* the custom run ``bubblefence_layout`` holds the layout (method, seed, PCA mean and
  axes as npy bytes, see `bubblefence_plugin.core.layout`) and, per bubble, its 2-D centre
  and drawn radii plus the figures the panel's hover shows (radius, LID, counts).

After each split round `update_after_round` places the round's new samples with the
stored layout; earlier points are copied from the stored run, never recomputed, so
they do not move. The layout is fitted once (PCA unless `build_map` is asked for
another method, which refits everything). Keeping this out of the state's commit path
means a failure here never loses a split: the round notes it and the panel offers to
rebuild the map.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import fiftyone as fo
import fiftyone.brain as fob
import fiftyone.core.collections as foc
import numpy as np
import pandas as pd
from fiftyone import ViewField as F

from ..core.layout import Layout, bubble_radii, check_method, fit_layout
from .fields import (
    ANCHOR_FIELD,
    EXCLUDED_TAG,
    ROUND_FIELD,
    SPLIT_FIELD,
    SPLIT_TAGS,
    SPLIT_VALUES,
    is_filtered,
    root_dataset,
)
from .runs import RunLock, RunType, from_npy_bytes, to_npy_bytes
from .state import load_state, state_embeddings, state_info

logger = logging.getLogger(__name__)

VIZ_KEY = "bubblefence_viz"
LAYOUT_RUN = RunType("bubblefence_layout", "bubblefence-layout", 1, "layout_version")
LAYOUT_KEY = LAYOUT_RUN.key
DEFAULT_METHOD = "pca"

# Points the panel draws; a larger view is drawn as a seeded random subsample. The App
# echoes a panel's data with each of its events, so this also bounds that traffic.
MAX_POINTS = 30_000
# Bubbles drawn as (SVG) circle shapes; beyond this they slow the plot down, so the
# rest are outlined by one WebGL line trace.
MAX_SHAPE_BUBBLES = 300
CIRCLE_SEGMENTS = 32

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
BUBBLES_TRACE = "bubbles"
# Per-bubble columns of `BubbleFence.anchors` kept for the panel's hover text.
ANCHOR_COLUMNS = ("radius", "inner_radius", "layout", "lid", "round", "n_validation", "n_test")

# FiftyOne caches one Dataset object per name in a process, and a run's results are
# read through a file handle on its document: the App server runs panel events in
# threads, and two events reading one run at once corrupted each other's read (seen in
# the browser test). Reads of the map's runs therefore take turns.
_RESULTS_READ_LOCK = threading.Lock()


@dataclass
class StoredLayout:
    """The ``bubblefence_layout`` run: the fitted layout and the per-bubble digest."""

    layout: Layout
    params: dict[str, Any]
    anchors: pd.DataFrame  # anchor_id, x, y, r2d, inner_r2d and ANCHOR_COLUMNS


# --------------------------------------------------------------------------- reading


def load_layout(dataset: fo.Dataset) -> StoredLayout | None:
    """The stored layout, or None when there is none.

    Args:
        dataset: the dataset
    """
    if not dataset.has_run(LAYOUT_KEY):
        return None
    params = LAYOUT_RUN.params(dataset)
    with _RESULTS_READ_LOCK:
        results = LAYOUT_RUN.results(dataset)
    arrays = {k: from_npy_bytes(v) for k, v in results.arrays.items()}
    layout = Layout.from_state(results.meta, arrays)
    anchors = pd.DataFrame(
        {k.removeprefix("anchor_"): v for k, v in arrays.items() if k.startswith("anchor_")}
    )
    return StoredLayout(layout, params, anchors)


def load_points(dataset: fo.Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """(sample ids, their 2-D points) of the ``bubblefence_viz`` run, or None.

    Args:
        dataset: the dataset
    """
    if not dataset.has_brain_run(VIZ_KEY):
        return None
    with _RESULTS_READ_LOCK:
        results = dataset.load_brain_results(VIZ_KEY, cache=False, load_view=False)
    return np.asarray(results.sample_ids).astype(str), np.asarray(results.points, np.float32)


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
    layout is extended (fitted with `DEFAULT_METHOD` when there is none): stored
    points are kept as they are. With it, every point is recomputed by a new layout.
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
    if not len(frame):  # every sample was deleted: nothing to draw
        delete_map(dataset)
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
        method = refit_method or (stored.layout.method if stored else DEFAULT_METHOD)
        layout, xy = fit_layout(embeddings, method, seed=int(bf.config.seed))
        fitted_at = _now()
        n_new = len(ids)
    else:
        layout = stored.layout
        fitted_at = stored.params.get("fitted_at")
        new = ~placed
        n_new = int(new.sum())
        if n_new:
            xy[new] = layout.place(embeddings[new], embeddings[placed], xy[placed])

    anchors = _anchor_digest(bf, frame, xy, embeddings, layout)
    fob.compute_visualization(dataset, points=dict(zip(ids, xy, strict=True)), brain_key=VIZ_KEY)
    meta, arrays = layout.to_state()
    for column in anchors.columns:
        values = anchors[column].to_numpy()
        # pandas keeps strings as objects, which npy could only store by pickling
        arrays[f"anchor_{column}"] = values.astype(str) if values.dtype == object else values
    params = LAYOUT_RUN.new_params(
        layout_method=layout.method,
        n_points=len(ids),
        n_anchors=len(anchors),
        fitted_at=fitted_at,
        updated_at=_now(),
    )
    payload = {"meta": meta, "arrays": {k: to_npy_bytes(v) for k, v in arrays.items()}}
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
) -> pd.DataFrame:
    """Per bubble: 2-D centre (its centre sample's point), drawn radii and hover figures.

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
    outer, inner = bubble_radii(
        xy,
        frame["anchor_id"].to_numpy(),
        (frame["shell"] == "inner").to_numpy(),
        centres,
        anchors["radius"].to_numpy(),
        anchors["inner_radius"].to_numpy(),
    )
    digest = pd.DataFrame(
        {
            "anchor_id": anchors["anchor_id"].to_numpy(np.int64),
            "x": centres[:, 0],
            "y": centres[:, 1],
            "r2d": outer.astype(np.float32),
            "inner_r2d": inner.astype(np.float32),
        }
    )
    for column in ANCHOR_COLUMNS:
        digest[column] = anchors[column].to_numpy()
    return digest


def update_after_round(dataset: fo.Dataset, bf: Any, summary: dict[str, Any]) -> None:
    """`update_map` after a committed round; a failure is logged and noted, never raised.

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


def build_map(samples: foc.SampleCollection, method: str | None = None) -> dict[str, Any]:
    """Builds the map from the stored state: extends it, or refits all with ``method``.

    Refitting moves every point (a new layout); it is the user's explicit choice, e.g.
    to switch to t-SNE. Refused while a split runs on the dataset.

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
                f"dataset {dataset.name!r} has no BubbleFence split yet; run bubblefence_split "
                "first"
            )
        return update_map(dataset, loaded[0], refit_method=method)


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


# --------------------------------------------------------------------------- the figure


def map_figure(
    samples: foc.SampleCollection, color_by: str = "split", max_points: int | None = None
) -> dict[str, Any] | None:
    """The panel's plotly figure for ``samples``: ``{"data", "layout", "stats"}``, or None.

    Points of the view's split samples (WebGL, one trace per split or per round, ids =
    sample ids), bubbles present in the view as circle shapes (outer and inner shell,
    coloured by the split each shell holds, or by the round the bubble was created),
    and a ``bubbles`` marker trace at the centres (ids = anchor ids, hover = figures).
    None when the dataset has no map.

    Args:
        samples: a dataset or view
        color_by: one of `COLOR_BY`
        max_points: draw a seeded random subsample of a larger view (default
            `MAX_POINTS`)
    """
    if color_by not in COLOR_BY:
        raise ValueError(f"color_by={color_by!r}; use one of {COLOR_BY}")
    dataset = root_dataset(samples)
    stored = load_layout(dataset)
    points = load_points(dataset)
    if stored is None or points is None or not dataset.has_field(ROUND_FIELD):
        return None

    drawn = _drawn_points(samples, points, max_points or MAX_POINTS)
    data = _point_traces(drawn, color_by)
    bubbles = _bubbles_in_view(samples, stored.anchors)
    as_shapes, as_lines = bubbles.iloc[:MAX_SHAPE_BUBBLES], bubbles.iloc[MAX_SHAPE_BUBBLES:]
    shapes = [s for row in as_shapes.itertuples() for s in _circle_shapes(row, color_by)]
    if len(as_lines):
        data.append(_outline_trace(as_lines))
    if len(bubbles):
        data.append(_centre_trace(bubbles.sort_values("anchor_id")))
    stats = {
        "method": stored.layout.method,
        "n_view": drawn.n_view,
        "n_drawn": len(drawn.ids),
        "subsampled": drawn.subsampled,
        "n_unplaced": drawn.n_unplaced,
        "n_bubbles": len(bubbles),
        "n_bubbles_as_shapes": len(as_shapes),
    }
    return {"data": data, "layout": _figure_layout(stored.layout.method, shapes), "stats": stats}


@dataclass
class _DrawnPoints:
    """The samples of a view drawn on the map, with their points and categories."""

    view: foc.SampleCollection  # the drawn samples (the view, or its subsample)
    n_view: int
    subsampled: bool
    n_unplaced: int  # split samples without a point: a round whose map update failed
    ids: np.ndarray
    xy: np.ndarray
    rnd: np.ndarray  # round per point, -1 for none
    category: np.ndarray  # split per point, or "excluded"


def _drawn_points(
    samples: foc.SampleCollection, points: tuple[np.ndarray, np.ndarray], max_points: int
) -> _DrawnPoints:
    """The view's samples that have a point, subsampled (seeded) beyond ``max_points``."""
    n_view = samples.count()
    drawn_view = samples
    if n_view > max_points:
        all_ids = samples.values("id")
        rows = np.random.default_rng(0).choice(n_view, max_points, replace=False)
        drawn_view = root_dataset(samples).select([all_ids[i] for i in np.sort(rows)])
    ids, split, rnd = drawn_view.values(["id", SPLIT_FIELD, ROUND_FIELD])
    excluded = set(drawn_view.match_tags(EXCLUDED_TAG).values("id"))
    rows = pd.Index(points[0]).get_indexer(ids)
    on_map = np.flatnonzero(rows >= 0)
    ids = np.asarray(ids, dtype=object)[on_map]
    split = np.asarray(split, dtype=object)[on_map]
    return _DrawnPoints(
        view=drawn_view,
        n_view=n_view,
        subsampled=n_view > max_points,
        n_unplaced=sum(1 for r, row in zip(rnd, rows, strict=True) if r is not None and row < 0),
        ids=ids,
        xy=points[1][rows[on_map]],
        rnd=np.asarray([-1 if r is None else r for r in rnd], np.int64)[on_map],
        category=np.asarray(
            ["excluded" if i in excluded else str(s) for i, s in zip(ids, split, strict=True)]
        ),
    )


def _point_traces(drawn: _DrawnPoints, color_by: str) -> list[dict[str, Any]]:
    """One trace per split or round, or the traces of a curation score."""
    if color_by in SCORE_COLOR_FIELDS:
        return _score_traces(drawn.view, color_by, drawn.xy, drawn.ids)
    if color_by == "split":
        groups = [(c, drawn.category == c, SPLIT_COLORS[c]) for c in POINT_CATEGORIES]
    else:
        groups = [
            (f"round {r}", drawn.rnd == r, ROUND_COLORS[r % len(ROUND_COLORS)])
            for r in sorted(set(drawn.rnd.tolist()))
        ]
    return [
        _point_trace(name, drawn.xy[mask], drawn.ids[mask], color)
        for name, mask, color in groups
        if mask.any()
    ]


def _bubbles_in_view(samples: foc.SampleCollection, anchors: pd.DataFrame) -> pd.DataFrame:
    """The stored bubbles with a sample in the view, most held-out samples first."""
    bubbles = anchors
    if is_filtered(samples):
        present = {int(a) for a in samples.distinct(ANCHOR_FIELD)}
        bubbles = bubbles[bubbles["anchor_id"].isin(present)]
    bubbles = bubbles.assign(n_eval=bubbles["n_validation"] + bubbles["n_test"])
    return bubbles.sort_values(["n_eval", "anchor_id"], ascending=[False, True])


def _figure_layout(method: str, shapes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "shapes": shapes,
        "dragmode": "lasso",
        "hovermode": "closest",
        "showlegend": True,
        "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
        "xaxis": {"title": {"text": f"{method.upper()} 1"}, "zeroline": False},
        "yaxis": {
            "title": {"text": f"{method.upper()} 2"},
            "zeroline": False,
            "scaleanchor": "x",  # circles stay round
            "scaleratio": 1,
        },
        "uirevision": "bubblefence",  # keep zoom when the panel re-renders
    }


def _point_trace(name: str, xy: np.ndarray, ids: np.ndarray, color: str) -> dict[str, Any]:
    # The App sends a panel's plot data back with every event: rounded coordinates
    # keep that payload small, and 4 decimals are far below a pixel.
    xy = np.round(xy.astype(np.float64), 4)
    return {
        "type": "scattergl",
        "mode": "markers",
        "name": name,
        "x": xy[:, 0].tolist(),
        "y": xy[:, 1].tolist(),
        "ids": [str(i) for i in ids],
        "hoverinfo": "name",
        "marker": {"color": color, "size": 5 if name != "train" else 4, "opacity": 0.85},
    }


def _score_traces(
    drawn_view: foc.SampleCollection, color_by: str, xy: np.ndarray, ids: np.ndarray
) -> list[dict[str, Any]]:
    """Points coloured by a curation score: a colour scale for typicality, a palette
    colour per region; samples without the score in one grey trace."""
    field = SCORE_COLOR_FIELDS[color_by]
    values: dict[str, Any] = {}
    if root_dataset(drawn_view).has_field(field):
        values = dict(zip(*drawn_view.values(["id", field]), strict=True))
    score = np.asarray([values.get(i) for i in ids], dtype=object)
    has = np.asarray([v is not None for v in score], bool)
    traces = []
    if has.any():
        trace = _point_trace(color_by, xy[has], ids[has], NO_SCORE_COLOR)
        numbers = score[has].astype(np.float64)
        if color_by == "typicality":
            trace["marker"].update(
                color=np.round(numbers, 4).tolist(),
                colorscale="Viridis",
                showscale=True,
                colorbar={"title": {"text": "typicality"}},
            )
            trace["text"] = [f"typicality {v:.3f}" for v in numbers]
        else:
            regions = numbers.astype(np.int64)
            trace["marker"]["color"] = [ROUND_COLORS[r % len(ROUND_COLORS)] for r in regions]
            trace["text"] = [f"region {r}" for r in regions]
        trace["hoverinfo"] = "text"
        traces.append(trace)
    if (~has).any():
        traces.append(_point_trace(f"no {color_by}", xy[~has], ids[~has], NO_SCORE_COLOR))
    return traces


def _shell_splits(layout: str) -> tuple[str, str]:
    """(inner shell's split, outer shell's split) of a bubble's layout."""
    return ("validation", "test") if layout == "inner_val" else ("test", "validation")


def _circle_shapes(row: Any, color_by: str) -> list[dict[str, Any]]:
    inner_split, outer_split = _shell_splits(row.layout)
    if color_by != "round":  # score colourings keep the circles in their splits' colours
        inner_color, outer_color = SPLIT_COLORS[inner_split], SPLIT_COLORS[outer_split]
    else:
        inner_color = outer_color = ROUND_COLORS[int(row.round) % len(ROUND_COLORS)]
    shapes = []
    for suffix, radius, color, dash in (
        ("", row.r2d, outer_color, "solid"),
        (" inner", row.inner_r2d, inner_color, "dot"),
    ):
        if radius <= 0:  # no inner shell
            continue
        shapes.append(
            {
                "type": "circle",
                "name": f"bubble {int(row.anchor_id)}{suffix}",
                "xref": "x",
                "yref": "y",
                "x0": float(row.x - radius),
                "y0": float(row.y - radius),
                "x1": float(row.x + radius),
                "y1": float(row.y + radius),
                "line": {"color": color, "width": 1.5, "dash": dash},
                "layer": "above",
            }
        )
    return shapes


def _outline_trace(bubbles: pd.DataFrame) -> dict[str, Any]:
    """Outer circles of many bubbles as one WebGL polyline (None separates circles)."""
    t = np.linspace(0.0, 2 * np.pi, CIRCLE_SEGMENTS + 1)
    xs: list[float | None] = []
    ys: list[float | None] = []
    for row in bubbles.itertuples():
        xs += (row.x + row.r2d * np.cos(t)).tolist() + [None]
        ys += (row.y + row.r2d * np.sin(t)).tolist() + [None]
    return {
        "type": "scattergl",
        "mode": "lines",
        "name": "more bubbles",
        "x": xs,
        "y": ys,
        "hoverinfo": "skip",
        "line": {"color": "rgba(200,200,200,0.5)", "width": 1},
    }


def _centre_trace(bubbles: pd.DataFrame) -> dict[str, Any]:
    text = []
    for row in bubbles.itertuples():
        inner_split, _ = _shell_splits(row.layout)
        lid = "n/a" if not np.isfinite(row.lid) else f"{row.lid:.1f}"
        shell = (
            f"inner radius {row.inner_radius:.3f}, inner shell: {inner_split}"
            if row.inner_radius > 0
            else "no inner shell"
        )
        text.append(
            f"bubble {int(row.anchor_id)}<br>radius {row.radius:.3f} (cosine distance), "
            f"{shell}<br>LID {lid}<br>validation {int(row.n_validation)}, "
            f"test {int(row.n_test)}<br>created in round {int(row.round)}"
        )
    return {
        "type": "scatter",
        "mode": "markers",
        "name": BUBBLES_TRACE,
        "x": bubbles["x"].astype(float).tolist(),
        "y": bubbles["y"].astype(float).tolist(),
        "ids": [str(int(a)) for a in bubbles["anchor_id"]],
        "text": text,
        "hoverinfo": "text",
        "marker": {
            "symbol": "circle-open-dot",
            "size": 11,
            "color": "#ffffff",
            "line": {"width": 1.5},
        },
    }


# --------------------------------------------------------------------------- summary


def map_summary(samples: foc.SampleCollection) -> dict[str, Any] | None:
    """Counts per split and round, eval share vs target and bubbles, for ``samples``.

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
    by_round: dict[int, dict[str, int]] = {}
    for value, n in samples.count_values(key).items():
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
    return {
        "n_view": samples.count(),
        "by_round": {r: by_round[r] for r in sorted(by_round)},
        "totals": totals,
        "n_excluded": int(samples.count_sample_tags().get(EXCLUDED_TAG, 0)),
        "n_not_split": samples.exists(ROUND_FIELD, False).count(),
        "eval_share": n_eval / kept if kept else 0.0,
        "eval_target": config.get("eval_ratio"),
        "validation_share": totals["validation"] / n_eval if n_eval else 0.0,
        "validation_target": config.get("validation_ratio"),
        "n_bubbles_in_view": len(samples.distinct(ANCHOR_FIELD)),
        "n_bubbles": map_params.get("n_anchors"),
    }
