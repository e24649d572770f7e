"""A pure-Python reader for the one thing the runtime needs from a ``.tflite`` file: ``Model.metadata``.

Why not the TFLite runtime? Neither ai-edge-litert nor tflite_runtime exposes the model's metadata, and the
flatbuffers/tflite schema packages would be extra dependencies for ~40 lines of offset arithmetic.
Layout (tensorflow/lite/schema/schema.fbs): the root table ``Model`` has field 4 ``buffers:[Buffer]`` and field 6
``metadata:[Metadata]``; ``Metadata`` = (name:string, buffer:uint); ``Buffer`` = (data:[ubyte], offset:ulong,
size:ulong) where offset/size point outside the flatbuffer for models above 2 GB.
"""
from __future__ import annotations

import math
import struct

from .errors import SimpleUNetError

IDENTIFIER = b"TFL3"
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
#: Bytes per element of each TensorType (schema.fbs); unknown types count 16.
_TYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8, 15: 4, 16: 2, 17: 1, 18: 2}
#: Most bytes a file's non-constant tensors may need together (summed, before the interpreter reuses memory):
#: far above any SimpleUNet model (simpleunet32 fp32 at 256 px: 43 MB); a corrupt dimension asking for 16 GB
#: stalled the interpreter.
MAX_TENSOR_BYTES = 2_000_000_000

#: Every offset the interpreter follows, per table of schema.fbs (LiteRT 2.1): field -> "str", the item size of
#: a vector of scalars, [table] for a vector of tables, a table name, or ("union", type field, union name).
_SCHEMA: dict[str, dict] = {
    "Model": {1: ["OperatorCode"], 2: ["SubGraph"], 3: "str", 4: ["Buffer"], 5: 4, 6: ["Metadata"],
              7: ["SignatureDef"], 8: ["ExternalBufferGroup"], 9: ["ExternalBuffer"]},
    "OperatorCode": {1: "str"},
    "SubGraph": {0: ["Tensor"], 1: 4, 2: 4, 3: ["Operator"], 4: "str"},
    "Tensor": {0: 4, 3: "str", 4: "Quantization", 6: "Sparsity", 7: 4, 9: ["VariantSubType"]},
    "Quantization": {0: 4, 1: 4, 2: 4, 3: 8, 5: ("union", 4, "details")},
    "Sparsity": {0: 4, 1: 4, 2: ["DimensionMetadata"]},
    "DimensionMetadata": {3: ("union", 2, "index"), 5: ("union", 4, "index")},
    "VariantSubType": {0: 4},
    "Operator": {1: 4, 2: 4, 4: ("union", 3, "options"), 5: 1, 7: 1, 8: 4, 12: ("union", 11, "options2")},
    "Buffer": {0: 1},
    "Metadata": {0: "str"},
    "SignatureDef": {0: ["TensorMap"], 1: ["TensorMap"], 2: "str"},
    "TensorMap": {0: "str"},
    "ExternalBufferGroup": {0: "str"},
    "ExternalBuffer": {4: "str"},
}
#: The union members that hold offsets (the others are tables of scalars): union -> type id -> fields as above.
_UNIONS: dict[str, dict[int, dict]] = {
    "details": {1: {0: 1}},  # CustomQuantization
    "index": {1: {0: 4}, 2: {0: 2}, 3: {0: 1}},  # Int32Vector, Uint16Vector, Uint8Vector
    "options": {3: {1: 4, 2: 4}, 17: {0: 4}, 30: {0: 4}, 111: {0: "str", 1: "str"}, 115: {0: 4}},
    "options2": {2: {0: 8}, 3: {0: 8, 1: 8, 2: 8}, 4: {0: 8, 1: 8, 2: 8, 3: 8, 4: 1, 7: 8, 10: 8, 13: 8, 16: 4},
                 5: {0: "str", 2: "str", 4: 4, 5: 1}, 6: {0: 8}, 7: {1: 8, 2: 8, 3: 8}, 9: {0: 8},
                 10: {0: 8, 1: 8, 2: 8}, 12: {0: 8, 1: 8, 2: 8, 3: 8, 4: 4}, 13: {0: 8, 1: 8, 2: 8, 3: 8, 4: 8},
                 16: {0: 8, 1: 8, 2: 8, 4: 8}, 17: {0: 8}, 21: {0: "str", 2: 1}, 23: {0: 4}},  # StableHLO
}


def is_tflite(head: bytes) -> bool:
    """True if the first bytes of a file carry the TFLite flatbuffer identifier."""
    return len(head) >= 8 and head[4:8] == IDENTIFIER


