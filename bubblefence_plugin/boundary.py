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

from .neighbors import block_rows

# Cuts between samples closer in similarity than this are impossible: float
# round-off in a later product could put them on either side.
MIN_GAP = 1e-6
IMPOSSIBLE = np.iinfo(np.int64).max // 4


def crossing_counts(
    embeddings: np.ndarray,
    ranked_rows: np.ndarray,
    centre_sims: np.ndarray,
    k_lo: int,
    k_hi: int,
    threshold: float,
) -> np.ndarray:
    """Crossing pairs of every cut k in [k_lo, k_hi], as an array of k_hi - k_lo + 1 counts.

    A cut between two (nearly) equally similar samples cannot be drawn and gets
    the count `IMPOSSIBLE`.

    `embeddings[ranked_rows]` are unit vectors ranked by their similarities
    `centre_sims` to the centre, most similar first. Pairs with
    a member beyond the end of the arrays are not seen: callers pass every sample
    within the leak angle of the widest cut.
    """
    n = len(centre_sims)
    if not 1 <= k_lo <= k_hi <= n:
        raise ValueError(f"cut window [{k_lo}, {k_hi}] is outside [1, {n}]")
    angles = np.arccos(np.clip(centre_sims.astype(np.float64), -1.0, 1.0))
    delta = float(np.arccos(threshold))
    # Inside members of crossing pairs: ranks p < k_hi with angle >= angle(k_lo) - delta.
    p_start = int(np.searchsorted(angles, angles[k_lo - 1] - delta, side="left"))
    p_stop = k_hi
    # Outside members: ranks q >= k_lo with angle <= angle(k_hi - 1) + delta.
    q_start = k_lo
    q_stop = int(np.searchsorted(angles, angles[k_hi - 1] + delta, side="right"))
    diff = np.zeros(k_hi - k_lo + 2, dtype=np.int64)
    outside = embeddings[ranked_rows[q_start:q_stop]]
    block = block_rows(len(outside))
    for start in range(p_start, p_stop, block):
        stop = min(start + block, p_stop)
        sims = embeddings[ranked_rows[start:stop]] @ outside.T
        p_local, q_local = np.nonzero(sims >= threshold)
        p_rank = p_local + start
        q_rank = q_local + q_start
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
