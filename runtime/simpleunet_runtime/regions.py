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

    def __str__(self) -> str:
        return f"{self.area:g},{self.ratio:g}"


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected regions of an HxW bool mask: (HxW int64 labels, -1 off the mask; region sizes by label).

    Vectorized union-find: each round hooks every root onto the smallest root it touches, then compresses paths
    fully, so the trees of a region at least halve each round (O(log n) rounds of O(n) numpy work)."""
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    index = np.arange(h * w).reshape(h, w)
    pairs = [(mask[:, :-1] & mask[:, 1:], index[:, :-1], index[:, 1:]),          # right
             (mask[:-1, :] & mask[1:, :], index[:-1, :], index[1:, :]),          # down
             (mask[:-1, :-1] & mask[1:, 1:], index[:-1, :-1], index[1:, 1:]),    # down-right
             (mask[:-1, 1:] & mask[1:, :-1], index[:-1, 1:], index[1:, :-1])]    # down-left
    a = np.concatenate([i[m] for m, i, _ in pairs])
    b = np.concatenate([j[m] for m, _, j in pairs])
    parent = np.arange(h * w)
    while a.size:
        ra, rb = parent[a], parent[b]
        apart = ra != rb
        if not apart.any():
            break
        a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]  # joined edges never come apart again
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:  # full path compression: every pixel points at its root
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
    roots = parent.reshape(h, w)[mask]
    ids, labels = np.unique(roots, return_inverse=True)
    out = np.full((h, w), -1, np.int64)
    out[mask] = labels.reshape(-1)
    return out, np.bincount(labels.reshape(-1), minlength=len(ids))


def small_regions(mask: np.ndarray, rule: MinRegion) -> np.ndarray:
    """HxW bool: the pixels of ``mask``'s regions that ``rule`` drops (all False when it keeps everything)."""
    mask = np.asarray(mask, bool)
    if not rule.active or not mask.any():
        return np.zeros(mask.shape, bool)
    labels, sizes = label_regions(mask)
    drop = (sizes < rule.area * mask.size) | (sizes < rule.ratio * sizes.max())
    return mask & drop[np.maximum(labels, 0)]


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

