"""The model contract: the one typed home of what a model file needs from its user (``Preprocess``: input size,
mean/std, channel order, resize rule; the threshold, the small-region rule and output kind) and where it came from
(``architecture``: the training config's model fields, verbatim). The exporter writes it into every model file with
``to_props()`` (ONNX ``metadata_props`` / TFLite ``Model.metadata``, key ``simpleunet``, value = this JSON) and the
runtime reads it back with ``from_props()``, so a model file is self-describing.

A file is trusted no more than a user: the ``check_*`` rules below are the ones the Segmenter applies to its
arguments, and ``ModelMetadata`` applies them (and one per other field) to every value it is given. Strings are
made safe to print where they are parsed: a model's name cannot carry a terminal escape, a newline or a '|' that
would break the bench's Markdown table.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import reprlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import SimpleUNetError
from .regions import KEEP_ALL, MinRegion

#: The key under which the JSON is stored in both file formats.
METADATA_KEY = "simpleunet"
SCHEMA_VERSION = 1
NOTICE = "Research use only. Not a medical device; not for diagnostic use."
#: The exporter writes about 0.7 KB; anything past this is not ours.
MAX_JSON_CHARS = 1 << 16
#: Printed strings are cut to this many characters.
TEXT_LIMIT = 200
#: ``extra`` may nest this deep (the exporter's is flat).
EXTRA_DEPTH = 8

_repr = reprlib.Repr()  # repr escapes control characters; reprlib also bounds length and depth
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict = 2, 40, 40, 4, 4
_shown = _repr.repr


class FieldError(SimpleUNetError):
    """A value breaks the rule of its field; ``field`` names it, so a caller can offer the override for it."""

    def __init__(self, field: str, rule: str, value: Any, prefix: str = ""):
        super().__init__(f"{prefix}{field} must be {rule}, got {_shown(value)}")
        self.field, self.rule, self.value = field, rule, value


def _real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_threshold(value: Any, field: str = "threshold") -> float:
    if not (_real(value) and 0 <= value <= 1):
        raise FieldError(field, "a number in [0, 1]", value)
    return float(value)


def check_min_region(value: Any, field: str = "min_region") -> MinRegion:
    """``(area, ratio)`` of ``regions.MinRegion``, each a number in [0, 1]."""
    items = tuple(value) if isinstance(value, (list, tuple, np.ndarray)) else ()
    if len(items) != 2 or not all(_real(v) and 0 <= v <= 1 for v in items):
        raise FieldError(field, "two numbers AREA,RATIO, each in [0, 1] (0,0 keeps every region)", value)
    return MinRegion(float(items[0]), float(items[1]))


def check_imgsz(value: Any, field: str = "imgsz") -> tuple[int, int]:
    dims = (value, value) if _integer(value) else tuple(value) if isinstance(value, (list, tuple, np.ndarray)) else ()
    if len(dims) != 2 or not all(_integer(d) and 0 < d <= 8192 for d in dims):
        raise FieldError(field, "a positive integer or (height, width) up to 8192", value)
    return int(dims[0]), int(dims[1])


def _triple(value: Any, field: str, rule: str, low: float) -> tuple[float, float, float]:
    items = tuple(value) if isinstance(value, (list, tuple, np.ndarray)) else ()
    if len(items) != 3 or not all(_real(v) and low <= v <= 1e6 for v in items):
        raise FieldError(field, rule, value)
    return tuple(float(v) for v in items)  # type: ignore[return-value]


# The bounds keep (x / 255 - mean) / std finite in float32 (|x| <= 1e12), and refuse a std that underflows (1e-40).
def check_mean(value: Any, field: str = "mean") -> tuple[float, float, float]:
    return _triple(value, field, "3 finite numbers (R, G, B), each in [-1e6, 1e6]", -1e6)


def check_std(value: Any, field: str = "std") -> tuple[float, float, float]:
    return _triple(value, field, "3 numbers > 0 (R, G, B), each in [1e-6, 1e6]", 1e-6)


def clean_text(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` safe for a terminal and a Markdown table cell: control and format characters (escapes, newlines,
    bidi overrides) become '?', '|' becomes '/', and it is cut to ``limit`` characters."""
    safe = "".join(c if c.isprintable() else "?" for c in text[:limit + 1]).replace("|", "/")
    return safe if len(safe) <= limit else safe[:limit - 3] + "..."


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise FieldError(field, "a string", value)
    return clean_text(value)


def _count(value: Any, field: str) -> int:
    if not (_integer(value) and value >= 0):
        raise FieldError(field, "an integer >= 0", value)
    return int(value)


def _classes(value: Any, field: str) -> int:
    if not (_integer(value) and 1 <= value <= 256):  # mask class ids are uint8
        raise FieldError(field, "an integer in 1..256", value)
    return int(value)


def _rate(value: Any, field: str) -> float:
    if not (_real(value) and 0 <= value <= 1):
        raise FieldError(field, "a number in [0, 1]", value)
    return float(value)


def _flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise FieldError(field, "true or false", value)
    return value


def _one_of(*allowed: str) -> Callable[[Any, str], str]:
    def check(value: Any, field: str) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise FieldError(field, " or ".join(repr(a) for a in allowed), value)
        return value
    return check


def _json_safe(value: Any, field: str, depth: int = 0) -> Any:
    """A JSON value with its strings cleaned; refused past ``EXTRA_DEPTH`` levels and for non-finite numbers."""
    if depth > EXTRA_DEPTH:
        raise FieldError(field, f"nested at most {EXTRA_DEPTH} levels deep", value)
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _json_safe(v, field, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, field, depth + 1) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise FieldError(field, "made of finite numbers", value)
    return value


