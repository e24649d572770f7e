"""Inference backends: onnxruntime for ``.onnx`` files, a TFLite interpreter (LiteRT or tflite_runtime) for
``.tflite`` files.

Each backend takes and returns NCHW float32 and hides the rest: the file's layout (ONNX NCHW, TFLite NHWC),
int8 input/output tensors of a full-integer TFLite model (quantized/dequantized here with the tensor's scale
and zero point), a batch dimension fixed at 1, and where the embedded metadata lives in each format.

A model file is read once (``read_model``); its bytes are checked (manifest sha256, ONNX external data, TFLite
structure) and then handed to the runtime, which never opens the path itself. A backend may be shared by threads.
"""
from __future__ import annotations

import contextlib
import numbers
import os
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import SimpleUNetError, SimpleUNetWarning
from .machine import usable_cores
from .metadata import METADATA_KEY
from .onnx_file import Graph, Malformed, parse
from .tflite_file import is_tflite, read_metadata, verify
from .bundled import check_manifest

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

    def metadata_props(self) -> dict[str, str]:
        """The file's ``key -> text`` metadata entries (metadata.ModelMetadata.from_props reads ours)."""
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


def read_model(path: Path) -> bytes:
    """A model file's bytes, held to the ``manifest.json`` beside it if any (``bundled.check_manifest``). The backends
    check and run these very bytes, so a file swapped after the checks is never run."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SimpleUNetError(f"cannot read model {path}: {exc.strerror or exc}") from None
    check_manifest(path, data)
    return data


def warn_if_saturating(path: Path, graph: Graph | None = None) -> None:
    """On a CPU whose int8 kernels sum product pairs in saturating int16 (x86 without VNNI), warn once per load
    when an int8 ONNX file (``graph``, already read, or the file at ``path``) is not proven safe from it
    (``saturation``): it runs, but its masks may be wrong."""
    from . import machine
    from .onnx_file import read_graph
    from .saturation import check_graph

    cpu, saturates = machine.int8_kernels()
    if not saturates:
        return
    if graph is None:
        try:
            graph = read_graph(path)
        except SimpleUNetError:
            return  # onnxruntime loaded it; our reader is stricter: no verdict, no warning
    verdict = check_graph(graph.nodes, graph.constants)
    if not verdict.safe:
        warnings.warn(f"{path.name} may give wrong masks on this CPU ({cpu}): {verdict.summary()}; use its fp32 "
                      "or TFLite file, or re-export it with simpleunet-export (int7 weights, exact on every CPU)",
                      SimpleUNetWarning, stacklevel=4)


class OnnxBackend(Backend):
    """An onnxruntime session (``run`` is thread-safe: onnxruntime documents concurrent ``Run`` calls as safe).

    Files whose tensors use ONNX external data are refused before onnxruntime sees them: onnxruntime < 1.24
    reads any path such a tensor names (``../../secret``, absolute, through symlinks) into the model, and our
    files are always one self-contained file. Every tensor of the file is checked (``onnx_file.parse``), and the
    session only ever parses ONNX protobuf (never the ORT flatbuffer format, which ``parse`` does not read).
    """

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
        data = read_model(path)
        try:
            graph = parse(data)
        except Malformed as exc:
            raise SimpleUNetError(f"{path} is not a loadable ONNX model ({exc})") from None
        if graph.external:
            raise SimpleUNetError(f"{path} refers to data outside the file (ONNX external data "
                                  f"{graph.external[0][:100]!r}), which the runtime refuses to read; use a "
                                  "self-contained file (simpleunet-export writes one)")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.load_model_format", "ONNX")  # the bytes parse() checked
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
            # enable_fallback=0: onnxruntime would print "EP Error" lines to stdout and retry on other providers
            self.session = ort.InferenceSession(data, sess_options=opts, providers=providers, enable_fallback=0)
        except Exception as exc:  # InvalidProtobuf, Fail, ValueError for bad providers...
            raise SimpleUNetError(f"{path} is not a loadable ONNX model ({_first_line(exc)})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if not inputs or not outputs:
            raise SimpleUNetError(f"{path} has no input or no output; SimpleUNet models have one of each")
        inp = inputs[0]
        self.input_name, self.input_shape = inp.name, tuple(inp.shape)
        self.output_shape = tuple(outputs[0].shape)
        self.input_dtype = self._DTYPES.get(inp.type)
        if self.input_dtype is None:
            raise SimpleUNetError(f"{path} takes {inp.type} input; SimpleUNet models take float")
        warn_if_saturating(path, graph)

    def metadata_props(self) -> dict[str, str]:
        try:
            return dict(self.session.get_modelmeta().custom_metadata_map)
        except UnicodeDecodeError:  # onnxruntime hands its strings to Python as UTF-8
            raise SimpleUNetError(f"{self.path.name}: model metadata is not UTF-8 text; re-export it") from None

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


def _probe_shapes(Interpreter, data: bytes, path: Path) -> None:
    """Allocate the model once with TFLite's reference kernels and no delegate, and hold the file's tensor shapes
    to the ones they compute. The reference kernels check every operator's shapes; the XNNPACK delegate the real
    interpreter uses does not: fuzzed files that only the probe refuses made it segfault (a concatenation of
    mismatched inputs) or touch 15 GB (a corrupt input dimension). A few ms at load."""
    resolver = getattr(sys.modules[Interpreter.__module__], "OpResolverType", None)
    if resolver is None:
        return  # a tflite_runtime older than 2.5: verify() alone
    probe = Interpreter(model_content=data, experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    stored = {d["index"]: tuple(d["shape"]) for d in probe.get_tensor_details()}
    probe.allocate_tensors()
    for d in probe.get_tensor_details():
        want = stored.get(d["index"])
        if want and tuple(d["shape"]) != want:  # an empty shape in the file is one left to the kernels
            raise SimpleUNetError(f"{path} is not a valid TFLite file (tensor {d['index']} has shape {list(want)} "
                                  f"but its operator makes {list(d['shape'])}; corrupt?)")


#: What LiteRT's C++ logger prints on every interpreter (not ours to show a user): dropped from stderr.
LITERT_INFO = b"INFO: Created TensorFlow Lite XNNPACK delegate"


@contextlib.contextmanager
def native_output(fd: int = 2):
    """Catch what native code writes to file descriptor ``fd`` (C++ loggers write past sys.stdout/sys.stderr)
    during a block; yields a list that holds the caught lines (bytes) once the block ends."""
    lines: list[bytes] = []
    stream = sys.stdout if fd == 1 else sys.stderr
    try:
        stream.flush()
        saved = os.dup(fd)
    except (OSError, ValueError):  # no such fd (embedded interpreters): nothing to catch
        yield lines
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), fd)
        try:
            yield lines
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            caught.seek(0)
            lines.extend(caught)


@contextlib.contextmanager
def _without_info_lines():
    """Run a block with fd 2 caught, then pass on every line but LiteRT's INFO ones (also when it raised)."""
    lines: list[bytes] = []
    try:
        with native_output(2) as lines:
            yield
    finally:
        kept = b"".join(line for line in lines if not line.startswith(LITERT_INFO))
        if kept:
            os.write(2, kept)


