"""Regions of the embedding space: the strata that make eval cover the data.

Without labels, a split can still hold out only a few corners of the data: every
bubble may land where the candidates happen to be dense. Regions are pseudo-labels
for the quota (SPEC 2.4): seeded k-means over the embeddings, k about sqrt(N), fitted
once (round 0; again while fewer than `MIN_FIT_ROWS` samples are kept, whose distances
cannot tell a join distance); a later sample joins its nearest region, or opens a new
region when it is farther than `join_distance` from every centre (where a round brings
`MIN_FIT_ROWS` or more such samples, regions are fitted on them as round 0's were).
Earlier samples then never change region, so a region's eval target only grows with it.

k-means spends its centres where the squared distances are, in the large clusters: two
small clusters far from each other (orthogonal, say) may share one centre between them,
and then one region's eval target is met inside one of them while the other gets none
(bench_quality's mixture in 3 rounds: three such pairs, labels 33, 44 and 47 of 50 with
no eval). So each region is split in two while its two halves are separate clusters
(`_split_mixed`): 2-means, then the gap between the halves along the line through their
centres, in units of the members' spread along it (`SEPARATION`). Two halves of one
cluster, however broad, lie side by side; two clusters lie apart.

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
# Halves of a region farther apart than this many of their members' standard deviations
# along the line through the halves' centres are two clusters (`_separation`). Measured
# on bench_quality's data sets (round 0, every region's 2-means): regions of one cluster
# 2.5-6.4 (the mixture, its ReLU form, digits; high in 512-1280 dimensions, where 2-means
# finds a direction that parts a few dozen points), regions holding two clusters 12-30.
SEPARATION = 10.0
# An index fitted on fewer kept samples than this is refitted at the next round, on every
# kept sample so far (their regions then change; their splits never do). The join
# distance is a 0.99 quantile of the fitted samples' distances to their centres: below
# about 100 samples it is their largest distance, and on one sample 0, so that every later
# sample opened a region of its own (a first round of 1, then 8,000: 8,001 regions and
# 60 s in the leader loop; with a first round of 50, 29 regions and 0.1 s). From as many
# rows far from every region on, a later round fits regions on them too (`assign`).
MIN_FIT_ROWS = 100
# A half smaller than this is not split off: a region's eval share needs a few samples,
# and a handful of points in hundreds of dimensions can always be parted (an outlier).
MIN_HALF = 8


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
        """k-means (k-means++ seeding, seeded) on up to `FIT_SAMPLE` of `embeddings[rows]`.

        `n_regions`: exactly that many regions; None: about sqrt(N), then every region
        that holds separate clusters split (`_split_mixed`).
        """
        rows = np.arange(len(embeddings)) if rows is None else np.asarray(rows)
        if len(rows) == 0:
            raise ValueError("regions need at least one sample")
        rng = np.random.default_rng([seed, 7])
        if len(rows) > FIT_SAMPLE:
            rows = np.sort(rng.choice(rows, FIT_SAMPLE, replace=False))
        sample = embeddings[rows].astype(np.float32)
        k = n_regions or int(np.clip(round(np.sqrt(len(rows))), 1, MAX_REGIONS))
        k = int(min(k, len(sample)))
        centres = _lloyd(sample, plus_plus_seeds(sample, k, rng))
        member, sims = nearest_centre(sample, centres)
        # The join distance is the k-means regions': once a region of two clusters is
        # split, their members lie nearer their centres and the quantile falls, and a
        # broad cluster's outer members opened regions of their own in the round that
        # fitted them (bench_quality's mixture in 3 rounds: a 153-sample cluster in 9
        # regions, its eval share 0.28).
        join = float(np.quantile(1.0 - sims, JOIN_QUANTILE))
        if n_regions is None:
            centres = _split_mixed(sample, centres, member)
        return cls(centres=centres, join_distance=max(join, 1e-6))

    def assign(
        self, embeddings: np.ndarray, rows: np.ndarray | None = None, seed: int = 0
    ) -> tuple[RegionIndex, np.ndarray]:
        """(index with any new regions appended, region id per row) of `embeddings[rows]`
        (all rows by default), in input order. Rows are read a step at a time: a copy
        of a round's rows would cost as much memory as the state's matrix.

        Rows farther than `join_distance` from every centre open regions: by leader
        clustering in input order while they are fewer than `MIN_FIT_ROWS`, up to
        `MAX_REGIONS` in all (past it, a far row joins the nearest region, old or
        opened); from that many on, regions fitted on them as a first round's are
        (`fit`, `seed`), and the join distance becomes the larger of the two fits'.
        After a burst, rounds of fewer than `MIN_FIT_ROWS` varied rows opened a region
        per row without end (60 rounds of 60: 3,600 regions). A first round of one burst
        (a tight cluster: a join distance of ~0.005) followed by varied data opened a
        region per varied row, each compared with all those opened before it: a round
        of 50,000 rows (40,000 varied) was still in the leader loop after 12 minutes.
        """
        rows = np.arange(len(embeddings)) if rows is None else np.asarray(rows)
        region, sims = self._nearest(embeddings, rows, self.centres)
        far = np.flatnonzero(1.0 - sims > self.join_distance)
        if len(far) >= MIN_FIT_ROWS:
            fitted = RegionIndex.fit(embeddings, seed, rows=rows[far])
            joined, _ = self._nearest(embeddings, rows[far], fitted.centres)
            region[far] = len(self.centres) + joined
            join = max(self.join_distance, fitted.join_distance)
            return RegionIndex(np.vstack([self.centres, fitted.centres]), join), region
        centres = [self.centres]
        added: list[np.ndarray] = []
        for row in far:
            vector = embeddings[rows[row]]
            full = len(self.centres) + len(added) >= MAX_REGIONS
            # Leader clustering in input order among the far rows: deterministic.
            if added:
                extra = np.vstack(added)
                index, best = nearest_centre(vector[None, :], extra)
                if 1.0 - best[0] <= self.join_distance or (full and best[0] >= sims[row]):
                    region[row] = len(self.centres) + int(index[0])
                    continue
            if full:
                continue  # no region opens past the cap: it keeps its nearest old one
            added.append(vector.astype(np.float32))
            region[row] = len(self.centres) + len(added) - 1
        if added:
            centres.append(np.vstack(added))
        return RegionIndex(np.vstack(centres), self.join_distance), region

    @staticmethod
    def _nearest(
        embeddings: np.ndarray, rows: np.ndarray, centres: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(nearest centre, its similarity) of each of `embeddings[rows]`, a step at a time."""
        region = np.empty(len(rows), np.int64)
        sims = np.empty(len(rows))
        for start in range(0, len(rows), ROW_STEP):
            step = slice(start, start + ROW_STEP)
            region[step], sims[step] = nearest_centre(embeddings[rows[step]], centres)
        return region, sims


