"""``Segmenter``: open an exported model file, segment images at their original size.

Pre/post-processing is numpy + Pillow only and shared by both backends: decode (``image.load_image``), resize to
the model's input size, normalize with the model's own mean/std, run, resize the probabilities back to the
image's size, threshold the foreground probability (several classes: then the argmax of the foreground classes).
"""
from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .backends import open_backend
from .errors import SimpleUNetError
from .image import ImageInput, as_rgb, load_image, normalize, resize_image, resize_probabilities
from .metadata import ModelMetadata


def foreground_probability(p: np.ndarray) -> np.ndarray:
    """(N, C, H, W) class probabilities -> (N, H, W) foreground probability: the one channel, or 1 - background.
    The toolkit's one binary decision is ``foreground_probability(p) > threshold`` (training, eval, export, bench)."""
    return p[:, 0] if p.shape[1] == 1 else 1.0 - p[:, 0]


def class_mask(p: np.ndarray, threshold: float) -> np.ndarray:
    """(C, H, W) probabilities -> HxW uint8 mask: 0/255 for one class; for several, 0 where 1 - p(background) is
    not above ``threshold`` (the rule every score uses) and the most likely foreground class id elsewhere."""
    if p.shape[0] == 1:
        return np.where(p[0] > threshold, np.uint8(255), np.uint8(0))
    ids = (p[1:].argmax(axis=0) + 1).astype(np.uint8)
    return np.where(foreground_probability(p[None])[0] > threshold, ids, np.uint8(0))


def _triple(name: str, value: Sequence[float] | None) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise SimpleUNetError(f"{name} must be 3 numbers, got {value!r}") from None
    if len(out) != 3 or not all(np.isfinite(out)):
        raise SimpleUNetError(f"{name} must be 3 finite numbers (R, G, B), got {value!r}")
    if name == "std" and min(out) <= 0:  # checked here so the message names the argument, not the metadata
        raise SimpleUNetError(f"std must be 3 numbers > 0 (R, G, B), got {value!r}")
    return out  # type: ignore[return-value]


def _size(value: int | Sequence[int] | None) -> tuple[int, int] | None:
    if value is None:
        return None
    dims = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(dims) != 2 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and 0 < d <= 8192
                                 for d in dims):
        raise SimpleUNetError(f"imgsz must be a positive integer or (height, width) up to 8192, got {value!r}")
    return int(dims[0]), int(dims[1])


