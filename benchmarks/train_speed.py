"""Seconds per training epoch (Kvasir-SEG train split, 256 px, batch 8) for the zoo's model sizes on this machine.

Times ``--steps`` real optimizer steps (batch assembly with the recipe's strong augmentation + forward + backward +
AdamW) after one warm-up step and extrapolates to one epoch of 792 images (880 minus the 10 % validation carve-out;
the per-epoch validation of 88 images is not included).
Usage: python -m simpleunet.benchmarks.train_speed [--steps 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from simpleunet.train.config import ModelConfig, TrainConfig
from simpleunet.train.data import InMemorySegmentation
from simpleunet.train.loop import MEMORY_FORMAT
from simpleunet.train.losses import segmentation_loss
from simpleunet.train.model import build_model, count_parameters

MODELS = {
    "SimpleUNet-8 N=1": ModelConfig(width=8),
    "SimpleUNet-16 N=1": ModelConfig(width=16),
    "SimpleUNet-32 N=1": ModelConfig(width=32),
    "SimpleESKNet-32 N=2": ModelConfig(family="simpleesknet", width=32, blocks=2),
}


def seconds_per_step(cfg: ModelConfig, steps: int, batch: int, imgsz: int) -> float:
    rng = np.random.default_rng(0)
    data = InMemorySegmentation(rng.integers(0, 255, (batch * (steps + 1), imgsz, imgsz, 3), dtype=np.uint8),
                                rng.random((batch * (steps + 1), imgsz, imgsz)) > 0.8,
                                TrainConfig().mean, TrainConfig().std)
    model = build_model(cfg).train().to(memory_format=MEMORY_FORMAT)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    batches = data.batches(batch, epoch=0, seed=0, augment_with="strong")
    while True:
        t0 = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            break
        loss = segmentation_loss(model(x.contiguous(memory_format=MEMORY_FORMAT)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--imgsz", type=int, default=256)
    p.add_argument("--models", default=",".join(MODELS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    images = 792
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"batch {args.batch}, {args.imgsz} px; epoch = {images} images")
    print("| model | params | s/step | s/epoch |\n|---|---|---|---|")
    for name in args.models.split(","):
        cfg = MODELS[name]
        s = seconds_per_step(cfg, args.steps, args.batch, args.imgsz)
        print(f"| {name} | {count_parameters(build_model(cfg)):,} | {s:.2f} | {s * images / args.batch:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
