"""Regenerate the bundled calibration sample: 32 Kvasir-SEG TRAIN-split images resized to 256x256 JPEG.

Why train images: calibration must never see the test split (val_120) that the exported files are scored on.
Images are picked at even steps through the sorted train_880 ids, so the sample is deterministic and covers the
whole split. Run from the repository root:  python export/calibration/make_sample.py [--data DIR]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from simpleunet_runtime.image import load_image, resize_image

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[2] / "shared" / "datasets" / "kvasir-seg"


def make(data: Path, count: int = 32, size: int = 256, quality: int = 85) -> list[Path]:
    ids = sorted(line.strip() for line in (data / "splits" / "train_880.txt").read_text().splitlines() if line.strip())
    step = len(ids) / count
    picked = [ids[int(i * step)] for i in range(count)]
    for old in HERE.glob("*.jpg"):
        old.unlink()
    out = []
    for sid in picked:
        src = next(p for p in (data / "images").glob(f"{sid}.*"))
        img = resize_image(load_image(src), size)
        path = HERE / f"{sid}.jpg"
        Image.fromarray(img).save(path, quality=quality, optimize=True)
        out.append(path)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Kvasir-SEG folder with images/ and splits/")
    p.add_argument("--count", type=int, default=32)
    args = p.parse_args()
    files = make(args.data, args.count)
    print(f"{len(files)} images, {sum(f.stat().st_size for f in files):,} bytes in {HERE}")
