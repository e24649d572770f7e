"""Image and mask decoding (Pillow) and the numpy pre/post-processing shared by every backend and by training.

One code path: the toolkit's training cache, the exporter's calibration data and the runtime all call
``load_image`` + ``resize_image`` + ``normalize``, so a model sees the same pixels everywhere.
"""
from __future__ import annotations

import io
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image

from .errors import SimpleUNetError

#: Refuse images above this many pixels (decompression-bomb guard; about 8k x 8k).
MAX_PIXELS = 64_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

ImageInput = Union[str, os.PathLike, bytes, np.ndarray]


def _open(source: ImageInput, what: str) -> Image.Image:
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, fp = "<bytes>", io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        name = str(source)
        try:
            fp = open(source, "rb")
        except (OSError, ValueError) as exc:  # ValueError: embedded NUL in the path
            raise SimpleUNetError(f"cannot read {what} {name}: {getattr(exc, 'strerror', None) or exc}") from None
    else:
        raise SimpleUNetError(f"cannot read an {what} from a {type(source).__name__}; pass a path, bytes or "
                              "a numpy array")
    with fp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data" etc.: the image decodes or raises
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(fp) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise SimpleUNetError(f"{what} {name} is {w}x{h} pixels, above the limit of "
                                          f"{MAX_PIXELS:,}; downscale it first")
                if w == 0 or h == 0:
                    raise SimpleUNetError(f"{what} {name} has zero size")
                im.load()
                out = im.copy()
                out.format = im.format  # copy() drops it; load_mask needs to know a lossy (JPEG) mask
                return out
        except SimpleUNetError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise SimpleUNetError(f"{what} {name} is above the limit of {MAX_PIXELS:,} pixels (Pillow refused it "
                                  "as a possible decompression bomb); downscale it first") from None
        except Exception as exc:  # Pillow's decoders raise many types on hostile bytes; this is the boundary
            detail = re.sub(r"\s*<[^<>]*>", "", str(exc).splitlines()[0] if str(exc) else "") or "corrupt data"
            raise SimpleUNetError(f"{what} {name} is not a readable image ({type(exc).__name__}: {detail})") from None


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any integer/float array to uint8 (16-bit PNGs, float images)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        top = 65535 if arr.max(initial=0) > 255 else 255
        return (arr.astype(np.float64) * (255.0 / top)).clip(0, 255).round().astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return (arr * scale).clip(0, 255).round().astype(np.uint8)
    raise SimpleUNetError(f"unsupported image dtype {arr.dtype}; pass uint8, uint16 or float")


def as_rgb(arr: np.ndarray) -> np.ndarray:
    """Any HxW, HxWx1, HxWx3 or HxWx4 array -> HxWx3 uint8 (greyscale repeated, alpha dropped).

    Integer arrays whose maximum is above 255 are taken as 16-bit (scaled by 255/65535); floats with a maximum
    of at most 1 as [0, 1]; other floats as [0, 255].
    """
    try:
        arr = np.asarray(arr)
    except (ValueError, TypeError) as exc:
        raise SimpleUNetError(f"cannot use this object as an image array ({exc})") from None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise SimpleUNetError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise SimpleUNetError(f"image array has zero size: {arr.shape}")
    if arr.shape[0] * arr.shape[1] > MAX_PIXELS:
        raise SimpleUNetError(f"image is {arr.shape[1]}x{arr.shape[0]}, above the limit of {MAX_PIXELS:,} pixels")
    return np.ascontiguousarray(_to_uint8(arr[:, :, :3]))


