"""Reliability of what the runtime is given (issue 19, items 3, 5 and 8): model metadata checked like user
arguments, the memory an image may take, inputs that were accepted silently, and a seeded fuzz of image decoding.

Hostile inputs are made here (tmp_path, bytes) from the committed fixtures and the bundled sample; the ONNX
metadata is rewritten with a few lines of protobuf encoding (no onnx package: these tests run in the slim venv).
``SIMPLEUNET_FUZZ=N`` fuzzes N mutants per image format (default 150).
"""
from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES
from PIL import Image, ImageOps

from simpleunet_runtime import ModelMetadata, Segmenter, SimpleUNetError
from simpleunet_runtime import image as image_module
from simpleunet_runtime.image import PALETTE, load_for_model, load_image, load_mask, overlay, resize_probabilities
from simpleunet_runtime.metadata import METADATA_KEY
from simpleunet_runtime.sample import sample_pairs
from _protobuf import varint

LINUX = sys.platform.startswith("linux")
ONNX = (FIXTURES / "tiny_fp32.onnx").read_bytes()


# -- ONNX metadata, rewritten -------------------------------------------------------------------------------------


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        n |= (data[i] & 0x7F) << shift
        shift += 7
        i += 1
        if data[i - 1] < 0x80:
            return n, i


def _field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _top_fields(model: bytes):
    """(field number, payload or None, raw bytes) of each top-level field of an ONNX ModelProto."""
    i = 0
    while i < len(model):
        start = i
        tag, i = _read_varint(model, i)
        payload = None
        if tag & 7 == 0:
            _, i = _read_varint(model, i)
        elif tag & 7 == 2:
            n, i = _read_varint(model, i)
            payload, i = model[i:i + n], i + n
        else:
            i += 8 if tag & 7 == 1 else 4
        yield tag >> 3, payload, model[start:i]


def with_metadata(text: str | bytes) -> bytes:
    """tiny_fp32.onnx with its simpleunet metadata (ModelProto field 14) replaced by ``text``, any bytes at all."""
    key = _field(1, METADATA_KEY.encode())
    kept = b"".join(raw for number, payload, raw in _top_fields(ONNX) if not (number == 14 and payload.startswith(key)))
    return kept + _field(14, key + _field(2, text.encode() if isinstance(text, str) else text))


GOOD = json.loads(next(dict((k, v) for k, v, _ in _top_fields(p))[2] for n, p, _ in _top_fields(ONNX)
                       if n == 14 and p.startswith(_field(1, METADATA_KEY.encode()))))


def model_with(tmp_path: Path, **changes) -> Path:
    """A copy of the fixture whose metadata has ``changes`` (a value of ``...`` drops the field)."""
    meta = {k: v for k, v in {**GOOD, **changes}.items() if v is not ...}
    path = tmp_path / "hostile.onnx"
    path.write_bytes(with_metadata(json.dumps(meta)))  # allow_nan: NaN / Infinity as JSON's non-standard literals
    return path


def test_the_rewritten_fixture_is_the_fixture(tmp_path):
    assert Segmenter(model_with(tmp_path)).metadata == Segmenter(FIXTURES / "tiny_fp32.onnx").metadata


# -- item 5: metadata is checked like a user's arguments ---------------------------------------------------------
BAD_FIELDS = [  # (field, bad value): each was accepted, or failed later with a numpy / Python traceback
    ("threshold", "0.5"), ("threshold", None), ("threshold", 5), ("threshold", -1), ("threshold", float("nan")),
    ("std", [0.2, float("nan"), 0.2]), ("std", [1e-40, 1, 1]), ("mean", [float("inf"), 0, 0]),
    ("mean", ["0.5", 0.5, 0.5]), ("imgsz", "32x32"), ("imgsz", [32.5, 32]), ("num_classes", 0),
    ("num_classes", "3"), ("input_layout", "NCWH"), ("channel_order", "BGR"), ("output", None), ("aff", "yes"),
    ("width", -1), ("rate", float("inf")), ("name", 5), ("family", None), ("extra", [1]),
    ("extra", {"macs": float("inf")}), ("schema_version", "1"), ("min_region", [0.1]), ("min_region", [2, 0]),
    ("min_region", "0.003,0.3"), ("min_region", [0.001, float("nan")]),
]


