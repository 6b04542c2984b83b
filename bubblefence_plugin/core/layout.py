"""The 2-D map of the embeddings: fitted once, then new samples are placed, never refitted.

A map must not jump when a round adds samples, or the user loses their bearings
(and the bubbles' outlines would move under earlier samples). So the layout is fitted
once and only *extended*:

* ``tsne`` (scikit-learn; the default, see `default_method`): it separates clusters
  that PCA draws on top of each other. It has no transform that can be stored without
  pickle, so it is fitted once on at most `NONLINEAR_FIT_LIMIT` samples, and every
  other sample, then and later, is placed at the similarity-weighted mean of the 2-D
  positions of its `PLACE_K` most similar already-placed samples (among at most
  `PLACE_BASE_LIMIT` of them). ``umap`` (when ``umap-learn`` is installed) works the
  same way.
* ``pca``: the mean and the two principal axes, fitted on a seeded subsample with the
  same routine the anchors use. Any sample, old or new, is placed by the stored
  projection, so a new sample lands exactly where a refit would put it.

Costs measured on a 2-core machine (512-d, one OpenMP thread): the t-SNE fit on
2,000 samples takes about 3.5 s, placing the rest about 1.4 s per 100,000 samples.
Outside `DEFAULT_NONLINEAR_MIN`..`DEFAULT_NONLINEAR_MAX` samples the default is PCA:
below, t-SNE has too few neighbours to show structure; above a million, placing
alone passes 15 s and each fitted point stands for 500 placed ones.

State: `Layout.to_state` gives JSON-able metadata and plain numeric arrays (stored as
npy bytes by the FiftyOne side), never a pickled model.

Bubbles in 2-D: a projection distorts distances, so a bubble's circle of cosine radius
would not hold its members' points. `bubble_outlines` draws each bubble as the convex
hull of its members' 2-D points (padded, so a bubble of one sample still has an
inside), and its inner shell as the hull of the inner-shell members. `bubble_radii`
gives one radius per shell instead (the 90th percentile, `RADIUS_QUANTILE`, of the
members' 2-D distances to the bubble's centre) for drawings that need circles. No
FiftyOne import here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .anchors import fit_projection, subsample
from .neighbors import knn, project_rows

METHODS = ("pca", "umap", "tsne")
# How people read the method names (the panel's buttons, the map's axes).
METHOD_LABELS = {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE"}
LAYOUT_VERSION = 1
# UMAP and t-SNE cost grows quickly with N (t-SNE: 3.5 s for 2,000 samples, 8.7 s for
# 4,000, on 2 cores); the rest of the samples are placed by kNN.
NONLINEAR_FIT_LIMIT = 2_000
# scikit-learn's default is 1,000; at 500 the clusters of 512-d embeddings were as
# well apart in our tests, in half the time.
TSNE_ITERATIONS = 500
# Neighbours whose positions place a new sample (UMAP/t-SNE layouts).
PLACE_K = 10
# Placed samples a new one is compared with (a seeded subsample beyond it): a round on
# a large map then costs what it costs on a map of this size.
PLACE_BASE_LIMIT = 20_000
# The default method's range, see the module docstring.
DEFAULT_NONLINEAR_MIN = 50
DEFAULT_NONLINEAR_MAX = 1_000_000
# Which percentile of its members' 2-D distances makes a bubble's drawn radius.
RADIUS_QUANTILE = 0.9
# t-SNE and UMAP need a handful of samples to have neighbourhoods at all.
MIN_NONLINEAR_SAMPLES = 5
# Margin around each member's point in a bubble's outline, as a share of the map's
# span: a bubble of one or two samples still has an inside, and no member sits on
# its own bubble's line.
OUTLINE_PAD_SHARE = 0.004
# The margin is drawn as this many corners around each point.
OUTLINE_PAD_CORNERS = 8


def available_methods() -> tuple[str, ...]:
    """The methods usable here: UMAP only when ``umap-learn`` is importable."""
    has_umap = importlib.util.find_spec("umap") is not None
    return tuple(m for m in METHODS if m != "umap" or has_umap)


def default_method(n_samples: int) -> str:
    """The method a first map of ``n_samples`` samples is fitted with.

    t-SNE separates clusters; PCA below `DEFAULT_NONLINEAR_MIN` and above
    `DEFAULT_NONLINEAR_MAX` samples (why: the module docstring).

    Args:
        n_samples: samples to place on the map
    """
    return "tsne" if DEFAULT_NONLINEAR_MIN <= n_samples <= DEFAULT_NONLINEAR_MAX else "pca"


def check_method(method: str) -> str:
    """``method`` if it is a layout method usable here, else a ValueError that says why."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not a layout method; use one of {METHODS}")
    if method not in available_methods():
        raise ValueError(
            "method='umap' needs the umap-learn package (pip install umap-learn); "
            f"available here: {available_methods()}"
        )
    return method


