"""Checks after every stage: run a model file on real images and compare with PyTorch.

fp32 files: max |Δ| of the probabilities against PyTorch. int8 files: Dice between the int8 file's foreground mask
and PyTorch's fp32 mask (pooled over the images, so a few tiny masks cannot swing it), and Dice against the
ground truth (per-image mean, the papers' mDice). Runners here are deliberately independent of the runtime's
Segmenter so the export checks the files, not itself.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from simpleunet_runtime.backends import native_output
from simpleunet_runtime.metrics import SegmentationMeter
from simpleunet_runtime.segmenter import foreground_probability

from .errors import ExportError


def _one_line(runner):
    """A runtime that cannot run an exported file is a failed export step, reported in one line."""
    @functools.wraps(runner)
    def wrapped(path, x):
        try:
            return runner(path, x)
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime/LiteRT raise their own types
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"cannot run {Path(path).name}: {text}") from None
    return wrapped


@_one_line
def onnx_probabilities(path: Path, x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) probabilities of an ONNX file for normalized NCHW float32 input, one image at a time."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def _litert():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - older stacks
        from tensorflow.lite.python.interpreter import Interpreter  # type: ignore[no-redef]
    return Interpreter


@_one_line
def tflite_probabilities(path: Path, x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) probabilities of a TFLite file (NHWC inside; int8 input/output (de)quantized with the
    tensor's own scale and zero point)."""
    with native_output(2):
        interp = _litert()(model_path=str(path), num_threads=1)
        interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    results = []
    for i in range(len(x)):
        xi = np.ascontiguousarray(x[i:i + 1].transpose(0, 2, 3, 1))
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            xi = np.clip(np.round(xi / scale) + zero, info.min, info.max).astype(inp["dtype"])
        interp.set_tensor(inp["index"], xi)
        interp.invoke()
        y = interp.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        results.append(y.transpose(0, 3, 1, 2))
    return np.concatenate(results).astype(np.float32)


def torch_probabilities(model, x: np.ndarray) -> np.ndarray:
    """The PyTorch reference (``model`` already ends in its sigmoid/softmax)."""
    import torch

    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i:i + 1])).numpy() for i in range(len(x))])


def foreground(prob: np.ndarray, threshold: float) -> np.ndarray:
    """(N, H, W) bool foreground masks of (N, C, H, W) probabilities: the runtime's one binary decision."""
    return foreground_probability(prob) > threshold


def max_abs_delta(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def agreement(masks: np.ndarray, reference: np.ndarray) -> float:
    """Pooled Dice of two stacks of masks (1.0 when both are empty everywhere)."""
    meter = SegmentationMeter()
    for m, r in zip(masks, reference):
        meter.update(m, r)
    return meter.summary()["pooled_dice"]


def dice_vs_truth(masks: np.ndarray, truth: np.ndarray | None) -> float | None:
    """Per-image mean Dice against ground truth, or None without masks."""
    if truth is None:
        return None
    meter = SegmentationMeter()
    for m, t in zip(masks, truth):
        meter.update(m, t)
    return meter.summary()["mDice"]
