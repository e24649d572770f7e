"""Seconds per training epoch (Kvasir-SEG train split, 256 px, batch 8) for the zoo's model sizes on this machine.

Times ``--steps`` real optimizer steps (batch assembly with the recipe's strong augmentation + forward + backward +
AdamW) after two warm-up steps and extrapolates to one epoch of 792 images (880 minus the 10 % validation carve-out;
the per-epoch validation of 88 images is not included). On a GPU (``--device cuda``) each model is timed as the
loop ran before its GPU speed pass (``host``: batches cut and augmented on the CPU and copied each step, fp16
autocast with a loss scaler, deterministic kernels) and as ``simpleunet-train --fast`` runs now (``fast``: data
resident on the GPU and augmented there, bf16 autocast, cuDNN autotuning, TF32).
Usage: python -m simpleunet.benchmarks.train_speed [--steps 5] [--threads 2] [--device cuda --batch 8,32]
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


def seconds_per_step(cfg: ModelConfig, steps: int, batch: int, imgsz: int, device: str = "cpu",
                     setup: str = "host") -> float:
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    fast = cuda and setup == "fast"
    torch.backends.cudnn.benchmark = fast
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = fast
    rng = np.random.default_rng(0)
    data = InMemorySegmentation(rng.integers(0, 255, (batch * (steps + 2), imgsz, imgsz, 3), dtype=np.uint8),
                                rng.random((batch * (steps + 2), imgsz, imgsz)) > 0.8,
                                TrainConfig().mean, TrainConfig().std, dev, resident=fast)
    model = build_model(cfg).train().to(dev, memory_format=MEMORY_FORMAT)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dtype = torch.bfloat16 if fast else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and dtype == torch.float16)
    times = []
    batches = data.batches(batch, epoch=0, seed=0, augment_with="strong")
    while True:
        t0 = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            break
        x, y = x.to(dev, memory_format=MEMORY_FORMAT), y.to(dev)
        with torch.autocast(dev.type, dtype=dtype, enabled=cuda):
            loss = segmentation_loss(model(x), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[2:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", default="8", help="batch size(s), comma-separated")
    p.add_argument("--imgsz", type=int, default=256)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    images = 792
    cuda = args.device.startswith("cuda")
    where = torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine()
    print(f"{where}, torch {torch.__version__}, {args.threads} threads, {args.imgsz} px; epoch = {images} images")
    print("| model | params | setup | batch | s/step | s/epoch | epochs/min |\n|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        cfg = MODELS[name]
        for setup in ("host", "fast") if cuda else ("host",):
            for batch in (int(b) for b in args.batch.split(",")):
                s = seconds_per_step(cfg, args.steps, batch, args.imgsz, args.device, setup)
                epoch = s * images / batch
                print(f"| {name} | {count_parameters(build_model(cfg)):,} | {setup} | {batch} | {s:.3f} | "
                      f"{epoch:.1f} | {60 / epoch:.2f} |", flush=True)


if __name__ == "__main__":
    main()
