"""Step 5: where to try a bubble. Candidates are real samples, proposed in order.

`qmc` (the default) draws a scrambled Sobol or Halton sequence in a low-dimensional
PCA space of the samples, maps each coordinate through the samples' empirical
quantiles (so points fall where the data is, rather than in the empty corners of
a bounding box), and snaps every point to a real sample: the nearest one, or one
of the `lid_snap_k` nearest picked with probability proportional to 1/LID. The
sequence's low discrepancy spreads the first candidates over the whole space,
which is what gives every region (and label) a chance at eval.
`random` takes samples in a seeded random order; `kmeans` snaps k-means centroids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.stats import qmc
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from .config import BubbleFenceConfig
from .density import LidReference
from .neighbors import project_rows

# PCA and k-means are fitted on at most this many rows; enough for stable axes.
FIT_SAMPLE = 20_000
# Widest embeddings whose PCA decomposes the D x D covariance (exact, 1.4 s at D = 2,048
# on 2 cores, 9-14 s at 4,096 for 3,000-20,000 rows: most of a round at that width).
# Wider, a seeded randomized SVD finds the few axes asked for in 0.9-3.6 s.
EXACT_PCA_MAX_DIM = 2048


@dataclass
class Projection:
    """A PCA basis: `components` (p, D) orthonormal rows and the `mean` (D,)."""

    components: np.ndarray
    mean: np.ndarray

    def transform(self, x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Coordinates of `x[rows]` (all of x when None) on the axes."""
        # x @ C.T - mean @ C.T, block by block: no centred copy or row gather of a large x.
        return project_rows(x, rows, self.components) - self.mean @ self.components.T


def fit_projection(
    embeddings: np.ndarray,
    n_components: int,
    rng: np.random.Generator,
    rows: np.ndarray | None = None,
) -> Projection:
    """PCA of `embeddings[rows]` (all rows when None) on a seeded subsample of them.

    Signs are fixed by scikit-learn, so the axes are machine-independent. Only the
    subsample is gathered: `embeddings[rows]` of a large pool would copy gigabytes.
    """
    rows = np.arange(len(embeddings)) if rows is None else np.asarray(rows)
    sample = embeddings[rows[subsample(len(rows), FIT_SAMPLE, rng)]].astype(np.float64)
    p = int(min(n_components, sample.shape[0], sample.shape[1]))
    if p == 0 or _all_rows_close(sample):
        # All rows identical: any axis will do, the data has no spread to explore.
        components = np.eye(max(p, 1), embeddings.shape[1])
        return Projection(components.astype(np.float32), sample.mean(0).astype(np.float32))
    if sample.shape[1] <= EXACT_PCA_MAX_DIM:
        pca = PCA(n_components=p, svd_solver="covariance_eigh").fit(sample)
    else:
        seed = int(rng.integers(2**31))
        pca = PCA(n_components=p, svd_solver="randomized", random_state=seed).fit(sample)
    return Projection(pca.components_.astype(np.float32), pca.mean_.astype(np.float32))


def _all_rows_close(sample: np.ndarray, step: int = 256) -> bool:
    """`np.allclose(sample, sample[0])`, a block of rows at a time: varied data differs
    in its first block, where one call over a 20,000 x 512 sample cost 0.15 s."""
    return all(
        np.allclose(sample[start : start + step], sample[0])
        for start in range(0, len(sample), step)
    )