class TFLiteBackend(Backend):
    """A TFLite interpreter behind a lock. An interpreter is not thread-safe: one Segmenter shared by 8 threads
    failed 164 of 400 calls ("There is at least 1 reference to internal data...") and 11 masks were wrong.

    A lock rather than one interpreter per thread, measured on this project's 2-core machine (simpleunet16-kvasir
    int8, 8 threads x 50 calls, 4 interleaved rounds): 10.2 ms per call with the lock, 8.1-8.8 with per-thread
    interpreters, but each extra interpreter holds 19 MB (8 threads: +150 MB; a 1 GB Pi cannot give that to a
    thread pool). ``threads=`` still spreads each call over the cores; for parallel interpreters, open one
    Segmenter per worker.
    """

    name = "tflite"
    native_layout = "NHWC"

    def __init__(self, path: Path, threads: int | None = None, layout: str | None = None):
        super().__init__(path, layout)
        Interpreter = _tflite_interpreter()
        self._data = read_model(path)
        verify(self._data, str(path))  # the interpreter segfaults on a truncated file instead of raising
        self._lock = threading.Lock()
        try:
            with _without_info_lines():
                _probe_shapes(Interpreter, self._data, path)
                self.interpreter = Interpreter(model_content=self._data,
                                               num_threads=int(threads) if threads else None)
                self.interpreter.allocate_tensors()
            inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        except SimpleUNetError:
            raise
        except Exception as exc:  # ValueError / RuntimeError from the C++ loader, UnicodeDecodeError for names
            raise SimpleUNetError(f"{path} is not a loadable TFLite model ({_first_line(exc)})") from None
        if not inputs or not outputs:
            raise SimpleUNetError(f"{path} has no input or no output; SimpleUNet models have one of each")
        self.input_detail, self.output_detail = inputs[0], outputs[0]
        self.input_shape = tuple(int(d) for d in self.input_detail["shape"])
        self.output_shape = tuple(int(d) for d in self.output_detail["shape"])
        self._allocated = self.input_shape  # the input shape the interpreter's tensors are allocated for

    def metadata_props(self) -> dict[str, str]:
        raw = read_metadata(self._data, METADATA_KEY, str(self.path))
        return {} if raw is None else {METADATA_KEY: raw.decode("utf-8", "replace")}

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        x = _quantize(x, self.input_detail)
        with self._lock:
            if tuple(x.shape) != self._allocated:
                self.interpreter.resize_tensor_input(self.input_detail["index"], list(x.shape))
                self.interpreter.allocate_tensors()
                self._allocated = tuple(x.shape)
            self.interpreter.set_tensor(self.input_detail["index"], x)
            self.interpreter.invoke()
            y = self.interpreter.get_tensor(self.output_detail["index"])  # a copy, safe after the lock
        return _dequantize(y, self.output_detail)


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


