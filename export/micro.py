"""The TensorFlow Lite Micro target (``--formats tflm``): the full-integer TFLite file as a C array, with its
memory measured in TFLite Micro itself (the ``tflite-micro`` wheel: the reference kernels firmware runs).

TFLite Micro keeps every live activation in one arena whose size firmware fixes at build time. In SimpleUNet the
peak is at the decoder's last Concat, where the full-resolution skip, the upsampled deep feature and their
concatenation live together (4 + 4 + 8 channels at width 8): 16 bytes a pixel, so the arena grows with the input
area. ``smallest_arena`` finds the arena TFLite Micro accepts by bisection on the real interpreter. Measured and
not used (2026-12-03, SimpleUNet-8 at 128 px, 263 KB): splitting each Concat -> Conv into two Convs and an Add, and
moving operators later, lower the live peak on paper (256 -> 208 KB) but not the arena TFLite Micro's greedy
planner packs (264 KB either way); the input size is the lever.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from simpleunet_runtime.backends import native_output

from .errors import ExportError

MICRO_HINT = "pip install tflite-micro"
#: Arena sizes are searched at this granularity (bytes), up to ARENA_LIMIT.
ARENA_STEP, ARENA_LIMIT = 1024, 64 << 20
#: The C array's alignment: TFLite Micro wants the model 16-byte aligned.
ALIGN = 16


def require_tflm():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise ExportError(f"--formats tflm runs the file in TensorFlow Lite Micro to measure its arena, and the "
                          f"tflite-micro package is not installed: {MICRO_HINT}") from None
    return runtime


def _fits(runtime, data: bytes, arena: int) -> bool:
    try:
        with native_output(2), native_output(1):  # its "Failed to resize buffer" lines are the search's, not news
            runtime.Interpreter.from_bytes(data, arena_size=arena)
        return True
    except Exception:  # noqa: BLE001 - TFLM raises a bare RuntimeError/ValueError when allocation fails
        return False


def smallest_arena(data: bytes) -> int:
    """The smallest arena (bytes, a multiple of ARENA_STEP) in which TFLite Micro allocates the model."""
    runtime = require_tflm()
    lo, hi = ARENA_STEP, ARENA_STEP
    while not _fits(runtime, data, hi):
        if hi >= ARENA_LIMIT:
            raise ExportError(f"TFLite Micro cannot allocate this model in {ARENA_LIMIT >> 20} MiB; it is not for a "
                              "microcontroller (try --width 8 and a smaller --imgsz)")
        lo, hi = hi + ARENA_STEP, min(hi * 2, ARENA_LIMIT)
    while lo < hi:
        mid = (lo + hi) // 2 // ARENA_STEP * ARENA_STEP
        if mid < lo:
            mid = lo
        if _fits(runtime, data, mid):
            hi = mid
        else:
            lo = mid + ARENA_STEP
    return hi


def allocation_report(data: bytes, arena: int) -> str:
    """TFLite Micro's own account of the arena (RecordingMicroAllocator)."""
    runtime = require_tflm()
    with native_output(2) as err, native_output(1) as out:
        runtime.Interpreter.from_bytes(data, arena_size=arena).print_allocations()
    return b"".join(out + err).decode("utf-8", "replace").strip()