def subsample(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of at most `limit` of n rows (all of them when n <= limit)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(rng.choice(n, size=limit, replace=False))


class CandidateStream:
    """Candidate centres among `pool` rows, in the order they should be tried.

    `next_batch(n)` returns up to n new pool positions (indices into `pool_rows`),
    never repeating one; an empty array means the stream is exhausted.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        pool_rows: np.ndarray,
        projection: Projection,
        lid_reference: LidReference,
        config: BubbleFenceConfig,
        rng: np.random.Generator,
        expected_anchors: int,
    ) -> None:
        self._embeddings = embeddings
        self._pool_rows = pool_rows
        self._config = config
        self._rng = rng
        self._reference = lid_reference
        self._used = np.zeros(len(pool_rows), dtype=bool)
        self._lid = np.full(len(pool_rows), np.nan)  # per pool position, filled lazily
        self._projection = projection
        self._points = projection.transform(embeddings, pool_rows)
        self._tree = cKDTree(self._points)
        # Powers of two keep the Sobol sequence balanced (scipy warns otherwise).
        self._draw_budget = 1 << int(np.ceil(np.log2(max(64, 16 * expected_anchors))))
        method = config.anchor_method
        if method == "qmc":
            self._sorted = np.sort(self._points, axis=0)
        elif method == "kmeans":
            self._kmeans = self._kmeans_order(expected_anchors)
        self.restart()

    def restart(self) -> None:
        """Propose every pool sample again (a later pass judges candidates differently)."""
        self._used[:] = False
        self._draws_left = self._draw_budget
        self._cursor = 0
        method = self._config.anchor_method
        if method == "qmc":
            engine = qmc.Sobol if self._config.qmc_sequence == "sobol" else qmc.Halton
            self._engine = engine(d=self._points.shape[1], scramble=True, seed=self._rng)
            # Once the draws are spent, the rest of the pool in a seeded random order,
            # so that the quota never fails for want of candidates.
            self._order = self._rng.permutation(len(self._pool_rows))
        elif method == "random":
            self._order = self._rng.permutation(len(self._pool_rows))
        else:
            self._order = self._kmeans

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """Global rows of these pool positions."""
        return self._pool_rows[positions]

    def next_batch(self, n: int) -> np.ndarray:
        if self._used.all():
            return np.empty(0, dtype=np.int64)
        if self._config.anchor_method == "qmc" and self._draws_left > 0:
            return self._next_qmc(n)
        return self._next_ordered(n)

    # -- the three methods --------------------------------------------------------

    def _next_qmc(self, n: int) -> np.ndarray:
        picked: list[int] = []
        while len(picked) < n and self._draws_left > 0 and not self._used.all():
            draw = min(1 << int(np.ceil(np.log2(max(n, 16)))), self._draws_left)
            self._draws_left -= draw
            points = self._quantile_map(self._engine.random(draw))
            for position in self._snap(points):
                if position >= 0 and not self._used[position]:
                    self._used[position] = True
                    picked.append(int(position))
        return np.asarray(picked, dtype=np.int64)

    def _next_ordered(self, n: int) -> np.ndarray:
        picked: list[int] = []
        while len(picked) < n and self._cursor < len(self._order):
            position = int(self._order[self._cursor])
            self._cursor += 1
            if not self._used[position]:
                self._used[position] = True
                picked.append(position)
        return np.asarray(picked, dtype=np.int64)

    def _kmeans_order(self, expected_anchors: int) -> np.ndarray:
        """Pool positions nearest to k-means centroids, biggest clusters first."""
        n_clusters = int(min(len(self._pool_rows), max(2, 2 * expected_anchors)))
        fit_rows = subsample(len(self._pool_rows), FIT_SAMPLE, self._rng)
        seed = int(self._rng.integers(2**31 - 1))
        kmeans = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed)
        labels = kmeans.fit_predict(self._embeddings[self._pool_rows[fit_rows]])
        sizes = np.bincount(labels, minlength=n_clusters)
        order = np.lexsort((np.arange(n_clusters), -sizes))
        centroids = kmeans.cluster_centers_[order]
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        return self._snap(self._projection.transform(centroids))

    # -- helpers --------------------------------------------------------------------

    def _quantile_map(self, unit: np.ndarray) -> np.ndarray:
        """Map [0, 1)^p to the samples' empirical quantiles, coordinate by coordinate."""
        n = len(self._sorted)
        idx = np.minimum((unit * n).astype(np.int64), n - 1)
        return np.take_along_axis(self._sorted, idx, axis=0)

    def _snap(self, points: np.ndarray) -> np.ndarray:
        """Pool position of the sample each point snaps to."""
        k = int(min(self._config.lid_snap_k, len(self._pool_rows)))
        if self._config.snap_strategy == "nearest" or k == 1:
            _, nearest = self._tree.query(points, k=1)
            return np.asarray(nearest, dtype=np.int64).reshape(-1)
        _, neighbours = self._tree.query(points, k=k)
        neighbours = np.asarray(neighbours, dtype=np.int64).reshape(len(points), k)
        self._fill_lid(np.unique(neighbours))
        weights = 1.0 / self._lid[neighbours]
        # One uniform draw per point against its cumulative weights: a seeded
        # choice with probability proportional to 1/LID.
        cumulative = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
        u = self._rng.random(len(points))[:, None]
        pick = np.minimum((cumulative < u).sum(axis=1), k - 1)
        return neighbours[np.arange(len(points)), pick]

    def _fill_lid(self, positions: np.ndarray) -> None:
        missing = positions[np.isnan(self._lid[positions])]
        if len(missing) == 0:
            return
        values = self._reference.lid(self._embeddings, self._pool_rows[missing], self._config.lid_k)
        valid = np.isfinite(values) & (values > 0)
        fallback = float(np.median(values[valid])) if valid.any() else 1.0
        self._lid[missing] = np.where(valid, values, fallback)
