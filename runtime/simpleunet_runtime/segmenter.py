"""``Segmenter``: open an exported model file, segment images at their original size.

Pre/post-processing is numpy + Pillow only and shared by both backends: decode (``image.load_for_model``), resize
to the model's input size, normalize with the model's own mean/std, run, resize the probabilities back to the
image's size, threshold the foreground probability (several classes: then the argmax of the foreground classes).
Foreground regions smaller than the file's ``min_region`` rule are set to background at the model's size first
(``regions``), so ``run``, ``predict_proba``, ``predict`` and the bench's scores all see the same mask.
The user's arguments and the file's metadata go through the same checks (``metadata.check_*``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .backends import open_backend
from .errors import SimpleUNetError
from .image import (ImageInput, as_rgb, load_for_model, normalize, probability_bands, resize_image,
                    resize_probabilities, too_large)
from .metadata import (FieldError, ModelMetadata, check_imgsz, check_mean, check_min_region, check_std,
                       check_threshold)
from .regions import drop_small_regions


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


def without_small_regions(p: np.ndarray, metadata: ModelMetadata) -> np.ndarray:
    """(N, C, H, W) class probabilities with the regions the file's ``min_region`` drops set to background (every
    runner of a model file applies it here: the Segmenter, and the bench's PyTorch baseline)."""
    rule = metadata.min_region
    return drop_small_regions(p, foreground_probability(p) > metadata.threshold, rule) if rule.active else p


#: Test-time augmentation: name -> the flips (axes of an NCHW batch) whose probabilities are averaged. "flip": the
#: image, its mirror images left-right and top-bottom, and both (4 runs per image: 4x the latency).
TTA = {"flip": ((), (3,), (2,), (2, 3))}

#: The metadata fields a user may override (Segmenter arguments, CLI flags), each with the check both go through.
OVERRIDES = {"imgsz": check_imgsz, "mean": check_mean, "std": check_std, "threshold": check_threshold,
             "min_region": check_min_region}


def _parse_metadata(props: dict[str, str], name: str, overrides: dict) -> ModelMetadata | None:
    """The file's metadata with the user's overrides, checked by the same rules (None: the file has none); errors
    name the file and field."""
    try:
        return ModelMetadata.from_props(props, **overrides)
    except FieldError as exc:
        fix = (f"override it with {exc.field}= (--{exc.field} on the command line)" if exc.field in OVERRIDES
               else "re-export the model with simpleunet-export")
        raise SimpleUNetError(f"{name}: {exc}; {fix}") from None
    except SimpleUNetError as exc:
        raise SimpleUNetError(f"{name}: {exc}") from None


def _image_list(images, who: str) -> list:
    """The images of a batch argument. One image (a path, bytes, an HxWxC array) is refused, not iterated: a path
    would otherwise be taken as a batch of one-character file names."""
    single = isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike)) or (
        isinstance(images, np.ndarray) and images.ndim != 4)
    if single or not hasattr(images, "__iter__"):
        got = f"an array of shape {images.shape}" if isinstance(images, np.ndarray) else f"a {type(images).__name__}"
        raise SimpleUNetError(f"{who} takes a list of images or an N x H x W x C array, got {got}; wrap a single "
                              "image in a list")
    return list(images)


