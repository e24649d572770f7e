"""Read an ONNX file's nodes and constant tensors without the ``onnx`` package (the runtime is numpy +
onnxruntime only): a minimal protobuf wire-format reader over the few ModelProto fields the runtime's checks need.

Field numbers are onnx.proto3's: ModelProto.graph = 7; GraphProto.node = 1, initializer = 5; NodeProto.input = 1,
output = 2, name = 3, op_type = 4, attribute = 5; AttributeProto.name = 1, i = 3, s = 4, t = 5; TensorProto.dims = 1,
data_type = 2, float_data = 4, int32_data = 5, int64_data = 7, name = 8, raw_data = 9, external_data = 13,
data_location = 14.
``_HOLDERS`` lists every other field on a path to a TensorProto, for the whole-file external-data scan.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import SimpleUNetError

#: TensorProto.DataType -> numpy dtype, for the types the checks read.
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
          10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


class Malformed(ValueError):
    """Bytes that are not ONNX protobuf; the message is the reason ("truncated field", "no graph"...)."""


class _NoGraph(Malformed):
    pass


#: Message -> {field: child message} for every field that holds a TensorProto or leads to one: graphs (also the
#: subgraphs of If/Loop/Scan attributes, training graphs), nodes (also in model-local functions), attributes,
#: sparse tensors. Tensors anywhere in the file are what onnxruntime may fill from external files.
_HOLDERS = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node", 11: "attribute"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise Malformed("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value): an int for varints, bytes for length-delimited and fixed fields."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise Malformed("truncated field")
            value, i = buf[i:i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            if i + n > len(buf):
                raise Malformed("truncated field")
            value, i = buf[i:i + n], i + n
        else:
            raise Malformed(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _ints(value: int | memoryview, wire: int) -> list[int]:
    """A repeated int field's values, packed (wire type 2) or not."""
    if wire == 0:
        return [_signed(value)]  # type: ignore[arg-type]
    out, i, buf = [], 0, value
    while i < len(buf):  # type: ignore[arg-type]
        v, i = _varint(buf, i)  # type: ignore[arg-type]
        out.append(_signed(v))
    return out


@dataclass
class Tensor:
    name: str
    array: np.ndarray | None  # None where the data is external or of a type the checks do not read
    external: list[str] = field(default_factory=list)  # external_data "location" values, if any


def _tensor(buf: memoryview) -> Tensor:
    dims, dtype, name, raw, ints, floats, marked, locations = [], 0, "", None, [], b"", False, []
    for number, wire, value in _fields(buf):
        if number == 1:
            dims += _ints(value, wire)
        elif number == 2:
            dtype = value
        elif number == 4:
            floats += bytes(value)  # packed (wire 2) or one fixed32 (wire 5): little-endian float32s either way
        elif number in (5, 7):
            ints += _ints(value, wire)
        elif number == 8:
            name = bytes(value).decode("utf-8", "replace")
        elif number == 9:
            raw = bytes(value)
        elif number == 13:  # an external_data (key, value) entry: any entry marks the tensor external
            marked = True
            entry = {k: bytes(v).decode("utf-8", "replace") for k, w, v in _fields(value) if w == 2} \
                if wire == 2 else {}
            if entry.get(1) == "location":
                locations.append(entry.get(2, ""))
        elif number == 14 and value != 0:  # data_location EXTERNAL, or any value onnxruntime might take for it
            marked = True
    external = (locations or [""]) if marked else []  # fail closed: marked without a location still counts
    np_type = DTYPES.get(dtype)  # type: ignore[arg-type]
    if np_type is None or external or any(d < 0 for d in dims):
        return Tensor(name, None, external)
    count = int(np.prod(dims)) if dims else 1
    if raw is not None:
        data = np.frombuffer(raw, dtype=np_type)
    elif ints:
        data = np.asarray(ints, dtype=np.int64).astype(np_type)
    elif floats and np_type == np.float32:
        data = np.frombuffer(floats, dtype="<f4").astype(np.float32)
    elif count == 0:
        data = np.zeros(0, dtype=np_type)
    else:
        return Tensor(name, None)  # double_data and the rest: not needed by the checks
    if data.size != count:
        raise Malformed(f"tensor {name!r} holds {data.size} values for shape {dims}")
    return Tensor(name, data.reshape(dims))


