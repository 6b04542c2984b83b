"""Labels of samples for the label-aware quota (SPEC 2, "Labels and groups").

A sample carries a *set* of labels: one (a classification or a string field), several
(the objects of a detections field), or none. The state stores each set as one string,
its distinct labels sorted and joined by `SEPARATOR`, so a single label is stored as
itself and class-aware dedup ("near twins with different labels are not duplicates")
compares two sets by string equality.

`LabelIndex` turns those strings into a sparse sample x label matrix (the quota's
strata, `grow.Strata`, are built on it); `label_shares` / `label_summary` report how
close each label's eval share came to the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from .bubbles import TEST, TRAIN, VALIDATION

# ASCII "unit separator": never part of a label name a user types.
SEPARATOR = "\x1f"
# Labels listed by name in a summary (the rest are counted): keeps round records small.
MAX_LISTED = 50
# A label's eval share is said off target from this many samples: the size at which
# issue 11 judges per-label shares (below it, one unit of near twins moves a share by
# several points).
OFF_SHARE_MIN_SAMPLES = 100
# ... when it misses the target by more than this share of the target (under 0.1 or over
# 0.3 at 0.2): far past the 0.05-0.08 aimed at, so worth a look, not noise.
OFF_SHARE_FACTOR = 0.5


def encode_label_sets(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """One string per sample: "" for no label, the label, or sorted labels joined by SEPARATOR.

    A value is a label (str, int, ...; None, NaN or "" = no label: NaN is how pandas
    reads a missing value) or a collection of labels (list, tuple, set, 1-D array) for
    a multi-label sample.
    """
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "iubU":
        strings = values.astype(str)
        if values.dtype.kind == "U" and (np.char.find(strings, SEPARATOR) >= 0).any():
            raise ValueError("labels contain the reserved character \\x1f")
        return strings
    out = []
    for value in values:
        if _missing(value):
            out.append("")
        elif isinstance(value, (set, frozenset)):
            out.append(SEPARATOR.join(sorted({_label_name(v) for v in value} - {""})))
        elif isinstance(value, (list, tuple, np.ndarray)):
            names = sorted({_label_name(v) for v in np.asarray(value, dtype=object).ravel()})
            out.append(SEPARATOR.join(n for n in names if n))
        else:
            out.append(_label_name(value))
    return np.asarray(out, dtype=str)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and bool(np.isnan(value)))


def _label_name(value: Any) -> str:
    if _missing(value):
        return ""
    name = str(value)
    if SEPARATOR in name:
        raise ValueError(f"label {name!r} contains the reserved character \\x1f")
    return name


@dataclass
class LabelIndex:
    """Which labels every sample carries: `matrix[i, j]` is 1 when sample i has `names[j]`."""

    names: np.ndarray
    matrix: sparse.csr_matrix

    @classmethod
    def from_encoded(cls, encoded: np.ndarray) -> LabelIndex:
        # Distinct label sets are few even on large datasets: split those, not every row.
        sets, inverse = np.unique(np.asarray(encoded, dtype=str), return_inverse=True)
        members = [s.split(SEPARATOR) if s else [] for s in sets]
        names = np.array(sorted({n for m in members for n in m}), dtype=str)
        column = {n: j for j, n in enumerate(names)}
        indptr = np.cumsum([0] + [len(m) for m in members])
        indices = np.array([column[n] for m in members for n in m], dtype=np.int64)
        per_set = sparse.csr_matrix(
            (np.ones(len(indices), np.int64), indices, indptr), shape=(len(sets), len(names))
        )
        return cls(names=names, matrix=per_set[inverse.reshape(-1)])

    def __len__(self) -> int:
        return len(self.names)

    def counts(self, rows: np.ndarray) -> np.ndarray:
        """Samples carrying each label among `rows` (a boolean mask or row indices)."""
        mask = np.zeros(self.matrix.shape[0], bool)
        mask[rows] = True
        return np.asarray(self.matrix.T @ mask.astype(np.int64)).reshape(-1)


def label_shares(
    encoded: np.ndarray, split: np.ndarray, kept: np.ndarray, min_label_count: int
) -> pd.DataFrame:
    """Per label (rarest first): kept samples, train / validation / test counts, eval share."""
    index = LabelIndex.from_encoded(encoded)
    n = index.counts(kept)
    by_split = {name: index.counts(kept & (split == code)) for name, code in _SPLITS}
    n_eval = by_split["validation"] + by_split["test"]
    frame = pd.DataFrame(
        {
            "label": index.names,
            "n": n,
            **by_split,
            "eval_share": n_eval / np.maximum(n, 1),
            "eligible": n >= min_label_count,
        }
    )
    return frame.sort_values(["n", "label"], kind="stable").reset_index(drop=True)


_SPLITS = (("train", TRAIN), ("validation", VALIDATION), ("test", TEST))


def label_summary(
    encoded: np.ndarray,
    split: np.ndarray,
    kept: np.ndarray,
    eval_ratio: float,
    min_label_count: int,
) -> dict[str, Any]:
    """JSON-able coverage and per-label eval shares of the labels with enough samples."""
    frame = label_shares(encoded, split, kept, min_label_count)
    eligible = frame[frame["eligible"]]
    error = (eligible["eval_share"] - eval_ratio).abs()
    missing = eligible[(eligible["validation"] + eligible["test"]) == 0]["label"]
    # A label held out whole (one near-twin component, or groups) is one a model trained
    # on train never sees: said as loudly as one eval never tests.
    untrained = eligible[eligible["train"] == 0]["label"]
    # Labels large enough for a share to mean something, held out at under half or over
    # one and a half times the target, with some eval and train (none at all is said
    # above): the largest misses first.
    sized = eligible[eligible["n"] >= OFF_SHARE_MIN_SAMPLES]
    off = sized[
        ((sized["eval_share"] - eval_ratio).abs() > OFF_SHARE_FACTOR * eval_ratio)
        & (sized["train"] > 0)
        & ((sized["validation"] + sized["test"]) > 0)
    ]
    off = off.assign(error=(off["eval_share"] - eval_ratio).abs()).sort_values(
        ["error", "label"], ascending=[False, True], kind="stable"
    )
    return {
        "min_label_count": int(min_label_count),
        "n_labels": len(frame),
        "n_eligible": len(eligible),
        "covered": {
            "eval": int(((eligible["validation"] + eligible["test"]) > 0).sum()),
            "validation": int((eligible["validation"] > 0).sum()),
            "test": int((eligible["test"] > 0).sum()),
        },
        "missing_from_eval": missing.tolist()[:MAX_LISTED],
        "missing_from_train": untrained.tolist()[:MAX_LISTED],
        "off_share": {
            str(row.label): [round(float(row.eval_share), 4), int(row.n)]
            for row in off.head(MAX_LISTED).itertuples()
        },
        "n_off_share": len(off),
        "share_error_max": round(float(error.max()), 4) if len(error) else 0.0,
        "share_error_mean": round(float(error.mean()), 4) if len(error) else 0.0,
        # The rarest labels are where a split usually fails: they are listed first.
        "eval_shares": {
            str(row.label): round(float(row.eval_share), 4)
            for row in eligible.head(MAX_LISTED).itertuples()
        },
    }