class _Reader:
    def __init__(self, buf: bytes, name: str):
        self.buf, self.name = buf, name

    def _unpack(self, fmt: str, pos: int):
        if pos < 0:
            raise SimpleUNetError(f"{self.name} is not a valid TFLite file (bad flatbuffer offset)")
        try:
            return struct.unpack_from(fmt, self.buf, pos)[0]
        except struct.error:
            raise SimpleUNetError(f"{self.name} is not a valid TFLite file (truncated flatbuffer)") from None

    def bad(self, what: str) -> SimpleUNetError:
        return SimpleUNetError(f"{self.name} is not a valid TFLite file ({what}; truncated or corrupt?)")

    def table(self, pos: int) -> int:
        """Check that the table at ``pos``, its vtable and every field the vtable names lie inside the file and
        the table; return ``pos``."""
        vtable = pos - self._unpack("<i", pos)
        vt_size, t_size = self._unpack("<H", vtable), self._unpack("<H", vtable + 2)
        if vt_size < 4 or vt_size % 2 or vtable + vt_size > len(self.buf) or pos + t_size > len(self.buf):
            raise self.bad("table out of bounds")
        if any(off >= t_size for (off,) in struct.iter_unpack("<H", self.buf[vtable + 4:vtable + vt_size])):
            raise self.bad("table field out of bounds")
        return pos

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of field ``index`` of the table at ``table``, or None when it is absent."""
        vtable = table - self._unpack("<i", table)
        vt_size = self._unpack("<H", vtable)
        slot = 4 + 2 * index
        if slot + 2 > vt_size:
            return None
        off = self._unpack("<H", vtable + slot)
        return table + off if off else None

    def indirect(self, pos: int) -> int:
        return pos + self._unpack("<I", pos)

    def vector(self, pos: int, item: int = 1) -> tuple[int, int]:
        """(start of elements, length) of the vector referenced at ``pos`` (``item`` bytes per element)."""
        vec = self.indirect(pos)
        n = self._unpack("<I", vec)
        if vec + 4 + n * item > len(self.buf):
            raise self.bad("vector past the end of the file")
        return vec + 4, n

    def tables(self, table: int, index: int) -> list[int]:
        pos = self.field(table, index)
        if pos is None:
            return []
        start, n = self.vector(pos, 4)
        return [self.table(self.indirect(start + 4 * i)) for i in range(n)]

    def ints(self, table: int, index: int, fmt: str = "<i") -> list[int]:
        pos = self.field(table, index)
        if pos is None:
            return []
        start, n = self.vector(pos, struct.calcsize(fmt))
        return [v[0] for v in struct.iter_unpack(fmt, self.buf[start:start + n * struct.calcsize(fmt)])]

    def child(self, table: int, index: int) -> int | None:
        pos = self.field(table, index)
        return None if pos is None else self.table(self.indirect(pos))

    def string(self, table: int, index: int) -> str:
        pos = self.field(table, index)
        if pos is None:
            return ""
        start, n = self.vector(pos)
        return self.buf[start:start + n].decode("utf-8", "replace")

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        pos = self.field(table, index)
        return default if pos is None else self._unpack(fmt, pos)


def read_metadata(data: bytes, key: str, name: str = "<model>") -> bytes | None:
    """The bytes of the ``Model.metadata`` entry named ``key`` in a TFLite flatbuffer, or None if absent."""
    if not is_tflite(data):
        raise SimpleUNetError(f"{name} is not a TFLite file (no TFL3 identifier)")
    r = _Reader(data, name)
    model = r.table(r.indirect(0))
    for meta in r.tables(model, _MODEL_METADATA):
        if r.string(meta, 0) != key:
            continue
        index = r.scalar(meta, 1, "<I")
        buffers = r.tables(model, _MODEL_BUFFERS)
        if index >= len(buffers):
            raise SimpleUNetError(f"{name}: metadata {key!r} points at buffer {index} of {len(buffers)}")
        buffer = buffers[index]
        pos = r.field(buffer, 0)
        if pos is not None:
            start, n = r.vector(pos)
            return bytes(data[start:start + n])
        offset, size = r.scalar(buffer, 1, "<Q"), r.scalar(buffer, 2, "<Q")
        if offset > 1 and offset + size <= len(data):
            return bytes(data[offset:offset + size])
        raise SimpleUNetError(f"{name}: metadata {key!r} buffer is empty")
    return None


def _check_offsets(r: _Reader, model: int) -> None:
    """Bounds-check every table, vector and string the interpreter dereferences (``_SCHEMA``): a loop over the
    tree, so a file cannot make it recurse."""
    stack = [(model, _SCHEMA["Model"])]
    while stack:
        table, fields = stack.pop()
        for index, spec in fields.items():
            pos = r.field(table, index)
            if pos is None:
                continue
            if spec == "str" or isinstance(spec, int):
                r.vector(pos, 1 if spec == "str" else spec)
            elif isinstance(spec, list):
                stack += [(t, _SCHEMA[spec[0]]) for t in r.tables(table, index)]
            elif isinstance(spec, str):
                stack.append((r.table(r.indirect(pos)), _SCHEMA[spec]))
            else:  # a union: its value table, and that member's offsets
                _, type_index, union = spec
                stack.append((r.table(r.indirect(pos)), _UNIONS[union].get(r.scalar(table, type_index, "<B"), {})))


def verify(data: bytes, name: str = "<model>") -> None:
    """Check a TFLite flatbuffer as far as the interpreter trusts it: every offset it follows, and the
    cross-indices and shapes it uses.

    The TFLite runtimes load files without flatbuffer verification, so a truncated download segfaults the
    process instead of raising; this catches truncation and corruption first. Beyond bounds, each check below
    comes from a fuzzed file that segfaulted or stalled the interpreter: the operators, in their order, read
    only tensors that exist and write each tensor once (never a constant's read-only bytes, never their own
    input), and the tensors fit ``MAX_TENSOR_BYTES``. Buffers in other files (external buffers) are refused:
    SimpleUNet files are self-contained, and the runtime reads nothing a model file points at.
    """
    if not is_tflite(data):
        raise SimpleUNetError(f"{name} is not a TFLite file (no TFL3 identifier)")
    r = _Reader(data, name)
    model = r.table(r.indirect(0))
    _check_offsets(r, model)
    if r.tables(model, 8) or r.tables(model, 9):
        raise SimpleUNetError(f"{name} refers to buffers outside the file (TFLite external buffers), which the "
                              "runtime refuses to read; use a self-contained file (simpleunet-export writes one)")
    opcodes = r.tables(model, 1)
    buffers = r.tables(model, 4)
    filled = []  # per buffer: does it hold data (a constant tensor's)?
    for buf in buffers:
        pos = r.field(buf, 0)
        n = r.vector(pos)[1] if pos is not None else 0
        offset, size = r.scalar(buf, 1, "<Q"), r.scalar(buf, 2, "<Q")
        if offset > 1 and offset + size > len(data):
            raise r.bad("external buffer past the end of the file")
        filled.append(n > 0 or (offset > 1 and size > 0))
    subgraphs = r.tables(model, 2)
    if not subgraphs:
        raise r.bad("no subgraph")
    for sg in subgraphs:
        tensors = r.tables(sg, 0)
        constant, variable, needed = [], [], 0
        for t in tensors:
            shape = r.ints(t, 0)
            b = r.scalar(t, 2, "<I")
            if b >= max(1, len(buffers)):
                raise r.bad("tensor points at a missing buffer")
            if any(d < 0 for d in shape):
                raise r.bad("negative tensor dimension")
            if r.scalar(t, 10, "<I"):
                raise r.bad("tensor data in an external buffer")
            constant.append(b < len(filled) and filled[b])
            variable.append(bool(r.scalar(t, 5, "<B")))  # state (is_variable): read before it is written
            if not constant[-1]:
                needed += math.prod(shape) * _TYPE_BYTES.get(r.scalar(t, 1, "<b"), 16)
        if needed > MAX_TENSOR_BYTES:
            raise SimpleUNetError(f"{name}: its tensors need {needed / 1e9:.1f} GB, more than the "
                                  f"{MAX_TENSOR_BYTES / 1e9:.0f} GB this runtime allows (corrupt?); download or "
                                  "export it again")
        n = len(tensors)
        if not all(0 <= i < n for i in r.ints(sg, 1) + r.ints(sg, 2)):
            raise r.bad("subgraph input/output index out of range")
        if any(constant[i] for i in r.ints(sg, 1)):
            raise r.bad("a model input is a constant tensor")
        ready = {i for i in range(n) if constant[i] or variable[i]} | set(r.ints(sg, 1))  # readable so far
        for op in r.tables(sg, 3):  # in execution order: each reads what exists and writes a new tensor
            if r.scalar(op, 0, "<I") >= len(opcodes):
                raise r.bad("operator code index out of range")
            inputs, outputs = r.ints(op, 1), r.ints(op, 2)
            if not all(-1 <= i < n for i in inputs + outputs + r.ints(op, 8)):
                raise r.bad("operator tensor index out of range")
            if not all(i == -1 or i in ready for i in inputs):
                raise r.bad("an operator reads a tensor no earlier operator writes")
            if any(i in ready and not variable[i] for i in outputs):
                raise r.bad("an operator writes a constant, an input or an already written tensor")
            ready.update(outputs)
    for meta in r.tables(model, 6):
        if r.scalar(meta, 1, "<I") >= len(buffers):
            raise r.bad("metadata points at a missing buffer")
    for sig in r.tables(model, 7):
        index = r.scalar(sig, 4, "<I")
        if index >= len(subgraphs):
            raise r.bad("signature points at a missing subgraph")
        n = len(r.tables(subgraphs[index], 0))
        if not all(r.scalar(m, 1, "<I") < n for m in r.tables(sig, 0) + r.tables(sig, 1)):
            raise r.bad("signature points at a missing tensor")
