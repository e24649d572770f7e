"""Small-region removal (regions.py): numpy labelling equals a flood fill, the two rules drop what they say, and
the Segmenter applies the file's rule (or the user's) before anything leaves it."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simpleunet_runtime import Segmenter
from simpleunet_runtime.metadata import ModelMetadata
from simpleunet_runtime.regions import MinRegion, drop_small_regions, keep_large_regions, label_regions, small_regions


def flood_fill_sizes(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected regions by breadth-first search: the obvious reference."""
    seen = np.zeros_like(mask, bool)
    regions = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start], queue, region = True, deque([start]), []
        while queue:
            y, x = queue.popleft()
            region.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    q = (y + dy, x + dx)
                    if 0 <= q[0] < mask.shape[0] and 0 <= q[1] < mask.shape[1] and mask[q] and not seen[q]:
                        seen[q] = True
                        queue.append(q)
        regions.append(region)
    return regions


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 24), st.integers(1, 24), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_labels_are_the_flood_fills_regions(h, w, density, seed):
    mask = np.random.default_rng(seed).random((h, w)) < density
    labels, sizes = label_regions(mask)
    regions = flood_fill_sizes(mask)
    assert len(sizes) == len(regions) and (labels[~mask] == -1).all()
    for region in regions:
        ids = {int(labels[p]) for p in region}
        assert len(ids) == 1 and sizes[ids.pop()] == len(region)


def test_a_long_snake_is_one_region():
    mask = np.zeros((64, 64), bool)
    mask[::2] = True
    mask[1::4, -1] = mask[3::4, 0] = True  # joins row 2k to 2k+2 at alternating ends
    assert len(label_regions(mask)[1]) == 1


def three_regions() -> np.ndarray:
    mask = np.zeros((32, 32), bool)  # 1024 pixels
    mask[2:12, 2:12] = True    # 100
    mask[20:24, 20:25] = True  # 20
    mask[30, 0:3] = True       # 3
    return mask


@pytest.mark.parametrize("rule, kept", [(MinRegion(), {100, 20, 3}), (MinRegion(0.01, 0), {100, 20}),
                                        (MinRegion(0, 0.3), {100}), (MinRegion(0, 0.2), {100, 20}),
                                        (MinRegion(0.5, 0), set()), (MinRegion(0, 1), {100})])
def test_each_rule_drops_the_regions_it_names(rule, kept):
    mask = three_regions()
    left = mask & ~small_regions(mask, rule)
    assert sorted(label_regions(left)[1].tolist()) == sorted(kept)
    assert not small_regions(np.zeros((8, 8), bool), rule).any()


def test_dropped_pixels_become_certain_background_for_one_and_several_classes():
    mask = three_regions()
    one = np.where(mask, 0.9, 0.1).astype(np.float32)[None, None]
    out = drop_small_regions(one, mask[None], MinRegion(0, 0.3))
    assert (out[0, 0][mask & ~(out[0, 0] > 0.5)] == 0).sum() == 23 and (out[0, 0][~mask] == 0.1).all()
    three = np.stack([np.where(mask, 0.1, 0.9), np.where(mask, 0.6, 0.05), np.where(mask, 0.3, 0.05)])
    out = drop_small_regions(three[None].astype(np.float32), mask[None], MinRegion(0, 0.3))[0]
    gone = small_regions(mask, MinRegion(0, 0.3))
    assert (out[0][gone] == 1).all() and (out[1:, gone] == 0).all()
    np.testing.assert_array_equal(out[:, ~gone], three[:, ~gone].astype(np.float32))
    assert drop_small_regions(one, mask[None], MinRegion()) is one  # the default rule costs nothing


def test_metadata_without_the_field_keeps_every_region_and_round_trips_it(onnx_fp32):
    meta = onnx_fp32.metadata
    assert meta.min_region == MinRegion() and not meta.min_region.active
    set_ = meta.replace(min_region=[0.003, 0.3])
    assert set_.min_region == MinRegion(0.003, 0.3) and '"min_region":[0.003,0.3]' in set_.to_json()
    assert ModelMetadata.from_json(set_.to_json()) == set_


def test_the_segmenter_applies_the_rule_to_every_output(fixtures, reference, sample_images):
    raw = Segmenter(fixtures / "tiny_fp32.onnx", threads=1)
    rule = MinRegion(0.05, 0.3)  # the tiny model draws one region an image at 32 px, 29-481 pixels
    ruled = Segmenter(fixtures / "tiny_fp32.onnx", threads=1, min_region=rule)
    t = raw.metadata.threshold
    before, after = raw.run(reference["x"]) > t, ruled.run(reference["x"]) > t
    expect = np.stack([m & ~small_regions(m, rule) for m in before])
    np.testing.assert_array_equal(after, expect)
    assert (before != after).any(), "the rule should drop some regions"
    for image in sample_images[:4]:  # predict and predict_proba follow run
        assert not (ruled.predict(image) & ~raw.predict(image)).any()
        np.testing.assert_array_equal(ruled.predict(image) > 0, ruled.predict_proba(image) > t)


def test_keep_large_regions_scores_thresholded_masks_as_the_runtime_returns_them():
    masks = np.zeros((2, 16, 16), bool)
    masks[0, 2:10, 2:10] = True  # 64 px, kept
    masks[0, 14, 14] = True  # 1 px: under 1 % of 256 px and under 30 % of the largest region
    masks[1, 5, 5] = True  # the image's only region, 1 px: under the area floor
    out = keep_large_regions(masks, MinRegion(0.01, 0.3))
    assert out[0].sum() == 64 and not out[0, 14, 14] and not out[1].any()
    assert keep_large_regions(masks, MinRegion()) is masks  # the default rule keeps every region, at no cost
