"""Stage 3: fp32 ONNX -> TFLite float32 + full-integer int8 (per-channel weights) with onnx2tf, offline.

onnx2tf runs in a child process (``python -m simpleunet.export.tflite JOB.json``) so TensorFlow's memory, logging
and global state never leak into the caller, and a crash becomes a one-line error. The child blocks every
socket before importing onnx2tf, and feeds it local data for the two things it would otherwise download: the
int8 calibration set (``-cind`` with our real images, NHWC in [0, 1], and the model's own mean/std) and the
sample images it uses for its own validation (a file it looks for in the working directory first).
Then each file is compacted with ``flatbuffer_utils`` (strings, debug metadata, duplicate empty buffers, buffers
nothing references), gets the ``simpleunet`` metadata entry and is written with every identical vector and
quantization/options table stored once (``to_bytes``); the model the interpreter reads is unchanged.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .errors import ExportError

#: onnx2tf reads its validation images from this file in the working directory before trying to download it.
ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
OUTPUTS = {"fp32": "_float32.tflite", "int8": "_full_integer_quant.tflite"}


class ConversionError(ExportError):
    """onnx2tf (or the TFLite post-processing) failed."""


def convert(onnx_path: Path, outputs: dict[str, Path], calib: np.ndarray, mean, std, metadata: dict[str, str],
            timeout: float = 900) -> dict[str, dict]:
    """Convert ``onnx_path`` into ``outputs`` (precision "fp32"/"int8" -> path), embedding ``metadata``
    (precision -> JSON). ``calib``: uint8 NHWC calibration images at the model's input size.
    Returns precision -> {"path", "sizes" (bytes after each compaction step), "int8_weight_bytes"}.
    """
    unknown = set(outputs) - set(OUTPUTS)
    if unknown or set(metadata) != set(outputs):
        raise ValueError(f"outputs/metadata must name the same precisions out of {sorted(OUTPUTS)}")
    out_dir = Path(next(iter(outputs.values()))).resolve().parent  # the child runs in another working directory
    with tempfile.TemporaryDirectory(prefix=".onnx2tf-", dir=out_dir) as work:
        work = Path(work).resolve()
        data = (calib.astype(np.float32) / 255.0).astype(np.float32)
        np.save(work / "calib.npy", data)
        np.save(work / ONNX2TF_SAMPLE, data[:20])
        stem = Path(onnx_path).stem
        source = work / f"{stem}.onnx"  # onnx2tf rewrites its input file in place (onnxsim): give it a copy
        shutil.copyfile(onnx_path, source)
        job = {"onnx": str(source), "folder": str(work / "tf"), "calib": str(work / "calib.npy"),
               "input": _input_name(onnx_path), "mean": [float(m) for m in mean], "std": [float(s) for s in std],
               "int8": "int8" in outputs, "metadata": metadata, "stem": stem,
               "outputs": {p: str(Path(path).resolve()) for p, path in outputs.items()}}
        (work / "job.json").write_text(json.dumps(job))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}
        log = work / "onnx2tf.log"
        try:
            with open(log, "w") as f:
                proc = subprocess.run([sys.executable, "-m", "simpleunet.export.tflite", str(work / "job.json")],
                                      cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ConversionError(f"onnx2tf did not finish within {timeout:.0f} s") from None
        result_path = work / "result.json"
        if proc.returncode != 0 or not result_path.is_file():
            raise ConversionError(f"onnx2tf failed (exit {proc.returncode}): {_last_error(log)}")
        return {p: {**r, "path": Path(r["path"])} for p, r in json.loads(result_path.read_text()).items()}


def _input_name(onnx_path: Path) -> str:
    import onnx

    return onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name


def _last_error(log: Path) -> str:
    """The most telling line of the child's log: the final exception line, else the last non-empty line."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln.lower()[:20]:
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


# ---- the child process -------------------------------------------------------------------------------------------

def block_network() -> None:
    """Make every network access fail loudly: the export never downloads anything."""
    import socket

    def refuse(*_args, **_kwargs):
        raise OSError("network access is disabled during simpleunet-export")

    class NoSocket(socket.socket):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):  # noqa: A002
            if fileno is None and family in (-1, socket.AF_INET, socket.AF_INET6):
                refuse()
            super().__init__(family, type, proto, fileno)

    socket.socket = NoSocket  # type: ignore[misc]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.getaddrinfo = refuse  # type: ignore[assignment]


