"""The one metric definition (training validation, simpleunet-eval, the bench): hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest

from simpleunet_runtime.metrics import SegmentationMeter, dice


def masks(*rows: str) -> np.ndarray:
    return np.array([[c == "#" for c in r] for r in rows])


def test_overlap_scores_by_hand():
    pred, true = masks("##..", "...."), masks("#...", "#...")  # tp 1, fp 1, fn 1
    m = SegmentationMeter()
    assert m.update(pred, true) == pytest.approx(0.5)
    s = m.summary()
    assert s["mIoU"] == pytest.approx(1 / 3) and s["precision"] == 0.5 and s["recall"] == 0.5


@pytest.mark.parametrize("pred, true, want", [
    (masks("...."), masks("...."), 1.0),  # correct "nothing here": every score 1
    (masks("...."), masks(".#.."), 0.0),  # missed lesion: every score 0
    (masks(".#.."), masks("...."), 0.0),  # false alarm on an empty image: every score 0
])
def test_empty_mask_rule(pred, true, want):
    m = SegmentationMeter()
    m.update(pred, true)
    s = m.summary()
    assert (s["mDice"], s["mIoU"], s["precision"], s["recall"]) == (want, want, want, want)
    assert dice(pred, true) == want


def test_per_image_means_and_pooled_scores_differ_as_documented():
    m = SegmentationMeter()
    m.update(masks("####"), masks("####"))  # Dice 1 over 4 pixels
    m.update(masks("...."), masks("#..."))  # Dice 0 over 1 pixel
    s = m.summary()
    assert s["mDice"] == pytest.approx(0.5) and s["pooled_dice"] == pytest.approx(8 / 9)
    with pytest.raises(ValueError, match="shape"):
        m.update(masks("##"), masks("###"))
