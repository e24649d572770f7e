"""int8 ONNX calibration choices: how close each keeps the int8 masks to fp32, chosen without the test split.

Each zoo model's plain fp32 ONNX graph is quantized with every calibration of ``export.quantize.CALIBRATIONS`` on
the exporter's own calibration images (32: its dataset's train split, or the bundled Kvasir-SEG sample). They are
compared on training images that calibrated nothing (every 4th of the rest of the train split), without labels:
per-image Dice of int8 vs fp32 masks, and images whose mask flips between empty and not. The test split's mDice
is printed for reference only: picking a method by it would tune on the test set.
Usage: python -m simpleunet.benchmarks.calibration [ZOO_NAME ...]   (default: every zoo model; ~1 min each)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from simpleunet.export.images import calibration_set, own_dataset
from simpleunet.export.onnx_export import export_onnx
from simpleunet.export.quantize import CALIBRATIONS, quantize_onnx
from simpleunet.export.verify import onnx_probabilities
from simpleunet.train.checkpoint import load_model, run_folders
from simpleunet.train.data import discover, load_arrays, select_split, training_samples
from simpleunet.train.zoo import ZOO
from simpleunet_runtime.errors import console_script
from simpleunet_runtime.image import normalize
from simpleunet_runtime.metrics import dice
from simpleunet_runtime.sample import SAMPLE_DATASET


def foreground(prob: np.ndarray) -> np.ndarray:
    """(N, H, W) foreground probability of (N, C, H, W) output: the sigmoid, or 1 - p(background)."""
    return prob[:, 0] if prob.shape[1] == 1 else 1 - prob[:, 0]


def compare(name: str) -> None:
    model, meta = load_model(ZOO / name)
    pre, dataset = meta["preprocess"], meta["dataset"]
    size, t = pre["imgsz"], pre["threshold"]
    root = own_dataset(dataset)
    if root is None:
        print(f"{name}: dataset {dataset!r} not found here; skipped")
        return
    calib = calibration_set(None if dataset == SAMPLE_DATASET else root, size, 32)  # what the exporter uses
    samples = discover(root)
    pool, _ = training_samples(samples, root)
    sets = {"held-out train": [s for s in pool if s.id not in set(calib.names)][::4],
            "test": select_split(samples, root, "test")}
    data = {}
    for key, chosen in sets.items():
        images, masks = load_arrays(chosen, size)
        data[key] = (normalize(images, pre["mean"], pre["std"]), masks)
    with tempfile.TemporaryDirectory(prefix="simpleunet-calibration-") as tmp:
        plain = Path(tmp) / "fp32.onnx"
        onnx.save(export_onnx(model, size, model.config.num_classes)[0], str(plain))
        fp32 = {key: foreground(onnx_probabilities(plain, x)) > t for key, (x, _) in data.items()}
        test_masks = data["test"][1]
        print(f"{name}: {len(sets['held-out train'])} held-out train images, threshold {t}; fp32 test mDice "
              f"{np.mean([dice(p, m) for p, m in zip(fp32['test'], test_masks)]):.4f}")
        for calibration in CALIBRATIONS:
            path = Path(tmp) / f"{calibration}.onnx"
            proto, _ = quantize_onnx(plain, normalize(calib.images, pre["mean"], pre["std"]), calibration=calibration)
            onnx.save(proto, str(path))
            parts = []
            for key, (x, _) in data.items():
                int8 = foreground(onnx_probabilities(path, x)) > t
                flips = sum(a.any() != b.any() for a, b in zip(int8, fp32[key]))
                parts.append(f"{key}: Dice vs fp32 {np.mean([dice(a, b) for a, b in zip(int8, fp32[key])]):.4f}, "
                             f"{flips} empty/non-empty flips")
                if key == "test":
                    parts.append(f"test mDice {np.mean([dice(p, m) for p, m in zip(int8, test_masks)]):.4f}")
            print(f"  {calibration:18s} " + "; ".join(parts), flush=True)


@console_script
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="zoo models (default: all)")
    args = p.parse_args(argv)
    shipped = [f.name for f in run_folders(ZOO)]
    unknown = sorted(set(args.names) - set(shipped))
    if unknown:
        print(f"error: no zoo model {unknown[0]!r}; choose from {', '.join(shipped)}", file=sys.stderr)
        return 2
    names = args.names or shipped
    for name in names:
        compare(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
