"""``simpleunet-export``: a trained SimpleUNet -> ONNX + TFLite (fp32 and, with --int8, int8), every file checked.

Exit codes: 0 success, 2 a user-fixable problem or a failed check (one ``error:`` line on stderr), 130 interrupted.
"""
from __future__ import annotations

import argparse
import math
import re
import sys

from simpleunet_runtime.errors import console_script

from simpleunet.train.config import FAMILIES

from .pipeline import BIAS_CORRECTION, DEFAULT_FORMATS, INT8_ONNX, INT8_WEIGHTS

EXAMPLES = """examples:
  simpleunet-export --width 16 --int8                      # shipped weights, bundled calibration images
  simpleunet-export --checkpoint runs/my-run --int8 --formats onnx --out exports/my-run
  simpleunet-export --width 8 --imgsz 128 --int8 --formats tflm          # a microcontroller: C array + arena
  simpleunet-export --family simpleesknet --width 32 --blocks 2 --checkpoint runs/esk32 --int8
"""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value}")
    return value


def _tolerance(text: str) -> float:
    """A positive finite number: a negative or NaN --max-delta would only fail after the ONNX export."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise argparse.ArgumentTypeError(f"expected letters, digits, '.', '_' or '-', got {text!r}")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("simpleunet-export", description=__doc__.splitlines()[0].split(": ", 1)[1],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", metavar="DIR", help="a run folder written by simpleunet-train "
                   "(default: the shipped pretrained weights for --family/--width/--blocks)")
    p.add_argument("--family", choices=FAMILIES, help="model family (default simpleunet)")
    p.add_argument("--width", type=_positive, help="channel width C (default 16)")
    p.add_argument("--blocks", type=_positive, help="blocks per level N (default 1)")
    p.add_argument("--imgsz", type=_positive, help="input size, a multiple of 16 (default: the checkpoint's)")
    p.add_argument("--int8", action="store_true", help="also write int8 ONNX and full-integer int8 TFLite")
    p.add_argument("--formats", default=",".join(DEFAULT_FORMATS), help="comma-separated: onnx, tflite, tflm "
                   "(TensorFlow Lite Micro: int8 file + C array + measured arena; needs --int8) (default onnx,tflite)")
    p.add_argument("--calib-data", metavar="DIR", help="folder of real images for int8 calibration, or a dataset "
                   "folder (its training images: the train split or official Training folders) (default: the "
                   "bundled Kvasir-SEG train sample; a model of another dataset, e.g. BUSI, uses that dataset when "
                   "found here)")
    p.add_argument("--calib-size", type=_positive, default=32, help="calibration images to use (default 32)")
    p.add_argument("--val-data", metavar="DIR", help="images/ + masks/ for the checks, its test split if it has "
                   "splits/ (default: the bundled Kvasir-SEG val_120 sample; a model of another dataset, e.g. BUSI, "
                   "uses that dataset's test split when found here)")
    p.add_argument("--val-size", type=_positive, help="check images to use (default all)")
    p.add_argument("--out", metavar="DIR", help="output folder (default exports/<model name>)")
    p.add_argument("--name", type=_name, help="model name in the files' metadata and file names (default: the "
                   "zoo folder's name, e.g. simpleunet16-kvasir, else the architecture, e.g. simpleunet16)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--int8-onnx", choices=INT8_ONNX, default="qoperator",
                   help="int8 ONNX layout (default qoperator: smallest; qdq for hardware execution providers)")
    p.add_argument("--int8-weights", choices=INT8_WEIGHTS, default="int7",
                   help="int8 ONNX weight grid, both exact on every CPU (x86 AVX2 without VNNI included): int7 "
                        "(default: onnxruntime's reduce_range, weights in [-64, 64]), pair-safe (per-channel "
                        "scales such that no two same-sign weights of a channel pass 128 together) or auto (both, "
                        "keeping the file closer to fp32 on the same training images as --bias-correction auto)")
    p.add_argument("--bias-correction", choices=BIAS_CORRECTION, default="auto",
                   help="int8 ONNX bias correction (default auto: quantize with and without it and keep the file "
                        "whose masks agree better with fp32 on up to 200 training images: of --calib-data, or of the "
                        "model's dataset when found here)")
    p.add_argument("--min-agreement", type=_fraction, default=0.98,
                   help="fail if an int8 file's mask Dice vs fp32 is below this (default 0.98)")
    p.add_argument("--max-delta", type=_tolerance, default=1e-4,
                   help="fail if an fp32 file's max |Δ| vs PyTorch is above this (default 1e-4)")
    p.add_argument("--no-ort-rewrites", dest="ort_rewrites", action="store_false",
                   help="write the plain ONNX graphs, without the exact rewrites that make them faster in "
                        "onnxruntime (see export/rewrites.py)")
    return p


# A KeyboardInterrupt held while files move into --out carries a message that says they did.
@console_script(interrupted="nothing was written to the output folder")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .pipeline import export_model, parse_formats

    export_model(args.checkpoint, family=args.family, width=args.width, blocks=args.blocks, imgsz=args.imgsz,
                 int8=args.int8, formats=parse_formats(args.formats), calib_data=args.calib_data,
                 calib_size=args.calib_size, val_data=args.val_data, val_size=args.val_size, out=args.out,
                 opset=args.opset, int8_onnx=args.int8_onnx, int8_weights=args.int8_weights,
                 bias_correction=args.bias_correction,
                 min_agreement=args.min_agreement,
                 max_delta=args.max_delta, ort_rewrites=args.ort_rewrites, name=args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