@pytest.mark.parametrize("field, value", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_a_bad_metadata_value_is_one_line_naming_the_file_and_the_field(tmp_path, field, value):
    with pytest.raises(SimpleUNetError) as exc:
        Segmenter(model_with(tmp_path, **{field: value}))
    msg = str(exc.value)
    assert msg.startswith(f"hostile.onnx: metadata {field} must be ") and "\n" not in msg, msg


@pytest.mark.parametrize("field, value", [("threshold", v) for v in ("0.5", 5, -1, float("nan"))]
                         + [("mean", (float("inf"), 0, 0)), ("std", (float("nan"), 1, 1)), ("std", (1e-40, 1, 1)),
                            ("imgsz", 32.5), ("min_region", (0.5, -1)), ("min_region", (0.1, 0.2, 0.3))])
def test_a_user_and_a_file_meet_the_same_rule(tmp_path, field, value):
    """The same value is refused from the file and from the user, by the same rule in the same words."""
    with pytest.raises(SimpleUNetError) as user:
        Segmenter(FIXTURES / "tiny_fp32.onnx", **{field: value})
    with pytest.raises(SimpleUNetError) as file:
        Segmenter(model_with(tmp_path, **{field: list(value) if isinstance(value, tuple) else value}))
    assert str(user.value).startswith(f"{field} must be ")
    rule = str(user.value).split(", got ")[0]
    assert f"metadata {rule}" in str(file.value) and f"override it with {field}=" in str(file.value)


def test_a_user_override_rescues_a_file_with_a_broken_value(tmp_path, sample_images):
    seg = Segmenter(model_with(tmp_path, threshold=5, mean=[float("inf")] * 3), threshold=0.5, mean=(0.5, 0.5, 0.5))
    assert seg.metadata.threshold == 0.5 and seg.predict(sample_images[0]).shape == sample_images[0].shape[:2]


def test_missing_field_and_malformed_json(tmp_path):
    with pytest.raises(SimpleUNetError, match=r"^hostile.onnx: model metadata lacks mean$"):
        Segmenter(model_with(tmp_path, mean=...))
    (tmp_path / "cut.onnx").write_bytes(with_metadata(json.dumps(GOOD)[:-5]))
    with pytest.raises(SimpleUNetError, match=r"^cut.onnx: model metadata is not valid JSON"):
        Segmenter(tmp_path / "cut.onnx")


def test_deeply_nested_metadata_is_one_line(tmp_path):
    """json.loads raised RecursionError (a traceback) for nesting past the interpreter's recursion limit."""
    deep = json.dumps(GOOD)[:-1] + ',"extra":' + "[" * 5000 + "]" * 5000 + "}"
    (tmp_path / "deep.onnx").write_bytes(with_metadata(deep))
    with pytest.raises(SimpleUNetError, match=r"^deep.onnx: model metadata is nested too deeply"):
        Segmenter(tmp_path / "deep.onnx")
    with pytest.raises(SimpleUNetError, match=r"^hostile.onnx: metadata extra must be nested at most 8 levels"):
        Segmenter(model_with(tmp_path, extra={"a": json.loads("[" * 20 + "]" * 20)}))
    (tmp_path / "big.onnx").write_bytes(with_metadata(json.dumps({**GOOD, "name": "x" * 100_000})))
    with pytest.raises(SimpleUNetError, match=r"^big.onnx: model metadata is [\d,]+ characters long"):
        Segmenter(tmp_path / "big.onnx")


def test_non_utf8_metadata_is_one_line(tmp_path):
    """onnxruntime's custom_metadata_map raised UnicodeDecodeError."""
    (tmp_path / "latin1.onnx").write_bytes(with_metadata(json.dumps(GOOD).replace("tiny-fixture", "tiny\xe9").encode(
        "latin-1")))
    with pytest.raises(SimpleUNetError, match=r"^latin1.onnx: model metadata is not UTF-8 text"):
        Segmenter(tmp_path / "latin1.onnx")
    with pytest.raises(SimpleUNetError, match="not UTF-8"):
        ModelMetadata.from_json(json.dumps(GOOD).encode()[:-20] + b"\xff\xfe" + json.dumps(GOOD).encode()[-18:])


HOSTILE_TEXT = "evil\x1b[2J\x1b]0;owned\x07\n| col | \u202egnp.exe\u2028\t\x00" + "z" * 300


def test_printed_strings_are_sanitized_at_parse_time(tmp_path):
    """Control characters in a model's name reached the terminal and broke the bench's Markdown table."""
    seg = Segmenter(model_with(tmp_path, name=HOSTILE_TEXT, family=HOSTILE_TEXT, precision="int8\r\n|",
                               dataset=HOSTILE_TEXT, extra={HOSTILE_TEXT: [HOSTILE_TEXT]}))
    m = seg.metadata
    for text in (m.name, m.family, m.precision, m.dataset, *m.extra, *next(iter(m.extra.values()))):
        assert text.isprintable() and "|" not in text and len(text) <= 200, repr(text)
    assert repr(seg).isprintable() and "|" not in repr(seg)
    assert m.name.startswith("evil?[2J?]0;owned??/ col / ?gnp.exe") and m.name.endswith("...")
    assert ModelMetadata.from_json(m.to_json()) == m  # sanitizing is idempotent: files round-trip


def test_fallback_metadata_of_a_file_named_with_escapes_is_sanitized(tmp_path):
    path = tmp_path / "a\x1b[31m|b.onnx"
    path.write_bytes((FIXTURES / "tiny_nometa.onnx").read_bytes())
    assert Segmenter(path, mean=(0.5,) * 3, std=(0.25,) * 3).metadata.name == "a?[31m/b"


# -- item 3: memory -----------------------------------------------------------------------------------------------
def _child(headroom_mb: int, paths: list[Path]) -> list[str]:
    """Run predict(path) on each path in a fresh process whose address space is capped at what it uses now plus
    ``headroom_mb``; one output line per path: "mask HxW" or "error: ...". A MemoryError traceback fails here.
    Skips where the cap is not enforced: qemu-user accepts RLIMIT_AS from its guest and applies none (it would limit
    the emulator itself), so under the emulated Pi check (benchmarks/arm64) every decode fits."""
    code = f"""
import resource, sys
import numpy as np
from simpleunet_runtime import Segmenter, SimpleUNetError
seg = Segmenter({str(FIXTURES / "tiny_fp32.onnx")!r}, threads=1)
seg.predict({str(paths[0])!r}); seg.predict(np.zeros((40, 40, 3), np.uint8))  # warm: nothing left to import
vsz = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (vsz + {headroom_mb} * 2**20, resource.RLIM_INFINITY))
try:
    probe = bytearray(({headroom_mb} + 64) * 2**20)  # more than the cap allows: must fail where the cap holds
    print("cap not enforced")
    sys.exit(0)
except MemoryError:
    pass
for path in sys.argv[1:]:
    try:
        m = seg.predict(path)
        print("mask", "x".join(map(str, m.shape)))
    except SimpleUNetError as exc:
        print("error:", exc)
"""
    run = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and not run.stderr, run.stderr[-3000:]
    if run.stdout.startswith("cap not enforced"):
        pytest.skip("RLIMIT_AS is not enforced here (qemu-user emulation ignores it)")
    return run.stdout.splitlines()


@pytest.mark.skipif(not LINUX, reason="RLIMIT_AS and /proc are Linux's")
def test_a_big_image_costs_its_own_error_or_only_the_memory_of_its_mask(tmp_path):
    """Under 120 MB of headroom: a 36 M-pixel PNG must be decoded in full (144 MB), so it is that image's one-line
    error and the images after it still run; the same image as JPEG is decoded at 1/4 scale and its 36 MB mask
    made a band at a time, so it runs. Before: both were "not a readable image (MemoryError: corrupt data)"."""
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 48), (20, 200, 30)).save(small)
    big = Image.new("RGB", (6000, 6000), (150, 60, 90))
    big.save(tmp_path / "big.png", compress_level=1)
    big.save(tmp_path / "big.jpg", quality=80)
    lines = _child(120, [small, tmp_path / "big.png", small, tmp_path / "big.jpg", small])
    assert lines[0] == lines[2] == lines[4] == "mask 48x64", lines
    assert lines[1] == (f"error: image {tmp_path / 'big.png'} (6000x6000 pixels) is too large to decode in the "
                        "memory available; downscale it or free memory"), lines
    assert lines[3] == "mask 6000x6000", lines


