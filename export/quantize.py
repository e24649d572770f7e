"""Stage 2: fp32 ONNX -> int8 ONNX with onnxruntime static quantization.

Per-channel symmetric int8 weights; uint8 activations (asymmetric, so a ReLU output uses all 256 levels), ranges
calibrated (MinMax) on real images preprocessed exactly as at inference; the final Sigmoid/Softmax stays float
(the output is a float probability). U8S8 because it is what onnxruntime's CPU kernels run natively: with int8
activations on x86 it converts them back to uint8 and left 8 of 15 convs of SimpleUNet-16 unfused.

Two layouts: QOperator (default: QLinearConv/QLinearConcat, 13 % smaller than QDQ, the only one under the
24 KB goal for SimpleUNet-16, and no slower) and QDQ (Quantize/DequantizeLinear pairs around float ops: what
hardware execution providers and other converters expect; ``--int8-onnx qdq`` or ``both``).
QOperator also keeps the bilinear Resize in float: onnxruntime's uint8 Resize rounds every interpolated value
and is slow (SimpleUNet-16: mask Dice vs fp32 0.9826 -> 0.9866 on 60 Kvasir-SEG test images, +324 bytes, and
faster). QDQ keeps the standard DQ -> Resize -> Q pattern: there a float Resize gained no agreement (0.9866 vs
0.9871) and was no faster.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ExportError
from .onnx_export import INPUT_NAME, check, strip

FORMATS = ("qoperator", "qdq")
#: Activation-range calibrations: name -> (onnxruntime CalibrationMethod, extra options). MinMax is the exporter's;
#: ``benchmarks/calibration.py`` measured the percentiles on the zoo models and found no steady gain. onnxruntime's
#: percentile is taken of |x|, so it cuts the larger side of a signed tensor (a ReLU output: its top). (Entropy is
#: left out: quantize_static gives it 128 histogram bins for 128 quantized bins, one candidate range, so its file
#: is byte-identical to MinMax's in onnxruntime 1.23.)
CALIBRATIONS = {"minmax": ("MinMax", {}), "percentile-99.999": ("Percentile", {"CalibPercentile": 99.999}),
                "percentile-99.9999": ("Percentile", {"CalibPercentile": 99.9999})}
FLOAT_OPS = {"qoperator": {"Sigmoid", "Softmax", "Resize"}, "qdq": {"Sigmoid", "Softmax"}}


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an (N, C, H, W) float32 array, one image at a time."""

    def __init__(self, x: np.ndarray, name: str):
        self.x, self.name, self.i = x, name, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        self.i += 1
        return {self.name: self.x[self.i - 1:self.i]}

    def rewind(self) -> None:
        self.i = 0


def int8_weight_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of 8-bit initializers with 2+ dimensions (the quantized weights)."""
    eight = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    return sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer
               if t.data_type in eight and len(t.dims) >= 2)


def _unshare(graph: onnx.GraphProto) -> None:
    """Prepare a graph for onnxruntime's quantizer, which keys its bookkeeping by names: name every node, and
    give each use of a shared initializer its own copy (the fp32 file shares identical ones, e.g. the all-zero
    conv biases of an untrained model, but each conv's int32 bias has its own scale)."""
    inits = {t.name: t for t in graph.initializer}
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        node.name = f"n{i}"
        for k, name in enumerate(node.input):
            if name not in inits:
                continue
            if name in seen:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}_use{i}_{k}"
                graph.initializer.append(copy)
                node.input[k] = copy.name
            seen.add(name)


def quantize_onnx(fp32_path: Path, calib: np.ndarray, fmt: str = "qoperator", rewrites: bool = True,
                  applied: dict | None = None, calibration: str = "minmax") -> tuple[onnx.ModelProto, dict]:
    """Quantize the file ``fp32_path`` (the plain fp32 graph, before ``rewrites.FP32``); ``calib`` is normalized
    NCHW float32 calibration data. ``rewrites``: apply ``rewrites.INT8`` to a QOperator graph (faster in
    onnxruntime, see rewrites.py); ``applied``, if given, receives {rewrite: places changed}. Returns the checked,
    stripped model (the caller adds metadata and saves) and {step: bytes after it}. ``calibration``: a key of
    ``CALIBRATIONS``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if fmt not in FORMATS:
        raise ExportError(f"unknown int8 ONNX format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if calibration not in CALIBRATIONS:
        raise ExportError(f"unknown calibration {calibration!r}; choose one of {', '.join(CALIBRATIONS)}")
    method, extra = CALIBRATIONS[calibration]
    if len(calib) == 0:
        raise ExportError("no calibration images: int8 quantization needs real images (--calib-data)")
    ops = sorted({n.op_type for n in onnx.load(str(fp32_path)).graph.node} - FLOAT_OPS[fmt])
    with tempfile.TemporaryDirectory(prefix=".quant-", dir=Path(fp32_path).parent) as tmp:
        pre, raw = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            prepared = onnx.load(str(pre))
            _unshare(prepared.graph)  # after quant_pre_process, whose optimizer shares identical constants again
            onnx.save(prepared, str(pre))
            quantize_static(str(pre), str(raw), _Reader(calib.astype(np.float32), INPUT_NAME),
                            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                            op_types_to_quantize=ops, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod[method],
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False, **extra})
        except Exception as exc:  # noqa: BLE001 - a tool failure becomes one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ExportError(f"onnxruntime quantization ({fmt}) failed: {type(exc).__name__}: {first}") from None
        sizes = {"quantize_static": raw.stat().st_size}
        proto = onnx.load(str(raw))
    if rewrites and fmt == "qoperator":
        from .rewrites import INT8, apply

        changed = apply(proto, INT8)
        if applied is not None:
            applied.update(changed)
        sizes["onnxruntime rewrites"] = proto.ByteSize()
    proto = strip(proto)
    check(proto)
    sizes["strip + share"] = proto.ByteSize()
    return proto, sizes