class Segmenter:
    """A model file (``.onnx`` or ``.tflite``) plus the metadata embedded in it.

    ``imgsz``/``mean``/``std``/``threshold``/``min_region`` override the metadata (``min_region=(0, 0)`` keeps
    every region); a file without metadata needs at least ``mean`` and ``std`` (and ``imgsz`` unless its input size
    is fixed). ``tta="flip"`` averages the probabilities
    of the image and its three flips (``TTA``): 4x the inference time, often a better mask.
    """

    def __init__(self, path: str | os.PathLike, backend: str | None = None, threads: int | None = None,
                 providers: Sequence[str] | None = None, imgsz: int | Sequence[int] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 threshold: float | None = None, tta: str | None = None,
                 min_region: Sequence[float] | None = None):
        if tta is not None and tta not in TTA:
            raise SimpleUNetError(f"unknown tta {tta!r}; choose one of {', '.join(TTA)} or None")
        self.tta = tta
        self.path = Path(path)
        self._backend = open_backend(self.path, backend, threads, providers)
        given = {"imgsz": imgsz, "mean": mean, "std": std, "threshold": threshold, "min_region": min_region}
        overrides = {k: OVERRIDES[k](v) for k, v in given.items() if v is not None}  # messages name the argument
        try:
            props = self._backend.metadata_props()
        except UnicodeDecodeError:  # onnxruntime decodes the metadata itself
            raise SimpleUNetError(f"{self.path.name}: model metadata is not UTF-8 text; re-export the model with "
                                  "simpleunet-export") from None
        found = _parse_metadata(props, self.path.name, overrides)
        if found is not None:
            self.metadata: ModelMetadata = found
            self._backend.layout = found.input_layout
        else:
            self.metadata = self._fallback_metadata(overrides)
        fixed = self._backend.input_hw
        if all(fixed) and tuple(fixed) != tuple(self.metadata.imgsz):
            raise SimpleUNetError(f"{self.path.name} takes {fixed[0]}x{fixed[1]} input but imgsz is "
                                  f"{self.metadata.imgsz[0]}x{self.metadata.imgsz[1]}")

    def _fallback_metadata(self, overrides: dict) -> ModelMetadata:
        """Metadata for a file that has none, from the user's overrides and the file's tensor shapes."""
        b = self._backend
        b.layout = b.native_layout
        size = overrides.get("imgsz") or (tuple(b.input_hw) if all(b.input_hw) else None)
        missing = [n for n, v in (("mean", overrides.get("mean")), ("std", overrides.get("std")), ("imgsz", size))
                   if v is None]
        if missing:
            raise SimpleUNetError(f"{self.path.name} has no simpleunet metadata; export it with simpleunet-export "
                                  f"or give {', '.join(m + '=' for m in missing)} "
                                  f"({', '.join('--' + m for m in missing)} on the command line)")
        return ModelMetadata(family="unknown", width=0, blocks=0, rate=0.0, num_classes=b.output_classes,
                             input_layout=b.layout, precision="unknown", name=self.path.stem,
                             **{**overrides, "imgsz": size})

    @classmethod
    def pretrained(cls, name: str, precision: str = "int8", format: str = "onnx", **kwargs) -> "Segmenter":
        """A model bundled with the package, by name (see ``simpleunet-models``); its sha256 is checked."""
        from .bundled import resolve

        return cls(resolve(name, precision=precision, format=format), **kwargs)

    @property
    def backend(self) -> str:
        return self._backend.name

    def __repr__(self) -> str:
        m = self.metadata
        return (f"Segmenter({self.path.name!r}, backend={self.backend!r}, {m.family}{m.width or ''} "
                f"{m.precision}, imgsz={m.imgsz[0]}x{m.imgsz[1]}, classes={m.num_classes}"
                + (f", tta={self.tta!r})" if self.tta else ")"))

    # -- the three stages -------------------------------------------------------------------------------------
    def preprocess(self, images: Iterable[np.ndarray]) -> np.ndarray:
        """HxWx3 uint8 RGB images (any sizes) -> float32 NCHW at imgsz, normalized with the model's mean/std.

        ``images`` is a list of arrays or one N x H x W x C array.
        """
        batch = [resize_image(as_rgb(im), self.metadata.imgsz) for im in _image_list(images, "preprocess")]
        if not batch:
            raise SimpleUNetError("no images to preprocess")
        return normalize(np.stack(batch), self.metadata.mean, self.metadata.std)

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 -> (N, C, H, W) class probabilities, the regions ``min_region`` drops set to background."""
        x = np.asarray(x)
        h, w = self.metadata.imgsz
        if x.ndim != 4 or x.shape[1:] != (3, h, w):
            raise SimpleUNetError(f"model input must be float32 (N, 3, {h}, {w}), got {x.shape}")
        flips = TTA[self.tta] if self.tta else ((),)
        total = None
        for axes in flips:  # each flip's probabilities flipped back, then averaged
            y = self._backend.run(np.flip(x, axes) if axes else x)
            if self.metadata.output == "logits":
                if y.shape[1] == 1:
                    y = 1.0 / (1.0 + np.exp(-y))
                else:
                    y = np.exp(y - y.max(axis=1, keepdims=True))
                    y /= y.sum(axis=1, keepdims=True)
            y = np.flip(y, axes) if axes else y
            total = y.astype(np.float32, copy=False) if total is None else total + y
        return without_small_regions(total if len(flips) == 1 else total / np.float32(len(flips)), self.metadata)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Inference: NCHW float32 -> (N, H, W) foreground probability at imgsz (1 - background for C > 1), the
        file's small-region rule applied (``min_region=(0, 0)`` for the model's raw output)."""
        return foreground_probability(self._probabilities(x))

    def _postprocess(self, p: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(C, h, w) probabilities -> HxW uint8 mask at ``size``, a band of rows at a time: the mask is the only
        full-size array, 1 byte a pixel."""
        try:
            mask = np.empty(size, np.uint8)
            for rows, band in probability_bands(p, size):
                mask[rows] = class_mask(band, self.metadata.threshold)
        except MemoryError:
            raise too_large(f"a {size[1]}x{size[0]} mask", "segment") from None
        return mask

    def _masks(self, inputs: list[tuple[np.ndarray, tuple[int, int]]], batch_size: int) -> list[np.ndarray]:
        """Masks for decoded inputs (model-sized image, mask size), ``batch_size`` at a time."""
        masks: list[np.ndarray] = []
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            probs = self._probabilities(normalize(np.stack([x for x, _ in chunk]), self.metadata.mean,
                                                  self.metadata.std))
            masks.extend(self._postprocess(p, size) for p, (_, size) in zip(probs, chunk))
        return masks

    # -- user-facing --------------------------------------------------------------------------------------------
    def predict_proba(self, image: ImageInput) -> np.ndarray:
        """HxW float32 foreground probability at the image's original size."""
        x, size = load_for_model(image, self.metadata.imgsz)
        fg = self.run(normalize(x[None], self.metadata.mean, self.metadata.std))
        try:
            return resize_probabilities(fg, size)[0]
        except MemoryError:
            raise too_large(f"a {size[1]}x{size[0]} probability map", "segment") from None

    def predict(self, image: ImageInput) -> np.ndarray:
        """HxW uint8 mask at the image's original size: 0/255 for one class, class ids otherwise."""
        return self._masks([load_for_model(image, self.metadata.imgsz)], 1)[0]

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """One mask per frame of any frame iterator (HxWx3 uint8 RGB arrays: a video.FrameSource, a camera
        generator), computed as ``predict`` computes it, as the frames come."""
        for frame in frames:
            yield self.predict(frame)

    def predict_batch(self, images: Sequence[ImageInput], batch_size: int = 8) -> list[np.ndarray]:
        """Masks for several images (paths, bytes or arrays; any sizes), run ``batch_size`` at a time.

        Every image is decoded and checked before anything runs (keeping only its model-sized input), so a bad one
        raises naming its index (``images[3]: ...``) and no result is computed to be lost; call ``predict`` per
        image to go on past bad ones.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise SimpleUNetError(f"batch_size must be a positive integer, got {batch_size!r}")
        inputs = []
        for i, image in enumerate(_image_list(images, "predict_batch")):
            try:
                inputs.append(load_for_model(image, self.metadata.imgsz))
            except SimpleUNetError as exc:
                raise SimpleUNetError(f"images[{i}]: {exc}") from None
        return self._masks(inputs, batch_size)
