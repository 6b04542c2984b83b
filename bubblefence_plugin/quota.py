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

    With a `guide` (labels, groups: `constraints.CaptureGuide`) a capture counts what
    the guide says it is worth, and the guide may skip candidates and narrow cuts.

    `split` holds codes for every row, UNASSIGNED for this round's open samples;
    it is updated in place for captured rows. Returns the new anchors, the
    anchor index and shell code of captured rows (-1 / 0 elsewhere) and stats.
    """
    n = len(embeddings)
    anchor_of = np.full(n, -1, dtype=np.int64)
    shell_of = np.zeros(n, dtype=np.int8)
    new_rows: list[dict] = []
    captured = 0
    crossed_total = 0
    n_val = int(np.sum(split == VALIDATION))
    n_eval = int(np.sum((split == VALIDATION) | (split == TEST)))
    size = config.bubble_size or int(np.clip(round(budget.need / 128), 8, 4096))
    centres = [anchors.centres] if len(anchors) else []
    delta = float(np.arccos(config.leak_threshold))
    excluded = np.flatnonzero(~kept)

    stream: CandidateStream = stream_factory(size)
    for relaxed in (False,) if guide is not None and guide.strict_only else (False, True):
        if captured >= budget.need:
            break
        if relaxed:
            stream.restart()  # candidates without a clean cut get a second look
        min_capture = 1 if relaxed else 2
        recent: list[bool] = []  # accepted or not, for the strict pass's last tries
        while captured < budget.need:
            if not relaxed and len(recent) >= STRICT_WINDOW:
                if sum(recent[-STRICT_WINDOW:]) < STRICT_MIN_ACCEPTED:
                    break
            batch = stream.next_batch(CANDIDATES_PER_BATCH)
            if len(batch) == 0:
                break
            rows = stream.rows(batch)
            profiles = embeddings[rows] @ embeddings.T
            for row, sims in zip(rows, profiles, strict=True):
                if captured >= budget.need:
                    break
                if split[row] != UNASSIGNED:
                    continue
                if guide is not None and guide.skip(row):
                    continue
                centre = embeddings[row]
                if centres:
                    all_centres = np.vstack(centres)
                    if 1.0 - float(np.max(all_centres @ centre)) < config.min_anchor_distance:
                        continue
                sims[excluded] = -2.0  # `profiles` is a scratch array: no copy needed
                k = min(max(config.lid_k, size) + 1, n)
                top = np.partition(-sims, k - 1)[:k]
                neighbour_sims = np.sort(-top)[::-1][1:]
                if len(neighbour_sims) == 0:
                    continue
                lid_k = min(config.lid_k, len(neighbour_sims))
                lid = float(lid_mle(similarity_to_distance(neighbour_sims[None, :lid_k]))[0])
                radius = adaptive_radius(neighbour_sims, lid, size, config)
                r_hi = min(config.max_radius, radius * WINDOW)
                theta_hi = float(np.arccos(np.clip(1.0 - r_hi, -1, 1)))
                s_min = float(np.cos(min(theta_hi + delta, np.pi)))
                near = np.flatnonzero(sims >= s_min)
                order = np.lexsort((near, -sims[near]))
                ranked = near[order]
                ranked_sims = sims[ranked]
                is_open = split[ranked] == UNASSIGNED
                cum_open = np.cumsum(is_open)
                allowed = min(budget.cap - captured, budget.need - captured + _slack(budget))
                limit = len(ranked)
                train_hits = np.flatnonzero(split[ranked] == TRAIN)
                if len(train_hits):
                    limit = min(limit, int(train_hits[0]))
                limit = min(limit, int(np.searchsorted(-ranked_sims, -(1.0 - r_hi), "right")))
                limit = min(limit, int(np.searchsorted(cum_open, allowed, "right")))
                if guide is not None:
                    limit = min(limit, guide.cut_limit(ranked[:limit], is_open[:limit], allowed))
                k_min = int(np.searchsorted(cum_open, min_capture, "left")) + 1
                k_lo_window = int(np.searchsorted(-ranked_sims, -(1.0 - radius / WINDOW), "right"))
                k_lo = max(k_min, min(k_lo_window, limit))
                if k_lo > limit:
                    continue
                preferred = int(np.searchsorted(-ranked_sims, -(1.0 - radius), "right"))
                centre_sims = ranked_sims.astype(np.float32)
                band = {"max_band": MAX_BAND, "rng": rng}
                if relaxed:
                    counts = crossing_counts(
                        embeddings, ranked, centre_sims, k_lo, limit, config.leak_threshold, **band
                    )
                    choice = least_crossed_cut(counts, k_lo, preferred)
                    if choice is None:
                        continue
                    cut, crossed = choice
                else:
                    recent.append(False)
                    cut = nearest_clean_cut(
                        embeddings,
                        ranked,
                        centre_sims,
                        k_lo,
                        limit,
                        preferred,
                        config.leak_threshold,
                        **band,
                    )
                    if cut is None:
                        continue
                    recent[-1] = True
                    crossed = 0
                inside = ranked[:cut]
                members = inside[is_open[:cut]]
                member_sims = sims[members].astype(np.float32)
                layout = _layout(config, rng)
                target_val = int(round(config.validation_ratio * (n_eval + len(members)))) - n_val
                target_val = int(np.clip(target_val, 0, len(members)))
                target_inner = target_val if layout == INNER_VAL else len(members) - target_val
                n_inner, inner_radius, inner_crossed = choose_inner_cut(
                    embeddings, members, member_sims, target_inner, config.leak_threshold
                )
                index = len(anchors) + len(new_rows)
                shells = np.where(np.arange(len(members)) < n_inner, INNER, OUTER).astype(np.int8)
                codes = shell_split(np.full(len(members), layout, np.int8), shells)
                split[members] = codes
                anchor_of[members] = index
                shell_of[members] = shells
                n_val += int(np.sum(codes == VALIDATION))
                n_eval += len(members)
                captured += len(members) if guide is None else guide.accepted(members)
                crossed_total += crossed + inner_crossed
                new_rows.append(
                    {
                        "centres": centre[None, :],
                        "centre_row": int(row),
                        "radius": cut_radius(ranked_sims, cut),
                        "inner_radius": inner_radius,
                        "layout": layout,
                        "lid": lid,
                        "round": round_index,
                        "n_captured": len(members),
                        "cut_pairs": crossed + inner_crossed,
                    }
                )
                centres.append(centre[None, :])
    n_test = n_eval - n_val
    if new_rows and n_eval >= 2 and 0.0 < config.validation_ratio < 1.0 and not (n_val and n_test):
        # The data set would have no validation (or no test) sample: with few bubbles,
        # each cut cleanly only at its edges, the shells go all one way. Re-cut the
        # largest new bubble through its least-crossed inner cut; crossings are counted.
        crossed_total += _recut_with_both_shells(
            embeddings, split, anchor_of, shell_of, new_rows, len(anchors), config
        )
    table = AnchorTable.from_rows(new_rows, embeddings.shape[1])
    stats = {
        "need": budget.need,
        "captured": captured,
        "new_anchors": len(new_rows),
        "cut_pairs": crossed_total,
        "shortfall": max(budget.need - captured, 0),
    }
    return table, anchor_of, shell_of, stats


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
