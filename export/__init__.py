"""simpleunet.export: a trained SimpleUNet -> fp32 ONNX -> int8 ONNX -> TFLite fp32 + int8, every step checked.

``export_model(...)`` returns an ``ExportResult`` (files, manifest, report); ``simpleunet-export`` is its CLI.
Stages, one module each: onnx_export, quantize, tflite, metadata, verify, manifest; pipeline ties them together.
Imports are lazy so the onnx2tf child process (``python -m simpleunet.export.tflite``) never loads torch.
"""
from __future__ import annotations

__all__ = ["export_model", "ExportResult"]


def __getattr__(name: str):
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