def compact(model) -> None:
    """Remove what the interpreter never reads from a flatbuffer ``ModelT``: the converter's debug metadata,
    duplicate ``min_runtime_version`` entries, the one empty buffer per activation tensor (they all point at the
    shared empty buffer 0 instead) and the buffers nothing references any more (the dropped entries' data)."""
    names = set()
    kept = []
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == "min_runtime_version" and name not in names:
            kept.append(entry)
        names.add(name)
    model.metadata = kept
    by_tensor = {t.buffer for sub in model.subgraphs for t in sub.tensors}
    by_model = {m.buffer for m in kept} | {int(b) for b in (model.metadataBuffer if model.metadataBuffer is not None
                                                            else [])}
    remap, buffers = {0: 0}, [model.buffers[0]]
    for i, buf in enumerate(model.buffers[1:], start=1):
        empty = (buf.data is None or len(buf.data) == 0) and not getattr(buf, "offset", 0)
        if i in by_model or (i in by_tensor and not empty):
            remap[i] = len(buffers)
            buffers.append(buf)
        elif i in by_tensor:
            remap[i] = 0
    for sub in model.subgraphs:
        for tensor in sub.tensors:
            tensor.buffer = remap[tensor.buffer]
    for entry in kept:
        entry.buffer = remap[entry.buffer]
    if model.metadataBuffer is not None:
        model.metadataBuffer = np.array([remap[int(b)] for b in model.metadataBuffer], dtype=np.int32)
    model.buffers = buffers


def _key(value):
    """A hashable key equal for equal ``ModelT`` parts (arrays by dtype and bytes, objects by their fields)."""
    if isinstance(value, np.ndarray):
        return "array", value.dtype.str, value.shape, value.tobytes()
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    if isinstance(value, np.generic):
        return "scalar", value.dtype.str, value.item()
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    return (type(value).__name__,) + tuple((k, _key(v)) for k, v in sorted(vars(value).items()))


class _Shared:
    """Packs the wrapped object once per builder; every later reference points at that first copy."""

    def __init__(self, obj):
        self.obj, self.key = obj, ("table", _key(obj))

    def Pack(self, builder):  # noqa: N802 - the flatbuffers object API name
        if self.key not in builder.shared:
            builder.shared[self.key] = self.obj.Pack(builder)
        return builder.shared[self.key]


def to_bytes(model) -> bytes:
    """Serialize a ``flatbuffer_utils`` ModelT like ``flatbuffer_utils.convert_object_to_bytearray``, but write each
    distinct vector (shapes, operator inputs, quantization scales and zero points; not the buffers' data) and
    each distinct quantization-parameter and builtin-options table once, every reference pointing at that copy.
    Flatbuffer offsets may point anywhere, so a reader sees exactly the same model: the int8 file's all-zero
    per-channel zero-point vectors, equal activation quantizations and identical conv options are the savings."""
    import copy

    import flatbuffers
    from tensorflow.lite.tools import flatbuffer_utils

    class Builder(flatbuffers.Builder):
        def __init__(self, size):
            super().__init__(size)
            self.shared = {}

        def CreateNumpyVector(self, x):  # noqa: N802
            if x.dtype == np.uint8:  # Buffer.data: one vector per buffer, as the converter writes them
                return super().CreateNumpyVector(x)
            key = ("vector", x.dtype.str, x.tobytes())
            if key not in self.shared:
                self.shared[key] = super().CreateNumpyVector(x)
            return self.shared[key]

    model = copy.deepcopy(model)
    if sys.byteorder == "big":
        flatbuffer_utils.byte_swap_tflite_model_obj(model, "big", "little")
    for sub in model.subgraphs:
        for tensor in sub.tensors:
            if tensor.quantization is not None:
                tensor.quantization = _Shared(tensor.quantization)
        for op in sub.operators:
            for field in ("builtinOptions", "builtinOptions2"):
                if getattr(op, field, None) is not None:
                    setattr(op, field, _Shared(getattr(op, field)))
    builder = Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def int8_weight_bytes(model) -> int:
    """Bytes of constant int8 tensors with 2+ dimensions (the quantized weights)."""
    from tensorflow.lite.python import schema_py_generated as schema

    total = 0
    for sub in model.subgraphs:
        for t in sub.tensors:
            data = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
            if t.type == schema.TensorType.INT8 and data is not None and len(t.shape) >= 2:
                total += len(data)
    return total


