#!/usr/bin/env python3
"""Regenerate the bundled sample (runtime/simpleunet_runtime/sample/) from the Kvasir-SEG validation split.

16 image/mask pairs of ``splits/val_120.txt`` (every 7th id), longer side resized to 256 px: images JPEG q90,
masks binary PNG (0/255). Uses only the runtime's own decoding, so it runs in the slim venv too.
Usage: python runtime/tools/make_sample.py [--data ../shared/datasets/kvasir-seg] [--count 16] [--size 256]
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from simpleunet_runtime.image import load_image, load_mask, resize_image, resize_mask

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[2] / "shared" / "datasets" / "kvasir-seg"
OUT = HERE.parent / "simpleunet_runtime" / "sample"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--size", type=int, default=256, help="longer side in pixels")
    args = p.parse_args()
    ids = [s.strip() for s in (args.data / "splits" / "val_120.txt").read_text().splitlines() if s.strip()]
    step = max(1, len(ids) // args.count)
    chosen = ids[::step][: args.count]
    for sub in ("images", "masks"):
        shutil.rmtree(OUT / sub, ignore_errors=True)
        (OUT / sub).mkdir(parents=True)
    for sid in chosen:
        image, mask = load_image(args.data / "images" / f"{sid}.jpg"), load_mask(args.data / "masks" / f"{sid}.jpg")
        h, w = image.shape[:2]
        scale = args.size / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        Image.fromarray(resize_image(image, size)).save(OUT / "images" / f"{sid}.jpg", quality=90, optimize=True)
        Image.fromarray(resize_mask(mask, size).astype(np.uint8) * 255).save(OUT / "masks" / f"{sid}.png",
                                                                             optimize=True)
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {len(chosen)} pairs to {OUT} ({total / 1000:.0f} KB in all)")


if __name__ == "__main__":
    main()
