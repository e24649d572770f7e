"""Image and mask decoding (Pillow) and the numpy pre/post-processing shared by every backend and by training.

One code path: the toolkit's training cache, the exporter's calibration data and the runtime all call
``load_image`` + ``resize_image`` + ``normalize``, so a model sees the same pixels everywhere. The Segmenter reads
files through ``load_for_model``: the same decode, shrunk while it is read when the model needs far fewer pixels.

Files are decoded as a viewer shows them (EXIF orientation applied). Memory: whole-image work goes a band of rows
at a time (``BAND_PIXELS``), so decoding holds the decoded file (1-4 bytes a pixel) and the 3-byte RGB result but
no full-size temporary beside them, and running out of memory is that image's own ``SimpleUNetError``.
"""
from __future__ import annotations

import io
import math
import os
import re
import stat
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence, Union

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .errors import SimpleUNetError

#: Refuse images above this many pixels, from the header, before decoding. Sized for a 1 GB Raspberry Pi: at this
#: limit the heaviest path, ``simpleunet-infer --overlay`` (image, mask, overlay and the PNG encoder's copy of it),
#: peaks at 540 MB RSS with the runtime's own 83 MB, ``Segmenter.predict(path)`` at 280 MB (PNG; 190 MB JPEG)
#: (measured: README "Reliability: inputs"). 8K UHD (33 M), 36 MP photos and ISIC 2018's largest (30 M) fit.
MAX_PIXELS = 40_000_000
#: Whole-image work goes a band of about this many pixels at a time (16 MB of float32).
BAND_PIXELS = 1 << 22
#: ``load_for_model`` shrinks a file by an integer factor only while each side stays at least this many times the
#: model's: Pillow's advice for ``reducing_gap`` (3: "indistinguishable from fair resampling in most cases").
REDUCE_MARGIN = 3
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

ImageInput = Union[str, os.PathLike, bytes, np.ndarray]