def operators(data: bytes) -> list[str]:
    """The builtin operators of a TFLite file, in graph order."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    return [names.get(codes[op.opcodeIndex], str(codes[op.opcodeIndex])) for op in model.subgraphs[0].operators]


def run(data: bytes, arena: int, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """int8 outputs of TFLite Micro for NCHW float inputs ``x`` (quantized with the file's input scale), one image
    at a time, and the (scale, zero point) of input and output."""
    runtime = require_tflm()
    with native_output(1):
        interp = runtime.Interpreter.from_bytes(data, arena_size=arena)
    i, o = interp.get_input_details(0), interp.get_output_details(0)
    qi, qo = i["quantization_parameters"], o["quantization_parameters"]
    s_in, z_in = float(qi["scales"][0]), int(qi["zero_points"][0])
    outs = []
    for image in x:
        q = np.clip(np.round(image.transpose(1, 2, 0) / s_in) + z_in, -128, 127).astype(np.int8)
        interp.set_input(q[None], 0)
        interp.invoke()
        outs.append(np.array(interp.get_output(0)))
        interp.reset()
    io = {"input_scale": s_in, "input_zero_point": z_in, "output_scale": float(qo["scales"][0]),
          "output_zero_point": int(qo["zero_points"][0])}
    return np.concatenate(outs), io


def litert_int8(path: Path, x: np.ndarray, io: dict[str, Any], reference: bool = True) -> np.ndarray:
    """LiteRT's int8 outputs for the same quantized inputs, with its reference kernels (what TFLite Micro's kernels
    are ports of: the parity reference) or its default optimized ones (what a Pi runs)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_REF if reference else OpResolverType.AUTO
    with native_output(2):  # the delegate's INFO line
        interp = Interpreter(model_path=str(path), experimental_op_resolver_type=resolver)
        interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    outs = []
    for image in x:
        q = np.clip(np.round(image.transpose(1, 2, 0) / io["input_scale"]) + io["input_zero_point"], -128, 127)
        interp.set_tensor(i["index"], q.astype(np.int8)[None])
        interp.invoke()
        outs.append(interp.get_tensor(o["index"]).copy())
    return np.concatenate(outs)


def c_identifier(name: str) -> str:
    """A C identifier for a model name (simpleunet8-kvasir_int8 -> simpleunet8_kvasir_int8)."""
    return re.sub(r"\W", "_", name if not name[:1].isdigit() else f"m_{name}")


def c_files(name: str, data: bytes, io: dict[str, Any], arena: int, meta) -> tuple[str, str]:
    """(header, source) of the model as a C array with what firmware needs: its length, the arena size, the input
    size, mean/std and threshold, and the int8 input/output scale and zero point."""
    ident = c_identifier(name)
    h, w = meta.imgsz
    guard = f"{ident.upper()}_H_"
    area, ratio = meta.min_region
    region = (f"\n// The runtime then drops regions under {area:g} of the input or {ratio:g} of the largest "
              "(min_region); this C example does not." if meta.min_region.active else "")
    header = f"""// {name}: SimpleUNet int8 model for TensorFlow Lite Micro (simpleunet-export --formats tflm).
// {meta.notice}
#ifndef {guard}
#define {guard}
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

extern const unsigned char {ident}_model[];
extern const size_t {ident}_model_len;  // {len(data)} bytes of flash

#define {ident.upper()}_ARENA_BYTES {arena}  // smallest arena TFLite Micro accepted, measured at export
#define {ident.upper()}_INPUT_HEIGHT {h}
#define {ident.upper()}_INPUT_WIDTH {w}
#define {ident.upper()}_INPUT_CHANNELS 3  // RGB, NHWC, int8
// Preprocess: resize to {h}x{w} (bilinear), x = (rgb / 255 - mean) / std, then q = round(x / scale) + zero_point.
static const float {ident}_mean[3] = {{{", ".join(f"{v:.9g}f" for v in meta.mean)}}};
static const float {ident}_std[3] = {{{", ".join(f"{v:.9g}f" for v in meta.std)}}};
#define {ident.upper()}_INPUT_SCALE {io["input_scale"]:.9g}f
#define {ident.upper()}_INPUT_ZERO_POINT {io["input_zero_point"]}
// Output: foreground probability p = (q - zero_point) * scale; mask = p > threshold.{region}
#define {ident.upper()}_OUTPUT_SCALE {io["output_scale"]:.9g}f
#define {ident.upper()}_OUTPUT_ZERO_POINT {io["output_zero_point"]}
#define {ident.upper()}_THRESHOLD {meta.threshold:.9g}f

#ifdef __cplusplus
}}
#endif
#endif  // {guard}
"""
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 16]) for i in range(0, len(data), 16)]
    source = (f'// {name}: the model bytes (see {ident}.h).\n#include "{ident}.h"\n\n'
              f"alignas({ALIGN}) const unsigned char {ident}_model[] = {{\n  " + ",\n  ".join(rows) + "\n};\n"
              f"const size_t {ident}_model_len = {len(data)};\n")
    return header, source
