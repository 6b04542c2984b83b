"""Steps 3 and 8: samples inside bubbles, and the two shells of a bubble.

Split and shell codes are small integers in the state; the names are what users
see. A sample is inside a bubble when its cosine distance to the centre is at most
the radius, and in the inner shell when it is strictly below the inner radius.

A bubble's ball is the region of eval that later rounds go on holding out: a new
sample with no assigned twin that falls inside it joins it
(`follow.join_existing_bubbles`). So when a round ends, no train sample lies inside the
ball of a bubble it added (`clear_of_train`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .boundary import best_cut, crossing_counts, cut_radius
from .neighbors import DECISION_EPS, CellIndex
from .twins import twin_votes

TRAIN, VALIDATION, TEST, DUPLICATE, UNASSIGNED = 0, 1, 2, 3, -1
SPLIT_NAMES = np.array(["train", "validation", "test", "duplicate"])
NO_SHELL, INNER, OUTER = 0, 1, 2
SHELL_NAMES = np.array(["", "inner", "outer"])
LAYOUT_NAMES = np.array(["inner_val", "inner_test"])
INNER_VAL, INNER_TEST = 0, 1
# Memory of one block of distances in `assign_to_bubbles` (and as much again for the
# relative ones): 8,192 rows against 3,000 bubbles were 200 MB per block, each mapped
# anew (neighbors.ROW_STEP says why that costs).
DISTANCE_BLOCK_BYTES = 16 * 2**20
# The margin by which a ball stops short of its farthest member, or of a train sample:
# float32 products of unit vectors are off by far less. It is also the smallest radius,
# that of a bubble of one sample.
RADIUS_MARGIN = 1e-6
# `clear_of_train` searches the train samples at the bubbles' similarity thresholds
# rounded down to this step: one search serves every bubble in a step, and each
# bubble's most similar train sample is compared with its own radius.
CLEAR_SEARCH_STEP = 0.01


@dataclass
class AnchorTable:
    """Every bubble ever accepted; rows are never removed or changed once written."""

    centres: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))
    centre_row: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    radius: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    inner_radius: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    layout: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))
    lid: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    round: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    n_captured: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    cut_pairs: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    def __len__(self) -> int:
        return len(self.radius)

    def append(self, other: AnchorTable) -> AnchorTable:
        if len(self) == 0:
            return other
        return AnchorTable(
            **{
                name: np.concatenate([getattr(self, name), getattr(other, name)])
                for name in self.__dataclass_fields__
            }
        )

    @classmethod
    def from_rows(cls, rows: list[dict], dim: int) -> AnchorTable:
        if not rows:
            return cls(centres=np.empty((0, dim), np.float32))
        columns = {name: [row[name] for row in rows] for name in cls.__dataclass_fields__}
        table = cls(
            centres=np.vstack(columns["centres"]).astype(np.float32),
            centre_row=np.asarray(columns["centre_row"], np.int64),
            radius=np.asarray(columns["radius"], np.float64),
            inner_radius=np.asarray(columns["inner_radius"], np.float64),
            layout=np.asarray(columns["layout"], np.int8),
            lid=np.asarray(columns["lid"], np.float64),
            round=np.asarray(columns["round"], np.int32),
            n_captured=np.asarray(columns["n_captured"], np.int64),
            cut_pairs=np.asarray(columns["cut_pairs"], np.int64),
        )
        return table


def assign_to_bubbles(
    vectors: np.ndarray,
    anchors: AnchorTable,
    block: int | None = None,
    active: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(anchor index or -1, shell code) per vector.

    A vector inside several bubbles goes to the one whose centre is nearest
    relative to its radius (distance / radius; ties to the older anchor). Vectors go
    ``block`` at a time, by default as many as keep one float64 block of distances to
    every centre within `DISTANCE_BLOCK_BYTES`. ``active``: per anchor, whether it takes
    vectors at all (None: every one).
    """
    n = len(vectors)
    anchor = np.full(n, -1, dtype=np.int64)
    shell = np.zeros(n, dtype=np.int8)
    if len(anchors) == 0 or n == 0:
        return anchor, shell
    block = block or max(1, DISTANCE_BLOCK_BYTES // (8 * len(anchors)))
    reach = anchors.radius if active is None else np.where(active, anchors.radius, -np.inf)
    for start in range(0, n, block):
        stop = min(start + block, n)
        distance = 1.0 - (vectors[start:stop] @ anchors.centres.T).astype(np.float64)
        relative = np.where(distance <= reach, distance / anchors.radius, np.inf)
        best = np.argmin(relative, axis=1)
        rows = np.arange(stop - start)
        inside = np.isfinite(relative[rows, best])
        chosen = best[inside]
        d = distance[rows[inside], chosen]
        anchor[start:stop][inside] = chosen
        shell[start:stop][inside] = np.where(d < anchors.inner_radius[chosen], INNER, OUTER)
    return anchor, shell


def clear_of_train(
    anchors: AnchorTable,
    embeddings: np.ndarray,
    indexes: list[CellIndex],
    is_train: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(radius, inner radius) of each bubble, its ball ending before the most similar
    train sample inside it (the shells' edge no farther out than the ball's).

    A bubble grown from a ball stops before the first sample it leaves out, but one
    made of whole units (a rare label's component, a cut piece) has the radius of its
    farthest member, and that ball can hold far more train samples than members: on
    scikit-learn digits split in five rounds of 20 % (`bench_quality`'s
    `digits_5rounds`), one 36-sample unit's ball held 144 train samples of round 0, and
    54 % of the later samples fell inside some bubble, which took eval to 0.258 of the
    data and validation to 0.765 of eval (targets 0.2 and 0.5; bench/RESULTS.md).
    Members beyond the shrunk radius stay in the bubble; the ball only stops speaking
    for the region around them.

    `indexes` hold every kept row between them (disjoint), `is_train[row]` whether the
    row ends the round in train. Exact: every train sample within a bubble's radius is
    found (`twins.twin_votes`, at the radius's threshold rounded down).
    """
    radius, inner_radius = anchors.radius.copy(), anchors.inner_radius.copy()
    wide = np.flatnonzero(radius > RADIUS_MARGIN)
    if len(wide) == 0 or not indexes:
        return radius, inner_radius
    steps = np.floor((1.0 - radius[wide]) / CLEAR_SEARCH_STEP).astype(np.int64)
    train_class = [np.where(is_train[index.rows], 0, -1) for index in indexes]
    for step in np.unique(steps):
        bubbles = wide[steps == step]
        # Rounded down, and below by the products' margin: no float round-off can put a
        # train sample on a bubble's edge outside the search.
        threshold = step * CLEAR_SEARCH_STEP - DECISION_EPS
        searches = [
            (index.at(threshold), classes)
            for index, classes in zip(indexes, train_class, strict=True)
        ]
        votes = twin_votes(embeddings, anchors.centres[bubbles], searches, 1)
        nearest = 1.0 - votes.best_sim[:, 0]  # inf without a train sample in the search
        inside = nearest <= radius[bubbles]
        radius[bubbles[inside]] = np.maximum(nearest[inside] - RADIUS_MARGIN, RADIUS_MARGIN)
    inner_radius = np.minimum(inner_radius, radius)
    return radius, inner_radius


def shell_split(layout: np.ndarray, shell: np.ndarray) -> np.ndarray:
    """Split code of samples in these shells of bubbles with these layouts."""
    inner_is_val = layout == INNER_VAL
    is_inner = shell == INNER
    return np.where(is_inner == inner_is_val, VALIDATION, TEST).astype(np.int8)


def choose_inner_cut(
    embeddings: np.ndarray,
    captured_rows: np.ndarray,
    captured_sims: np.ndarray,
    target_inner: int,
    leak_threshold: float,
) -> tuple[int, float, int]:
    """Inner-shell cut for a bubble's captured samples (ranked, most similar first).

    Returns (samples in the inner shell, inner radius, crossing pairs): the clean
    cut nearest `target_inner`, or the least crossed one if none is clean.
    """
    n = len(captured_rows)
    target_inner = int(np.clip(target_inner, 0, n))
    if n == 0:
        return 0, -1.0, 0
    counts = crossing_counts(embeddings, captured_rows, captured_sims, 1, n, leak_threshold)
    # Cut 0 (empty inner shell) never separates anything.
    counts = np.r_[0, counts]
    k, crossed = best_cut(counts, 0, target_inner, allow_crossing=True)
    if k == 0:
        # Below any distance, float round-off included: the inner shell is empty.
        return 0, -1.0, 0
    if k == n:
        return n, float(1.0 - captured_sims[-1]) + 1e-6, crossed
    return k, cut_radius(captured_sims, k), crossed
