"""Small-region removal: the one post-processing rule after the threshold, numpy only (the Pi has no OpenCV).

A tiny lesion model draws specks: on BUSI's normal (empty) images a speck scores Dice 0 where an empty mask scores 1.
``MinRegion(area, ratio)`` drops every 8-connected foreground region smaller than ``area`` (a fraction of the model's
input, so it means the same at any image size) or smaller than ``ratio`` times the image's largest region. It runs
on the model-sized probabilities, before they are resized to the image, so its cost does not grow with the image.
``MinRegion()`` (0, 0) keeps everything, as files exported without the field do. The zoo's value was chosen on the
training carve-outs of all six zoo models at once (``python -m simpleunet.train.screen regions``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class MinRegion(NamedTuple):
    area: float = 0.0   # fraction of the model input's pixels
    ratio: float = 0.0  # fraction of the largest region's pixels

    @property
    def active(self) -> bool:
        return self.area > 0 or self.ratio > 0


#: The rule of files exported without one: every region stays.
KEEP_ALL = MinRegion()


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected regions of an HxW bool mask: (HxW int32 labels, -1 off the mask; region sizes by label).

    Within the mask's bounding box, each row's runs of foreground are the nodes and the runs touching in the next
    row (straight or diagonally) the edges. Vectorized union-find: each round hooks every root onto the smallest
    root it touches, then compresses paths fully, so a region's trees at least halve each round (O(log n) rounds)."""
    mask = np.asarray(mask, bool)
    out = np.full(mask.shape, -1, np.int32)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return out, np.zeros(0, np.int64)
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    m = mask[box]
    starts = m.copy()
    starts[:, 1:] &= ~m[:, :-1]  # a run starts where the pixel on its left is off
    run = np.cumsum(starts.ravel(), dtype=np.int32).reshape(m.shape) - 1  # each pixel's run, valid on the mask
    up, down = m[:-1], m[1:]
    straight, right, left = up & down, up[:, :-1] & down[:, 1:], up[:, 1:] & down[:, :-1]
    a = np.concatenate([run[:-1][straight], run[:-1, :-1][right], run[:-1, 1:][left]])
    b = np.concatenate([run[1:][straight], run[1:, 1:][right], run[1:, :-1][left]])
    parent = np.arange(int(run[-1, -1]) + 1, dtype=np.int32)
    while a.size:
        ra, rb = parent[a], parent[b]
        apart = ra != rb
        if not apart.any():
            break
        a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]  # joined runs never come apart again
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:  # full path compression: every run points at its root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    roots, region = np.unique(parent, return_inverse=True)
    labels = region.reshape(-1).astype(np.int32)[run[m]]
    out[box][m] = labels
    return out, np.bincount(labels, minlength=len(roots))


def small_regions(mask: np.ndarray, rule: MinRegion) -> np.ndarray:
    """HxW bool: the pixels of ``mask``'s regions that ``rule`` drops (all False when it keeps everything)."""
    mask = np.asarray(mask, bool)
    if not rule.active or not mask.any():
        return np.zeros(mask.shape, bool)
    labels, sizes = label_regions(mask)
    drop = (sizes < rule.area * mask.size) | (sizes < rule.ratio * sizes.max())
    return mask & drop[np.maximum(labels, 0)]


def keep_large_regions(masks: np.ndarray, rule: MinRegion) -> np.ndarray:
    """(N, H, W) bool masks without the regions ``rule`` drops from each: what the runtime returns after the
    threshold (for scoring thresholded masks; the runners themselves use ``drop_small_regions``)."""
    masks = np.asarray(masks, bool)
    return np.stack([m & ~small_regions(m, rule) for m in masks]) if rule.active and len(masks) else masks


def drop_small_regions(prob: np.ndarray, foreground: np.ndarray, rule: MinRegion) -> np.ndarray:
    """(N, C, h, w) class probabilities with the pixels of each image's dropped regions (of the (N, h, w) bool
    ``foreground``) set to certain background, so every later step (resize, threshold, scores) sees them gone."""
    if not rule.active:
        return prob
    prob = np.array(prob, np.float32, copy=True)
    for i, fg in enumerate(foreground):
        gone = small_regions(fg, rule)
        if gone.any():
            prob[i, :, gone] = 0.0
            if prob.shape[1] > 1:
                prob[i, 0, gone] = 1.0
    return prob