@dataclass
class Layout:
    """A fitted 2-D layout: how to place any embedding of dimension `dim`."""

    method: str
    seed: int
    dim: int
    # PCA only: the mean (dim,) and the two axes (2, dim).
    mean: np.ndarray | None = None
    components: np.ndarray | None = None

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able metadata and numeric arrays (PCA's mean and axes; none otherwise)."""
        meta = {"method": self.method, "seed": self.seed, "dim": self.dim}
        meta["version"] = LAYOUT_VERSION
        if self.method != "pca":
            return meta, {}
        return meta, {"mean": self.mean, "components": self.components}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Layout:
        version = int(meta.get("version", 0))
        if version > LAYOUT_VERSION:
            raise ValueError(
                f"the stored 2-D layout has version {version}; this BubbleFence reads up to "
                f"{LAYOUT_VERSION}. Upgrade the plugin, or refit the map"
            )
        method = str(meta["method"])
        if method not in METHODS:
            raise ValueError(f"the stored 2-D layout has an unknown method {method!r}")
        layout = cls(method=method, seed=int(meta["seed"]), dim=int(meta["dim"]))
        if method == "pca":
            layout.mean = np.asarray(arrays["mean"], np.float32)
            layout.components = np.asarray(arrays["components"], np.float32)
        return layout

    def placement_base(self, n_placed: int) -> np.ndarray:
        """The rows of ``n_placed`` placed samples that `place` compares new samples
        with (all of them up to `PLACE_BASE_LIMIT`): a caller holding many passes only
        those, and `place` takes them all, as it would have taken them.

        Args:
            n_placed: how many samples are placed
        """
        return subsample(n_placed, PLACE_BASE_LIMIT, np.random.default_rng(self.seed))

    def place(
        self,
        embeddings: np.ndarray,
        placed_embeddings: np.ndarray | None = None,
        placed_xy: np.ndarray | None = None,
    ) -> np.ndarray:
        """2-D positions of ``embeddings`` (unit vectors), leaving placed samples where they are.

        PCA uses the stored projection. UMAP/t-SNE layouts need the already-placed
        samples (their embeddings and positions): each new sample goes to the
        similarity-weighted mean of its `PLACE_K` most similar placed samples, among
        at most `PLACE_BASE_LIMIT` of them (a subsample seeded by the layout's seed).

        Args:
            embeddings: (n, dim) unit vectors to place
            placed_embeddings: (m, dim) the placed samples' vectors (UMAP/t-SNE only)
            placed_xy: (m, 2) their positions (UMAP/t-SNE only)
        """
        x = _as_matrix(embeddings, self.dim, "embeddings")
        if len(x) == 0:
            return np.empty((0, 2), np.float32)
        if self.method == "pca":
            shift = self.mean @ self.components.T
            return project_rows(x, None, self.components) - shift
        if placed_embeddings is None or placed_xy is None or len(placed_xy) == 0:
            raise ValueError(
                f"a {self.method} layout places new samples next to placed ones; "
                "pass placed_embeddings and placed_xy (none are placed yet)"
            )
        base = _as_matrix(placed_embeddings, self.dim, "placed_embeddings")
        base_xy = np.asarray(placed_xy, np.float32).reshape(-1, 2)
        if len(base) != len(base_xy):
            raise ValueError(
                f"placed_embeddings has {len(base)} rows but placed_xy has {len(base_xy)}"
            )
        rows = self.placement_base(len(base))
        base, base_xy = base[rows], base_xy[rows]
        sims, idx = knn(x, base, PLACE_K)
        weights = np.clip(sims, 0.0, None).astype(np.float64)
        # No neighbour with a positive similarity: the plain mean of the k nearest.
        weights[weights.sum(axis=1) == 0] = 1.0
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("nk,nkd->nd", weights, base_xy[idx].astype(np.float64)).astype(np.float32)


def fit_layout(
    embeddings: np.ndarray, method: str | None = None, seed: int = 0
) -> tuple[Layout, np.ndarray]:
    """Fits a layout on ``embeddings`` (unit vectors) and returns it with their positions.

    A nonlinear method needs `MIN_NONLINEAR_SAMPLES` distinct rows among those it is
    fitted on: on fewer (a static camera's identical frames) scikit-learn's t-SNE
    divides its PCA start by a spread of zero and the process dies (a segfault, found
    by a stress test on 50 identical vectors), so such a request is refused and the
    default method (``method`` None) is PCA there.

    Args:
        embeddings: (n, dim) unit vectors
        method: one of `METHODS`; None: `default_method`, or PCA on too few distinct rows
        seed: seeds the subsamples and the fit
    """
    x = _as_matrix(embeddings, None, "embeddings")
    if len(x) == 0:
        raise ValueError("cannot fit a 2-D layout on zero samples")
    chosen = check_method(method or default_method(len(x)))
    rng = np.random.default_rng(seed)
    fit_rows = None
    if chosen != "pca":
        if len(x) < MIN_NONLINEAR_SAMPLES:
            raise ValueError(
                f"method={chosen!r} needs at least {MIN_NONLINEAR_SAMPLES} samples, got "
                f"{len(x)}; use method='pca'"
            )
        fit_rows = subsample(len(x), NONLINEAR_FIT_LIMIT, rng)
        if _distinct_rows(x[fit_rows], MIN_NONLINEAR_SAMPLES) < MIN_NONLINEAR_SAMPLES:
            if method is not None:
                raise ValueError(
                    f"method={chosen!r} needs at least {MIN_NONLINEAR_SAMPLES} distinct "
                    "vectors, and these are nearly all the same; use method='pca'"
                )
            chosen, rng = "pca", np.random.default_rng(seed)
    if chosen == "pca":
        projection = fit_projection(x, 2, rng)
        components = projection.components
        if len(components) < 2:  # a single sample: any second axis will do
            components = np.vstack([components, np.zeros((1, x.shape[1]), np.float32)])
        layout = Layout("pca", seed, x.shape[1], projection.mean.astype(np.float32), components[:2])
        return layout, layout.place(x)
    layout = Layout(chosen, seed, x.shape[1])
    fitted = _fit_nonlinear(x[fit_rows], chosen, seed)
    xy = np.empty((len(x), 2), np.float32)
    xy[fit_rows] = fitted
    rest = np.setdiff1d(np.arange(len(x)), fit_rows)
    if len(rest):
        xy[rest] = layout.place(x[rest], x[fit_rows], fitted)
    return layout, xy


def _distinct_rows(x: np.ndarray, enough: int) -> int:
    """How many distinct rows ``x`` has, counted up to ``enough`` (the scan stops there)."""
    seen: set[bytes] = set()
    for row in np.ascontiguousarray(x):
        seen.add(row.tobytes())
        if len(seen) >= enough:
            break
    return len(seen)


def _fit_nonlinear(x: np.ndarray, method: str, seed: int) -> np.ndarray:
    n = len(x)
    if method == "tsne":
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        # scikit-learn's t-SNE gradient spins OpenMP threads; on a busy 2-core machine
        # that made 300 points take 25 s instead of 1 s. One thread is also what keeps
        # the layout identical across machines.
        with threadpool_limits(1, user_api="openmp"):
            perplexity = float(min(30.0, (n - 1) / 3.0))
            reducer = TSNE(
                n_components=2,
                perplexity=perplexity,
                init="pca",
                max_iter=TSNE_ITERATIONS,
                random_state=seed,
            )
            return np.asarray(reducer.fit_transform(x), np.float32)

    import umap

    reducer = umap.UMAP(
        n_components=2, n_neighbors=min(15, n - 1), metric="cosine", random_state=seed
    )
    return np.asarray(reducer.fit_transform(x), np.float32)


# Smallest drawn bubble radius, as a share of the map's span: a circle of radius 0
# (a bubble holding one sample) would not be drawn at all.
MIN_DRAWN_SHARE = 0.004


def bubble_radii(
    xy: np.ndarray,
    member_anchor: np.ndarray,
    inner: np.ndarray,
    centres_xy: np.ndarray,
    radius: np.ndarray,
    inner_radius: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Drawn (outer, inner) radii of each bubble around its 2-D centre.

    ``member_anchor[i]`` is the bubble of sample i (-1 for none) and ``inner[i]`` whether
    it is in that bubble's inner shell. Each radius is the `RADIUS_QUANTILE` percentile
    of the members' 2-D distances to the centre. A bubble with no member left (its
    samples were deleted) gets its cosine radius times the median 2-D/cosine ratio of
    the others; an empty inner shell gets the outer circle scaled by the cosine
    inner/outer ratio, and a bubble without one (inner radius <= 0) an inner radius of
    0. The inner circle never exceeds the outer one.

    Args:
        xy: (n, 2) the samples' points
        member_anchor: (n,) each sample's bubble row (0..n_anchors-1), -1 for none
        inner: (n,) whether the sample is in its bubble's inner shell
        centres_xy: (n_anchors, 2) the bubbles' 2-D centres
        radius: (n_anchors,) the bubbles' cosine radii
        inner_radius: (n_anchors,) their inner shells' cosine radii (<= 0: none)
    """
    n_anchors = len(centres_xy)
    member_anchor = np.asarray(member_anchor)
    inner = np.asarray(inner, bool)
    members = member_anchor >= 0
    rows = member_anchor[members]
    dist = np.linalg.norm(xy[members] - centres_xy[rows], axis=1)
    in_inner = inner[members]
    outer = _quantile_per_anchor(dist, rows, n_anchors)
    inner_2d = _quantile_per_anchor(dist[in_inner], rows[in_inner], n_anchors)
    radius = np.asarray(radius, np.float64)
    inner_radius = np.asarray(inner_radius, np.float64)
    known = ~np.isnan(outer) & (radius > 0)
    scale = float(np.median(outer[known] / radius[known])) if known.any() else 1.0
    outer = np.where(np.isnan(outer), radius * scale, outer)
    # A bubble of one sample (a unit held out whole) still gets a visible circle.
    span = float(np.ptp(xy, axis=0).max()) if len(xy) else 0.0
    outer = np.maximum(outer, MIN_DRAWN_SHARE * span)
    # A bubble without an inner shell (inner radius <= 0) gets an inner circle of 0.
    ratio = np.divide(inner_radius, radius, out=np.zeros(n_anchors), where=radius > 0)
    inner_2d = np.where(np.isnan(inner_2d), outer * np.clip(ratio, 0.0, 1.0), inner_2d)
    inner_2d = np.where(inner_radius > 0, np.maximum(inner_2d, MIN_DRAWN_SHARE * span), 0.0)
    return outer, np.minimum(inner_2d, outer)


def _quantile_per_anchor(dist: np.ndarray, anchor: np.ndarray, n_anchors: int) -> np.ndarray:
    """`RADIUS_QUANTILE` of ``dist`` per anchor; NaN for anchors without a value."""
    out = np.full(n_anchors, np.nan)
    per_anchor = pd.Series(dist).groupby(anchor).quantile(RADIUS_QUANTILE)
    out[per_anchor.index.to_numpy(dtype=np.int64)] = per_anchor.to_numpy()
    return out


@dataclass
class Outlines:
    """Each bubble's outline and its inner shell's, as closed polygons.

    ``vertices`` holds every polygon's corners, one polygon after another,
    counter-clockwise, the first corner not repeated. Row i of ``outer`` (of
    ``inner``) is (first corner, number of corners) of bubble i's outline (of its inner
    shell's); 0 corners: nothing to draw.
    """

    vertices: np.ndarray  # (k, 2) float32
    outer: np.ndarray  # (n_anchors, 2) int64
    inner: np.ndarray  # (n_anchors, 2) int64

    def polygon(self, anchor_row: int, shell: str = "outer") -> np.ndarray:
        """The (m, 2) corners of one bubble's outline (``shell`` "outer") or inner shell's.

        Args:
            anchor_row: the bubble's row (0..n_anchors-1)
            shell: "outer" or "inner"
        """
        start, count = (self.outer if shell == "outer" else self.inner)[anchor_row]
        return self.vertices[start : start + count]


def bubble_outlines(
    xy: np.ndarray, member_anchor: np.ndarray, inner: np.ndarray, n_anchors: int
) -> Outlines:
    """Each bubble drawn as the convex hull of its members' 2-D points, its inner shell
    as the hull of the inner-shell members; every point padded by `OUTLINE_PAD_SHARE` of
    the map's span, so every member lies inside its bubble's outline, and a bubble of
    one sample is a small polygon around it. A bubble without members (all deleted), or
    without inner-shell members, gets no polygon there.

    Args:
        xy: (n, 2) the samples' points
        member_anchor: (n,) each sample's bubble row (0..n_anchors-1), -1 for none
        inner: (n,) whether the sample is in its bubble's inner shell
        n_anchors: number of bubbles
    """
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    member_anchor = np.asarray(member_anchor, np.int64)
    inner = np.asarray(inner, bool)
    span = float(np.ptp(xy, axis=0).max()) if len(xy) else 0.0
    pad = max(OUTLINE_PAD_SHARE * span, 1e-6)  # a map of one point still gets a polygon
    angles = np.linspace(0.0, 2 * np.pi, OUTLINE_PAD_CORNERS, endpoint=False)
    corners = pad * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    polygons: list[np.ndarray] = []
    index = {shell: np.zeros((n_anchors, 2), np.int64) for shell in ("outer", "inner")}
    start = 0
    for shell, rows in (("outer", member_anchor >= 0), ("inner", (member_anchor >= 0) & inner)):
        if not rows.any():
            continue
        anchors = member_anchor[rows]
        order = np.argsort(anchors, kind="stable")
        groups = np.split(xy[rows][order], np.flatnonzero(np.diff(anchors[order])) + 1)
        for anchor, points in zip(np.unique(anchors), groups, strict=True):
            polygon = _padded_hull(points, corners)
            index[shell][anchor] = (start, len(polygon))
            polygons.append(polygon)
            start += len(polygon)
    vertices = np.concatenate(polygons) if polygons else np.empty((0, 2))
    return Outlines(vertices.astype(np.float32), index["outer"], index["inner"])


def _padded_hull(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Convex hull (counter-clockwise corners) of ``points``, each widened by ``corners``.

    The widening also keeps qhull away from its degenerate cases (one point, points on
    a line), which it refuses.
    """
    from scipy.spatial import ConvexHull

    padded = (points[:, None, :] + corners[None, :, :]).reshape(-1, 2)
    return padded[ConvexHull(padded).vertices]


def _as_matrix(x: np.ndarray, dim: int | None, name: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or (dim is not None and len(x) and x.shape[1] != dim):
        expected = f"(n, {dim})" if dim is not None else "(n, d)"
        raise ValueError(f"{name} must be a {expected} array, got shape {x.shape}")
    return x
