"""Protobuf wire-format encoding for the tests that build hostile ONNX files by hand (no onnx package here)."""
from __future__ import annotations


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)
