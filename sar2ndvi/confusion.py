"""Binary classification scores for landslide masks: precision, recall, F1, MCC and IoU.

A `Confusion` holds the four pixel counts of a predicted mask against a reference mask over
the scored pixels. Counts add up (``a + b``), so a scene scored area by area, or chunk by
chunk, pools exactly; the scores are computed from the pooled counts, never averaged.

Conventions (the same as scikit-learn's with ``zero_division=0``, checked in the tests):
a score whose denominator is zero is 0.0 (no predicted positives: precision 0; no reference
positives: recall 0), and MCC is 0.0 when any marginal is empty. The positive class is the
landslide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sar2ndvi.errors import InputError

__all__ = ["SCORE_KEYS", "Confusion", "confusion", "format_scores"]

#: The scores of `Confusion.scores`, in table order.
SCORE_KEYS = ("precision", "recall", "f1", "mcc", "iou")
_HEADERS = {"precision": "Precision", "recall": "Recall", "f1": "F1", "mcc": "MCC", "iou": "IoU"}


@dataclass(frozen=True)
class Confusion:
    """Pixel counts of a binary prediction: true/false positives and negatives."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def iou(self) -> float:
        """Intersection over union of the positive class (the Jaccard index)."""
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def mcc(self) -> float:
        """Matthews correlation coefficient in [-1, 1]; 0 when a marginal is empty."""
        tp, fp, fn, tn = (float(v) for v in (self.tp, self.fp, self.fn, self.tn))
        denominator = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
        if denominator == 0:
            return 0.0
        return (tp * tn - fp * fn) / math.sqrt(denominator)

    def scores(self) -> dict[str, float]:
        """All of `SCORE_KEYS` as a dict."""
        return {key: float(getattr(self, key)) for key in SCORE_KEYS}

    def to_dict(self) -> dict[str, Any]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn, **self.scores()}


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def _as_bool(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name}: expected a boolean or 0/1 array, got dtype {arr.dtype}")
    finite = np.isfinite(arr) if np.issubdtype(arr.dtype, np.floating) else np.ones(arr.shape, bool)
    if not np.isin(arr[finite], (0, 1)).all():
        raise InputError(f"{name}: a mask must hold only 0 and 1 (or True/False)")
    return arr == 1


def confusion(predicted: Any, reference: Any, valid: Any = None) -> Confusion:
    """The confusion counts of `predicted` against `reference` over the `valid` pixels.

    Args:
        predicted, reference: masks of the same shape (bool, or 0/1 numbers; a NaN in a
            float reference marks an unscored pixel).
        valid: optional bool mask of the scored pixels (default: all, less NaN references).

    Raises:
        InputError: shapes differ, or an array is not a 0/1 mask.
    """
    pred_arr, ref_arr = np.asarray(predicted), np.asarray(reference)
    if pred_arr.shape != ref_arr.shape:
        raise InputError(f"predicted {pred_arr.shape} and reference {ref_arr.shape} differ")
    keep = np.ones(ref_arr.shape, dtype=bool)
    if np.issubdtype(ref_arr.dtype, np.floating):
        keep &= np.isfinite(ref_arr)
    if valid is not None:
        valid_arr = np.asarray(valid, dtype=bool)
        if valid_arr.shape != ref_arr.shape:
            raise InputError(f"valid {valid_arr.shape} and reference {ref_arr.shape} differ")
        keep &= valid_arr
    pred, ref = _as_bool(pred_arr, "predicted")[keep], _as_bool(ref_arr, "reference")[keep]
    tp = int(np.count_nonzero(pred & ref))
    fp = int(np.count_nonzero(pred & ~ref))
    fn = int(np.count_nonzero(~pred & ref))
    return Confusion(tp, fp, fn, int(pred.size) - tp - fp - fn)


def format_scores(rows: dict[str, Confusion], *, title: str = "") -> str:
    """A fixed-width table, one row per entry: precision, recall, F1, MCC, IoU."""
    width = max([len(name) for name in rows] + [len(title), 6])
    head = f"{title:<{width}}  " + "  ".join(f"{_HEADERS[k]:>9}" for k in SCORE_KEYS)
    lines = [head, "-" * len(head)]
    for name, counts in rows.items():
        values = counts.scores()
        lines.append(f"{name:<{width}}  " + "  ".join(f"{values[k]:>9.3f}" for k in SCORE_KEYS))
    return "\n".join(lines)
