"""Stage 1: PyTorch -> fp32 ONNX (legacy exporter, fixed 1x3xHxW input, probabilities out), simplified and slimmed.

Why each step: the AFF scales are folded into the decoder convs (8 fewer Mul ops and tensors, exact because
bilinear upsampling and concat act per channel and zero padding stays zero); eval-mode export with constant
folding folds BatchNorm into the convs; the sigmoid/softmax lives in the graph so every file outputs
probabilities; short tensor names and no doc strings cut bytes the runtime never reads.
"""
from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from .errors import ExportError

INPUT_NAME, OUTPUT_NAME = "image", "prob"


class Probabilities(nn.Module):
    """The model followed by its output activation: sigmoid for 1 class, softmax over classes otherwise."""

    def __init__(self, model: nn.Module, num_classes: int):
        super().__init__()
        self.model = model
        self.act = nn.Sigmoid() if num_classes == 1 else nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.model(x))


def _first_conv(block: nn.Module) -> nn.Conv2d:
    """The conv that reads a decoder step's concat: SingleConv[0] or an SK block's stem conv."""
    conv = block.stem[0] if hasattr(block, "stem") else block[0]
    if not isinstance(conv, nn.Conv2d):
        raise ExportError(f"cannot fold AFF scales: expected a Conv2d after the concat, found {type(conv).__name__}")
    return conv


