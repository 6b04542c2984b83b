"""The boundary rule (SPEC 2.7): a bubble's edge passes through empty space.

Samples are ranked by similarity to a bubble's centre. A *cut* k puts the first k
inside and the rest outside. A pair of samples more similar than the leak
threshold that the cut separates is a *crossing*; a clean cut has none.

Only pairs whose angles to the centre differ by at most the leak angle
delta = arccos(threshold) can be that similar (the angle between two vectors is
at least the difference of their angles to a third), so for a window of cuts only
a band of ranks around it is compared, block by block.
"""

from __future__ import annotations

import numpy as np

# Cuts between samples closer in similarity than this are impossible: float
# round-off in a later product could put them on either side.
MIN_GAP = 1e-6
IMPOSSIBLE = np.iinfo(np.int64).max // 4
# Inside members per matrix product; small blocks follow the band's diagonal closely.
BAND_BLOCK = 128


def crossing_counts(
    embeddings: np.ndarray,
    ranked_rows: np.ndarray,
    centre_sims: np.ndarray,
    k_lo: int,
    k_hi: int,
    threshold: float,
    *,
    max_band: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Crossing pairs of every cut k in [k_lo, k_hi], as an array of k_hi - k_lo + 1 counts.

    A cut between two (nearly) equally similar samples cannot be drawn and gets
    the count `IMPOSSIBLE`.

    `embeddings[ranked_rows]` are unit vectors ranked by their similarities
    `centre_sims` to the centre, most similar first. Pairs with
    a member beyond the end of the arrays are not seen: callers pass every sample
    within the leak angle of the widest cut.

    The count is exact while the band of ranks that can hold crossing pairs has at
    most `max_band` samples (always, when None). A wider band, where the data is
    dense, is compared on a seeded sample of `max_band` of its samples (drawn with
    `rng`): the cost stays bounded, and a pair is then seen with probability
    (max_band / band)**2, so counts are lower bounds and a "clean" cut is a cut
    where no crossing was seen.
    """
    n = len(centre_sims)
    if not 1 <= k_lo <= k_hi <= n:
        raise ValueError(f"cut window [{k_lo}, {k_hi}] is outside [1, {n}]")
    angles = np.arccos(np.clip(centre_sims.astype(np.float64), -1.0, 1.0))
    delta = float(np.arccos(threshold))
    # Members of crossing pairs: inside ranks p < k_hi with angle >= angle(k_lo) - delta,
    # outside ranks q >= k_lo with angle <= angle(k_hi - 1) + delta.
    band_start = int(np.searchsorted(angles, angles[k_lo - 1] - delta, side="left"))
    band_stop = int(np.searchsorted(angles, angles[k_hi - 1] + delta, side="right"))
    ranks = np.arange(band_start, band_stop)
    if max_band is not None and len(ranks) > max_band:
        if rng is None:
            raise ValueError("crossing_counts needs an rng to sample a band wider than max_band")
        ranks = np.sort(rng.choice(ranks, size=max_band, replace=False))
    band = embeddings[ranked_rows[ranks]]
    band_angles = angles[ranks]
    n_inside = int(np.searchsorted(ranks, k_hi))  # band positions with rank < k_hi
    first_outside = int(np.searchsorted(ranks, k_lo))  # first band position with rank >= k_lo
    # Band positions are sorted by angle, so the outside partners within reach
    # (angle + delta) of a block of inside members are a contiguous run.
    reach = np.searchsorted(band_angles, band_angles[:n_inside] + delta, side="right")
    diff = np.zeros(k_hi - k_lo + 2, dtype=np.int64)
    for start in range(0, n_inside, BAND_BLOCK):
        stop = min(start + BAND_BLOCK, n_inside)
        q_lo = max(first_outside, start + 1)
        q_hi = int(reach[stop - 1])
        if q_lo >= q_hi:
            continue
        sims = band[start:stop] @ band[q_lo:q_hi].T
        p_local, q_local = np.nonzero(sims >= threshold)
        p_rank = ranks[p_local + start]
        q_rank = ranks[q_local + q_lo]
        forward = q_rank > p_rank
        # Pair (p, q) is cut by every k with p < k <= q, clipped to the window.
        lo = np.maximum(p_rank[forward] + 1, k_lo) - k_lo
        hi = np.minimum(q_rank[forward], k_hi) - k_lo
        valid = lo <= hi
        np.add.at(diff, lo[valid], 1)
        np.add.at(diff, hi[valid] + 1, -1)
    counts = np.cumsum(diff[:-1])
    ks = np.arange(k_lo, k_hi + 1)
    inner = centre_sims[ks - 1].astype(np.float64)
    outer = np.append(centre_sims, -np.inf)[ks].astype(np.float64)
    counts[inner - outer <= MIN_GAP] = IMPOSSIBLE
    return counts


def cut_radius(centre_sims: np.ndarray, k: int) -> float:
    """Cosine-distance radius of cut k: halfway between the k-th and (k+1)-th samples."""
    inner = 1.0 - float(centre_sims[k - 1])
    if k >= len(centre_sims):
        return inner + 1e-6
    outer = 1.0 - float(centre_sims[k])
    return (inner + outer) / 2.0


def best_cut(
    crossings: np.ndarray, k_lo: int, preferred_k: int, *, allow_crossing: bool
) -> tuple[int, int] | None:
    """The cut nearest `preferred_k` among the clean ones, else (if allowed) among the
    least crossed. Returns (k, crossings) or None. Ties go to the smaller cut."""
    candidates = np.flatnonzero(crossings == 0)
    if len(candidates) == 0:
        if not allow_crossing or len(crossings) == 0:
            return None
        if crossings.min() >= IMPOSSIBLE:
            return None
        candidates = np.flatnonzero(crossings == crossings.min())
    ks = candidates + k_lo
    best = int(ks[np.argmin(np.abs(ks - preferred_k))])
    return best, int(crossings[best - k_lo])


def least_crossed_cut(crossings: np.ndarray, k_lo: int, preferred_k: int) -> tuple[int, int] | None:
    """The cut with the fewest crossing pairs per sample inside (ties: nearest
    `preferred_k`, then the smaller), as (k, crossings); None if every cut is impossible.

    Per sample, not in total: the total grows with a bubble's surface, so its minimum
    is nearly always the smallest bubble, which would hold out a sliver of a dense
    region and leak as much per sample as a big one.
    """
    ks = np.arange(k_lo, k_lo + len(crossings))
    possible = crossings < IMPOSSIBLE
    if not possible.any():
        return None
    rate = np.where(possible, crossings / ks, np.inf)
    candidates = ks[rate == rate.min()]
    best = int(candidates[np.argmin(np.abs(candidates - preferred_k))])
    return best, int(crossings[best - k_lo])
