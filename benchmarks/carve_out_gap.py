"""Why a zoo model's carve-out scores above its test split: best-epoch luck, near-duplicates, or the lesions drawn.

Screens choose on the carve-out (a seeded tenth of the train split) and the accuracy issue judges on the test split,
so a gap between them decides which recipe changes can carry over. For each zoo model of a dataset this prints
three parts of the gap, each measured, none assumed:

- best-epoch luck: the best carve-out epoch against the mean of the run's last 50 epochs (one seed's curve moves
  by about 0.005 an epoch, and the best of 200 such epochs is chosen);
- near-duplicates: each carve-out image's nearest other training image, and each test image's nearest training
  image (64x64 grey thumbnails, mean absolute difference, as ``split_duplicates``): a leak would show as closer
  neighbours for the carve-out than for the test split;
- the lesions drawn: per-image Dice (the model's threshold and small-region rule, as ``simpleunet-eval``) by the
  lesion's share of the image on both splits, and the test mDice without the lesions under 3 % of the image.

Usage: python -m simpleunet.benchmarks.carve_out_gap [kvasir-seg|busi]   (a few minutes a model)
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from simpleunet.train.checkpoint import load_model, run_folders
from simpleunet.train.config import TrainConfig
from simpleunet.train.data import (AREA_EDGES, area_bins, carve_validation, dataset_root, discover, load_arrays,
                                  select_split, training_samples)
from simpleunet.train.screen import carve_out_probabilities, per_image_dice, split_probabilities
from simpleunet.train.zoo import ZOO
from simpleunet_runtime.errors import console_script

from .split_duplicates import nearest, thumbnail

#: A label per lesion-size bin of data.area_bins, smallest first.
AREA_LABELS = ("empty", f"<{AREA_EDGES[0]:.0%}",
               *(f"{lo:.0%}-{hi:.0%}" for lo, hi in zip(AREA_EDGES, AREA_EDGES[1:])), f">={AREA_EDGES[-1]:.0%}")
SMALL = AREA_EDGES[0]


def by_area(dices: np.ndarray, masks: np.ndarray) -> dict[str, tuple[int, float]]:
    """{bin label: (images, mDice)} in the order of ``AREA_LABELS``, bins without images left out."""
    bins = area_bins(masks)
    return {label: (int((bins == k).sum()), float(dices[bins == k].mean()))
            for k, label in enumerate(AREA_LABELS) if (bins == k).any()}


def neighbours(cfg: TrainConfig) -> str:
    """The near-duplicate line of a run's carve-out: carve-out vs the rest of train, test vs all of train."""
    root = dataset_root(cfg.dataset, cfg.data_root)
    samples = discover(root)
    train, _ = training_samples(samples, root)
    thumbs = np.stack([thumbnail(s.image) for s in train])
    test = np.stack([thumbnail(s.image) for s in select_split(samples, root, "test")])
    strata = area_bins(load_arrays(train, cfg.imgsz)[1]) if cfg.carve_by == "lesion-area" else None
    rest, carve = carve_validation(len(train), cfg.val_fraction, cfg.seed, strata)
    parts = []
    for label, d in (("carve-out to the rest of train", nearest(thumbs[carve], thumbs[rest])),
                     ("test to train", nearest(test, thumbs))):
        parts.append(f"{label}: median {np.median(d):.1f}, under 5 / 10 grey levels {(d < 5).mean():.0%} / "
                     f"{(d < 10).mean():.0%} of {len(d)}")
    return "nearest training image (64x64 grey thumbnails, mean |difference|): " + "; ".join(parts)


def report(folder, history_window: int = 50) -> list[str]:
    """The lines of one zoo model: best-epoch luck and Dice by lesion area on both splits."""
    _, meta = load_model(folder)
    pre = meta["preprocess"]
    threshold, rule = pre["threshold"], tuple(pre.get("min_region", (0, 0)))
    cprob, cmasks, _ = carve_out_probabilities(folder)
    tprob, tmasks, _ = split_probabilities(folder)
    carve, test = per_image_dice(cprob, cmasks, threshold, rule), per_image_dice(tprob, tmasks, threshold, rule)
    history = [h["val_mDice"] for h in json.loads((folder / "metrics.json").read_text())["history"]]
    tail = history[-history_window:]
    lines = [f"{folder.name}: carve-out {carve.mean():.4f} ({len(carve)} images), test {test.mean():.4f} "
             f"({len(test)}), gap {carve.mean() - test.mean():+.4f} (threshold {threshold:g}, small-region rule "
             f"{rule[0]:g}, {rule[1]:g})",
             f"  best-epoch luck: best carve-out epoch {max(history):.4f} (threshold 0.5, no rule) vs "
             f"{np.mean(tail):.4f} the mean of the last {len(tail)} of {len(history)} epochs"]
    keep = area_bins(tmasks) != 1  # bin 1: a lesion under SMALL of the image
    lines.append(f"  test without its {int((~keep).sum())} lesions under {SMALL:.0%} of the image: "
                 f"{test[keep].mean():.4f} (they score {test[~keep].mean() if (~keep).any() else float('nan'):.4f})")
    c, t = by_area(carve, cmasks), by_area(test, tmasks)
    lines.append("  | lesion share | carve-out images | carve-out mDice | test images | test mDice |")
    lines.append("  |---|---|---|---|---|")
    for b in (b for b in AREA_LABELS if b in c or b in t):
        cn, cm = c.get(b, (0, float("nan")))
        tn, tm = t.get(b, (0, float("nan")))
        lines.append(f"  | {b} | {cn} | {cm:.3f} | {tn} | {tm:.3f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", nargs="?", default="kvasir-seg", choices=("kvasir-seg", "busi"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    folders = [f for f in run_folders(ZOO) if load_model(f)[1].get("dataset") == args.dataset]
    cfg = TrainConfig.from_dict(load_model(folders[0])[1]["train"])  # the zoo models of a dataset share one carve-out
    print(neighbours(cfg), flush=True)
    for folder in folders:
        print("\n".join(report(folder)), flush=True)


if __name__ == "__main__":
    console_script(main)()
