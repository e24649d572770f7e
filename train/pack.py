"""Pack the images a training run uses into a small folder at the training size, losslessly: the way to carry a
dataset to a GPU machine with an upload limit (BUSI's 624 training pairs: 84 MiB as shipped, 20.6 MiB packed at
256 px). Training on the pack decodes exactly the arrays it would decode from the originals. Name the pack after
its dataset and point $SIMPLEUNET_DATA at its parent: the run then records the dataset by name only, so
``simpleunet-eval`` and ``make zoo-publish`` on a machine with the originals score it on their test split.

    python -m simpleunet.train.pack busi --out packed/busi
    SIMPLEUNET_DATA=packed simpleunet-train --recipe simpleesknet32-n2-busi --out runs/simpleesknet32-n2-busi
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, features

from simpleunet_runtime.errors import SimpleUNetError

from .data import ALL_IMAGES, LAYOUTS, dataset_root, decode_pair, discover, load_arrays, training_samples

#: Lossless WebP is ~30 % smaller than PNG on these images; ``source`` copies each image file as it is (masks
#: still packed at the training size): Kvasir-SEG's 880 training JPEGs are 30.7 MiB, the WebP pack 50.8 MiB, which
#: with the repository and a SimpleESKNet-32 run's state is over a GPU machine's 64 MiB upload.
FORMATS = ("webp", "png", "source")
MANIFEST = "PACKED.json"


def pack(root: str | os.PathLike, out: str | os.PathLike, imgsz: int = 256, layout: str = "auto",
         fmt: str = "webp") -> dict:
    """Write ``root``'s training images (its train split, else every image) resized to ``imgsz`` into ``out`` as
    images/ + masks/ + the split file, then check that they decode to the same arrays. Returns the manifest."""
    root, out = Path(root), Path(out)
    if fmt not in FORMATS:
        raise SimpleUNetError(f"unknown --format {fmt!r}; choose {' or '.join(FORMATS)}")
    if fmt == "webp" and not features.check("webp"):
        raise SimpleUNetError("this Pillow has no WebP support; use --format png")
    if out.exists():
        raise SimpleUNetError(f"{out} already exists; remove it or choose another --out")
    samples, split_used = training_samples(discover(root, layout), root)
    images, masks = load_arrays(samples, imgsz)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / "masks").mkdir()
        options = {"lossless": True} if fmt == "webp" else {}  # Pillow's default effort: ~60 ms an image
        for s, img, mask in zip(samples, images, masks):
            if fmt == "source":  # the file itself, and its merged mask at the image's own size
                shutil.copyfile(s.image, tmp / "images" / f"{s.id}{s.image.suffix.lower()}")
                mask = decode_pair(s)[1]
            else:
                Image.fromarray(img).save(tmp / "images" / f"{s.id}.{fmt}", **options)
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp / "masks" / f"{s.id}.png")
        if split_used != ALL_IMAGES:  # keep the split file's name: a run records it and resume compares it
            name = split_used if split_used.endswith(".txt") else "train.txt"
            (tmp / "splits").mkdir()
            (tmp / "splits" / name).write_text("".join(f"{s.id}\n" for s in samples))
        again_samples, _ = training_samples(discover(tmp, "folder"), tmp)
        again_images, again_masks = load_arrays(again_samples, imgsz, cache=False)
        if [s.id for s in again_samples] != [s.id for s in samples] or not (
                np.array_equal(again_images, images) and np.array_equal(again_masks, masks)):
            raise SimpleUNetError("the packed images do not decode to the originals' arrays; try --format png")
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        manifest = {"source": str(root.resolve()), "images": len(samples), "imgsz": imgsz, "format": fmt,
                    "split_used": split_used, "bytes": size}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("python -m simpleunet.train.pack", description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="a dataset name (kvasir-seg, busi: found like simpleunet-train finds it) or folder")
    p.add_argument("--out", required=True, help="the new folder to write")
    p.add_argument("--imgsz", type=int, default=256, help="the training size (the recipe's imgsz; default 256)")
    p.add_argument("--layout", default="auto", choices=LAYOUTS)
    p.add_argument("--format", default="webp", choices=FORMATS, help="lossless image format (default webp), or "
                   "source: the image files as they are (smaller for JPEG datasets such as Kvasir-SEG)")
    args = p.parse_args(argv)
    try:
        if args.imgsz < 8:
            raise SimpleUNetError(f"--imgsz must be at least 8, got {args.imgsz}")
        try:
            root = Path(args.dataset) if Path(args.dataset).is_dir() else dataset_root(args.dataset, None)
        except SimpleUNetError:
            raise SimpleUNetError(f"dataset {args.dataset!r} not found: give its folder, or a name under "
                                  "$SIMPLEUNET_DATA or ../shared/datasets") from None
        m = pack(root, args.out, args.imgsz, args.layout, args.format)
    except SimpleUNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"packed {m['images']} training images of {root} ({m['split_used']}) at {m['imgsz']} px into {args.out}: "
          f"{m['bytes'] / 2**20:.1f} MiB. Train on it with SIMPLEUNET_DATA={Path(args.out).parent} "
          f"(the folder named after its dataset) or --data {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
