"""Inference backends: onnxruntime for ``.onnx`` files, a TFLite interpreter (LiteRT or tflite_runtime) for
``.tflite`` files.

Each backend takes and returns NCHW float32 and hides the rest: the file's layout (ONNX NCHW, TFLite NHWC),
int8 input/output tensors of a full-integer TFLite model (quantized/dequantized here with the tensor's scale
and zero point), a batch dimension fixed at 1, and where the embedded metadata lives in each format.
"""
from __future__ import annotations

import numbers
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import SimpleUNetError, SimpleUNetWarning
from .metadata import METADATA_KEY
from .tflite_file import is_tflite, read_metadata, verify

BACKENDS = ("onnxruntime", "tflite")
_ALIASES = {"onnxruntime": "onnxruntime", "onnx": "onnxruntime", "ort": "onnxruntime",
            "tflite": "tflite", "litert": "tflite"}
TFLITE_HINT = 'pip install "simpleunet-runtime[tflite]"'


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class Backend:
    """One opened model file. ``run`` maps NCHW float32 (N, 3, H, W) to NCHW float32 (N, C, H, W)."""

    name = ""
    native_layout = "NCHW"

    def __init__(self, path: Path, layout: str | None = None):
        self.path = path
        self.layout = layout or self.native_layout
        self.input_shape: tuple = ()
        self.output_shape: tuple = ()

    @property
    def input_hw(self) -> tuple[int | None, int | None]:
        """The spatial size the file fixes (None where it is dynamic)."""
        if len(self.input_shape) != 4:
            return None, None
        dims = self.input_shape[2:] if self.layout == "NCHW" else self.input_shape[1:3]
        return tuple(d if isinstance(d, int) and d > 0 else None for d in dims)  # type: ignore[return-value]

    @property
    def output_classes(self) -> int:
        """Number of output channels when the file fixes it, else 1."""
        shape = self.output_shape
        c = (shape[1] if self.layout == "NCHW" else shape[-1]) if len(shape) == 4 else 1
        return c if isinstance(c, int) and c > 0 else 1

    @property
    def fixed_batch(self) -> bool:
        return len(self.input_shape) > 0 and self.input_shape[0] == 1

    def metadata_json(self) -> str | None:
        raise NotImplementedError

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        try:
            if self.fixed_batch and len(x) != 1:
                y = np.concatenate([self._invoke(x[i:i + 1]) for i in range(len(x))])
            else:
                y = self._invoke(x)
        except SimpleUNetError:
            raise
        except Exception as exc:  # the runtimes raise their own types (Fail, InvalidArgument, RuntimeError...)
            raise SimpleUNetError(f"inference with {self.path.name} failed: {_first_line(exc)}") from None
        y = np.asarray(y, dtype=np.float32)
        if y.ndim == 3:  # (N, H, W): one class without a channel axis
            return y[:, None]
        if y.ndim != 4:
            raise SimpleUNetError(f"{self.path.name} returned an output of shape {y.shape}; expected 4 dimensions")
        return y.transpose(0, 3, 1, 2) if self.layout == "NHWC" else y


def warn_if_saturating(path: Path) -> None:
    """On a CPU whose int8 kernels sum product pairs in saturating int16 (x86 without VNNI), warn once per load
    when an int8 ONNX file is not proven safe from it (``saturation``): it runs, but its masks may be wrong."""
    from .machine import int8_kernels
    from .saturation import check_onnx

    cpu, saturates = int8_kernels()
    if not saturates:
        return
    try:
        verdict = check_onnx(path)
    except SimpleUNetError:
        return  # onnxruntime loaded it; our reader is stricter: no verdict, no warning
    if not verdict.safe:
        warnings.warn(f"{path.name} may give wrong masks on this CPU ({cpu}): {verdict.summary()}; use its fp32 "
                      "or TFLite file, or re-export it with simpleunet-export (int7 weights, exact on every CPU)",
                      SimpleUNetWarning, stacklevel=4)


class OnnxBackend(Backend):
    name = "onnxruntime"
    native_layout = "NCHW"
    _DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}

    def __init__(self, path: Path, threads: int | None = None, providers: Sequence[str] | None = None,
                 layout: str | None = None):
        super().__init__(path, layout)
        try:
            import onnxruntime as ort
        except ImportError:
            raise SimpleUNetError('onnxruntime is not installed: pip install "simpleunet-runtime"') from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        providers = list(providers or ["CPUExecutionProvider"])
        available = ort.get_available_providers()
        unknown = [p for p in providers if (p[0] if isinstance(p, (tuple, list)) else p) not in available]
        if unknown:
            raise SimpleUNetError(f"onnxruntime provider {unknown[0]!r} is not available here; available: "
                                  f"{', '.join(available)}")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # InvalidProtobuf, Fail, ValueError for bad providers...
            raise SimpleUNetError(f"{path} is not a loadable ONNX model ({_first_line(exc)})") from None
        inp = self.session.get_inputs()[0]
        self.input_name, self.input_shape = inp.name, tuple(inp.shape)
        self.output_shape = tuple(self.session.get_outputs()[0].shape)
        self.input_dtype = self._DTYPES.get(inp.type)
        if self.input_dtype is None:
            raise SimpleUNetError(f"{path} takes {inp.type} input; SimpleUNet models take float")
        warn_if_saturating(path)

    def metadata_json(self) -> str | None:
        return self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x.astype(self.input_dtype, copy=False)})[0]