def test_a_memory_error_while_decoding_is_that_images_error(monkeypatch, tmp_path):
    """Pillow's MemoryError was reported as "corrupt data"; a caller looping over images goes on after it."""
    from PIL import ImageFile

    good = sample_pairs()[0][0]
    real, fail = ImageFile.ImageFile.load, [False]

    def load(self):
        if fail[0]:
            raise MemoryError
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    seg = Segmenter(FIXTURES / "tiny_fp32.onnx")
    outcomes = []
    for fail[0] in (False, True, False):
        try:
            outcomes.append(seg.predict(good).shape)
        except SimpleUNetError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[2] and "too large to decode in the memory available" in outcomes[1], outcomes


def test_bands_give_the_same_masks_overlays_and_probabilities(monkeypatch):
    """The banded post-processing equals the whole-image arithmetic it replaced."""
    rng = np.random.default_rng(0)
    prob = rng.random((1, 32, 32)).astype(np.float32)
    whole = np.asarray(Image.fromarray(prob[0]).resize((200, 300), Image.BILINEAR))
    np.testing.assert_array_equal(resize_probabilities(prob, (300, 200))[0], whole)  # one band: exactly the whole
    monkeypatch.setattr(image_module, "BAND_PIXELS", 2000)  # 10 rows a band
    banded = resize_probabilities(prob, (300, 200))
    assert np.abs(banded[0] - whole).max() < 1e-4
    image = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    for mask in ((banded[0] > 0.5).astype(np.uint8) * 255, (banded[0] * 4).astype(np.uint8)):
        ids = (mask > 0).astype(np.intp) if mask.max() == 255 else mask.astype(np.intp)
        colours = np.concatenate([np.zeros((1, 3), np.uint8), PALETTE])[np.where(ids > 0, (ids - 1) % 6 + 1, 0)]
        blend = image.astype(np.float32) * 0.55 + colours.astype(np.float32) * 0.45
        np.testing.assert_array_equal(overlay(image, mask), np.where((ids > 0)[..., None], blend.round(), image))