def _extra(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FieldError(field, "a JSON object", value)
    return _json_safe(value, field)


def _version(value: Any, field: str) -> int:
    if not (_integer(value) and value >= 1):
        raise FieldError(field, "an integer >= 1", value)
    return int(value)


#: How every stage turns an image into the model's input size: image.resize_image (Pillow bilinear, antialiased,
#: stretched to imgsz without keeping the aspect ratio), as training's cache does.
RESIZE = "bilinear-stretch"


@dataclass(frozen=True)
class Preprocess:
    """What an image goes through before the model: resized by ``resize`` to ``imgsz`` (h, w), scaled to [0, 1],
    then ``(x - mean) / std`` per ``channel_order`` channel. One definition for training, export and runtime."""

    imgsz: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str = "RGB"
    resize: str = RESIZE

    def __post_init__(self) -> None:
        object.__setattr__(self, "imgsz", check_imgsz(self.imgsz))
        object.__setattr__(self, "mean", check_mean(self.mean))
        object.__setattr__(self, "std", check_std(self.std))
        _one_of("RGB")(self.channel_order, "channel_order")
        _one_of(RESIZE)(self.resize, "resize")


def _architecture(value: Any, field: str) -> dict[str, Any]:
    """The training config's model fields as given (family, width, kernel_size, dilation...): the runtime keeps
    them for the baselines and reports, and interprets none."""
    return _extra(value, field)


_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "family": _text, "width": _count, "blocks": _count, "rate": _rate, "imgsz": check_imgsz, "mean": check_mean,
    "std": check_std, "num_classes": _classes, "input_layout": _one_of("NCHW", "NHWC"),
    "channel_order": _one_of("RGB"),  # the runtime feeds RGB: a BGR file would be silently wrong
    "output": _one_of("probabilities", "logits"), "threshold": check_threshold,
    "min_region": check_min_region, "precision": _text, "aff": _flag,
    "parameters": _count, "weights_sha256": _text, "dataset": _text, "name": _text, "toolkit_version": _text,
    "notice": _text, "extra": _extra, "architecture": _architecture, "schema_version": _version,
}


@dataclass(frozen=True)
class ModelMetadata:
    """What a runtime needs to use a model file correctly, and where it came from.

    ``input_layout`` is the layout of the file's input tensor (ONNX: NCHW, TFLite: NHWC);
    ``output`` is ``probabilities`` (a sigmoid for 1 class / softmax for more is inside the graph) or ``logits``.
    ``min_region`` is the ``regions.MinRegion`` rule applied after the threshold ((0, 0), keep every region, in
    files exported before 2026-12-06).
    ``architecture`` is the model's full training config (``ModelConfig`` fields, verbatim; empty in files
    exported before 2026-12-03, whose family/width/blocks/rate/aff fields say the rest and imply 3x3 convs).
    Every field is checked and normalized (tuples of floats, cleaned strings) when an instance is made.
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
    min_region: MinRegion = KEEP_ALL
    precision: str = "fp32"
    aff: bool = True
    parameters: int = 0
    weights_sha256: str = ""
    dataset: str = ""
    name: str = ""
    toolkit_version: str = ""
    notice: str = NOTICE
    extra: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for name in _CHECKS:
            object.__setattr__(self, name, _checked(name, getattr(self, name)))

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.imgsz, self.mean, self.std, self.channel_order)

    def to_props(self) -> dict[str, str]:
        """The ``key -> text`` entries a model file carries (ONNX metadata_props, TFLite Model.metadata)."""
        return {METADATA_KEY: self.to_json()}

    @classmethod
    def from_props(cls, props: Any, **overrides: Any) -> "ModelMetadata | None":
        """The metadata among a file's ``key -> text`` entries; None when it has no ``simpleunet`` entry."""
        text = props.get(METADATA_KEY)
        return None if text is None else cls.from_json(text, **overrides)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes, **overrides: Any) -> "ModelMetadata":
        """Parse a file's metadata. ``overrides`` (values the user gave, already checked) replace the file's before
        its values are checked, so a user can still run a file whose threshold, say, is broken."""
        if len(text) > MAX_JSON_CHARS:
            raise SimpleUNetError(f"model metadata is {len(text):,} characters long, more than the "
                                  f"{MAX_JSON_CHARS:,} SimpleUNet metadata may have")
        try:
            data = json.loads(text)  # NaN / Infinity parse, and are then refused by the field they are in
        except UnicodeDecodeError:
            raise SimpleUNetError("model metadata is not UTF-8 text") from None
        except RecursionError:
            raise SimpleUNetError("model metadata is nested too deeply to be SimpleUNet metadata") from None
        except ValueError as exc:  # json.JSONDecodeError
            raise SimpleUNetError(f"model metadata is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise SimpleUNetError("model metadata must be a JSON object")
        version = _checked("schema_version", data.get("schema_version", 1))
        if version > SCHEMA_VERSION:
            raise SimpleUNetError(f"model metadata schema {version} is newer than this runtime understands "
                                  f"({SCHEMA_VERSION}); upgrade simpleunet-runtime")
        fields = dataclasses.fields(cls)
        data = {**{f.name: data[f.name] for f in fields if f.name in data}, **overrides}
        missing = [f.name for f in fields if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise SimpleUNetError(f"model metadata lacks {', '.join(missing)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "ModelMetadata":
        return dataclasses.replace(self, **changes)


def _checked(name: str, value: Any) -> Any:
    """``value`` checked and normalized by the rule of metadata field ``name``."""
    try:
        return _CHECKS[name](value, name)
    except FieldError as exc:
        raise FieldError(exc.field, exc.rule, exc.value, prefix="metadata ") from None
