"""Quality of a split (SPEC 4), blockwise so no N x N matrix is formed."""

from __future__ import annotations

import numpy as np

from .neighbors import nearest


def leakage(
    embeddings: np.ndarray, split: np.ndarray, thresholds: tuple[float, ...] = (0.99, 0.95, 0.90)
) -> dict[float, float]:
    """Share of eval samples whose most similar train sample reaches each threshold.

    `split` holds names; duplicates (and anything else) are on neither side.
    Embeddings must be L2-normalised.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    is_eval = np.isin(split, ("validation", "test"))
    train = x[split == "train"]
    if not is_eval.any() or len(train) == 0:
        return {t: 0.0 for t in thresholds}
    best, _ = nearest(x[is_eval], train)
    return {t: float(np.mean(best >= t)) for t in thresholds}