def test_a_file_decoded_shrunk_gives_the_mask_of_the_full_decode(tmp_path):
    """load_for_model shrinks a file only while it stays >= 3x the model's size: the masks agree."""
    from simpleunet_runtime.metrics import dice

    seg = Segmenter(FIXTURES / "tiny_fp32.onnx")  # 32 px: a 700 px image is decoded at 1/4 (JPEG) or reduced
    image, _ = sample_pairs()[2]
    big = Image.open(image).convert("RGB").resize((700, 610), Image.BICUBIC)
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        big.save(buf, fmt)
        x, size = load_for_model(buf.getvalue(), (32, 32))
        assert size == (610, 700) and x.shape == (32, 32, 3)
        shrunk, full = seg.predict(buf.getvalue()), seg.predict(load_image(buf.getvalue()))
        assert shrunk.shape == full.shape == (610, 700) and dice(shrunk > 0, full > 0) > 0.95


# -- item 8: inputs that were accepted silently -------------------------------------------------------------------
@pytest.mark.parametrize("array, match", [
    (np.full((4, 4, 3), np.nan, np.float32), "NaN or infinite"),
    (np.array([[0.0, np.inf], [0.5, 0.2]]), "NaN or infinite"),
    (np.array([[-0.5, 0.5], [0.5, 0.2]]), r"float values -0.5..0.5; float images must lie in \[0, 1\] or \[0, 255\]"),
    (np.array([[0.0, 300.0], [1, 2]]), "float values 0..300"),
    (np.array([[-5, 100], [0, 1]], np.int16), r"integer values -5..100; integer images must lie in 0..255"),
    (np.array([[0, 70000], [0, 1]], np.int32), "integer values 0..70000"),
])
def test_arrays_a_rule_cannot_place_are_refused_not_clipped(array, match, onnx_fp32):
    """NaN became 0, inf 0, and out-of-range values were clipped: a plausible but wrong mask."""
    for call in (load_image, onnx_fp32.predict, lambda a: onnx_fp32.preprocess([a])):
        with pytest.raises(SimpleUNetError, match=match):
            call(array)


