"""Stage 2: fp32 ONNX -> int8 ONNX with onnxruntime static quantization.

Per-channel symmetric weights on a grid that is exact on every CPU (``WEIGHTS``: int7 by default, i.e. onnxruntime's
reduce_range; full-range int8 saturates int16 on x86 without VNNI, see ``simpleunet_runtime.saturation``); uint8
activations (asymmetric, so a ReLU output uses all 256 levels), ranges
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
#: Weight grids: name -> (onnxruntime weight type, reduce_range, pair-safe scales). int7 (the default) and
#: pair-safe are exact on every CPU (``simpleunet_runtime.saturation``); full-range int8 saturates on x86 CPUs
#: without VNNI and is kept for comparisons only (``benchmarks/int8_cpus.py``); the exporter refuses it.
WEIGHTS = {"int7": ("QInt8", True, False), "pair-safe": ("QInt8", False, True), "int8": ("QInt8", False, False)}


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


def pair_safe_scales(weight: np.ndarray) -> np.ndarray:
    """Per-output-channel scales for symmetric int8 weights such that no two same-sign quantized weights of a
    channel sum above ``PAIR_LIMIT`` in magnitude (see ``simpleunet_runtime.saturation``)."""
    from simpleunet_runtime.saturation import PAIR_LIMIT, pair_peaks

    w = weight.reshape(weight.shape[0], -1).astype(np.float64)
    scales = []
    for row in w:
        pos, neg = np.sort(row[row > 0])[::-1], np.sort(-row[row < 0])[::-1]
        pair = max(pos[:2].sum(), neg[:2].sum())
        s = max(np.abs(row).max() / 127, pair / PAIR_LIMIT, np.finfo(np.float32).tiny)
        s = np.float32(s)
        while pair_peaks(np.clip(np.round(row / s), -127, 127)[None]).max() > PAIR_LIMIT:
            s = np.nextafter(s, np.float32(np.inf), dtype=np.float32) * np.float32(1.0001)
        scales.append(float(s))
    return np.asarray(scales)


def _pair_safe_overrides(proto: onnx.ModelProto) -> dict:
    """onnxruntime ``TensorQuantOverrides`` giving every Conv weight its pair-safe per-channel scales."""
    inits = {t.name: t for t in proto.graph.initializer}
    out = {}
    for node in proto.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            out[node.input[1]] = [{"axis": 0, "scale": np.float32(s), "zero_point": np.int8(0)}
                                  for s in pair_safe_scales(w)]
    return out


def grid_weights(weight: np.ndarray, weights: str) -> np.ndarray:
    """``weight`` (a conv's, output channels first) as the quantizer will store it, dequantized: per-channel
    symmetric on the grid of ``WEIGHTS[weights]``."""
    _, reduce_range, pair_safe = WEIGHTS[weights]
    w = weight.reshape(weight.shape[0], -1).astype(np.float64)
    if pair_safe:
        scale, limit = pair_safe_scales(weight), 127
    else:
        limit = 64 if reduce_range else 127
        scale = np.abs(w).max(1) / limit
    scale = np.where(scale > 0, scale, 1.0)[:, None]
    return (np.clip(np.round(w / scale), -limit, limit) * scale).reshape(weight.shape).astype(np.float32)


def correct_bias(prepared: onnx.ModelProto, calib: np.ndarray, weights: str,
                 float_convs: tuple[str, ...] = ()) -> dict[str, float]:
    """Empirical bias correction (Nagel et al., "Data-Free Quantization", ICCV 2019, sec. 4.2): rounding the weights
    to the int8 grid shifts each conv's mean output a little, and a thin model's masks move with it. Conv by conv,
    in graph order, the shift is measured on the calibration images (the float graph with grid weights and the
    corrections so far vs the float graph) and subtracted from the conv's bias. Only the biases of ``prepared``
    change: the quantizer rounds the original weights the same way. Convs named in ``float_convs`` stay float:
    neither rounded nor corrected. Returns {conv output: largest |correction|}."""
    import onnxruntime as ort

    graph = prepared.graph
    inits = {t.name: t for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv" and len(n.input) > 2 and n.input[1] in inits
             and n.input[2] in inits and n.name not in float_convs]
    if not convs:
        return {}
    name = graph.input[0].name
    opts = ort.SessionOptions()
    opts.log_severity_level = 3

    def session(grid: bool) -> ort.InferenceSession:
        """The graph with every conv output as an output and, if ``grid``, grid weights and biases fed as inputs."""
        model = onnx.ModelProto()
        model.CopyFrom(prepared)
        model.graph.output.extend(onnx.helper.make_tensor_value_info(n.output[0], onnx.TensorProto.FLOAT, None)
                                  for n in convs)
        if grid:
            edited = {t.name: t for t in model.graph.initializer}
            for n in convs:
                w = numpy_helper.to_array(edited[n.input[1]])
                edited[n.input[1]].CopyFrom(numpy_helper.from_array(grid_weights(w, weights), n.input[1]))
            biases = {n.input[2] for n in convs}
            keep = [t for t in model.graph.initializer if t.name not in biases]
            del model.graph.initializer[:]
            model.graph.initializer.extend(keep)
            model.graph.input.extend(onnx.helper.make_tensor_value_info(b, onnx.TensorProto.FLOAT, None)
                                     for b in biases)
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def mean(sess, k: int | None, feed: dict) -> list[np.ndarray]:
        names = [n.output[0] for n in convs] if k is None else [convs[k].output[0]]
        outs = [sess.run(names, {name: calib[i:i + 1].astype(np.float32), **feed}) for i in range(len(calib))]
        return [np.mean([o[j].mean((0, 2, 3)) for o in outs], 0) for j in range(len(names))]

    target = mean(session(False), None, {})
    sess = session(True)
    bias = {n.input[2]: numpy_helper.to_array(inits[n.input[2]]).astype(np.float32) for n in convs}
    for k, n in enumerate(convs):
        (got,) = mean(sess, k, bias)
        bias[n.input[2]] = (bias[n.input[2]] - (got - target[k])).astype(np.float32)
    largest = {}
    for n in convs:
        largest[n.output[0]] = float(np.abs(bias[n.input[2]] - numpy_helper.to_array(inits[n.input[2]])).max())
        inits[n.input[2]].CopyFrom(numpy_helper.from_array(bias[n.input[2]], n.input[2]))
    return largest


def quantize_onnx(fp32_path: Path, calib: np.ndarray, fmt: str = "qoperator", rewrites: bool = True,
                  applied: dict | None = None, calibration: str = "minmax", weights: str = "int7",
                  float_convs: tuple[int, ...] = (), bias_correction: bool = False) -> tuple[onnx.ModelProto, dict]:
    """Quantize the file ``fp32_path`` (the plain fp32 graph, before ``rewrites.FP32``); ``calib`` is normalized
    NCHW float32 calibration data. ``rewrites``: apply ``rewrites.INT8`` to a QOperator graph (faster in
    onnxruntime, see rewrites.py); ``applied``, if given, receives {rewrite: places changed}. Returns the checked,
    stripped model (the caller adds metadata and saves) and {step: bytes after it}. ``calibration``: a key of
    ``CALIBRATIONS``; ``weights``: a key of ``WEIGHTS``; ``float_convs``: indices of Conv nodes to leave in float
    (``benchmarks/int8_cpus.py`` measures e.g. the first conv that way); ``bias_correction``: ``correct_bias``
    on the calibration images first."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if fmt not in FORMATS:
        raise ExportError(f"unknown int8 ONNX format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if calibration not in CALIBRATIONS:
        raise ExportError(f"unknown calibration {calibration!r}; choose one of {', '.join(CALIBRATIONS)}")
    if weights not in WEIGHTS:
        raise ExportError(f"unknown int8 weights {weights!r}; choose one of {', '.join(WEIGHTS)}")
    method, extra = CALIBRATIONS[calibration]
    wtype, reduce_range, pair_safe = WEIGHTS[weights]
    if len(calib) == 0:
        raise ExportError("no calibration images: int8 quantization needs real images (--calib-data)")
    ops = sorted({n.op_type for n in onnx.load(str(fp32_path)).graph.node} - FLOAT_OPS[fmt])
    with tempfile.TemporaryDirectory(prefix=".quant-", dir=Path(fp32_path).parent) as tmp:
        pre, raw = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            prepared = onnx.load(str(pre))
            _unshare(prepared.graph)  # after quant_pre_process, whose optimizer shares identical constants again
            convs = [n.name for n in prepared.graph.node if n.op_type == "Conv"]
            exclude = [convs[i] for i in float_convs]
            if bias_correction:
                correct_bias(prepared, calib, weights, tuple(exclude))
            onnx.save(prepared, str(pre))
            overrides = {"TensorQuantOverrides": _pair_safe_overrides(prepared)} if pair_safe else {}
            quantize_static(str(pre), str(raw), _Reader(calib.astype(np.float32), INPUT_NAME),
                            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                            op_types_to_quantize=ops, per_channel=True, reduce_range=reduce_range,
                            nodes_to_exclude=exclude,
                            activation_type=QuantType.QUInt8, weight_type=QuantType[wtype],
                            calibrate_method=CalibrationMethod[method],
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                           **overrides, **extra})
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
