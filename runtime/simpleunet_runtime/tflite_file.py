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
            raise SimpleUNetError(f"{self.name} is not a valid TFLite file (vector past the end)")
        return vec + 4, n

    def tables(self, table: int, index: int) -> list[int]:
        pos = self.field(table, index)
        if pos is None:
            return []
        start, n = self.vector(pos, 4)
        return [self.indirect(start + 4 * i) for i in range(n)]

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
    model = r.indirect(0)
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
