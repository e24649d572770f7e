"""Test images with a near-identical scan in the train split, and the shipped models' test mDice without them.

A test score is only held-out if no test image is (nearly) a training image. Each image becomes a 64x64 grey
thumbnail; a test image whose mean absolute difference to some train thumbnail is below ``--max-diff`` grey levels
counts as a duplicate. The zoo models of that dataset are then scored like ``simpleunet-eval`` (256 px, the
model's threshold) on all test images, without the duplicates, and on the duplicates only.
Usage: python -m simpleunet.benchmarks.split_duplicates [busi|kvasir-seg] [--max-diff 5]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from simpleunet.train.checkpoint import load_model, run_folders
from simpleunet.train.data import dataset_root
from simpleunet.train.data import InMemorySegmentation, discover, load_arrays, select_split
from simpleunet.train.loop import predict_probabilities, score
from simpleunet.train.zoo import ZOO


def thumbnail(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L").resize((64, 64), Image.BILINEAR), np.float32).ravel()


def nearest(rows: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Each thumbnail's mean absolute difference to its nearest thumbnail of ``pool`` (grey levels)."""
    return np.array([np.abs(pool - r).mean(1).min() for r in rows])


def duplicates(dataset: str, max_diff: float) -> tuple[list, list[str]]:
    """(test samples, ids of the test images with a train thumbnail within ``max_diff`` grey levels)."""
    root = dataset_root(dataset, None)
    samples = discover(root)
    train = np.stack([thumbnail(s.image) for s in select_split(samples, root, "train")])
    test = select_split(samples, root, "test")
    near = nearest(np.stack([thumbnail(s.image) for s in test]), train)
    return test, [s.id for s, d in zip(test, near) if d < max_diff]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", nargs="?", default="busi")
    p.add_argument("--max-diff", type=float, default=5.0, help="mean |difference| in grey levels (default 5)")
    args = p.parse_args()
    torch.set_num_threads(1)
    test, dups = duplicates(args.dataset, args.max_diff)
    print(f"{args.dataset}: {len(dups)} of {len(test)} test images have a train scan within {args.max_diff:g} "
          f"grey levels{': ' + ', '.join(sorted(dups)) if dups else ''}")
    images, masks = load_arrays(test, 256)
    keep = np.array([s.id not in dups for s in test])
    for folder in run_folders(ZOO):
        model, meta = load_model(folder)
        if meta.get("dataset") != args.dataset:
            continue
        pre = meta["preprocess"]
        prob = predict_probabilities(model, InMemorySegmentation(images, masks, pre["mean"], pre["std"]),
                                     torch.device("cpu"))
        t = pre["threshold"]
        parts = [("all", np.ones_like(keep)), ("without duplicates", keep), ("duplicates only", ~keep)]
        print(f"  {folder.name}: " + ", ".join(f"{label} {score(prob[m], masks[m], t)['mDice']:.4f}"
                                              for label, m in parts if m.any()))


if __name__ == "__main__":
    main()
