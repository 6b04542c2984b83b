"""Step 6: Local Intrinsic Dimensionality and the LID-adaptive radius.

LID is the maximum-likelihood estimator of Levina and Bickel (as in Amsaleg et
al., 2015) over the k nearest neighbours:

    LID(x) = -1 / mean_i log(d_i / d_k),   i = 1..k

It is computed only where needed (anchor candidates and their snapping
neighbourhoods), from neighbour lists the caller already has.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import BubbleFenceConfig
from .neighbors import knn_similarities, similarity_to_distance


def lid_mle(neighbor_distances: np.ndarray) -> np.ndarray:
    """LID per row of ascending Euclidean neighbour distances (m, k); NaN where undefined.

    Zero distances (exact copies) carry no scale information and are left out; a
    row needs at least two distinct positive distances.
    """
    d = np.asarray(neighbor_distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] < 2:
        return np.full(len(d), np.nan)
    d_k = d[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(d / d_k)
    valid = (d > 0) & (d_k > 0)
    logs = np.where(valid, logs, 0.0)
    count = valid.sum(axis=1)
    mean_log = logs.sum(axis=1) / np.maximum(count, 1)
    with np.errstate(divide="ignore"):
        lid = -1.0 / mean_log
    lid[(count < 2) | ~np.isfinite(lid) | (mean_log == 0)] = np.nan
    return lid


@dataclass
class LidReference:
    """The samples LID is estimated against: a seeded subsample of a round (ascending
    rows) and its vectors, gathered once rather than per candidate batch. The MLE is
    scale-free, so a subsample estimates the same dimension as the whole data."""

    rows: np.ndarray
    vectors: np.ndarray
    # Per k: every row's LID once estimated (NaN where undefined) and whether it was. The
    # candidate streams of a round, one per label or region, share rows: at 50k rows and
    # 1,000 labels they asked for 53k estimates of 33k rows.
    _known: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def of(cls, embeddings: np.ndarray, rows: np.ndarray) -> LidReference:
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        return cls(rows, embeddings[rows])

    def lid(self, embeddings: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
        """LID of `embeddings[rows]`, each row's neighbours taken among the reference
        (itself left out where it is one); each row estimated once per k."""
        rows = np.asarray(rows, dtype=np.int64)
        values, done = self._known.get(k, (np.zeros(0), np.zeros(0, bool)))
        if len(values) < len(embeddings):
            grown = np.full(len(embeddings), np.nan)
            grown[: len(values)] = values
            values, done = grown, np.r_[done, np.zeros(len(embeddings) - len(done), bool)]
            self._known[k] = (values, done)
        todo = np.unique(rows[~done[rows]])
        if len(todo):
            values[todo] = self._estimate(embeddings, todo, k)
            done[todo] = True
        return values[rows]

    def _estimate(self, embeddings: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
        at = np.minimum(np.searchsorted(self.rows, rows), max(len(self.rows) - 1, 0))
        own = np.where(self.rows[at] == rows, at, -1) if len(self.rows) else np.full(len(rows), -1)
        sims = knn_similarities(embeddings[rows], self.vectors, k, exclude_self=own)
        return lid_mle(similarity_to_distance(sims))


def adaptive_radius(
    neighbor_sims: np.ndarray, lid: float, target_size: int, config: BubbleFenceConfig
) -> float:
    """Radius (cosine distance) of a bubble around a centre with these neighbours.

    `neighbor_sims` are the centre's similarities to its nearest samples, most
    similar first (at least `lid_k` of them where the data has them).

    * `lid`: counts grow like distance**LID, so a bubble of `target_size` samples
      has Euclidean radius d_k * (target_size / k) ** (1 / LID): small where the
      neighbours are close (dense), large where they are far (sparse).
    * `knn_distance`: the distance to the `target_size`-th neighbour.
    * `fixed`: `base_radius` everywhere.
    """
    if config.radius_mode == "fixed":
        radius = config.base_radius
    elif config.adaptive_method == "knn_distance" or not np.isfinite(lid) or lid <= 0:
        position = min(target_size, len(neighbor_sims)) - 1
        radius = 1.0 - float(neighbor_sims[position]) if position >= 0 else config.max_radius
    else:
        k = min(config.lid_k, len(neighbor_sims))
        d_k = float(similarity_to_distance(neighbor_sims[k - 1]))
        euclidean = d_k * (target_size / k) ** (1.0 / lid)
        radius = euclidean**2 / 2.0
    radius *= config.radius_scale_factor
    return float(np.clip(radius, config.min_radius, config.max_radius))