def _parse_metadata(text: str, name: str) -> ModelMetadata:
    try:
        return ModelMetadata.from_json(text)
    except SimpleUNetError as exc:
        raise SimpleUNetError(f"{name}: {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:  # well-formed JSON with values of the wrong type
        raise SimpleUNetError(f"{name}: model metadata is malformed ({type(exc).__name__}: {exc})") from None


class Segmenter:
    """A model file (``.onnx`` or ``.tflite``) plus the metadata embedded in it.

    ``imgsz``/``mean``/``std``/``threshold`` override the metadata; a file without metadata needs at least
    ``mean`` and ``std`` (and ``imgsz`` unless its input size is fixed).
    """

    def __init__(self, path: str | os.PathLike, backend: str | None = None, threads: int | None = None,
                 providers: Sequence[str] | None = None, imgsz: int | Sequence[int] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 threshold: float | None = None):
        self.path = Path(path)
        self._backend = open_backend(self.path, backend, threads, providers)
        imgsz_, mean_, std_ = _size(imgsz), _triple("mean", mean), _triple("std", std)
        if threshold is not None:  # numpy scalars welcome, bools and NaN not
            if not (isinstance(threshold, numbers.Real) and not isinstance(threshold, bool) and 0 <= threshold <= 1):
                raise SimpleUNetError(f"threshold must be a number in [0, 1], got {threshold!r}")
            threshold = float(threshold)
        text = self._backend.metadata_json()
        if text is not None:
            meta = _parse_metadata(text, self.path.name)
            self._backend.layout = meta.input_layout
        else:
            meta = self._fallback_metadata(imgsz_, mean_, std_)
        changes = {k: v for k, v in (("imgsz", imgsz_), ("mean", mean_), ("std", std_), ("threshold", threshold))
                   if v is not None}
        self.metadata: ModelMetadata = meta.replace(**changes) if changes else meta
        _size(tuple(self.metadata.imgsz))
        fixed = self._backend.input_hw
        if all(fixed) and tuple(fixed) != tuple(self.metadata.imgsz):
            raise SimpleUNetError(f"{self.path.name} takes {fixed[0]}x{fixed[1]} input but imgsz is "
                                  f"{self.metadata.imgsz[0]}x{self.metadata.imgsz[1]}")

    def _fallback_metadata(self, imgsz, mean, std) -> ModelMetadata:
        """Metadata for a file that has none, from the user's overrides and the file's tensor shapes."""
        b = self._backend
        b.layout = b.native_layout
        size = imgsz or (tuple(b.input_hw) if all(b.input_hw) else None)
        missing = [n for n, v in (("mean", mean), ("std", std), ("imgsz", size)) if v is None]
        if missing:
            raise SimpleUNetError(f"{self.path.name} has no simpleunet metadata; export it with simpleunet-export "
                                  f"or give {', '.join(m + '=' for m in missing)} "
                                  f"({', '.join('--' + m for m in missing)} on the command line)")
        return ModelMetadata(family="unknown", width=0, blocks=0, rate=0.0, imgsz=size, mean=mean, std=std,
                             num_classes=b.output_classes, input_layout=b.layout, precision="unknown",
                             name=self.path.stem)

    @classmethod
    def pretrained(cls, name: str, precision: str = "int8", format: str = "onnx", **kwargs) -> "Segmenter":
        """A model bundled with the package, by name (see ``simpleunet-models``); its sha256 is checked."""
        from .zoo import resolve

        return cls(resolve(name, precision=precision, format=format), **kwargs)

    @property
    def backend(self) -> str:
        return self._backend.name

    def __repr__(self) -> str:
        m = self.metadata
        return (f"Segmenter({self.path.name!r}, backend={self.backend!r}, {m.family}{m.width or ''} "
                f"{m.precision}, imgsz={m.imgsz[0]}x{m.imgsz[1]}, classes={m.num_classes})")

    # -- the three stages -------------------------------------------------------------------------------------
    def preprocess(self, images: Iterable[np.ndarray]) -> np.ndarray:
        """HxWx3 uint8 RGB images (any sizes) -> float32 NCHW at imgsz, normalized with the model's mean/std.

        ``images`` is a list of arrays or one N x H x W x C array.
        """
        if isinstance(images, np.ndarray) and images.ndim != 4:
            raise SimpleUNetError(f"preprocess takes a list of images or an N x H x W x C array, got an array of "
                                  f"shape {images.shape}; wrap a single image in a list")
        if isinstance(images, (str, bytes)) or not hasattr(images, "__iter__"):
            raise SimpleUNetError(f"preprocess takes a list of images, got {type(images).__name__}")
        batch = [resize_image(as_rgb(im), self.metadata.imgsz) for im in images]
        if not batch:
            raise SimpleUNetError("no images to preprocess")
        return normalize(np.stack(batch), self.metadata.mean, self.metadata.std)

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 -> (N, C, H, W) class probabilities."""
        x = np.asarray(x)
        h, w = self.metadata.imgsz
        if x.ndim != 4 or x.shape[1:] != (3, h, w):
            raise SimpleUNetError(f"model input must be float32 (N, 3, {h}, {w}), got {x.shape}")
        y = self._backend.run(x)
        if self.metadata.output == "logits":
            if y.shape[1] == 1:
                y = 1.0 / (1.0 + np.exp(-y))
            else:
                y = np.exp(y - y.max(axis=1, keepdims=True))
                y /= y.sum(axis=1, keepdims=True)
        return y.astype(np.float32, copy=False)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Raw inference: NCHW float32 -> (N, H, W) foreground probability at imgsz (1 - background for C > 1)."""
        return foreground_probability(self._probabilities(x))

    def _postprocess(self, p: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(C, h, w) probabilities -> HxW uint8 mask at ``size``."""
        return class_mask(resize_probabilities(p, size), self.metadata.threshold)

    # -- user-facing --------------------------------------------------------------------------------------------
    def predict_proba(self, image: ImageInput) -> np.ndarray:
        """HxW float32 foreground probability at the image's original size."""
        img = load_image(image)
        fg = self.run(self.preprocess([img]))
        return resize_probabilities(fg, img.shape[:2])[0]

    def predict(self, image: ImageInput) -> np.ndarray:
        """HxW uint8 mask at the image's original size: 0/255 for one class, class ids otherwise."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[ImageInput], batch_size: int = 8) -> list[np.ndarray]:
        """Masks for several images (paths, bytes or arrays; any sizes), run ``batch_size`` at a time."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise SimpleUNetError(f"batch_size must be a positive integer, got {batch_size!r}")
        masks: list[np.ndarray] = []
        items = list(images)
        for start in range(0, len(items), batch_size):
            imgs = [load_image(im) for im in items[start:start + batch_size]]
            probs = self._probabilities(self.preprocess(imgs))
            masks.extend(self._postprocess(p, im.shape[:2]) for p, im in zip(probs, imgs))
        return masks
