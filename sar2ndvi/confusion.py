"""Binary classification scores for landslide masks: precision, recall, F1, MCC and IoU.

A `Confusion` holds the four pixel counts of a predicted mask against a reference mask over
the scored pixels. Counts add up (``a + b``), so a scene scored area by area, or chunk by
chunk, pools exactly; the scores are computed from the pooled counts, never averaged.

Conventions (the same as scikit-learn's with ``zero_division=0``, checked in the tests):
a score whose denominator is zero is 0.0 (no predicted positives: precision 0; no reference
positives: recall 0), and MCC is 0.0 when any marginal is empty. The positive class is the
landslide.

A `ThresholdCurve` holds, instead of one mask's counts, the histograms of a classifier's
scores on both classes, so the counts of every cut ``score >= t`` (t on a grid of 1/bins)
come at once; it picks the operating point, the cut of highest MCC, on validation pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sar2ndvi.errors import InputError

__all__ = ["SCORE_KEYS", "Confusion", "ThresholdCurve", "confusion", "format_scores"]

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


@dataclass(frozen=True)
class ThresholdCurve:
    """Score histograms of the positive and negative pixels: the confusion of every cut.

    Bin k < bins holds the scores in [k / bins, (k + 1) / bins) and bin `bins` the scores
    of 1 (or more), so the cut ``score >= k / bins`` predicts exactly the pixels of bins k
    and above. Curves over the same bins add up, like `Confusion`.

    Attributes:
        positives, negatives: (bins + 1,) int64 counts of the reference-positive and -negative
            scored pixels per score bin.
    """

    positives: np.ndarray
    negatives: np.ndarray

    @classmethod
    def empty(cls, bins: int = 1000) -> ThresholdCurve:
        return cls(np.zeros(bins + 1, np.int64), np.zeros(bins + 1, np.int64))

    @classmethod
    def of(
        cls, scores: Any, reference: Any, valid: Any = None, *, bins: int = 1000
    ) -> ThresholdCurve:
        """The curve of `scores` in [0, 1] (e.g. probabilities) against a 0/1 `reference`
        over the `valid` pixels (default all; NaN scores are never counted)."""
        score = np.asarray(scores, dtype=np.float64)
        ref = np.asarray(reference)
        if score.shape != ref.shape:
            raise InputError(f"scores {score.shape} and reference {ref.shape} differ")
        keep = np.isfinite(score)
        if valid is not None:
            keep &= np.asarray(valid, dtype=bool)
        ref_bool = _as_bool(ref, "reference")[keep]
        index = np.clip(np.floor(score[keep] * bins), 0, bins).astype(np.int64)
        return cls(
            np.bincount(index[ref_bool], minlength=bins + 1),
            np.bincount(index[~ref_bool], minlength=bins + 1),
        )

    def __add__(self, other: ThresholdCurve) -> ThresholdCurve:
        if self.bins != other.bins:
            raise InputError(f"curves of {self.bins} and {other.bins} bins do not add up")
        return ThresholdCurve(self.positives + other.positives, self.negatives + other.negatives)

    @property
    def bins(self) -> int:
        return int(self.positives.size) - 1

    def at(self, threshold: float) -> Confusion:
        """The confusion of the cut ``score >= threshold`` (threshold rounded up to the grid)."""
        k = int(np.clip(np.ceil(threshold * self.bins - 1e-9), 0, self.bins + 1))
        return self._confusions()[k]

    def _confusions(self) -> list[Confusion]:
        # tp[k] = positives with score >= k / bins, for k = 0..bins + 1 (none predicted)
        tp = np.concatenate([np.cumsum(self.positives[::-1])[::-1], [0]])
        fp = np.concatenate([np.cumsum(self.negatives[::-1])[::-1], [0]])
        p, n = int(self.positives.sum()), int(self.negatives.sum())
        return [
            Confusion(int(a), int(b), p - int(a), n - int(b)) for a, b in zip(tp, fp, strict=True)
        ]

    def best_threshold(self) -> tuple[float, Confusion]:
        """The cut of highest MCC and its confusion.

        The cuts across a stretch of empty bins predict the same pixels; of the best
        cut's stretch the middle is returned, so a threshold chosen on validation scores
        sits between the score levels it separates rather than on one of them. With no
        positive (or no negative) pixel every cut scores 0 and 0.5 is returned.
        """
        if not self.positives.any() or not self.negatives.any():
            return 0.5, self.at(0.5)
        confusions = self._confusions()
        mcc = np.array([c.mcc for c in confusions])
        best = int(np.argmax(mcc))
        last = best
        # cut k + 1 differs from cut k by bin k: while that bin is empty, the same pixels
        while last <= self.bins and not (self.positives[last] or self.negatives[last]):
            last += 1
        return (best + last) / 2 / self.bins, confusions[best]


def format_scores(rows: dict[str, Confusion], *, title: str = "") -> str:
    """A fixed-width table, one row per entry: precision, recall, F1, MCC, IoU."""
    width = max([len(name) for name in rows] + [len(title), 6])
    head = f"{title:<{width}}  " + "  ".join(f"{_HEADERS[k]:>9}" for k in SCORE_KEYS)
    lines = [head, "-" * len(head)]
    for name, counts in rows.items():
        values = counts.scores()
        lines.append(f"{name:<{width}}  " + "  ".join(f"{values[k]:>9.3f}" for k in SCORE_KEYS))
    return "\n".join(lines)
