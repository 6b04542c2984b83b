"""Steps 4 and 7: how many samples a round must hold out, and growing bubbles to that.

The controller is closed-loop: it measures the eval count after samples fell into
existing bubbles, then accepts candidate bubbles one by one, shrinking a bubble
(to the next clean cut inwards) when it would overshoot, until the need is met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .anchors import CandidateStream
from .assign import (
    INNER,
    INNER_TEST,
    INNER_VAL,
    OUTER,
    TEST,
    TRAIN,
    UNASSIGNED,
    VALIDATION,
    AnchorTable,
    choose_inner_cut,
    shell_split,
)
from .boundary import (
    IMPOSSIBLE,
    crossing_counts,
    cut_radius,
    least_crossed_cut,
    nearest_clean_cut,
)
from .config import BubbleFenceConfig
from .density import adaptive_radius, lid_mle
from .neighbors import similarity_to_distance

if TYPE_CHECKING:
    from .constraints import CaptureGuide

# How far from its adaptive radius a bubble's edge may move to find a clean cut.
WINDOW = 2.0
CANDIDATES_PER_BATCH = 32
# Samples of a candidate's boundary band compared pairwise (see `crossing_counts`):
# exact on all but dense regions of large datasets, where the band's size grows with
# N and an exact count would cost O(band**2) per candidate.
MAX_BAND = 2048
# The strict pass (clean cuts only) gives way to the relaxed one when fewer than
# STRICT_MIN_ACCEPTED of its last STRICT_WINDOW candidates were accepted: in data
# dense at the leak threshold, clean cuts are rare and each try costs a profile.
STRICT_WINDOW = 64
STRICT_MIN_ACCEPTED = 4


@dataclass
class Budget:
    need: int
    cap: int


def round_budget(
    n_kept_total: int,
    n_eval: int,
    n_new_kept: int,
    n_new_in_bubbles: int,
    config: BubbleFenceConfig,
) -> Budget:
    """Samples the new bubbles of this round should capture (need) and may (cap)."""
    deficit = round(config.eval_ratio * n_kept_total) - n_eval
    floor = math.ceil(config.min_eval_per_batch * n_new_kept) - n_new_in_bubbles
    need = max(deficit, floor, 0)
    cap = max(math.floor((config.eval_ratio + config.eval_tolerance) * n_kept_total) - n_eval, need)
    return Budget(need=need, cap=cap)


def grow_bubbles(
    embeddings: np.ndarray,
    split: np.ndarray,
    kept: np.ndarray,
    stream_factory,
    anchors: AnchorTable,
    budget: Budget,
    config: BubbleFenceConfig,
    rng: np.random.Generator,
    round_index: int,
    guide: CaptureGuide | None = None,
) -> tuple[AnchorTable, np.ndarray, np.ndarray, dict]:
    """Accept bubbles until `budget.need` unassigned samples are captured.

    Two passes over the candidate stream: a strict one that accepts only clean cuts,
    then a relaxed one that takes the least-crossed cut of each candidate.
    With a `guide` (labels, groups: `constraints.CaptureGuide`) a capture counts what
    the guide says it is worth, and the guide may skip candidates and narrow cuts.

    `split` holds codes for every row, UNASSIGNED for this round's open samples;
    it is updated in place for captured rows. Returns the new anchors, the
    anchor index and shell code of captured rows (-1 / 0 elsewhere) and stats.
    """
    grower = _BubbleGrower(
        embeddings, split, kept, anchors, budget, config, rng, round_index, guide
    )
    stream: CandidateStream = stream_factory(grower.size)
    strict_only = guide is not None and guide.strict_only
    for relaxed in (False,) if strict_only else (False, True):
        if grower.done:
            break
        if relaxed:
            stream.restart()  # candidates without a clean cut get a second look
        grower.run_pass(stream, relaxed)
    grower.ensure_both_shells()
    return grower.result()


@dataclass
class _Neighbourhood:
    """A candidate centre's samples within reach, most similar first, and the window
    of cuts [k_lo, limit] its edge may take (cut k puts the first k inside)."""

    ranked: np.ndarray
    ranked_sims: np.ndarray  # float32, descending
    is_open: np.ndarray  # unassigned samples of this round, in ranked order
    lid: float
    k_lo: int
    limit: int
    preferred: int  # the cut at the LID-adaptive radius


class _BubbleGrower:
    """The state of one round's bubble growing: what is captured, counted and created."""

    def __init__(
        self,
        embeddings: np.ndarray,
        split: np.ndarray,
        kept: np.ndarray,
        anchors: AnchorTable,
        budget: Budget,
        config: BubbleFenceConfig,
        rng: np.random.Generator,
        round_index: int,
        guide: CaptureGuide | None,
    ) -> None:
        self.embeddings = embeddings
        self.split = split  # updated in place as bubbles capture samples
        self.anchors = anchors  # earlier rounds' bubbles
        self.budget = budget
        self.config = config
        self.rng = rng
        self.round_index = round_index
        self.guide = guide
        n = len(embeddings)
        self.anchor_of = np.full(n, -1, dtype=np.int64)
        self.shell_of = np.zeros(n, dtype=np.int8)
        self.new_rows: list[dict] = []
        self.captured = 0
        self.crossed = 0
        self.n_val = int(np.sum(split == VALIDATION))
        self.n_eval = int(np.sum((split == VALIDATION) | (split == TEST)))
        self.size = config.bubble_size or int(np.clip(round(budget.need / 128), 8, 4096))
        self.centres = anchors.centres  # every centre so far, earlier rounds' first
        self.delta = float(np.arccos(config.leak_threshold))
        self.excluded = np.flatnonzero(~kept)

    @property
    def done(self) -> bool:
        return self.captured >= self.budget.need

    def run_pass(self, stream: CandidateStream, relaxed: bool) -> None:
        recent: list[bool] = []  # accepted or not, for the strict pass's last tries
        while not self.done:
            if not relaxed and len(recent) >= STRICT_WINDOW:
                if sum(recent[-STRICT_WINDOW:]) < STRICT_MIN_ACCEPTED:
                    return
            batch = stream.next_batch(CANDIDATES_PER_BATCH)
            if len(batch) == 0:
                return
            rows = stream.rows(batch)
            # One matrix product for the batch; each row is then a scratch array.
            profiles = self.embeddings[rows] @ self.embeddings.T
            for row, sims in zip(rows, profiles, strict=True):
                if self.done:
                    return
                if not self._may_centre(row):
                    continue
                hood = self._neighbourhood(sims, min_capture=1 if relaxed else 2)
                if hood is None:
                    continue
                if relaxed:
                    choice = self._least_crossed_cut(hood)
                else:
                    recent.append(False)
                    choice = self._clean_cut(hood)
                    recent[-1] = choice is not None
                if choice is not None:
                    self._accept(row, sims, hood, *choice)

    # -- one candidate ------------------------------------------------------------------

    def _may_centre(self, row: int) -> bool:
        if self.split[row] != UNASSIGNED:
            return False
        if self.guide is not None and self.guide.skip(row):
            return False
        if len(self.centres):
            nearest = float(np.max(self.centres @ self.embeddings[row]))
            return 1.0 - nearest >= self.config.min_anchor_distance
        return True

    def _neighbourhood(self, sims: np.ndarray, min_capture: int) -> _Neighbourhood | None:
        """Rank the samples within reach and bound the cut window, or None if no cut fits."""
        config, split, budget = self.config, self.split, self.budget
        sims[self.excluded] = -2.0  # duplicates are nobody's neighbours
        k = min(max(config.lid_k, self.size) + 1, len(sims))
        top = np.partition(-sims, k - 1)[:k]
        neighbour_sims = np.sort(-top)[::-1][1:]
        if len(neighbour_sims) == 0:
            return None
        lid_k = min(config.lid_k, len(neighbour_sims))
        lid = float(lid_mle(similarity_to_distance(neighbour_sims[None, :lid_k]))[0])
        radius = adaptive_radius(neighbour_sims, lid, self.size, config)
        # Every sample within the widest edge plus the leak angle: the pairs that could
        # straddle any cut of the window are all among them.
        r_hi = min(config.max_radius, radius * WINDOW)
        theta_hi = float(np.arccos(np.clip(1.0 - r_hi, -1, 1)))
        near = np.flatnonzero(sims >= float(np.cos(min(theta_hi + self.delta, np.pi))))
        ranked = near[np.lexsort((near, -sims[near]))]
        ranked_sims = sims[ranked]
        is_open = split[ranked] == UNASSIGNED
        cum_open = np.cumsum(is_open)
        allowed = min(budget.cap - self.captured, budget.need - self.captured + _slack(budget))
        # The edge stops before the first train sample, at the widest radius, and
        # where the captures would pass what the quota allows.
        limit = len(ranked)
        train_hits = np.flatnonzero(split[ranked] == TRAIN)
        if len(train_hits):
            limit = min(limit, int(train_hits[0]))
        limit = min(limit, int(np.searchsorted(-ranked_sims, -(1.0 - r_hi), "right")))
        limit = min(limit, int(np.searchsorted(cum_open, allowed, "right")))
        if self.guide is not None:
            limit = min(limit, self.guide.cut_limit(ranked[:limit], is_open[:limit], allowed))
        k_min = int(np.searchsorted(cum_open, min_capture, "left")) + 1
        k_lo_window = int(np.searchsorted(-ranked_sims, -(1.0 - radius / WINDOW), "right"))
        k_lo = max(k_min, min(k_lo_window, limit))
        if k_lo > limit:
            return None
        preferred = int(np.searchsorted(-ranked_sims, -(1.0 - radius), "right"))
        return _Neighbourhood(
            ranked, ranked_sims.astype(np.float32), is_open, lid, k_lo, limit, preferred
        )

    def _clean_cut(self, hood: _Neighbourhood) -> tuple[int, int] | None:
        cut = nearest_clean_cut(
            self.embeddings,
            hood.ranked,
            hood.ranked_sims,
            hood.k_lo,
            hood.limit,
            hood.preferred,
            self.config.leak_threshold,
            max_band=MAX_BAND,
            rng=self.rng,
        )
        return None if cut is None else (cut, 0)

    def _least_crossed_cut(self, hood: _Neighbourhood) -> tuple[int, int] | None:
        counts = crossing_counts(
            self.embeddings,
            hood.ranked,
            hood.ranked_sims,
            hood.k_lo,
            hood.limit,
            self.config.leak_threshold,
            max_band=MAX_BAND,
            rng=self.rng,
        )
        return least_crossed_cut(counts, hood.k_lo, hood.preferred)

    def _accept(
        self, row: int, sims: np.ndarray, hood: _Neighbourhood, cut: int, crossed: int
    ) -> None:
        """Create the bubble: capture its open samples, cut its inner shell."""
        config = self.config
        members = hood.ranked[:cut][hood.is_open[:cut]]
        layout = _layout(config, self.rng)
        # The running target: val/test of everything held out follows validation_ratio.
        target_val = int(round(config.validation_ratio * (self.n_eval + len(members)))) - self.n_val
        target_val = int(np.clip(target_val, 0, len(members)))
        target_inner = target_val if layout == INNER_VAL else len(members) - target_val
        n_inner, inner_radius, inner_crossed = choose_inner_cut(
            self.embeddings,
            members,
            sims[members].astype(np.float32),
            target_inner,
            config.leak_threshold,
        )
        shells = np.where(np.arange(len(members)) < n_inner, INNER, OUTER).astype(np.int8)
        codes = shell_split(np.full(len(members), layout, np.int8), shells)
        self.split[members] = codes
        self.anchor_of[members] = len(self.anchors) + len(self.new_rows)
        self.shell_of[members] = shells
        self.n_val += int(np.sum(codes == VALIDATION))
        self.n_eval += len(members)
        self.captured += len(members) if self.guide is None else self.guide.accepted(members)
        self.crossed += crossed + inner_crossed
        centre = self.embeddings[row]
        self.new_rows.append(
            {
                "centres": centre[None, :],
                "centre_row": int(row),
                "radius": cut_radius(hood.ranked_sims, cut),
                "inner_radius": inner_radius,
                "layout": layout,
                "lid": hood.lid,
                "round": self.round_index,
                "n_captured": len(members),
                "cut_pairs": crossed + inner_crossed,
            }
        )
        # One copy per accepted bubble, not one per candidate tried.
        self.centres = (
            np.vstack([self.centres, centre[None, :]]) if len(self.centres) else centre[None, :]
        )

    # -- the end of the round -------------------------------------------------------------

    def ensure_both_shells(self) -> None:
        """With few bubbles, each cut cleanly only at its edges, the shells can all go one
        way and leave the data set without validation (or test): re-cut the largest new
        bubble at the balanced inner cut, counting the crossings."""
        n_test = self.n_eval - self.n_val
        ratio = self.config.validation_ratio
        if self.new_rows and self.n_eval >= 2 and 0.0 < ratio < 1.0 and not (self.n_val and n_test):
            self.crossed += _recut_with_both_shells(
                self.embeddings,
                self.split,
                self.anchor_of,
                self.shell_of,
                self.new_rows,
                len(self.anchors),
                self.config,
            )

    def result(self) -> tuple[AnchorTable, np.ndarray, np.ndarray, dict]:
        table = AnchorTable.from_rows(self.new_rows, self.embeddings.shape[1])
        stats = {
            "need": self.budget.need,
            "captured": self.captured,
            "new_anchors": len(self.new_rows),
            "cut_pairs": self.crossed,
            "shortfall": max(self.budget.need - self.captured, 0),
        }
        return table, self.anchor_of, self.shell_of, stats


