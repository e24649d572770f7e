"""The model-file metadata schema: the one definition. The exporter writes it into every model file
(ONNX ``metadata_props`` / TFLite ``Model.metadata``, key ``simpleunet``, value = this JSON) and the runtime
reads it back, so a model file is self-describing.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import SimpleUNetError

#: The key under which the JSON is stored in both file formats.
METADATA_KEY = "simpleunet"
SCHEMA_VERSION = 1
NOTICE = "Research use only. Not a medical device; not for diagnostic use."


@dataclass(frozen=True)
class ModelMetadata:
    """What a runtime needs to use a model file correctly, and where it came from.

    ``input_layout`` is the layout of the file's input tensor (ONNX: NCHW, TFLite: NHWC);
    ``output`` is ``probabilities`` (a sigmoid for 1 class / softmax for more is inside the graph) or ``logits``.
    """

    family: str
    width: int
    blocks: int
    rate: float
    imgsz: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int = 1
    input_layout: str = "NCHW"
    channel_order: str = "RGB"
    output: str = "probabilities"
    threshold: float = 0.5
    precision: str = "fp32"
    aff: bool = True
    parameters: int = 0
    weights_sha256: str = ""
    dataset: str = ""
    name: str = ""
    toolkit_version: str = ""
    notice: str = NOTICE
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.input_layout not in ("NCHW", "NHWC"):
            raise SimpleUNetError(f"metadata input_layout must be NCHW or NHWC, got {self.input_layout!r}")
        if self.output not in ("probabilities", "logits"):
            raise SimpleUNetError(f"metadata output must be 'probabilities' or 'logits', got {self.output!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise SimpleUNetError("metadata mean/std must be 3 values each, std > 0")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelMetadata":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SimpleUNetError(f"model metadata is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise SimpleUNetError("model metadata must be a JSON object")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or isinstance(version, bool):
            raise SimpleUNetError(f"model metadata schema_version must be an integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise SimpleUNetError(f"model metadata schema {version} is newer than this runtime understands "
                                  f"({SCHEMA_VERSION}); upgrade simpleunet-runtime")
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        try:
            data["imgsz"] = tuple(int(v) for v in data["imgsz"])
            data["mean"] = tuple(float(v) for v in data["mean"])
            data["std"] = tuple(float(v) for v in data["std"])
            return cls(**data)
        except (KeyError, TypeError, ValueError) as exc:
            raise SimpleUNetError(f"model metadata is incomplete or malformed ({type(exc).__name__}: {exc})") from None

    def replace(self, **changes: Any) -> "ModelMetadata":
        return dataclasses.replace(self, **changes)