@torch.no_grad()
def fold_aff(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose AFF scales (alpha, beta) are multiplied into the input-channel slices of the conv
    after each concat, and then set to 1 (the export removes the Mul-by-one ops).

    conv(concat[s*a, up(x*b)]) == conv'(concat[s, up(x)]) with W'[:, :r] = W[:, :r]*a, W'[:, r:] = W[:, r:]*b,
    for any sign of a, b: upsampling is linear per channel and zero padding is unchanged by scaling.
    Models without AFF scales (the U-Net peer) are returned as a plain copy.
    """
    model = copy.deepcopy(model).eval()
    if not hasattr(model, "alpha"):
        return model
    for step, dec in enumerate(model.decoder):
        conv = _first_conv(dec[0])
        alpha, beta = model.alpha[step].reshape(-1), model.beta[step].reshape(-1)
        scale = torch.cat([alpha, beta]).to(conv.weight.dtype)
        if scale.numel() != conv.in_channels:
            raise ExportError(f"cannot fold AFF scales: decoder {step} conv reads {conv.in_channels} channels, "
                              f"alpha+beta have {scale.numel()}")
        conv.weight.mul_(scale.view(1, -1, 1, 1))
        model.alpha[step].fill_(1.0)
        model.beta[step].fill_(1.0)
    return model


def torch_to_onnx(model: nn.Module, imgsz: int, opset: int = 17, in_channels: int = 3) -> onnx.ModelProto:
    """Legacy (TorchScript) exporter in eval mode: BatchNorm folded into the convs by constant folding."""
    dummy = torch.zeros(1, in_channels, imgsz, imgsz)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (dummy,), buf, dynamo=False, opset_version=opset,
                              do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; report one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {first}") from None
    return onnx.load_from_string(buf.getvalue())


def _const_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:  # the exporter's de-duplicated initializers
            values[node.output[0]] = values[node.input[0]]
    return values


def _shapes(proto: onnx.ModelProto) -> dict[str, tuple]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    out = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[v.name] = tuple(d.dim_value for d in dims)
    return out


def remove_mul_by_one(proto: onnx.ModelProto) -> int:
    """Drop ``Mul(x, c)`` nodes whose constant ``c`` is all ones and does not broadcast ``x`` to a bigger shape
    (the folded AFF scales). Returns how many were removed."""
    graph = proto.graph
    consts, shapes = _const_values(graph), _shapes(proto)
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    keep = []
    for node in graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        if node.op_type == "Mul" and node.output[0] not in outputs:
            for k in (0, 1):
                c, x = consts.get(node.input[k]), shapes.get(node.input[1 - k])
                if (c is not None and x is not None and c.size and np.all(c == 1)
                        and np.broadcast_shapes(x, c.shape) == x):
                    rename[node.output[0]] = node.input[1 - k]
                    break
            else:
                keep.append(node)
            continue
        keep.append(node)
    removed = len(graph.node) - len(keep)
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    live = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)
    return removed


def simplify(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """onnxsim first (checked); onnxslim if onnxsim fails, with a warning. Returns (model, tool used)."""
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(proto)
        if ok:
            return simplified, "onnxsim"
        reason = "its own check failed"
    except Exception as exc:  # noqa: BLE001 - any onnxsim failure means: try the fallback
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    warnings.warn(f"onnxsim could not simplify the model ({reason}); falling back to onnxslim", stacklevel=2)
    try:
        import onnxslim

        return onnxslim.slim(proto), "onnxslim"
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"ONNX simplification failed in onnxsim and onnxslim ({type(exc).__name__}: {exc})") from None


def _short(i: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    s = ""
    while True:
        i, r = divmod(i, 36)
        s = digits[r] + s
        if not i:
            return s


def _dedupe_initializers(g: onnx.GraphProto) -> None:
    """One initializer per distinct (type, shape, bytes): the many identical scales / zero points of a quantized
    graph collapse into a few."""
    seen: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    keep = []
    for init in g.initializer:
        key = (init.data_type, tuple(init.dims), numpy_helper.to_array(init).tobytes())
        if key in seen:
            alias[init.name] = seen[key]
        else:
            seen[key] = init.name
            keep.append(init)
    del g.initializer[:]
    g.initializer.extend(keep)
    for node in g.node:
        node.input[:] = [alias.get(i, i) for i in node.input]


def _drop_zero_dq_zero_points(g: onnx.GraphProto) -> None:
    """DequantizeLinear's zero point is optional and defaults to 0: drop the all-zero int32 ones (the biases).
    The 8-bit weight zero points stay: onnxruntime's QDQ -> QGemm fusion fails at run time without them."""
    values = {init.name: init for init in g.initializer}
    for node in g.node:
        if node.op_type == "DequantizeLinear" and len(node.input) == 3 and node.input[2] in values:
            zero = values[node.input[2]]
            if zero.data_type == onnx.TensorProto.INT32 and not np.any(numpy_helper.to_array(zero)):
                del node.input[2]
    used = {i for n in g.node for i in n.input}
    live = [init for init in g.initializer if init.name in used]
    del g.initializer[:]
    g.initializer.extend(live)


def strip(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Cut bytes the runtime never reads, outputs unchanged: short tensor names (graph input/output names kept),
    no node names, doc strings, value_info, producer strings, tool metadata or unused opset imports; identical
    initializers shared; optional all-zero DequantizeLinear zero points dropped."""
    g = proto.graph
    _drop_zero_dq_zero_points(g)
    _dedupe_initializers(g)
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    names: dict[str, str] = {}

    def new(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in names:
            names[name] = _short(len(names))
        return names[name]

    for node in g.node:
        node.input[:] = [new(i) for i in node.input]
        node.output[:] = [new(o) for o in node.output]
        node.name = ""
        node.doc_string = ""
    for init in g.initializer:
        init.name = new(init.name)
        init.doc_string = ""
    del g.value_info[:]
    g.doc_string = ""
    g.name = "g"
    proto.doc_string = ""
    proto.producer_name = ""
    proto.producer_version = ""
    del proto.metadata_props[:]
    used = {n.domain for n in g.node}
    opsets = [o for o in proto.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del proto.opset_import[:]
    proto.opset_import.extend(opsets)
    return proto


def check(proto: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"ONNX checker rejected the exported model: {str(exc).splitlines()[0]}") from None


def export_onnx(model: nn.Module, imgsz: int, num_classes: int, opset: int = 17, in_channels: int = 3,
                fold: bool = True) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The checked fp32 ONNX model (the caller adds metadata and saves) and {step: bytes after it}; the
    simplifier that ran (onnxsim, or onnxslim as the fallback) names its step."""
    traced = Probabilities(fold_aff(model) if fold else copy.deepcopy(model).eval(), num_classes).eval()
    proto = torch_to_onnx(traced, imgsz, opset, in_channels)
    sizes = {"torch.onnx.export": proto.ByteSize()}
    if fold:
        remove_mul_by_one(proto)
        sizes["AFF fold"] = proto.ByteSize()
    proto, tool = simplify(proto)
    sizes[tool] = proto.ByteSize()
    proto = strip(proto)
    check(proto)
    sizes["strip"] = proto.ByteSize()
    return proto, sizes