def _threads(threads: int | None) -> int | None:
    """``threads`` checked: None or 0 leave the choice to the runtime; more than the usable cores is clamped to
    them with one warning, as ``make -j`` users expect of a portable setting: threads beyond the cores only
    contend (10000 stalled a 2-core machine), and a value written for a bigger machine should still run here."""
    if threads is None:
        return None
    if not isinstance(threads, numbers.Integral) or isinstance(threads, bool) or threads < 0:
        raise SimpleUNetError(f"threads must be a non-negative integer, got {threads!r}")
    cores = usable_cores()
    if threads > cores:
        warnings.warn(f"threads={int(threads)} is more than the {cores} usable cores here; using {cores}",
                      SimpleUNetWarning, stacklevel=4)
        return cores
    return int(threads)  # numpy integers welcome


def open_backend(path: str | os.PathLike, backend: str | None = None, threads: int | None = None,
                 providers: Sequence[str] | None = None, layout: str | None = None) -> Backend:
    """Open a model file with the right backend (``backend`` forces one)."""
    path = Path(path)
    if not path.exists():
        hint = "; for a bundled model use Segmenter.pretrained(name)" if not path.suffix and path.parent == Path(".") \
            else ""
        raise SimpleUNetError(f"model file {path} not found{hint}")
    threads = _threads(threads)
    kind = resolve_backend(path, backend)
    if kind == "tflite":
        if providers:
            raise SimpleUNetError("providers apply to onnxruntime only, not to a TFLite model")
        return TFLiteBackend(path, threads, layout)
    return OnnxBackend(path, threads, providers, layout)