@dataclass
class Node:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, int | str] = field(default_factory=dict)  # the int and string attributes


@dataclass
class Graph:
    nodes: list[Node]
    constants: dict[str, np.ndarray]  # initializers and Constant node values the reader could decode
    external: list[str]  # external data locations of every tensor anywhere in the file ("" for one without)


def _external(data: memoryview) -> list[str]:
    """External-data locations of every tensor in the file, wherever ``_HOLDERS`` says one can sit."""
    found: list[str] = []
    stack = [(data, "model")]
    while stack:  # a loop, not recursion: a hostile file may nest subgraphs thousands deep
        buf, kind = stack.pop()
        if kind == "tensor":
            found += _tensor(buf).external
        else:
            holders = _HOLDERS[kind]
            stack += [(v, holders[n]) for n, w, v in _fields(buf) if w == 2 and n in holders]  # type: ignore[misc]
    return found


def _node(buf: memoryview) -> tuple[Node, list[Tensor]]:
    """A node, and the tensors of its attributes (a Constant's value)."""
    op, name, inputs, outputs, tensors, attrs = "", "", [], [], [], {}
    for k, w, v in _fields(buf):
        if k == 1 and w == 2:
            inputs.append(bytes(v).decode("utf-8", "replace"))
        elif k == 2 and w == 2:
            outputs.append(bytes(v).decode("utf-8", "replace"))
        elif k == 3 and w == 2:
            name = bytes(v).decode("utf-8", "replace")
        elif k == 4 and w == 2:
            op = bytes(v).decode("utf-8", "replace")
        elif k == 5 and w == 2:
            attr = list(_fields(v))  # type: ignore[arg-type]
            tensors += [_tensor(tv) for tk, tw, tv in attr if tk == 5 and tw == 2]
            key = next((bytes(tv).decode("utf-8", "replace") for tk, _, tv in attr if tk == 1), "")
            for tk, tw, tv in attr:
                if tk == 3 and tw == 0:
                    attrs[key] = _signed(tv)  # type: ignore[arg-type]
                elif tk == 4 and tw == 2:
                    attrs[key] = bytes(tv).decode("utf-8", "replace")
    return Node(op, name, inputs, outputs, attrs), tensors


def parse(data: bytes | memoryview) -> Graph:
    """The main graph of ONNX bytes (every ``graph`` field, merged as protobuf merges them) and the external data
    of the whole file; bytes that are not ONNX protobuf raise ``Malformed`` (a ValueError) with the reason."""
    data = memoryview(data)
    try:
        graphs = [v for n, w, v in _fields(data) if n == 7 and w == 2]
        if not graphs:
            raise _NoGraph("no graph")
        nodes, constants = [], {}
        for graph in graphs:
            for number, wire, value in _fields(graph):  # type: ignore[arg-type]
                if number == 5 and wire == 2:
                    t = _tensor(value)  # type: ignore[arg-type]
                    if t.array is not None:
                        constants[t.name] = t.array
                elif number == 1 and wire == 2:
                    node, tensors = _node(value)  # type: ignore[arg-type]
                    nodes.append(node)
                    if node.op == "Constant" and tensors and node.outputs and tensors[0].array is not None:
                        constants[node.outputs[0]] = tensors[0].array
        return Graph(nodes, constants, _external(data))
    except Malformed:
        raise
    except (ValueError, OverflowError) as exc:  # numpy on inconsistent tensor data
        raise Malformed(str(exc)) from None


def read_graph(source: str | Path | bytes) -> Graph:
    """``parse`` of an ONNX file (a path, or its bytes); what is not ONNX protobuf is a one-line
    ``SimpleUNetError``."""
    path = "the model" if isinstance(source, (bytes, bytearray)) else source
    try:
        data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    except OSError as exc:
        raise SimpleUNetError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return parse(data)
    except _NoGraph:
        raise SimpleUNetError(f"{path} holds no ONNX graph; re-export it") from None
    except Malformed as exc:
        raise SimpleUNetError(f"{path} is not a readable ONNX file ({exc}); re-export it") from None