def _finish(src: Path, dst: Path, meta_json: str) -> dict:
    """Strip, compact and tag one onnx2tf output, recording the file size after each step."""
    from simpleunet_runtime.metadata import ModelMetadata
    from tensorflow.lite.tools import flatbuffer_utils

    from .metadata import set_tflite_metadata

    sizes = {"onnx2tf": src.stat().st_size}
    model = flatbuffer_utils.read_model(str(src))
    plain_size = lambda: len(flatbuffer_utils.convert_object_to_bytearray(model))  # noqa: E731
    flatbuffer_utils.strip_strings(model)
    sizes["strip_strings"] = plain_size()
    compact(model)
    sizes["debug metadata + unused buffers"] = plain_size()
    sizes["shared vectors/tables"] = len(to_bytes(model))
    set_tflite_metadata(model, ModelMetadata.from_json(meta_json))
    dst.write_bytes(to_bytes(model))  # only the final file is written; the sizes above are of each step
    sizes["+ simpleunet metadata"] = dst.stat().st_size
    return {"path": str(dst), "sizes": sizes, "int8_weight_bytes": int8_weight_bytes(model)}


def skip_unused_conversions() -> None:
    """onnx2tf writes seven TFLite variants, four of them calibrated (each runs every calibration image through the
    model: SimpleESKNet-32 N=2 took over 15 min here for all four). Only float32 and full-integer int8 are kept,
    so the other five conversions return an empty model at once; the two kept files are byte-identical either way."""
    import tensorflow as tf
    from tensorflow.lite.python import lite

    def kept(converter) -> bool:
        ops = set(converter.target_spec.supported_ops)
        if not converter.optimizations:
            return True  # float32
        if tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8 in ops:
            return False  # int16 activations
        if tf.float16 in converter.target_spec.supported_types or converter.representative_dataset is None:
            return False  # float16, dynamic-range
        return converter.inference_input_type == tf.int8  # full integer, not the float-I/O "integer_quant"

    names = ("TFLiteKerasModelConverterV2", "TFLiteFrozenGraphConverterV2", "TFLiteSavedModelConverterV2")
    for cls in {getattr(lite, name) for name in names if hasattr(lite, name)}:  # a TF without one: it runs in full
        convert = cls.convert

        def lean(self, _convert=convert):
            return _convert(self) if kept(self) else b""

        cls.convert = lean


def _child(job_path: str) -> int:
    block_network()
    job = json.loads(Path(job_path).read_text())
    import onnx2tf

    skip_unused_conversions()

    rank4 = lambda v: [[[list(v)]]]  # noqa: E731 - NHWC broadcast shape [1, 1, 1, 3]
    onnx2tf.convert(input_onnx_file_path=job["onnx"], output_folder_path=job["folder"], batch_size=1,
                    output_integer_quantized_tflite=job["int8"], quant_type="per-channel",
                    custom_input_op_name_np_data_path=[[job["input"], job["calib"], rank4(job["mean"]),
                                                        rank4(job["std"])]],
                    non_verbose=True)
    result = {}
    for precision, meta_json in job["metadata"].items():
        src = Path(job["folder"]) / f"{job['stem']}{OUTPUTS[precision]}"
        if not src.is_file():
            print(f"Error: onnx2tf produced no {src.name}", file=sys.stderr)
            return 1
        if src.stat().st_size == 0:
            print(f"Error: {src.name} was skipped as unused (skip_unused_conversions): this onnx2tf sets up that "
                  "conversion differently; update kept() in export/tflite.py", file=sys.stderr)
            return 1
        result[precision] = _finish(src, Path(job["outputs"][precision]), meta_json)
    (Path(job_path).parent / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
