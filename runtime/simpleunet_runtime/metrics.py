"""Segmentation metrics (numpy). One definition used by training validation, ``simpleunet-eval`` and the bench.

Empty-mask rule: an image whose ground truth and prediction are both empty scores Dice = IoU = 1 (a correct
"nothing here"); if only one of them is empty it scores 0. Precision (no predicted pixels) and recall (no true
pixels) follow the same rule: 1 when both are empty, else 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _ratio(num: float, den: float) -> float:
    return 1.0 if den == 0 else num / den


@dataclass
class SegmentationMeter:
    """Accumulates per-image and pooled Dice / IoU / precision / recall over binary masks."""

    dice: list[float] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)
    precision: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def update(self, pred: np.ndarray, target: np.ndarray) -> float:
        """Add one image (bool HxW arrays of equal shape); returns its Dice."""
        pred, target = np.asarray(pred, bool), np.asarray(target, bool)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {pred.shape} != mask shape {target.shape}")
        tp = int(np.count_nonzero(pred & target))
        fp = int(np.count_nonzero(pred)) - tp
        fn = int(np.count_nonzero(target)) - tp
        self.tp, self.fp, self.fn = self.tp + tp, self.fp + fp, self.fn + fn
        d = _ratio(2 * tp, 2 * tp + fp + fn)
        self.dice.append(d)
        self.iou.append(_ratio(tp, tp + fp + fn))
        self.precision.append(tp / (tp + fp) if tp + fp else float(tp + fn == 0))
        self.recall.append(tp / (tp + fn) if tp + fn else float(tp + fp == 0))
        return d

    def __len__(self) -> int:
        return len(self.dice)

    def summary(self) -> dict[str, float]:
        """mDice/mIoU (per-image mean, the papers' numbers), pooled Dice/IoU, mean precision/recall."""
        n = len(self)
        mean = (lambda xs: float(np.mean(xs)) if n else float("nan"))
        return {
            "images": n,
            "mDice": mean(self.dice),
            "mIoU": mean(self.iou),
            "pooled_dice": _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn),
            "pooled_iou": _ratio(self.tp, self.tp + self.fp + self.fn),
            "precision": mean(self.precision),
            "recall": mean(self.recall),
        }


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice of one pair of binary masks, with the empty-mask rule above."""
    return SegmentationMeter().update(pred, target)