def load_image(source: ImageInput) -> np.ndarray:
    """Decode a file path, encoded bytes or an array to an HxWx3 uint8 RGB array."""
    if isinstance(source, np.ndarray):
        return as_rgb(source)
    im = _open(source, "image")
    if im.mode.startswith("I;16"):  # 16-bit PNG/TIFF: full range is 0..65535 whatever the content
        return as_rgb((np.asarray(im).astype(np.float64) / 257.0).round().astype(np.uint8))
    if im.mode in ("I", "F"):
        return as_rgb(np.asarray(im))
    if im.mode != "RGB":
        im = im.convert("RGBA").convert("RGB") if im.mode in ("P", "PA", "LA") else im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def load_mask(source: ImageInput, threshold: int = 127) -> np.ndarray:
    """Decode a mask (PNG or JPEG, any mode, or an array) to an HxW bool array: foreground = grey value >
    ``threshold`` on the mask's own scale (16-bit masks too). A lossless mask whose values are all 0 or 1 is a
    label map (foreground = 1): read as grey levels it would be empty, and then score as a perfect prediction."""
    if isinstance(source, np.ndarray):
        raw, lossy = np.asarray(source), False
        if raw.ndim == 3:
            raw = raw[:, :, :3].max(axis=2)
        if raw.ndim != 2 or raw.size == 0:
            raise SimpleUNetError(f"mask array must be HxW or HxWxC with a size, got {raw.shape}")
    else:
        im = _open(source, "mask")
        lossy = im.format == "JPEG"
        if im.mode == "1":
            return np.asarray(im, dtype=bool)
        if im.mode in ("L", "I", "F") or im.mode.startswith("I;16"):
            raw = np.asarray(im)
        else:
            raw = np.asarray(im.convert("RGBA").convert("RGB") if im.mode in ("P", "PA", "LA") else
                             im.convert("RGB")).max(axis=2)
    if raw.dtype == bool:
        return raw.copy()
    top = raw.max()
    if np.issubdtype(raw.dtype, np.floating):
        return raw > (0.5 if top <= 1.0 else threshold)
    if top <= 1 and not lossy:
        return raw > 0
    return raw > (threshold * 257 + 128 if top > 255 else threshold)  # 16-bit full range: the same grey level


def resize_image(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear (antialiased) resize of an HxWx3 uint8 image to ``size`` (square int or (h, w))."""
    h, w = (size, size) if isinstance(size, int) else size
    if img.shape[:2] == (h, w):
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a bool mask (bilinear on 0/255, then threshold at half) so thin structures survive."""
    h, w = (size, size) if isinstance(size, int) else size
    im = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.BILINEAR)
    return np.asarray(im) >= 128


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NHWC (or HWC) -> float32 NCHW (or CHW): (x / 255 - mean) / std."""
    x = images.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def resize_probabilities(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a CxHxW float map to CxH'xW' (``size`` = (h, w))."""
    h, w = size
    if prob.shape[-2:] == (h, w):
        return prob
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(c, dtype=np.float32), mode="F")
                                .resize((w, h), Image.BILINEAR)) for c in prob])


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files in ``folder`` (sorted, by suffix)."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def umask() -> int:
    """The process umask (read by setting it back at once), so temp-file-and-rename outputs get normal modes."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def unwritable_parent(folder: Path) -> Path | None:
    """The nearest existing folder at or above ``folder`` if files cannot be created there, else None: lets a
    command refuse a bad output path before its work, without creating anything."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return None if folder.is_dir() and os.access(folder, os.W_OK) else folder


def save_png(path: str | os.PathLike, array: np.ndarray, compress_level: int = 6) -> Path:
    """Write an HxW or HxWx3 uint8 array as PNG atomically (temp file in the same folder, then rename).
    zlib level 6 suits masks (~1 ms each); photos (overlays) save 2x faster at level 1 for ~10 % more bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(f, format="PNG", compress_level=compress_level)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; a mask is as readable as any file the user writes
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


#: Overlay colours (RGB) for class ids 1, 2, ... (class 0 = background is left as is).
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 128, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]], np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a colour per class onto an HxWx3 uint8 image (0/255 masks count as class 1)."""
    ids = (mask > 0).astype(np.intp) if mask.max(initial=0) == 255 else mask.astype(np.intp)
    colours = np.concatenate([np.zeros((1, 3), np.uint8), PALETTE])[np.where(ids > 0, (ids - 1) % len(PALETTE) + 1, 0)]
    blend = image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha
    return np.where((ids > 0)[..., None], blend.round(), image).astype(np.uint8)
