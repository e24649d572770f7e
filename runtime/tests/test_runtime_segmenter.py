"""Segmenter on the committed tiny models: preprocessing equals the toolkit's, both backends agree with PyTorch,
metadata/overrides, batching, and the bad-model errors."""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
from conftest import FIXTURES, HAS_TFLITE, needs_tflite
from hypothesis import given, settings
from hypothesis import strategies as st

from simpleunet_runtime import Segmenter, SimpleUNetError
from simpleunet_runtime.metrics import dice
from simpleunet_runtime.sample import sample_pairs
from simpleunet_runtime.tflite_file import read_metadata

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_preprocess_matches_the_toolkits_pytorch_preprocessing(onnx_fp32, sample_images, reference):
    x = onnx_fp32.preprocess(sample_images)
    assert x.dtype == np.float32 and x.shape == reference["x"].shape == (16, 3, 32, 32)
    np.testing.assert_allclose(x, reference["x"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(onnx_fp32.preprocess(np.stack([sample_images[0]] * 2))[1], x[0])


def test_onnx_fp32_equals_pytorch(onnx_fp32, reference):
    prob = onnx_fp32.run(reference["x"])
    assert prob.shape == (16, 32, 32) and prob.dtype == np.float32
    np.testing.assert_allclose(prob, reference["prob"], atol=1e-4)


@pytest.mark.parametrize("name", ["tiny_int8.onnx", pytest.param("tiny_int8.tflite", marks=needs_tflite)])
def test_int8_masks_agree_with_pytorch_fp32(fixtures, reference, name):
    seg = Segmenter(fixtures / name)
    assert seg.metadata.precision == "int8"
    assert seg.backend == ("tflite" if name.endswith(".tflite") else "onnxruntime")
    prob = seg.run(reference["x"])
    assert prob.shape == (16, 32, 32)
    # a 1 K-parameter model at 32 px is the worst case for int8; SimpleUNet-16 is held to 0.98 in test_runtime_zoo
    assert dice(prob > 0.5, reference["prob"] > 0.5) >= 0.9
    assert np.abs(prob - reference["prob"]).mean() < 0.05


def test_predict_at_original_size_and_batch(onnx_fp32, sample_images):
    pairs = sample_pairs()
    mask = onnx_fp32.predict(pairs[0][0])  # a path
    assert mask.dtype == np.uint8 and mask.shape == sample_images[0].shape[:2]
    assert set(np.unique(mask)) <= {0, 255}
    proba = onnx_fp32.predict_proba(pairs[0][0])  # the same path: a file is decoded shrunk for a 32 px model
    assert proba.shape == mask.shape and proba.dtype == np.float32 and 0 <= proba.min() <= proba.max() <= 1
    np.testing.assert_array_equal(mask, np.where(proba > onnx_fp32.metadata.threshold, 255, 0))
    batch = onnx_fp32.predict_batch([sample_images[i] for i in range(5)] + [pairs[0][0].read_bytes()], batch_size=2)
    assert [m.shape for m in batch] == [im.shape[:2] for im in sample_images[:5]] + [mask.shape]
    np.testing.assert_array_equal(batch[-1], mask)


@needs_tflite
def test_fixed_batch_models_loop_over_the_batch(fixtures, reference):
    for name in ("tiny_int8.onnx", "tiny_int8.tflite"):
        seg = Segmenter(fixtures / name)
        one = np.concatenate([seg.run(reference["x"][i:i + 1]) for i in range(3)])
        np.testing.assert_array_equal(seg.run(reference["x"][:3]), one)


def test_metadata_view_and_overrides(fixtures):
    seg = Segmenter(fixtures / "tiny_fp32.onnx", threads=1, threshold=0.9)
    m = seg.metadata
    assert (m.family, m.width, m.imgsz, m.num_classes, m.input_layout) == ("simpleunet", 4, (32, 32), 1, "NCHW")
    assert m.threshold == 0.9 and m.mean == MEAN and seg.path.name == "tiny_fp32.onnx"
    assert "tiny_fp32.onnx" in repr(seg)
    other = Segmenter(fixtures / "tiny_fp32.onnx", imgsz=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert other.metadata.mean == (0.5, 0.5, 0.5) and other.metadata.family == "simpleunet"
    grey = other.preprocess([np.full((10, 20, 3), 255, np.uint8)])
    assert grey.shape == (1, 3, 32, 32) and np.allclose(grey, 2.0)  # (1 - 0.5) / 0.25
    with pytest.raises(SimpleUNetError, match="takes 32x32 input but imgsz is 64x64"):
        Segmenter(fixtures / "tiny_int8.onnx", imgsz=64)
    for bad in (2, float("nan"), True):
        with pytest.raises(SimpleUNetError, match="threshold"):
            Segmenter(fixtures / "tiny_fp32.onnx", threshold=bad)
    numpy_args = Segmenter(fixtures / "tiny_fp32.onnx", threshold=np.float32(0.25), threads=np.int64(1))
    assert numpy_args.metadata.threshold == 0.25 and type(numpy_args.metadata.threshold) is float


def test_class_ids_for_a_multiclass_model(fixtures, sample_images):
    seg = Segmenter(fixtures / "three_class.onnx")
    assert seg.metadata.num_classes == 3
    mask = seg.predict(sample_images[0])
    assert mask.shape == sample_images[0].shape[:2] and mask.max() <= 2
    fg = seg.predict_proba(sample_images[0])  # the threshold decides foreground, as in every score
    for t in (0.3, 0.6):
        at_t = Segmenter(fixtures / "three_class.onnx", threshold=t)
        np.testing.assert_array_equal(at_t.predict(sample_images[0]) > 0, fg > t)
    fg = seg.run(seg.preprocess(sample_images[:2]))
    assert fg.shape == (2, 32, 32) and (0 <= fg).all() and (fg <= 1).all()


@pytest.mark.parametrize("name", ["tiny_nometa.onnx", pytest.param("tiny_nometa_int8.tflite", marks=needs_tflite)])
def test_missing_metadata_needs_overrides(fixtures, onnx_fp32, name, sample_images):
    with pytest.raises(SimpleUNetError, match="no simpleunet metadata.*give mean=, std= \\(--mean, --std on the "
                       "command line\\)"):
        Segmenter(fixtures / name)
    seg = Segmenter(fixtures / name, mean=MEAN, std=STD)  # the file's fixed 32x32 input gives imgsz
    assert seg.metadata.imgsz == (32, 32) and seg.metadata.precision == "unknown"
    assert dice(seg.predict(sample_images[3]), onnx_fp32.predict(sample_images[3])) > 0.9


def test_bad_model_files(tmp_path, fixtures):
    cases = {"junk.onnx": b"definitely not protobuf" * 10, "empty.onnx": b"", "image.onnx": (fixtures.parent.parent /
             "simpleunet_runtime" / "sample" / "images").glob("*.jpg").__next__().read_bytes()}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SimpleUNetError, match="not a loadable ONNX model"):
            Segmenter(tmp_path / name)
    with pytest.raises(SimpleUNetError, match="not found"):
        Segmenter(tmp_path / "missing.onnx")
    with pytest.raises(SimpleUNetError, match="directory"):
        Segmenter(tmp_path)
    with pytest.raises(SimpleUNetError, match="unknown backend"):
        Segmenter(fixtures / "tiny_fp32.onnx", backend="tensorrt")
    with pytest.raises(SimpleUNetError, match="not a TFLite model"):
        Segmenter(fixtures / "tiny_fp32.onnx", backend="tflite")
    with pytest.raises(SimpleUNetError, match="is a TFLite model"):
        Segmenter(fixtures / "tiny_int8.tflite", backend="onnxruntime")
    with pytest.raises(SimpleUNetError, match="threads"):
        Segmenter(fixtures / "tiny_fp32.onnx", threads=-1)
    with pytest.raises(SimpleUNetError, match="mean"):
        Segmenter(fixtures / "tiny_fp32.onnx", mean=(1, 2))
    with pytest.raises(SimpleUNetError, match=r"^std must be 3 numbers > 0"):  # the argument, not "metadata"
        Segmenter(fixtures / "tiny_fp32.onnx", std=(0, 0, 0))
    with pytest.raises(SimpleUNetError, match="provider 'NoSuchExecutionProvider' is not available.*CPU"):
        Segmenter(fixtures / "tiny_fp32.onnx", providers=["NoSuchExecutionProvider"])


@needs_tflite
def test_truncated_tflite_file(tmp_path, fixtures):
    data = (fixtures / "tiny_int8.tflite").read_bytes()
    (tmp_path / "cut.tflite").write_bytes(data[: len(data) // 3])
    with pytest.raises(SimpleUNetError, match="cut.tflite"):
        Segmenter(tmp_path / "cut.tflite")


def test_tflite_without_a_tflite_runtime_says_which_extra(fixtures, monkeypatch):
    for mod in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import mod` fail
    with pytest.raises(SimpleUNetError, match=r'pip install "simpleunet-runtime\[tflite\]"'):
        Segmenter(fixtures / "tiny_int8.tflite")


def test_tflite_metadata_reader(fixtures):
    data = (fixtures / "tiny_int8.tflite").read_bytes()
    text = read_metadata(data, "simpleunet").decode()
    assert '"input_layout":"NHWC"' in text and '"precision":"int8"' in text
    assert read_metadata(data, "other") is None
    assert read_metadata((fixtures / "tiny_nometa_int8.tflite").read_bytes(), "simpleunet") is None
    with pytest.raises(SimpleUNetError, match="not a TFLite file"):
        read_metadata(b"\0" * 64, "simpleunet")


TFLITE = (FIXTURES / "tiny_int8.tflite").read_bytes()


@settings(max_examples=300, deadline=None)
@given(st.integers(8, len(TFLITE) - 1), st.binary(min_size=1, max_size=16), st.integers(0, len(TFLITE)))
def test_property_corrupt_tflite_metadata_only_raises_simpleuneterror(pos, junk, cut):
    data = (TFLITE[:pos] + junk + TFLITE[pos + len(junk):])[:max(cut, 8)]
    try:
        read_metadata(data, "simpleunet")
    except SimpleUNetError:
        pass


@needs_tflite
def test_malformed_metadata_is_one_clear_error(tmp_path, fixtures):
    """Rewrite the metadata JSON inside a copy of the TFLite file (same length) and open it."""
    data = (fixtures / "tiny_int8.tflite").read_bytes()
    good = read_metadata(data, "simpleunet")
    for bad in (good.replace(b'"imgsz":[32,32]', b'"imgsz":"32x32"'), b"{" + b" " * (len(good) - 1),
                good.replace(b'"schema_version":1', b'"schema_version":"1"')):
        bad = bad.ljust(len(good))
        (tmp_path / "bad.tflite").write_bytes(data.replace(good, bad[: len(good)]))
        with pytest.raises(SimpleUNetError, match="bad.tflite.*metadata"):
            Segmenter(tmp_path / "bad.tflite", backend="tflite")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.sampled_from([None, 1, 3, 4, 5]),
                          st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int64, np.bool_])),
                max_size=3))
def test_property_preprocess_only_raises_simpleuneterror(onnx_fp32, specs):
    rng = np.random.default_rng(len(specs))
    images = [(rng.random((h, w) if c is None else (h, w, c)) * 300).astype(dt) for h, w, c, dt in specs]
    try:
        x = onnx_fp32.preprocess(images)
    except SimpleUNetError:
        return
    assert x.shape == (len(images), 3, 32, 32) and np.isfinite(x).all()


def test_preprocess_and_run_reject_wrong_shapes(onnx_fp32):
    with pytest.raises(SimpleUNetError, match="wrap a single image"):
        onnx_fp32.preprocess(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SimpleUNetError, match="list of images"):
        onnx_fp32.preprocess(5)
    with pytest.raises(SimpleUNetError, match=r"\(N, 3, 32, 32\)"):
        onnx_fp32.run(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(SimpleUNetError, match="batch_size"):
        onnx_fp32.predict_batch([np.zeros((8, 8, 3), np.uint8)], batch_size=0)


def test_renamed_suffix_is_sniffed(tmp_path, fixtures):
    shutil.copy(fixtures / "tiny_int8.tflite", tmp_path / "model.bin")
    shutil.copy(fixtures / "tiny_fp32.onnx", tmp_path / "model.dat")
    assert Segmenter(tmp_path / "model.dat").backend == "onnxruntime"
    if HAS_TFLITE:
        assert Segmenter(tmp_path / "model.bin").backend == "tflite"


def test_flip_tta_averages_the_flipped_runs_and_is_refused_when_unknown(fixtures, sample_images):
    plain = Segmenter(fixtures / "tiny_fp32.onnx")
    tta = Segmenter(fixtures / "tiny_fp32.onnx", tta="flip")
    x = plain.preprocess(sample_images[:2])
    runs = [plain.run(x), plain.run(x[..., ::-1])[..., ::-1], plain.run(x[..., ::-1, :])[..., ::-1, :],
            plain.run(x[..., ::-1, ::-1])[..., ::-1, ::-1]]
    np.testing.assert_allclose(tta.run(x), np.mean(runs, axis=0), atol=1e-6)
    assert not np.allclose(tta.run(x), plain.run(x))  # the tiny model is not flip-symmetric
    assert tta.predict(sample_images[0]).shape == sample_images[0].shape[:2] and "tta='flip'" in repr(tta)
    with pytest.raises(SimpleUNetError, match="unknown tta 'rotate'"):
        Segmenter(fixtures / "tiny_fp32.onnx", tta="rotate")