def _rows(h: int, w: int, multiple: int = 1) -> Iterator[slice]:
    """Bands of rows of about ``BAND_PIXELS`` pixels, each a multiple of ``multiple`` rows (but the last)."""
    step = max(1, BAND_PIXELS // max(w, 1) // multiple) * multiple
    return (slice(top, min(top + step, h)) for top in range(0, h, step))


def too_large(label: str, doing: str = "decode") -> SimpleUNetError:
    """The error for a MemoryError on one image: that image's own, so a caller looping over images goes on."""
    return SimpleUNetError(f"{label} is too large to {doing} in the memory available; downscale it or free memory")


def _source(source: ImageInput, what: str) -> tuple[str, BinaryIO]:
    """(name for messages, open binary file). A path must be a regular file, opened without blocking: a FIFO or a
    device is refused instead of waiting forever for a writer."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>", io.BytesIO(bytes(source))
    if not isinstance(source, (str, os.PathLike)):
        raise SimpleUNetError(f"cannot read an {what} from a {type(source).__name__}; pass a path, bytes or "
                              "a numpy array")
    name = str(source)
    try:
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (OSError, ValueError) as exc:  # ValueError: embedded NUL in the path
        raise SimpleUNetError(f"cannot read {what} {name}: {getattr(exc, 'strerror', None) or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "it is a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe, socket or device)"
        raise SimpleUNetError(f"cannot read {what} {name}: {kind}")
    return name, os.fdopen(fd, "rb")


@contextmanager
def _decoding(source: ImageInput, what: str) -> Iterator[tuple[str, Image.Image]]:
    """Open ``source`` (header checked: size, pixel limit, one frame) inside the one error boundary: whatever
    Pillow raises on hostile bytes in the ``with`` body, or a MemoryError, becomes one line naming the file."""
    name, fp = _source(source, what)
    label = sized = f"{what} {name}"
    with fp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data" etc.: the image decodes or raises
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(fp) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise SimpleUNetError(f"{label} is {w}x{h} pixels, above the limit of {MAX_PIXELS:,}; "
                                          "downscale it first")
                if w == 0 or h == 0:
                    raise SimpleUNetError(f"{label} has zero size")
                sized = f"{label} ({w}x{h} pixels)"
                if getattr(im, "is_animated", False) and im.format != "MPO":  # MPO: frame 0 is the photo
                    raise SimpleUNetError(f"{label} is an animated or multi-page {im.format}; save the frame to "
                                          "segment as an image of its own")
                yield sized, im
        except SimpleUNetError:
            raise
        except MemoryError:
            raise too_large(sized) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise SimpleUNetError(f"{label} is above the limit of {MAX_PIXELS:,} pixels (Pillow refused it "
                                  "as a possible decompression bomb); downscale it first") from None
        except Exception as exc:  # Pillow's decoders raise many types on hostile bytes; this is the boundary
            detail = re.sub(r"\s*<[^<>]*>", "", str(exc).splitlines()[0] if str(exc) else "") or "corrupt data"
            raise SimpleUNetError(f"{label} is not a readable image ({type(exc).__name__}: {detail})") from None


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation, 2..8, or 1 (as stored) where there is none or it cannot be read, as viewers do."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except MemoryError:
        raise
    except Exception:  # an unreadable EXIF block must not refuse pixels that decode
        return 1
    return value if isinstance(value, int) and 2 <= value <= 8 else 1


def _loaded(im: Image.Image, fit: tuple[int, int] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode ``im`` the way a viewer shows it; returns it and the (h, w) it shows at. With ``fit`` (the model's
    (h, w)) a JPEG is decoded at 1/2, 1/4 or 1/8 scale (DCT scaling) while each side stays >= REDUCE_MARGIN x the
    model's."""
    turn = _orientation(im)
    w, h = im.size if turn < 5 else im.size[::-1]  # 5..8 swap the sides
    if fit is not None:
        fw, fh = (fit[1], fit[0]) if turn < 5 else fit  # the request is in stored orientation
        im.draft(im.mode, (REDUCE_MARGIN * fw, REDUCE_MARGIN * fh))  # a no-op but for JPEG
    im.load()
    if turn != 1:
        ImageOps.exif_transpose(im, in_place=True)
    return im, (h, w)


def _value_scale(lo: float, hi: float, floating: bool, label: str) -> float:
    """The factor that takes pixel values to 0..255 by the rules of ``as_rgb``; values those rules cannot place
    are refused rather than clipped (a clipped image segments as a plausible but wrong mask)."""
    if floating:
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise SimpleUNetError(f"{label} holds NaN or infinite values; pass finite pixel values")
        if lo < 0 or hi > 255:
            raise SimpleUNetError(f"{label} has float values {lo:g}..{hi:g}; float images must lie in [0, 1] or "
                                  "[0, 255]")
        return 255.0 if hi <= 1 else 1.0
    if lo < 0 or hi > 65535:
        raise SimpleUNetError(f"{label} has integer values {lo}..{hi}; integer images must lie in 0..255 (8 bits) "
                              "or 0..65535 (16 bits); rescale it")
    return 255.0 / 65535 if hi > 255 else 1.0


def _scaled(values: np.ndarray, scale: float) -> np.ndarray:
    """Values checked by ``_value_scale`` -> uint8, a band of rows at a time."""
    out = np.empty(values.shape, np.uint8)
    for rows in _rows(*values.shape[:2]):
        out[rows] = np.rint(values[rows].astype(np.float64) * scale)
    return out


def _to_uint8(arr: np.ndarray, label: str = "image array") -> np.ndarray:
    """Scale an integer/float/bool array to uint8 (16-bit PNGs, float images) by the rules of ``as_rgb``."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    floating = np.issubdtype(arr.dtype, np.floating)
    if not (floating or np.issubdtype(arr.dtype, np.integer)):
        raise SimpleUNetError(f"unsupported image dtype {arr.dtype}; pass uint8, uint16 or float")
    return _scaled(arr, _value_scale(arr.min(), arr.max(), floating, label))


def _file_scale(im: Image.Image, label: str) -> float | None:
    """For a 32-bit integer or float file, the value scale its whole range gets (a first pass, band by band)."""
    if im.mode not in ("I", "F"):
        return None
    w, h = im.size
    lo = hi = None
    for rows in _rows(h, w):
        band = np.asarray(im.crop((0, rows.start, w, rows.stop)))
        lo = band.min() if lo is None else np.minimum(lo, band.min())  # np.minimum keeps a NaN
        hi = band.max() if hi is None else np.maximum(hi, band.max())
    return _value_scale(lo.item(), hi.item(), im.mode == "F", label)


def _band_rgb(im: Image.Image, scale: float | None) -> np.ndarray:
    """A band of a decoded image -> HxWx3 uint8. 16-bit files use their full range 0..65535 whatever the content;
    32-bit integer and float files follow the array rules (``scale`` from ``_file_scale``)."""
    if im.mode == "RGB":
        return np.asarray(im)
    if im.mode.startswith("I;16"):
        grey = (np.asarray(im).astype(np.float64) / 257.0).round().astype(np.uint8)
    elif im.mode in ("I", "F"):
        grey = _scaled(np.asarray(im), scale)
    else:
        return np.asarray(im.convert("RGBA").convert("RGB") if im.mode in ("P", "PA", "LA") else im.convert("RGB"))
    return np.repeat(grey[:, :, None], 3, axis=2)


def _rgb_array(im: Image.Image, label: str, factor: int = 1) -> np.ndarray:
    """A loaded image -> HxWx3 uint8, a band of rows at a time, box-reduced by ``factor`` (bands of whole boxes,
    so it equals ``Image.reduce`` of the whole)."""
    w, h = im.size
    scale = _file_scale(im, label)
    out = np.empty((-(-h // factor), -(-w // factor), 3), np.uint8)
    for rows in _rows(h, w, factor):
        band = _band_rgb(im if rows.stop - rows.start == h else im.crop((0, rows.start, w, rows.stop)), scale)
        if factor > 1:
            band = np.asarray(Image.fromarray(band).reduce(factor))
        out[rows.start // factor:rows.start // factor + len(band)] = band
    return out


def _decode_rgb(source: ImageInput, fit: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """A file or bytes -> (HxWx3 uint8 as shown, its full (h, w)); with ``fit``, shrunk by the largest integer
    factor that keeps each side >= REDUCE_MARGIN x ``fit`` (JPEG while decoding, then a box reduce)."""
    with _decoding(source, "image") as (label, im):
        im, shown = _loaded(im, fit)
        factor = 1 if fit is None else max(1, min(im.size[1] // (REDUCE_MARGIN * fit[0]),
                                                  im.size[0] // (REDUCE_MARGIN * fit[1])))
        return _rgb_array(im, label, factor), shown


def as_rgb(arr: np.ndarray) -> np.ndarray:
    """Any HxW, HxWx1, HxWx3 or HxWx4 array -> HxWx3 uint8 (greyscale repeated, alpha dropped).

    uint8 is taken as is, bool as 0/255. Other integers must lie in 0..65535: with a maximum above 255 they are
    16-bit (scaled by 255/65535), else 8-bit. Floats must be finite and lie in [0, 1] (maximum at most 1) or
    [0, 255]. Anything else is refused, not clipped.
    """
    try:
        arr = np.asarray(arr)
    except (ValueError, TypeError) as exc:
        raise SimpleUNetError(f"cannot use this object as an image array ({exc})") from None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise SimpleUNetError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise SimpleUNetError(f"image array has zero size: {arr.shape}")
    if arr.shape[0] * arr.shape[1] > MAX_PIXELS:
        raise SimpleUNetError(f"image is {arr.shape[1]}x{arr.shape[0]}, above the limit of {MAX_PIXELS:,} pixels")
    if arr.ndim == 2:
        return np.repeat(_to_uint8(arr)[:, :, None], 3, axis=2)
    return np.ascontiguousarray(_to_uint8(arr[:, :, :3]))


def load_image(source: ImageInput) -> np.ndarray:
    """Decode a file path, encoded bytes or an array to an HxWx3 uint8 RGB array, as a viewer shows it."""
    if isinstance(source, np.ndarray):
        return as_rgb(source)
    return _decode_rgb(source)[0]


def load_for_model(source: ImageInput, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """What the Segmenter feeds a model of input ``size`` (h, w): the image as HxWx3 uint8 at ``size``, and the
    (h, w) its mask gets. A file is shrunk while it is decoded (see ``_decode_rgb``), so a big photo never exists
    at full size; an array is resized as given, exactly as training does. A MemoryError is this image's error."""
    try:
        if isinstance(source, np.ndarray):
            img = as_rgb(source)
            return resize_image(img, size), img.shape[:2]
        img, shown = _decode_rgb(source, fit=size)
        return resize_image(img, size), shown
    except MemoryError:
        raise too_large("image array" if isinstance(source, np.ndarray) else f"image {source}") from None


def load_mask(source: ImageInput, threshold: int = 127) -> np.ndarray:
    """Decode a mask (PNG or JPEG, any mode, or an array) to an HxW bool array: foreground = grey value >
    ``threshold`` on the mask's own scale (16-bit masks too). A lossless mask whose values are all 0 or 1 is a
    label map (foreground = 1): read as grey levels it would be empty, and then score as a perfect prediction.
    EXIF orientation is applied, as for images, so a mask stays on its image."""
    if isinstance(source, np.ndarray):
        raw, lossy = np.asarray(source), False
        if raw.ndim == 3:
            raw = raw[:, :, :3].max(axis=2)
        if raw.ndim != 2 or raw.size == 0:
            raise SimpleUNetError(f"mask array must be HxW or HxWxC with a size, got {raw.shape}")
    else:
        with _decoding(source, "mask") as (_, im):
            im, _ = _loaded(im)
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


def probability_bands(prob: np.ndarray, size: tuple[int, int]) -> Iterator[tuple[slice, np.ndarray]]:
    """The bilinear resize of a CxHxW float map to ``size`` = (h, w), as (rows, C x band x w) pieces of about
    ``BAND_PIXELS``, so a mask for a big image needs no full-size float map. A map of up to BAND_PIXELS is one piece,
    exactly the whole resize; Pillow takes a band's box in float32, so the bands of a bigger one may differ from
    the whole resize by about 1e-5."""
    h, w = size
    if prob.shape[-2:] == (h, w):
        yield slice(0, h), prob
        return
    ph, pw = prob.shape[-2:]
    planes = [Image.fromarray(np.ascontiguousarray(c, dtype=np.float32)) for c in prob]
    for rows in _rows(h, w):
        box = (0, rows.start * ph / h, pw, rows.stop * ph / h)
        yield rows, np.stack([np.asarray(p.resize((w, rows.stop - rows.start), Image.BILINEAR, box=box))
                              for p in planes])


def resize_probabilities(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a CxHxW float map to CxH'xW' (``size`` = (h, w))."""
    if prob.shape[-2:] == tuple(size):
        return prob
    out = np.empty((len(prob), *size), np.float32)
    for rows, band in probability_bands(prob, size):
        out[:, rows] = band
    return out


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


#: The temp files of ``save_png`` (``.<name>.png.<mkstemp's 8 characters>.tmp``), which a killed run leaves; the CLI
#: removes them when it writes that folder again.
TEMP_FILE = re.compile(r"\.(.+\.png)\.[a-z0-9_]{8}\.tmp")


def save_png(path: str | os.PathLike, array: np.ndarray, compress_level: int = 6) -> Path:
    """Write an HxW or HxWx3 uint8 array as PNG atomically (temp file in the same folder, then rename).
    zlib level 6 suits masks (~1 ms each); photos (overlays) save 2x faster at level 1 for ~10 % more bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(f, format="PNG",
                                                                              compress_level=compress_level)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; a mask is as readable as any file the user writes
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


#: Overlay colours (RGB) for class ids 1, 2, ... (class 0 = background is left as is).
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 128, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]], np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a colour per class onto an HxWx3 uint8 image (0/255 masks count as class 1), a band of rows at a time:
    the result is its only full-size array."""
    if mask.shape != image.shape[:2]:
        raise SimpleUNetError(f"mask {mask.shape} and image {image.shape[:2]} differ in size")
    binary = mask.max(initial=0) == 255
    colours = np.concatenate([np.zeros((1, 3), np.uint8), PALETTE]).astype(np.float32) * alpha
    out = image.copy()
    for rows in _rows(*mask.shape):
        ids = (mask[rows] > 0).astype(np.intp) if binary else mask[rows].astype(np.intp)
        fg = ids > 0
        blend = image[rows][fg].astype(np.float32) * (1 - alpha) + colours[(ids[fg] - 1) % len(PALETTE) + 1]
        out[rows][fg] = blend.round()
    return out
