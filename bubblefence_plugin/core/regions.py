"""Regions of the embedding space: the strata that make eval cover the data.

Without labels, a split can still hold out only a few corners of the data: every
bubble may land where the candidates happen to be dense. Regions are pseudo-labels
for the quota (SPEC 2.4): seeded k-means over the embeddings, k about sqrt(N), fitted
once (round 0); a later sample joins its nearest region, or opens a new region when
it is farther than `join_distance` from every centre. Earlier samples never change
region, so a region's eval target only grows with it.

Every assignment goes through `neighbors.nearest_centre`, which decides near ties in
float64, so regions are the same at any BLAS thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from .neighbors import ROW_STEP, nearest_centre, plus_plus_seeds

# k = sqrt(N) regions, at most this many: at 1M, 1,000 regions of 1,000 samples would
# ask for 200 eval samples each, more bubbles than the quota needs.
MAX_REGIONS = 256
# Rows the k-means is fitted on: enough for stable centres, cheap at any N.
FIT_SAMPLE = 20_000
# Lloyd iterations: the centres only stratify the quota, they need not converge.
ITERATIONS = 10
# A new sample farther from every centre than this quantile of the fitted samples'
# distances to their own centre is unlike anything seen: it opens a region.
JOIN_QUANTILE = 0.99


@dataclass
class RegionIndex:
    """Region centres (unit vectors, rows never change) and the distance that opens a new one."""

    centres: np.ndarray
    join_distance: float

    def __len__(self) -> int:
        return len(self.centres)

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        seed: int,
        n_regions: int | None = None,
        rows: np.ndarray | None = None,
    ) -> RegionIndex:
        """k-means (k-means++ seeding, seeded) on up to `FIT_SAMPLE` of `embeddings[rows]`."""
        rows = np.arange(len(embeddings)) if rows is None else np.asarray(rows)
        if len(rows) == 0:
            raise ValueError("regions need at least one sample")
        rng = np.random.default_rng([seed, 7])
        if len(rows) > FIT_SAMPLE:
            rows = np.sort(rng.choice(rows, FIT_SAMPLE, replace=False))
        sample = embeddings[rows].astype(np.float32)
        k = n_regions or int(np.clip(round(np.sqrt(len(rows))), 1, MAX_REGIONS))
        k = int(min(k, len(sample)))
        centres = plus_plus_seeds(sample, k, rng)
        for _ in range(ITERATIONS):
            member, _ = nearest_centre(sample, centres)
            # A sparse sum adds each region's rows in row order: the same on every machine.
            sums = sparse.csr_matrix(
                (np.ones(len(member)), (member, np.arange(len(member)))), shape=(k, len(member))
            ) @ sample.astype(np.float64)
            norms = np.linalg.norm(sums, axis=1)
            # An empty region keeps its centre.
            moved = norms > 0
            centres[moved] = (sums[moved] / norms[moved, None]).astype(np.float32)
        member, sims = nearest_centre(sample, centres)
        distance = 1.0 - sims
        join = float(np.quantile(distance, JOIN_QUANTILE)) if len(distance) else 0.0
        return cls(centres=centres, join_distance=max(join, 1e-6))

    def assign(
        self, embeddings: np.ndarray, rows: np.ndarray | None = None
    ) -> tuple[RegionIndex, np.ndarray]:
        """(index with any new regions appended, region id per row) of `embeddings[rows]`
        (all rows by default), in input order. Rows are read a step at a time: a copy
        of a round's rows would cost as much memory as the state's matrix."""
        rows = np.arange(len(embeddings)) if rows is None else np.asarray(rows)
        region = np.empty(len(rows), np.int64)
        sims = np.empty(len(rows))
        for start in range(0, len(rows), ROW_STEP):
            step = slice(start, start + ROW_STEP)
            region[step], sims[step] = nearest_centre(embeddings[rows[step]], self.centres)
        far = np.flatnonzero(1.0 - sims > self.join_distance)
        centres = [self.centres]
        added: list[np.ndarray] = []
        for row in far:
            vector = embeddings[rows[row]]
            # Leader clustering in input order among the far rows: deterministic.
            if added:
                extra = np.vstack(added)
                index, best = nearest_centre(vector[None, :], extra)
                if 1.0 - best[0] <= self.join_distance:
                    region[row] = len(self.centres) + int(index[0])
                    continue
            added.append(vector.astype(np.float32))
            region[row] = len(self.centres) + len(added) - 1
        if added:
            centres.append(np.vstack(added))
        return RegionIndex(np.vstack(centres), self.join_distance), region
