"""Image decoding and preprocessing: real bad inputs, and a property test where only SimpleUNetError may escape."""
from __future__ import annotations

import io
import os
import stat
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from simpleunet_runtime import SimpleUNetError
from simpleunet_runtime.image import MAX_PIXELS, as_rgb, list_images, load_image, load_mask, save_png


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def header_only_png(width: int, height: int) -> bytes:
    """A PNG that claims width x height (for the pixel limit: nothing is ever decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


RNG = np.random.default_rng(0)
RGB = Image.fromarray(RNG.integers(0, 256, (7, 5, 3), dtype=np.uint8))
MODES = {  # mode -> (image, container)
    "L": (RGB.convert("L"), "PNG"), "LA": (RGB.convert("LA"), "PNG"), "P": (RGB.convert("P"), "PNG"),
    "RGBA": (RGB.convert("RGBA"), "PNG"), "RGB": (RGB, "JPEG"), "1": (RGB.convert("1"), "PNG"),
    "CMYK": (RGB.convert("CMYK"), "TIFF"), "YCbCr": (RGB.convert("YCbCr"), "JPEG"),
    "I;16": (Image.fromarray(RNG.integers(0, 65536, (7, 5)).astype(np.uint16)), "PNG"),
    "I": (Image.fromarray(RNG.integers(0, 65536, (7, 5)).astype(np.int32)), "TIFF"),
    "F": (Image.fromarray(RNG.random((7, 5)).astype(np.float32)), "TIFF"),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_decodes_to_rgb_uint8(mode):
    im, fmt = MODES[mode]
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    out = load_image(buf.getvalue())
    assert out.shape == (7, 5, 3) and out.dtype == np.uint8


def test_16bit_png_scales_full_range_not_content():
    dark = np.full((4, 4), 255 * 257, np.uint16)  # 8-bit 255 stored as 16 bits
    dark[0, 0] = 0
    out = load_image(png_bytes(Image.fromarray(dark)))
    assert out[1, 1, 0] == 255 and out[0, 0, 0] == 0
    low = np.full((4, 4), 200, np.uint16)  # a dark 16-bit image stays dark
    assert load_image(png_bytes(Image.fromarray(low))).max() <= 1


def test_palette_with_transparency_and_greyscale(tmp_path):
    p = Image.new("P", (6, 4))
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.putpixel((1, 1), 1)
    out = load_image(png_bytes(p))
    assert tuple(out[1, 1]) == (255, 0, 0) and tuple(out[0, 0]) == (0, 0, 0)
    grey = load_image(png_bytes(Image.new("L", (3, 2), 77)))
    assert (grey == 77).all()
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0
    assert (load_image(png_bytes(Image.fromarray(rgba)))[..., 0] == 200).all()  # alpha dropped, colour kept


def test_truncated_and_non_image_files(tmp_path):
    jpg = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpg, "JPEG")
    for name, data in [("cut.jpg", jpg.getvalue()[:300]), ("cut.png", png_bytes(Image.new("RGB", (64, 64)))[:60]),
                       ("text.png", b"hello, not an image"), ("empty.jpg", b"")]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(SimpleUNetError, match=name):
            load_image(path)
    with pytest.raises(SimpleUNetError, match="cannot read"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(SimpleUNetError, match="cannot read"):
        load_image(tmp_path)  # a folder
    with pytest.raises(SimpleUNetError, match="pass a path"):
        load_image(3)  # an int would otherwise be opened as a file descriptor


def test_zero_size_and_enormous_images_are_refused():
    with pytest.raises(SimpleUNetError, match="zero size"):
        as_rgb(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(SimpleUNetError, match="zero size|not a readable"):
        load_image(header_only_png(0, 10))
    with pytest.raises(SimpleUNetError, match="above the limit"):
        load_image(header_only_png(20_000, 20_000))
    side = int(MAX_PIXELS ** 0.5) + 1
    with pytest.raises(SimpleUNetError, match="above the limit"):
        as_rgb(np.broadcast_to(np.uint8(0), (side, side, 3)))  # no memory is allocated for this view


def test_mixed_folder_lists_images_only(tmp_path):
    for name in ("a.jpg", "b.PNG", "c.txt", "d.tif"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "d.tif"]


def test_save_png_is_atomic_and_round_trips(tmp_path):
    mask = (np.arange(12).reshape(3, 4) % 2 * 255).astype(np.uint8)
    path = save_png(tmp_path / "out" / "m.png", mask)
    assert (load_mask(path) == (mask > 0)).all()
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.png"]  # no temp file left behind


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_save_png_gets_normal_permissions(tmp_path, umask):
    """The temp file of mkstemp is 0600; the mask must end up 0666 & ~umask like any file the user creates."""
    old = os.umask(umask)
    try:
        path = save_png(tmp_path / "m.png", np.zeros((2, 2), np.uint8))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_non_image_error_names_the_file_once_without_object_reprs(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    for source, name in ((tmp_path / "notes.txt", str(tmp_path / "notes.txt")), (b"junk bytes", "<bytes>")):
        with pytest.raises(SimpleUNetError) as exc:
            load_image(source)
        msg = str(exc.value)
        assert msg.count(name) == 1 and "_io." not in msg and " object at 0x" not in msg, msg


DTYPES = st.sampled_from([np.uint8, np.uint16, np.int8, np.int16, np.int32, np.int64, np.uint64, np.float16,
                          np.float32, np.float64, np.bool_, np.complex64, "U1", "M8[s]", object])


@st.composite
def arrays(draw):
    dtype = draw(DTYPES)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
    if dtype is object:
        return np.empty(shape, dtype=object)
    return draw(hnp.arrays(np.dtype(dtype), shape))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays())
def test_property_arrays_only_raise_simpleuneterror(arr):
    try:
        out = load_image(arr)
    except SimpleUNetError:
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.shape[:2] == arr.shape[:2]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_property_random_bytes_only_raise_simpleuneterror(data):
    try:
        out = load_image(data)
    except SimpleUNetError:
        return
    assert out.dtype == np.uint8 and out.ndim == 3


def encoded(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


_NOISE = Image.fromarray(np.random.default_rng(2).integers(0, 256, (6, 5, 3), dtype=np.uint8))
PREFIXES = [encoded(_NOISE, "PNG"), encoded(_NOISE.convert("I;16"), "PNG"), encoded(_NOISE.convert("P"), "PNG"),
            encoded(_NOISE, "JPEG"), encoded(_NOISE, "TIFF"), encoded(_NOISE, "BMP"), encoded(_NOISE, "GIF"),
            encoded(_NOISE, "WEBP"), encoded(_NOISE.convert("RGBA"), "TIFF")]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(PREFIXES), st.integers(0, 300), st.binary(max_size=64))
def test_property_corrupted_real_images_only_raise_simpleuneterror(data, cut, junk):
    corrupted = data[:cut] + junk + data[cut + len(junk):]
    try:
        load_image(corrupted)
    except SimpleUNetError:
        pass


def _encoded(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("label,encode", [
    ("0/255 PNG", lambda m: _encoded(m * 255, "PNG")),
    ("0/1 PNG label map", lambda m: _encoded(m, "PNG")),
    ("16-bit 0/255 PNG", lambda m: _encoded(m.astype(np.uint16) * 255, "PNG")),
    ("16-bit full-range PNG", lambda m: _encoded(m.astype(np.uint16) * 65535, "PNG")),  # numpy 2: no uint8 overflow
    ("1-bit PNG", lambda m: _encoded(m.astype(bool), "PNG")),
    ("0/255 JPEG", lambda m: _encoded(m * 255, "JPEG")),
    ("0/1 array", lambda m: m),
    ("bool array", lambda m: m.astype(bool)),
    ("float 0/1 array", lambda m: m.astype(np.float32)),
])
def test_masks_in_every_common_encoding_keep_their_foreground(label, encode):
    """A 0/1 or 16-bit mask read as 8-bit grey levels is empty, and an empty mask scores a perfect empty prediction."""
    m = np.zeros((16, 16), np.uint8)
    m[4:10, 3:12] = 1
    np.testing.assert_array_equal(load_mask(encode(m)), m.astype(bool), err_msg=label)


def test_a_lossy_jpeg_mask_stays_a_grey_level_mask():
    """JPEG noise in an empty 0/255 mask can reach 1: a JPEG is never taken as a 0/1 label map."""
    noise = np.zeros((16, 16), np.uint8)
    noise[0, 0] = 1
    assert not load_mask(_encoded(noise, "JPEG")).any()