def _tflite_interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise SimpleUNetError(f"no TFLite runtime is installed (ai-edge-litert or tflite-runtime): "
                                  f"{TFLITE_HINT}") from None
    return Interpreter


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype, copy=False)
    scale, zero = detail["quantization"]
    if not scale:
        raise SimpleUNetError(f"TFLite input tensor is {dtype} without a quantization scale")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / np.float32(scale) + zero), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if y.dtype.kind == "f":
        return y.astype(np.float32, copy=False)
    scale, zero = detail["quantization"]
    if not scale:
        raise SimpleUNetError(f"TFLite output tensor is {y.dtype} without a quantization scale")
    return (y.astype(np.float32) - np.float32(zero)) * np.float32(scale)


class TFLiteBackend(Backend):
    name = "tflite"
    native_layout = "NHWC"

    def __init__(self, path: Path, threads: int | None = None, layout: str | None = None):
        super().__init__(path, layout)
        Interpreter = _tflite_interpreter()
        try:
            self._data = path.read_bytes()
        except OSError as exc:
            raise SimpleUNetError(f"cannot read model {path}: {exc.strerror or exc}") from None
        verify(self._data, str(path))  # the interpreter segfaults on a truncated file instead of raising
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=int(threads) if threads else None)
            self.interpreter.allocate_tensors()
        except Exception as exc:  # ValueError / RuntimeError from the C++ loader
            raise SimpleUNetError(f"{path} is not a loadable TFLite model ({_first_line(exc)})") from None
        self.input_detail = self.interpreter.get_input_details()[0]
        self.output_detail = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self.input_detail["shape"])
        self.output_shape = tuple(int(d) for d in self.output_detail["shape"])

    def metadata_json(self) -> str | None:
        raw = read_metadata(self._data, METADATA_KEY, str(self.path))
        return None if raw is None else raw.decode("utf-8", "replace")

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        if tuple(x.shape) != self.input_shape:
            self.interpreter.resize_tensor_input(self.input_detail["index"], list(x.shape))
            self.interpreter.allocate_tensors()
            self.input_shape = tuple(x.shape)
        self.interpreter.set_tensor(self.input_detail["index"], _quantize(x, self.input_detail))
        self.interpreter.invoke()
        return _dequantize(self.interpreter.get_tensor(self.output_detail["index"]), self.output_detail)


def resolve_backend(path: Path, backend: str | None) -> str:
    """Which backend opens ``path``: the one asked for, else the file's kind (TFL3 identifier or suffix)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except IsADirectoryError:
        raise SimpleUNetError(f"model {path} is a directory; pass an .onnx or .tflite file") from None
    except OSError as exc:
        raise SimpleUNetError(f"cannot read model {path}: {exc.strerror or exc}") from None
    tflite = is_tflite(head)
    if backend is None:
        return "tflite" if tflite or path.suffix.lower() == ".tflite" else "onnxruntime"
    chosen = _ALIASES.get(str(backend).lower())
    if chosen is None:
        raise SimpleUNetError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if chosen == "onnxruntime" and tflite:
        raise SimpleUNetError(f"{path} is a TFLite model; use backend 'tflite'")
    if chosen == "tflite" and not tflite:
        raise SimpleUNetError(f"{path} is not a TFLite model (no TFL3 identifier); use backend 'onnxruntime'")
    return chosen


def open_backend(path: str | os.PathLike, backend: str | None = None, threads: int | None = None,
                 providers: Sequence[str] | None = None, layout: str | None = None) -> Backend:
    """Open a model file with the right backend (``backend`` forces one)."""
    path = Path(path)
    if not path.exists():
        hint = "; for a bundled model use Segmenter.pretrained(name)" if not path.suffix and path.parent == Path(".") \
            else ""
        raise SimpleUNetError(f"model file {path} not found{hint}")
    if threads is not None and (not isinstance(threads, numbers.Integral) or isinstance(threads, bool) or threads < 0):
        raise SimpleUNetError(f"threads must be a non-negative integer, got {threads!r}")
    threads = None if threads is None else int(threads)  # numpy integers welcome
    kind = resolve_backend(path, backend)
    if kind == "tflite":
        if providers:
            raise SimpleUNetError("providers apply to onnxruntime only, not to a TFLite model")
        return TFLiteBackend(path, threads, layout)
    return OnnxBackend(path, threads, providers, layout)
