"""Stage helper: embed ``ModelMetadata`` (the runtime's schema, one definition) in each model file, and read it back.

ONNX: ``metadata_props`` entry ``simpleunet``. TFLite: an entry ``simpleunet`` in the flatbuffer's
``Model.metadata`` vector pointing at a buffer that holds the UTF-8 JSON (what the runtime's pure-Python reader
looks for). Writing TFLite goes through ``tensorflow.lite.tools.flatbuffer_utils``, which the export needs anyway.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from simpleunet_runtime.errors import SimpleUNetError
from simpleunet_runtime.metadata import METADATA_KEY, ModelMetadata
from simpleunet_runtime.tflite_file import read_metadata


def set_onnx_metadata(proto: onnx.ModelProto, meta: ModelMetadata) -> onnx.ModelProto:
    """Replace any ``simpleunet`` entry in ``metadata_props`` with ``meta``'s JSON."""
    keep = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in keep}, **meta.to_props()})
    return proto


def read_onnx_metadata(path: str | Path) -> ModelMetadata:
    proto = onnx.load(str(path), load_external_data=False)
    meta = ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props})
    if meta is not None:
        return meta
    raise SimpleUNetError(f"{path} carries no {METADATA_KEY!r} metadata")


def set_tflite_metadata(model, meta: ModelMetadata) -> None:
    """Add (or replace) the ``simpleunet`` entry of a ``flatbuffer_utils`` ModelT, pointing at a new buffer."""
    from tensorflow.lite.python import schema_py_generated as schema

    props = meta.to_props()
    entries = [m for m in (model.metadata or []) if (m.name.decode() if isinstance(m.name, bytes) else m.name)
               not in props]
    for key, text in props.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = key
        entry.buffer = len(model.buffers) - 1
        entries.append(entry)
    model.metadata = entries


def read_tflite_metadata(path: str | Path) -> ModelMetadata:
    data = Path(path).read_bytes()
    raw = read_metadata(data, METADATA_KEY, str(path))
    meta = ModelMetadata.from_props({} if raw is None else {METADATA_KEY: raw.decode("utf-8", "replace")})
    if meta is None:
        raise SimpleUNetError(f"{path} carries no {METADATA_KEY!r} metadata")
    return meta


def read_any(path: str | Path) -> ModelMetadata:
    """The metadata of an ``.onnx`` or ``.tflite`` file."""
    return read_tflite_metadata(path) if str(path).endswith(".tflite") else read_onnx_metadata(path)