def test_documented_array_scales_still_hold():
    assert load_image(np.array([[0, 300]], np.int64))[0, 1, 0] == round(300 * 255 / 65535)  # 16-bit
    assert load_image(np.array([[0, 200]], np.int64))[0, 1, 0] == 200  # 8-bit
    assert load_image(np.array([[0.0, 1.0]]))[0, 1, 0] == 255 and load_image(np.array([[0.0, 2.0]]))[0, 1, 0] == 2


def _tiff(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "TIFF")
    return buf.getvalue()


def test_32_bit_integer_and_float_tiffs_by_the_array_rules():
    """A 32-bit TIFF with values past 65535 was clipped to white: an empty mask. Its scale is unknown: refused."""
    wide = np.linspace(0, 2**31 - 1, 64).reshape(8, 8).astype(np.int32)
    with pytest.raises(SimpleUNetError, match=r"^image <bytes> \(8x8 pixels\) has integer values 0..2147483647"):
        load_image(_tiff(wide))
    sixteen = (np.arange(64).reshape(8, 8) * 1000).astype(np.int32)  # 16-bit data in a 32-bit file
    np.testing.assert_array_equal(load_image(_tiff(sixteen))[..., 0], load_image(sixteen)[..., 0])
    nan = np.full((8, 8), np.nan, np.float32)
    with pytest.raises(SimpleUNetError, match="NaN or infinite"):
        load_image(_tiff(nan))


def _oriented_jpeg(orientation: int, size=(60, 40)) -> bytes:
    """A JPEG stored ``size`` (w, h) with a red left half and a blue bottom-right corner, and that EXIF tag."""
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[:, : size[0] // 2, 0] = 255
    a[size[1] // 2:, size[0] // 2:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_viewers_do(orientation, onnx_fp32):
    """The image and mask came out in stored orientation, not the one a viewer shows."""
    data = _oriented_jpeg(orientation)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(load_image(data), shown)
    assert onnx_fp32.predict(data).shape == shown.shape[:2] == load_mask(data).shape
    big = _oriented_jpeg(orientation, (400, 200))  # decoded shrunk for the 32 px model: same orientation
    assert onnx_fp32.predict(big).shape == (np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(big)))).shape[:2])


def test_corrupt_exif_does_not_refuse_an_image_that_decodes():
    data = bytearray(_oriented_jpeg(6))
    at = data.index(b"Exif\0\0") + 6
    data[at:at + 8] = b"\xff" * 8  # the TIFF header of the EXIF block
    assert load_image(bytes(data)).shape == (40, 60, 3)


def _frames(fmt: str, n: int, **kw) -> bytes:
    frames = [Image.new("RGB", (16, 12), (40 * i, 255 - 40 * i, 0)) for i in range(n)]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "TIFF", "WEBP"])
def test_animations_and_multi_page_files_are_refused(fmt, onnx_fp32):
    """An animated GIF was segmented from its first frame without a word."""
    with pytest.raises(SimpleUNetError, match=rf"is an animated or multi-page {fmt}; save the frame to segment"):
        onnx_fp32.predict(_frames(fmt, 3))
    assert onnx_fp32.predict(_frames(fmt, 1)).shape == (12, 16)