def _recut_with_both_shells(
    embeddings: np.ndarray,
    split: np.ndarray,
    anchor_of: np.ndarray,
    shell_of: np.ndarray,
    new_rows: list[dict],
    first_index: int,
    config: BubbleFenceConfig,
) -> int:
    """Re-cut the inner shell of the largest new bubble at the cut nearest
    `validation_ratio`; returns the crossing pairs the new cut adds.

    No cut through this bubble is clean (its clean cuts leave a shell empty), so
    validation and test will share near twins whatever the cut; a lopsided cut with
    fewer crossings would leak as much per sample, so balance decides.
    """
    position = int(np.argmax([row["n_captured"] for row in new_rows]))
    bubble = new_rows[position]
    members = np.flatnonzero(anchor_of == first_index + position)
    n = len(members)
    if n < 2:
        return 0
    sims = embeddings[members] @ embeddings[bubble["centre_row"]]
    order = np.lexsort((members, -sims))
    members, sims = members[order], sims[order].astype(np.float32)
    counts = crossing_counts(embeddings, members, sims, 1, n - 1, config.leak_threshold)
    possible = np.flatnonzero(counts < IMPOSSIBLE) + 1  # interior cuts k = 1 .. n-1
    if len(possible) == 0:
        return 0  # every interior cut falls between equally similar samples
    target_val = int(np.clip(round(config.validation_ratio * n), 1, n - 1))
    target_inner = target_val if bubble["layout"] == INNER_VAL else n - target_val
    k = int(possible[np.argmin(np.abs(possible - target_inner))])
    shells = np.where(np.arange(n) < k, INNER, OUTER).astype(np.int8)
    split[members] = shell_split(np.full(n, bubble["layout"], np.int8), shells)
    shell_of[members] = shells
    crossed = int(counts[k - 1])
    # Its old cut left a shell empty, so it crossed nothing: all crossings are new.
    bubble["inner_radius"] = cut_radius(sims, k)
    bubble["cut_pairs"] += crossed
    return crossed


def _slack(budget: Budget) -> int:
    # Half the tolerance: keeps room for the next rounds' samples that land in bubbles.
    return max(1, (budget.cap - budget.need) // 2)


def _layout(config: BubbleFenceConfig, rng: np.random.Generator) -> int:
    if config.shell_layout == "inner_val":
        return INNER_VAL
    if config.shell_layout == "inner_test":
        return INNER_TEST
    return int(rng.integers(2))