# A region's half: its centre and its members' vectors.
_Half = tuple[np.ndarray, np.ndarray]


def _lloyd(sample: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """`ITERATIONS` Lloyd steps of spherical k-means from `centres` (float32, updated)."""
    k = len(centres)
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
    return centres


def _split_mixed(sample: np.ndarray, centres: np.ndarray, member: np.ndarray) -> np.ndarray:
    """`centres` with each region (`member`: every sample's) that holds separate clusters
    replaced by the centres of its halves, split again while they are; in region order."""
    kept = []
    for region, centre in enumerate(centres):
        pending = [(centre, sample[member == region])]
        while pending:
            centre, part = pending.pop()
            halves = _two_means(part) if len(part) >= 2 * MIN_HALF else None
            if halves is None:
                kept.append(centre)
                continue
            # Depth first, the first half next: the order is fixed by the data.
            pending += [halves[1], halves[0]]
    return np.vstack(kept).astype(np.float32)


def _two_means(part: np.ndarray) -> tuple[_Half, _Half] | None:
    """The two halves of `part` as (centre, members) each, if they are separate clusters
    (`SEPARATION`) of at least `MIN_HALF` members; else None. Seeded from the data alone:
    the member least like the part's mean direction, then the one least like it."""
    mean = part.sum(axis=0, dtype=np.float64)
    if not np.linalg.norm(mean):  # members that cancel out: no direction to start from
        return None
    first = part[np.argmin(part @ (mean / np.linalg.norm(mean)).astype(np.float32))]
    second = part[np.argmin(part @ first)]
    centres = _lloyd(part, np.vstack([first, second]).astype(np.float32))
    side, _ = nearest_centre(part, centres)
    if min(np.sum(side == 0), np.sum(side == 1)) < MIN_HALF:
        return None
    if _separation(part, side, centres) <= SEPARATION:
        return None
    return (centres[0], part[side == 0]), (centres[1], part[side == 1])


def _separation(part: np.ndarray, side: np.ndarray, centres: np.ndarray) -> float:
    """Distance between the two sides' means along the line through `centres`, in units
    of the members' pooled standard deviation along it."""
    line = (centres[0] - centres[1]).astype(np.float64)
    along = part @ (line / np.linalg.norm(line))
    a, b = along[side == 0], along[side == 1]
    pooled = np.sqrt((a.var() * len(a) + b.var() * len(b)) / len(along))
    return float(abs(a.mean() - b.mean()) / max(pooled, 1e-12))
