"""The runtime against the live toolkit (torch): its preprocessing equals training's, and the bundled int8 files
give the masks of the PyTorch checkpoint they were exported from. These live here, not in runtime/tests, because
the runtime's own suite must run on a Pi with numpy + onnxruntime only."""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from simpleunet.export.images import own_dataset
from simpleunet.train.checkpoint import load_model
from simpleunet.train.data import InMemorySegmentation, discover, select_split
from simpleunet.train.losses import foreground_probability
from simpleunet.train.zoo import ZOO
from simpleunet_runtime import Segmenter, bundled
from simpleunet_runtime.image import load_image, resize_image
from simpleunet_runtime.metrics import dice  # on (N, H, W) stacks: pooled over every pixel
from simpleunet_runtime.sample import sample_pairs
from simpleunet_runtime.regions import keep_large_regions

FIXTURES = Path(__file__).resolve().parents[1] / "runtime" / "tests" / "fixtures"
HAS_TFLITE = any(importlib.util.find_spec(m) is not None for m in ("ai_edge_litert", "tflite_runtime"))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the fixture models' normalization


def test_runtime_preprocess_matches_training():
    images = [load_image(p) for p, _ in sample_pairs()]
    resized = np.stack([resize_image(im, 32) for im in images])
    data = InMemorySegmentation(resized, np.zeros(resized.shape[:3], bool), MEAN, STD)
    want = data.normalize(data.to_tensors(np.arange(len(resized)))[0]).numpy()
    got = Segmenter(FIXTURES / "tiny_fp32.onnx").preprocess(images)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def _check_images(dataset: str, count: int = 16) -> list[np.ndarray]:
    """The bundled Kvasir-SEG sample for a Kvasir-SEG model, else ``count`` images of the model's own test split
    (a BUSI model's int8 ranges are calibrated on ultrasound, not on colonoscopy)."""
    if dataset == "kvasir-seg":
        return [load_image(p) for p, _ in sample_pairs()]
    root = own_dataset(dataset)
    if root is None:
        pytest.skip(f"dataset {dataset!r} not found (its images are what this model's int8 file is checked on)")
    samples = select_split(discover(root), root, "test")
    return [load_image(s.image) for s in samples[:: max(1, len(samples) // count)][:count]]


def _bundled_int8() -> list[tuple[str, str]]:
    """Every bundled int8 file; an unreadable or malformed index.json fails collection (never a quiet skip)."""
    return sorted({(e["name"], e["format"]) for e in bundled.index() if e.get("precision") == "int8"})


@pytest.mark.parametrize("name,fmt", _bundled_int8() or [pytest.param("none", "onnx", marks=pytest.mark.skip(
    reason=bundled.EMPTY))])
def test_bundled_int8_agrees_with_its_pytorch_checkpoint(name, fmt):
    """PyTorch fp32 (train/zoo/<name>, same weights sha256) vs the bundled int8 file: mask Dice >= 0.98."""
    if fmt == "tflite" and not HAS_TFLITE:
        pytest.skip("no TFLite runtime")
    folder = ZOO / name
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"no checkpoint {folder}")
    seg = Segmenter.pretrained(name, precision="int8", format=fmt)
    assert seg.metadata.weights_sha256 == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest(), \
        f"bundled {name} was exported from other weights than {folder}: make zoo-publish NAME={name}"
    model, meta = load_model(folder)
    x = seg.preprocess(_check_images(meta.get("dataset", "")))
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        ref = foreground_probability(logits)[:, 0].numpy()
    thr, rule = seg.metadata.threshold, seg.metadata.min_region
    got, want = seg.run(x) > thr, ref > thr  # the Segmenter applies the file's small-region rule; so must PyTorch
    want = keep_large_regions(want, rule)
    assert dice(got, want) >= 0.98, [round(dice(g, w), 3) for g, w in zip(got, want)]
