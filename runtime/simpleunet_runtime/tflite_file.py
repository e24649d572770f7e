"""A pure-Python reader for the one thing the runtime needs from a ``.tflite`` file: ``Model.metadata``.

Why not the TFLite runtime? Neither ai-edge-litert nor tflite_runtime exposes the model's metadata, and the
flatbuffers/tflite schema packages would be extra dependencies for ~40 lines of offset arithmetic.
Layout (tensorflow/lite/schema/schema.fbs): the root table ``Model`` has field 4 ``buffers:[Buffer]`` and field 6
``metadata:[Metadata]``; ``Metadata`` = (name:string, buffer:uint); ``Buffer`` = (data:[ubyte], offset:ulong,
size:ulong) where offset/size point outside the flatbuffer for models above 2 GB.
"""
from __future__ import annotations

import struct

from .errors import SimpleUNetError

IDENTIFIER = b"TFL3"
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6


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
        """Check that the table at ``pos`` and its vtable lie inside the file; return ``pos``."""
        vtable = pos - self._unpack("<i", pos)
        vt_size, t_size = self._unpack("<H", vtable), self._unpack("<H", vtable + 2)
        if vt_size < 4 or vt_size % 2 or vtable + vt_size > len(self.buf) or pos + t_size > len(self.buf):
            raise self.bad("table out of bounds")
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


def verify(data: bytes, name: str = "<model>") -> None:
    """Bounds-check the parts of a TFLite flatbuffer the interpreter dereferences, and their cross-indices.

    The TFLite runtimes load files without flatbuffer verification, so a truncated download segfaults the
    process instead of raising; this catches truncation and most corruption first (not a full verifier).
    """
    if not is_tflite(data):
        raise SimpleUNetError(f"{name} is not a TFLite file (no TFL3 identifier)")
    r = _Reader(data, name)
    model = r.table(r.indirect(0))
    opcodes = r.tables(model, 1)
    for op in opcodes:
        r.string(op, 1)
    buffers = r.tables(model, 4)
    for buf in buffers:
        pos = r.field(buf, 0)
        if pos is not None:
            r.vector(pos)
        offset, size = r.scalar(buf, 1, "<Q"), r.scalar(buf, 2, "<Q")
        if offset > 1 and offset + size > len(data):
            raise r.bad("external buffer past the end of the file")
    subgraphs = r.tables(model, 2)
    if not subgraphs:
        raise r.bad("no subgraph")
    for sg in subgraphs:
        tensors = r.tables(sg, 0)
        for t in tensors:
            r.ints(t, 0)
            r.string(t, 3)
            r.ints(t, 7)
            if r.scalar(t, 2, "<I") >= max(1, len(buffers)):
                raise r.bad("tensor points at a missing buffer")
            q = r.child(t, 4)
            if q is not None:
                for index, fmt in ((0, "<f"), (1, "<f"), (2, "<f"), (3, "<q")):
                    r.ints(q, index, fmt)
            r.child(t, 6)
        n = len(tensors)
        if not all(0 <= i < n for i in r.ints(sg, 1) + r.ints(sg, 2)):
            raise r.bad("subgraph input/output index out of range")
        for op in r.tables(sg, 3):
            if r.scalar(op, 0, "<I") >= len(opcodes):
                raise r.bad("operator code index out of range")
            if not all(-1 <= i < n for i in r.ints(op, 1) + r.ints(op, 2) + r.ints(op, 8)):
                raise r.bad("operator tensor index out of range")
            r.child(op, 4)
            r.child(op, 12)
            pos = r.field(op, 5)
            if pos is not None:
                r.vector(pos)
    for meta in r.tables(model, 6):
        r.string(meta, 0)
        if r.scalar(meta, 1, "<I") >= len(buffers):
            raise r.bad("metadata points at a missing buffer")
    for sig in r.tables(model, 7):
        for maps in (r.tables(sig, 0), r.tables(sig, 1)):
            for m in maps:
                r.string(m, 0)