def test_mpo_takes_its_first_frame():
    """A camera's MPO (a JPEG with a preview frame) is its first frame, the photo."""
    first = load_image(_frames("MPO", 2))
    assert first.shape == (12, 16, 3) and first[..., 1].mean() > 200


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_or_a_device_is_refused_instead_of_blocking(tmp_path):
    """open() on a FIFO waits for a writer: the API blocked forever."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result = []
    worker = threading.Thread(target=lambda: result.append(_error_of(load_image, fifo)), daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the reader so the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert result and "not a regular file (a pipe, socket or device)" in result[0], result
    if os.path.exists("/dev/zero"):
        assert "not a regular file" in _error_of(load_image, "/dev/zero")
    assert "it is a folder" in _error_of(load_image, tmp_path)


def _error_of(call, *args) -> str:
    try:
        call(*args)
    except SimpleUNetError as exc:
        return str(exc)
    return "no error"


def test_predict_batch_checks_every_image_before_running_any(monkeypatch, sample_images):
    """A bad item raised after the good ones had run, and their masks were lost. Now nothing runs, and the
    error names the item."""
    seg = Segmenter(FIXTURES / "tiny_fp32.onnx")
    runs = []
    real = seg._backend.run
    monkeypatch.setattr(seg._backend, "run", lambda x: runs.append(len(x)) or real(x))
    with pytest.raises(SimpleUNetError, match=r"^images\[2\]: image <bytes> is not a readable image"):
        seg.predict_batch([sample_images[0], sample_images[1], b"not an image", sample_images[2]], batch_size=1)
    assert runs == []
    assert len(seg.predict_batch(sample_images[:3], batch_size=2)) == 3 and sum(runs) == 3


@pytest.mark.parametrize("single", ["photo.png", Path("photo.png"), b"\x89PNG", np.zeros((8, 8, 3), np.uint8)],
                         ids=["str", "Path", "bytes", "HxWx3 array"])
def test_predict_batch_refuses_a_single_image(single, onnx_fp32):
    """A str was iterated as one-character file names, an HxWx3 array as H greyscale rows."""
    with pytest.raises(SimpleUNetError, match="predict_batch takes a list of images.*wrap a single image in a list"):
        onnx_fp32.predict_batch(single)


# -- fuzz: mutated PNG and JPEG files through the API -------------------------------------------------------------
def _seeds() -> dict[str, list[bytes]]:
    """PNG and JPEG files of several kinds made from the bundled sample images."""
    images = [Image.open(p).convert("RGB") for p, _ in sample_pairs()[:6]]

    def encode(im, fmt, **kw):
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6
    grey16 = Image.fromarray(np.asarray(images[3].convert("L")).astype(np.uint16) * 257)
    return {"PNG": [encode(images[0], "PNG"), encode(images[1].convert("L"), "PNG"),
                    encode(images[2].convert("P"), "PNG"), encode(grey16, "PNG"),
                    encode(images[4].convert("RGBA"), "PNG", compress_level=1)],
            "JPEG": [encode(images[0], "JPEG"), encode(images[1], "JPEG", progressive=True),
                     encode(images[2].convert("L"), "JPEG"), encode(images[5], "JPEG", exif=exif.tobytes()),
                     encode(images[4], "JPEG", subsampling=0, quality=60)]}


def _png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each chunk after the signature."""
    out, i = [], 8
    while i + 8 <= len(data):
        n = struct.unpack(">I", data[i:i + 4])[0]
        out.append((i, min(i + 12 + n, len(data))))
        i += 12 + n
    return out


def _jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each marker segment up to and including SOS's entropy-coded data."""
    out, i = [], 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        n = struct.unpack(">H", data[i + 2:i + 4])[0]
        end = len(data) if data[i + 1] == 0xDA else min(i + 2 + n, len(data))
        out.append((i, end))
        if data[i + 1] == 0xDA:
            break
        i = end
    return out


