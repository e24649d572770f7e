"""TensorFlow Lite Micro memory per (width, input size): the smallest arena TFLite Micro accepts and the flash the
int8 model takes, each measured by a real ``--formats tflm`` export of the zoo's Kvasir-SEG weights (the arena
depends on the graph, not on the weights' values; the masks of a model exported at a size it was not trained at
are not scored here).

    python -m simpleunet.benchmarks.micro_arena [--widths 8 16] [--sizes 96 112 128 160 256]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from simpleunet.export.pipeline import export_model
from simpleunet.train.zoo import ZOO
from simpleunet_runtime.errors import console_script


def measure(width: int, imgsz: int, work: Path) -> dict:
    out = work / f"w{width}-{imgsz}"
    export_model(ZOO / f"simpleunet{width}-kvasir", imgsz=imgsz, int8=True, formats="tflm", out=out, val_size=4,
                 min_agreement=1e-9, log=None)
    rows = json.loads((out / "manifest.json").read_text())["files"]
    micro = next(r["micro"] for r in rows if r.get("target") == "tflite-micro")
    return {"width": width, "imgsz": imgsz, "arena_bytes": micro["arena_bytes"], "flash_bytes": micro["flash_bytes"],
            "ops": len(micro["ops"])}


@console_script
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16])
    p.add_argument("--sizes", type=int, nargs="+", default=[96, 112, 128, 160, 256])
    args = p.parse_args(argv)
    print("| model | input | arena (KiB) | flash (bytes) | ops | fits 256 KiB |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for width in args.widths:
            for size in args.sizes:
                r = measure(width, size, Path(work))
                print(f"| SimpleUNet-{width} | {size}×{size} | {r['arena_bytes'] / 1024:.0f} | {r['flash_bytes']:,} | "
                      f"{r['ops']} | {'yes' if r['arena_bytes'] <= 256 * 1024 else 'no'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
