"""Is an int8 ONNX file right on every CPU? A proof from the graph alone, the same on any machine.

On x86 CPUs with AVX2 but without VNNI (AVX-512 VNNI / AVX-VNNI), onnxruntime's U8S8 kernels multiply uint8
activations by int8 weights with VPMADDUBSW, which adds two adjacent products into a *saturating* int16 before
widening: ``x_a*w_a + x_b*w_b`` is clipped to [-32768, 32767] without a word. VNNI and ARM kernels accumulate in
int32 and never clip, so a file checked on those machines can lose whole masks on an AVX2-only one. Signed int8
activations take the same path (x86 kernels shift them to uint8 first).

The bound: an activation is any value 0..255, and the kernel may pair any two taps of a filter, so a filter is safe
when for every two weights of the same sign ``255 * (|w_a| + |w_b|) <= 32767``, i.e. the two largest same-sign
magnitudes of each output channel sum to at most ``PAIR_LIMIT`` (128). Weights of opposite signs cannot overflow
(255 * 127 < 32767). uint8 weights (U8U8) go through 16-bit multiplies that cannot clip. Full-range int8 weights
(up to ±127 in every channel) break the bound; the exporter's int7 weights (onnxruntime's ``reduce_range``,
[-64, 64]) and pair-safe scales (the exporter's quantizer) keep it. QDQ graphs are checked as the integer ops
onnxruntime fuses them into when it loads them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

INT16_MAX = 32767
UINT8_MAX = 255
#: Largest sum of two same-sign int8 weight magnitudes whose products with uint8 inputs fit int16.
PAIR_LIMIT = INT16_MAX // UINT8_MAX  # 128
#: onnxruntime's integer ops: op type -> (input index of the activation's zero point, input index of the weight).
INTEGER_OPS = {"QLinearConv": (2, 3), "ConvInteger": (2, 1), "QLinearMatMul": (2, 3), "MatMulInteger": (2, 1)}


def pair_peaks(q: np.ndarray) -> np.ndarray:
    """Per output channel of integer weights ``q`` (channel first), the largest |w_a| + |w_b| over two taps of the
    same sign: what one VPMADDUBSW pair can reach, divided by the 255 of the activation."""
    q = np.asarray(q, dtype=np.int64).reshape(len(q), -1)
    if q.shape[1] < 2:
        return np.abs(q).max(axis=1) if q.size else np.zeros(len(q), dtype=np.int64)
    pos = np.sort(np.where(q > 0, q, 0), axis=1)[:, -2:].sum(axis=1)
    neg = np.sort(np.where(q < 0, -q, 0), axis=1)[:, -2:].sum(axis=1)
    return np.maximum(pos, neg)


@dataclass
class Verdict:
    """What the proof found: ``safe`` when every integer op of the file is in the bound (or none is U8S8)."""

    safe: bool
    ops: int = 0  # integer ops looked at
    unsafe: list[str] = field(default_factory=list)  # "op name (peak P > 128)", or "... (weights not constant)"
    peak: int = 0  # largest pair sum over all U8S8 ops (<= PAIR_LIMIT when safe)

    def summary(self) -> str:
        if not self.ops:
            return "no integer ops"
        if self.safe:
            return f"int16-safe on AVX2 ({self.ops} integer ops, largest weight pair {self.peak} <= {PAIR_LIMIT})"
        peak = f"largest weight pair {self.peak} > {PAIR_LIMIT}; " if self.peak > PAIR_LIMIT else ""
        return (f"not int16-safe on AVX2: {len(self.unsafe)} of {self.ops} integer ops can saturate "
                f"({peak}first: {self.unsafe[0]})")


def _fold_pads(nodes, constants: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``constants`` plus the outputs of constant-mode Pad nodes on constants (the exporter pads some int8 weights
    with zero filters in the file; onnxruntime folds the Pad when it loads)."""
    constants = dict(constants)
    for n in nodes:
        if n.op != "Pad" or n.attrs.get("mode", "constant") != "constant" or not n.outputs:
            continue
        data = constants.get(n.inputs[0]) if n.inputs else None
        pads = constants.get(n.inputs[1]) if len(n.inputs) > 1 else None
        if data is None or pads is None or (len(n.inputs) > 3 and n.inputs[3]) or len(pads) != 2 * data.ndim \
                or (pads < 0).any():
            continue
        value = constants.get(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
        fill = value.reshape(-1)[0] if value is not None and value.size else 0
        widths = list(zip(pads[:data.ndim].tolist(), pads[data.ndim:].tolist()))
        constants[n.outputs[0]] = np.pad(data, widths, constant_values=fill)
    return constants


@dataclass
class _Fused:
    """A QDQ Conv/MatMul seen as the integer op onnxruntime fuses it into at load time."""

    op: str
    name: str
    inputs: list[str]


def _fused_qdq(nodes, constants: dict[str, np.ndarray]) -> list:
    """``nodes`` plus, for each float Conv/MatMul/Gemm that reads a DequantizeLinear'd activation and a
    DequantizeLinear'd constant integer weight (a QDQ graph), the QLinearConv/QLinearMatMul onnxruntime runs in its
    place: the weights the kernel multiplies are the DequantizeLinear's integer input."""
    dq = {n.outputs[0]: n.inputs for n in nodes if n.op == "DequantizeLinear" and n.outputs and len(n.inputs) >= 2}
    out = list(nodes)
    for n in nodes:
        if n.op not in ("Conv", "MatMul", "Gemm") or len(n.inputs) < 2:
            continue
        x, w = dq.get(n.inputs[0]), dq.get(n.inputs[1])
        if x is None or w is None or w[0] not in constants:
            continue
        x_zp = x[2] if len(x) > 2 else ""
        if n.op == "Conv":
            out.append(_Fused("QLinearConv", n.name, [x[0], x[1], x_zp, w[0]]))
        else:
            out.append(_Fused("QLinearMatMul", n.name, [x[0], x[1], x_zp, w[0]]))
    return out


def check_graph(nodes: list, constants: dict[str, np.ndarray]) -> Verdict:
    """The verdict for a graph given as ``onnx_file.Node`` nodes (or anything with .op, .name, .inputs, .outputs,
    .attrs) and its constant tensors by name."""
    verdict = Verdict(True)
    constants = _fold_pads(nodes, constants)
    nodes = _fused_qdq(nodes, constants)
    for node in nodes:
        op, name, inputs = node.op, node.name, node.inputs
        if op not in INTEGER_OPS:
            continue
        verdict.ops += 1
        zp_at, w_at = INTEGER_OPS[op]
        label = f"{op} {name or '#' + str(verdict.ops)}"
        w = constants.get(inputs[w_at]) if len(inputs) > w_at else None
        zp = constants.get(inputs[zp_at]) if len(inputs) > zp_at and inputs[zp_at] else None
        if w is not None and w.dtype == np.uint8:
            continue  # U8U8 (or S8U8): 16-bit multiplies, no saturation
        if w is None:
            if zp is None or zp.dtype in (np.uint8, np.int8):
                verdict.safe = False
                verdict.unsafe.append(f"{label} (weights not constant: cannot be proven)")
            continue
        if w is None or w.dtype != np.int8:
            continue  # no int8 weight operand we can see (e.g. both dynamic uint8): not the U8S8 kernel
        if op in ("QLinearMatMul", "MatMulInteger"):  # B is (K, N): channels are the columns
            w = np.moveaxis(w.reshape(-1, w.shape[-1]), -1, 0)
        peak = int(pair_peaks(w).max()) if w.size else 0
        verdict.peak = max(verdict.peak, peak)
        if peak > PAIR_LIMIT:
            verdict.safe = False
            verdict.unsafe.append(f"{label} (peak {peak} > {PAIR_LIMIT})")
    return verdict


def check_onnx(source: str | Path | bytes) -> Verdict:
    """The verdict for an ONNX file (a path, or its bytes), read with the runtime's own protobuf reader (no
    ``onnx`` package)."""
    from .onnx_file import read_graph

    graph = read_graph(source)
    return check_graph(graph.nodes, graph.constants)

