"""Graph rewrites that make onnxruntime's CPU kernels faster on SimpleUNet, each one exact.

onnxruntime's fastest x86 kernels want channel counts that SimpleUNet's decoder (R*C = 8 channels for
SimpleUNet-16) does not have: the fp32 convs run in a blocked "NCHWc" layout of 16 channels (AVX-512; 8 on AVX2),
and the int8 convs use a direct ("symmetric", indirection-buffer) kernel only for >= 16 output channels and a
multiple of 4 input channels, else they fall back to im2col + GEMM, which writes K*H*W bytes per conv. Each rewrite
below reshapes the graph around those rules without changing what it computes:

fp32 (``FP32``; the shipped fp32 ONNX):
  ``split_concat_conv``  Conv(Concat(a, b)) -> Conv_a(a) + Conv_b(b): no NCHWc <-> NCHW reorders around the concat.
  ``head_as_matmul``     the 1-output 1x1 head conv -> Reshape, MatMul, Add, Reshape: one pass over its input
                         instead of a conv padded to a full 16-channel block (and a sigmoid over 16 channels).
int8 QOperator (``INT8``; the shipped int8 ONNX):
  ``pad_output_channels``  a k x k QLinearConv with < 16 outputs gets zero filters up to 16 (the padding is a Pad
                           node that onnxruntime folds when it loads the file) and a Slice back: direct kernel.
  ``pad_input_channels``   the 3-channel first conv reads its input padded to 4 channels with the zero point
                           (dequantizes to exactly 0) and zero filter taps: direct kernel instead of im2col.
  ``requantize_once``      a QuantizeLinear that only feeds a QLinearConcat quantizes straight to the concat's
                           scale: the concat becomes a copy, and the value is rounded once instead of twice.
  ``head_as_matmul``       the int8 head conv -> DequantizeLinear + the float head above (its dequantized weights).

Exact means: the fp32 rewrites change no output beyond float summation order (the tests compare outputs at 1e-5);
the int8 padding rewrites change no output at all; ``requantize_once`` and the int8 head remove a rounding step
(the export's int8 agreement check still applies). Every rewrite keeps a dynamic batch dimension working (reshapes
use 0 for the batch). They are tuned for onnxruntime on x86; on ARM64 onnxruntime has no NCHWc layout and uses the
direct int8 kernel only from 64 input channels, so there the padding rewrites cost extra work (not measured here).
``FP32``/``INT8`` are what ``simpleunet-export`` applies (``--no-ort-rewrites`` to skip); ``apply`` runs a list.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper


# ---- graph helpers -----------------------------------------------------------------------------------------------

def _users(g: onnx.GraphProto) -> dict[str, list]:
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    for o in g.output:  # a graph output counts as a user: it must keep its value
        users.setdefault(o.name, []).append(None)
    return users


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Tensor name -> dims from shape inference (None where a dim is symbolic or unknown). onnxruntime's
    QLinearConcat has no ONNX schema, so inference would stop there: a copy with plain Concats stands in."""
    proxy = onnx.ModelProto()
    proxy.CopyFrom(model)
    for n in proxy.graph.node:
        if n.op_type == "QLinearConcat":
            inputs = list(n.input[2::3])
            n.op_type, n.domain = "Concat", ""
            del n.input[:]
            n.input.extend(inputs)
    g = onnx.shape_inference.infer_shapes(proxy).graph
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in list(g.value_info) + list(g.input) + list(g.output)}


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Editor:
    """Collects new initializers and nodes under unique names, then rewrites ``model.graph`` in one go."""

    def __init__(self, model: onnx.ModelProto, prefix: str):
        self.g = model.graph
        self.prefix = prefix
        self.inits = {t.name: t for t in self.g.initializer}
        self.taken = {t.name for t in self.g.initializer} | {o for n in self.g.node for o in n.output} \
            | {i.name for i in self.g.input}
        self.k = 0
        # Nodes are addressed by position (protobuf wrappers have no stable identity); ``at``: output -> position.
        self.at = {o: i for i, n in enumerate(self.g.node) for o in n.output}
        self.front: list = []  # nodes reading only initializers (Pads): they go first
        self.replace: dict[int, list] = {}  # position -> nodes taking its place
        self.drop: set[int] = set()

    def name(self, tag: str) -> str:
        while True:
            self.k += 1
            name = f"{self.prefix}{self.k}_{tag}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def const(self, value: np.ndarray, tag: str = "c") -> str:
        name = self.name(tag)
        self.g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        self.inits[name] = self.g.initializer[-1]
        return name

    def array(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def pad(self, name: str, before: Sequence[int], after: Sequence[int], value=None) -> str:
        """A Pad node on initializer ``name`` (onnxruntime folds it at load time: the file keeps the small one)."""
        out = self.name("pad")
        ins = [name, self.const(np.array(list(before) + list(after), np.int64), "pads")]
        if value is not None:
            ins.append(self.const(np.array(value, dtype=self.array(name).dtype), "padv"))
        self.front.append(helper.make_node("Pad", ins, [out]))
        return out

    def commit(self) -> None:
        nodes = list(self.front)
        for i, n in enumerate(self.g.node):
            if i not in self.drop:
                nodes += self.replace.get(i, [n])
        del self.g.node[:]
        self.g.node.extend(nodes)
        used = {i for n in self.g.node for i in n.input} | {o.name for o in self.g.output}
        keep = [t for t in self.g.initializer if t.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(keep)
        del self.g.value_info[:]  # channel counts changed: let consumers re-infer


def _matmul_head(ed: _Editor, x: str, out: str, w: np.ndarray, b: np.ndarray) -> list:
    """Nodes computing the 1x1 conv ``out = w @ x + b`` (one output channel) on NCHW ``x`` as a MatMul. The
    output shape is taken from ``x`` at run time (N, 1, H, W): any batch and size; onnxruntime folds it when the
    input shape is fixed."""
    c = w.size
    r, m, a, s, s0, s1 = (ed.name(t) for t in ("flat", "mm", "add", "shape", "shape", "shape"))
    return [helper.make_node("Reshape", [x, ed.const(np.array([0, c, -1], np.int64), "s")], [r]),
            helper.make_node("MatMul", [ed.const(w.reshape(1, c).astype(np.float32), "w"), r], [m]),
            helper.make_node("Add", [m, ed.const(b.reshape(1, 1, 1).astype(np.float32), "b")], [a]),
            helper.make_node("Shape", [x], [s]),
            helper.make_node("Mul", [s, ed.const(np.array([1, 0, 1, 1], np.int64), "s")], [s0]),
            helper.make_node("Add", [s0, ed.const(np.array([0, 1, 0, 0], np.int64), "s")], [s1]),
            helper.make_node("Reshape", [a, s1], [out])]


def _is_pointwise_head(attrs: dict, wshape: tuple) -> bool:
    return (len(wshape) == 4 and wshape[0] == 1 and wshape[2:] == (1, 1) and attrs.get("group", 1) == 1
            and all(s == 1 for s in attrs.get("strides", [1, 1])) and not any(attrs.get("pads", [0] * 4)))


# ---- fp32 ----------------------------------------------------------------------------------------------------------

_NCHWC_BLOCK = 16  # onnxruntime's blocked layout on AVX-512 (8 on AVX2, where 16 is two whole blocks)
_ACTIVATIONS = ("Sigmoid", "Softmax", "Relu", "Identity")


def _feeds_output(name: str, users: dict, hops: Sequence[str] = ()) -> bool:
    """``name`` is a graph output, or reaches one through the single-reader ops ``hops`` then an activation."""
    after = users.get(name, [])
    if None in after:
        return True
    if len(after) != 1:
        return False
    n = after[0]
    if hops and n.op_type == hops[0]:
        return _feeds_output(n.output[0], users, hops[1:])
    return n.op_type in _ACTIVATIONS and None in users.get(n.output[0], [])

def split_concat_conv(model: onnx.ModelProto) -> int:
    """Rewrite every ``Conv(Concat([a, b]))`` (channel concat, the concat read by this conv only, some input not a
    multiple of 16 channels) as ``Conv_a(a) + Conv_b(b)``: the weight's input channels split to match, the bias on
    the first - the same sums. SimpleUNet-16's decoder concatenates two 8-channel tensors, which onnxruntime's
    16-channel blocked NCHWc layout cannot do in place, so it converts both to plain NCHW and back; after the split
    every tensor stays blocked and the Add fuses into the second conv. Returns the number rewritten."""
    g = model.graph
    ed, users, shapes = _Editor(model, "sc"), _users(g), _shapes(model)
    count = 0
    for i, n in enumerate(g.node):
        if n.op_type != "Concat" or _attrs(n).get("axis") not in (1, -3) or len(users.get(n.output[0], [])) != 1:
            continue
        conv = users[n.output[0]][0]
        if conv is None or conv.op_type != "Conv" or conv.input[1] not in ed.inits \
                or _attrs(conv).get("group", 1) != 1:
            continue
        sizes = [(shapes.get(t) or [None, None])[1] for t in n.input]
        w = ed.array(conv.input[1])
        if not all(sizes) or sum(sizes) != w.shape[1] or not any(c % _NCHWC_BLOCK for c in sizes):
            continue  # whole 16-channel blocks concatenate in place: nothing to gain
        attrs, parts, start = _attrs(conv), [], 0
        for j, (inp, c) in enumerate(zip(n.input, sizes)):
            ins = [inp, ed.const(np.ascontiguousarray(w[:, start:start + c]), "w")]
            ins += list(conv.input[2:3]) if j == 0 else []
            start += c
            parts.append(helper.make_node("Conv", ins, [ed.name("part")], **attrs))
        parts.append(helper.make_node("Add" if len(parts) == 2 else "Sum", [p.output[0] for p in parts],
                                      [conv.output[0]]))
        ed.replace[ed.at[conv.output[0]]] = parts
        ed.drop.add(i)
        count += 1
    ed.commit()
    return count


def head_as_matmul(model: onnx.ModelProto) -> int:
    """Rewrite the segmentation head - a 1x1 Conv with one output channel whose output is the graph's (after at
    most an activation) - as Reshape -> MatMul -> Add -> Reshape.
    As a conv, onnxruntime's NCHWc kernel pads its single output channel to a full block (16 on AVX-512) at full
    resolution and applies a fused sigmoid to all 16; as a (1 x C) @ (C x H*W) product it reads the input once.
    In an int8 QOperator graph the head ``QLinearConv -> DequantizeLinear`` becomes ``DequantizeLinear`` of its
    input followed by the float head with the dequantized weights (the int8 head conv has no direct kernel
    either: 1 output channel). Returns the number rewritten."""
    g = model.graph
    ed, users = _Editor(model, "hm"), _users(g)
    count = 0
    for i, n in enumerate(g.node):
        if n.op_type == "Conv" and n.input[1] in ed.inits:
            w = ed.array(n.input[1])
            if not _is_pointwise_head(_attrs(n), w.shape) or not _feeds_output(n.output[0], users):
                continue
            b = ed.array(n.input[2]) if len(n.input) > 2 and n.input[2] else np.zeros(1, np.float32)
            if b is None:
                continue
            ed.replace[i] = _matmul_head(ed, n.input[0], n.output[0], w, b)
        elif n.op_type == "QLinearConv" and n.input[3] in ed.inits:
            w = ed.array(n.input[3])
            after = users.get(n.output[0], [])
            if not _is_pointwise_head(_attrs(n), w.shape) or len(after) != 1 or after[0] is None \
                    or after[0].op_type != "DequantizeLinear" \
                    or not _feeds_output(n.output[0], users, ("DequantizeLinear",)):
                continue
            xs, ws, wz = ed.array(n.input[1]), ed.array(n.input[4]), ed.array(n.input[5])
            bias = ed.array(n.input[8]) if len(n.input) > 8 and n.input[8] else np.zeros(1, np.int32)
            if xs is None or ws is None or wz is None or bias is None:
                continue
            wf = (w.astype(np.float32) - wz.astype(np.float32).reshape(-1, 1, 1, 1)) * ws.reshape(-1, 1, 1, 1)
            bf = bias.astype(np.float32) * (xs * ws).astype(np.float32)  # int32 bias scale: x_scale * w_scale
            dq = ed.name("dq")
            ed.replace[i] = [helper.make_node("DequantizeLinear", list(n.input[0:3]), [dq])] + \
                _matmul_head(ed, dq, after[0].output[0], wf, bf)
            ed.drop.add(ed.at[after[0].output[0]])
        else:
            continue
        count += 1
    ed.commit()
    return count


# ---- int8 (QOperator) ----------------------------------------------------------------------------------------------

_DIRECT_MIN_OUT, _DIRECT_IN_ALIGN = 16, 4  # MLAS's symmetric (direct) int8 conv kernel, x86
_PAD_MIN_PIXELS = 128 * 128


def _symmetric(ed: _Editor, n) -> bool:
    """int8 weights with all-zero zero points: what the direct kernel takes."""
    wz = ed.array(n.input[5])
    w = ed.array(n.input[3])
    return wz is not None and w is not None and w.dtype == np.int8 and not np.any(wz) \
        and _attrs(n).get("group", 1) == 1


def pad_output_channels(model: onnx.ModelProto, multiple: int = _DIRECT_MIN_OUT,
                        min_pixels: int = _PAD_MIN_PIXELS) -> int:
    """A k x k (k > 1) QLinearConv with fewer than ``multiple`` output channels and at least ``min_pixels``
    output pixels gets zero filters (scale 1, bias 0) up to ``multiple`` and a Slice back to its channels:
    onnxruntime then runs it with its direct symmetric kernel instead of im2col + GEMM (SimpleUNet-16's
    8-channel decoder convs at 128^2 and 256^2). The extra channels are exactly 0 and sliced away: bit-identical
    outputs. Left alone: 1x1 convs (no im2col to save; the padding and the Slice cost what the GEMM saves) and
    small maps (each padded conv adds ~150 bytes to the file for microseconds). Returns the number rewritten."""
    ed, shapes = _Editor(model, "po"), _shapes(model)
    count = 0
    for i, n in enumerate(model.graph.node):
        if n.op_type != "QLinearConv" or not _symmetric(ed, n):
            continue
        w = ed.array(n.input[3])
        cout, cin = w.shape[:2]
        out = shapes.get(n.output[0]) or []
        if cout >= multiple or int(np.prod(w.shape[2:])) <= 1 or cin % _DIRECT_IN_ALIGN or len(out) != 4 \
                or not all(out[2:]) or out[2] * out[3] < min_pixels:
            continue
        extra = -cout % multiple
        n.input[3] = ed.pad(n.input[3], [0] * w.ndim, [extra] + [0] * (w.ndim - 1))
        if ed.array(n.input[5]).size > 1:  # all zero (checked): one scalar zero point serves 16 channels
            n.input[5] = ed.const(np.zeros((), np.int8), "wz")
        for k, value in ((4, 1.0), (8, None)):  # per-channel scale, bias
            arr = ed.array(n.input[k]) if len(n.input) > k and n.input[k] else None
            if arr is not None and arr.ndim == 1 and arr.size == cout:
                n.input[k] = ed.pad(n.input[k], [0], [extra], value)
        wide = ed.name("wide")
        y = n.output[0]
        n.output[0] = wide
        ed.replace[i] = [n, helper.make_node(
            "Slice", [wide, ed.const(np.array([0], np.int64), "i"), ed.const(np.array([cout], np.int64), "i"),
                      ed.const(np.array([1], np.int64), "i")], [y])]
        count += 1
    ed.commit()
    return count


def pad_input_channels(model: onnx.ModelProto, multiple: int = _DIRECT_IN_ALIGN) -> int:
    """A QLinearConv whose input channels are not a multiple of ``multiple`` (the RGB input: 3) reads its input
    padded with the input zero point (which dequantizes to exactly 0) and gets zero filter taps for it: onnxruntime
    then runs its direct kernel instead of im2col + GEMM. Bit-identical outputs. Run after
    ``pad_output_channels``. Returns the number rewritten."""
    ed = _Editor(model, "pi")
    count = 0
    for i, n in enumerate(model.graph.node):
        if n.op_type != "QLinearConv" or not _symmetric(ed, n):
            continue
        w = ed.array(n.input[3])
        if w.ndim != 4 or w.shape[1] % multiple == 0 or w.shape[0] < _DIRECT_MIN_OUT:
            continue
        extra = -w.shape[1] % multiple
        zero = n.input[2] if len(n.input) > 2 and n.input[2] in ed.inits else None
        if zero is not None and ed.array(zero).ndim:
            continue  # a per-channel input zero point is not a valid scalar pad value
        padded = ed.name("xpad")
        pads = ed.const(np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64), "pads")
        ed.replace[i] = [helper.make_node("Pad", [n.input[0], pads] + ([zero] if zero else []), [padded]), n]
        n.input[0] = padded
        n.input[3] = ed.pad(n.input[3], [0, 0, 0, 0], [0, extra, 0, 0])
        count += 1
    ed.commit()
    return count


def requantize_once(model: onnx.ModelProto) -> int:
    """A QuantizeLinear whose only reader is a QLinearConcat quantizes straight to the concat's output scale and
    zero point (which the concat input then declares): the concat only copies, and the value is rounded once
    instead of twice (closer to float, not bit-identical). Returns the number of inputs changed."""
    g = model.graph
    users = _users(g)
    producer = {o: n for n in g.node for o in n.output}
    count = 0
    for n in g.node:
        if n.op_type != "QLinearConcat":
            continue
        scale, zero = n.input[0], n.input[1]
        for k in range(2, len(n.input), 3):
            q = producer.get(n.input[k])
            if q is None or q.op_type != "QuantizeLinear" or len(users.get(n.input[k], [])) != 1 or len(q.input) < 3:
                continue
            if (q.input[1], q.input[2]) == (scale, zero):
                continue
            q.input[1], q.input[2] = scale, zero
            n.input[k + 1], n.input[k + 2] = scale, zero
            count += 1
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return count


Rewrite = Callable[[onnx.ModelProto], int]
FP32: tuple[Rewrite, ...] = (split_concat_conv, head_as_matmul)
INT8: tuple[Rewrite, ...] = (pad_output_channels, pad_input_channels, requantize_once, head_as_matmul)


def apply(model: onnx.ModelProto, rewrites: Sequence[Rewrite]) -> dict[str, int]:
    """Run ``rewrites`` in order on ``model`` (in place); {rewrite name: places changed}."""
    return {rw.__name__: rw(model) for rw in rewrites}