def _mutate(data: bytes, fmt: str, rng: np.random.Generator) -> tuple[str, bytes]:
    """One seeded mutation: byte flips, truncation, inserted junk, or damage to one chunk / segment (for PNG with
    its CRC fixed, so the damage reaches the decoder instead of the checksum)."""
    kind = ["flip", "truncate", "insert", "chunk"][rng.integers(4)]
    b = bytearray(data)
    if kind == "flip":
        for at in rng.integers(0, len(b), rng.integers(1, 9)):
            b[at] = rng.integers(256)
    elif kind == "truncate":
        b = b[:rng.integers(0, len(b))]
    elif kind == "insert":
        at = rng.integers(0, len(b))
        b[at:at] = rng.integers(0, 256, rng.integers(1, 64)).astype(np.uint8).tobytes()
    else:
        parts = _png_chunks(data) if fmt == "PNG" else _jpeg_segments(data)
        start, end = parts[rng.integers(len(parts))]
        how = ["length", "kind", "body", "drop", "repeat"][rng.integers(5)]
        kind = f"chunk-{how}"
        if how == "length":  # PNG: 4-byte length; JPEG: the marker's 2-byte length
            at = start if fmt == "PNG" else start + 2
            b[at:at + (4 if fmt == "PNG" else 2)] = rng.integers(0, 256, 4 if fmt == "PNG" else 2).astype(
                np.uint8).tobytes()
        elif how == "kind":
            at = start + 4 if fmt == "PNG" else start + 1
            b[at] = rng.integers(256)
        elif how == "body":
            body = (start + 8, end - 4) if fmt == "PNG" else (start + 4, end)
            if body[1] > body[0]:
                for at in rng.integers(body[0], body[1], rng.integers(1, 5)):
                    b[at] = rng.integers(256)
                if fmt == "PNG":
                    b[end - 4:end] = struct.pack(">I", zlib.crc32(bytes(b[start + 4:end - 4])))
        elif how == "drop":
            del b[start:end]
        else:
            b[end:end] = b[start:end]
    return kind, bytes(b)


FUZZ = int(os.environ.get("SIMPLEUNET_FUZZ", "150"))


def _hung(*_) -> None:
    raise TimeoutError("a fuzz case ran past 20 s")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_fuzzed_images_give_a_mask_or_a_one_line_error(fmt, onnx_fp32):
    """Through the API: a mask or a one-line SimpleUNetError; no other exception, no hang (each case under a 20 s
    alarm). Counts print with ``pytest -s``."""
    seeds, rng = _seeds()[fmt], np.random.default_rng(19)
    counts: dict[str, int] = {}
    alarm = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if alarm:
        signal.signal(signal.SIGALRM, _hung)
    try:
        for case in range(FUZZ):
            kind, data = _mutate(seeds[case % len(seeds)], fmt, rng)
            if alarm:
                signal.alarm(20)
            try:
                mask = onnx_fp32.predict(data)
                assert mask.dtype == np.uint8 and mask.ndim == 2, (case, kind)
                outcome = "mask"
            except SimpleUNetError as exc:
                assert "\n" not in str(exc), (case, kind, str(exc))
                outcome = "error"
            except Exception as exc:  # the defect this test is for: report the case that found it
                raise AssertionError(f"case {case} ({kind}): {type(exc).__name__}: {exc}") from exc
            finally:
                if alarm:
                    signal.alarm(0)
            counts[outcome] = counts.get(outcome, 0) + 1
            counts[f"{kind}:{outcome}"] = counts.get(f"{kind}:{outcome}", 0) + 1
    finally:
        if alarm:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
    print(f"\nfuzz {fmt}: {FUZZ} mutants: {counts.get('mask', 0)} masks, {counts.get('error', 0)} SimpleUNetError, "
          f"0 other; {dict(sorted((k, v) for k, v in counts.items() if ':' in k))}")
    assert counts.get("mask", 0) + counts.get("error", 0) == FUZZ
