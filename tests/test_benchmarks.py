"""The PyTorch eager baseline that simpleunet-bench adds when the toolkit is installed, and the suite's helpers."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from simpleunet.benchmarks import eager
from simpleunet.train.checkpoint import WEIGHTS, save_model
from simpleunet.train.config import ModelConfig
from simpleunet.train.flops import count_macs
from simpleunet.train.model import build_model
from simpleunet_runtime import bench
from simpleunet_runtime.metadata import METADATA_KEY, ModelMetadata

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A width-4 checkpoint and its fp32 ONNX export whose metadata names the checkpoint."""
    root = tmp_path_factory.mktemp("eager")
    torch.manual_seed(0)
    cfg = ModelConfig(width=4)
    model = build_model(cfg).eval()
    ckpt = root / "ckpt"
    save_model(ckpt, model, {"model": cfg.to_dict(), "dataset": "kvasir-seg",
                             "preprocess": {"imgsz": SIZE, "mean": list(MEAN), "std": list(STD),
                                            "channel_order": "RGB", "threshold": 0.5}})
    sha = hashlib.sha256((ckpt / WEIGHTS).read_bytes()).hexdigest()
    meta = ModelMetadata(family="simpleunet", width=4, blocks=1, rate=0.5, imgsz=(SIZE, SIZE), mean=MEAN, std=STD,
                         parameters=1156, weights_sha256=sha, name="tiny-eager",
                         extra={"checkpoint": str(ckpt)})

    class Prob(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return torch.sigmoid(self.model(x))

    path = root / "tiny.onnx"
    torch.onnx.export(Prob().eval(), torch.zeros(1, 3, SIZE, SIZE), str(path), input_names=["image"],
                      output_names=["prob"], opset_version=17, dynamo=False)
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {METADATA_KEY: meta.to_json()})
    onnx.save(proto, str(path))
    return {"ckpt": ckpt, "meta": meta, "onnx": path, "model": model}


def test_eager_job_found_through_metadata(tiny):
    job = eager.eager_job(tiny["meta"], tiny["onnx"])
    assert not job.skip and not job.error and job.format == "pytorch" and job.precision == "fp32"
    assert job.macs == count_macs(tiny["model"], SIZE) and job.key == tiny["meta"].weights_sha256
    runner = job.open(1)
    x = np.random.default_rng(0).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        want = torch.sigmoid(tiny["model"](torch.from_numpy(x)))[:, 0].numpy()
    np.testing.assert_allclose(runner.run(x), want, atol=1e-6)
    mask = runner.predict(np.zeros((40, 50, 3), np.uint8))
    assert mask.shape == (40, 50) and mask.dtype == np.uint8


def test_eager_job_refuses_other_weights_and_missing_checkpoint(tiny, tmp_path):
    other = tiny["meta"].replace(weights_sha256="0" * 64)
    assert "holds other weights" in eager.eager_job(other, tiny["onnx"]).skip
    lost = tiny["meta"].replace(extra={}, name="no-such-zoo-model")
    assert eager.eager_job(lost, tmp_path / "x.onnx").skip.startswith("skipped: no checkpoint")


def test_macs_from_metadata_matches_spec():
    meta = ModelMetadata(family="simpleunet", width=16, blocks=1, rate=0.5, imgsz=(256, 256), mean=MEAN, std=STD)
    assert round(eager.macs_from_metadata(meta) / 1e9, 2) == 0.21
    assert eager.macs_from_metadata(meta.replace(family="unknown")) is None


def test_bench_adds_the_eager_row_with_the_same_dice(tiny, tmp_path):
    out = tmp_path / "r.json"
    code = bench.main(["--models", str(tiny["onnx"]), "--threads", "1", "--runs", "3", "--warmup", "1",
                       "--no-peak", "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["format"] for r in rows] == ["pytorch", "onnx"]
    torch_row, onnx_row = rows
    assert torch_row["backend"] == "torch" and torch_row["status"] == "ok"
    assert abs(torch_row["mDice"] - onnx_row["mDice"]) < 0.01  # same weights, same pixels
    assert onnx_row["macs"] == torch_row["macs"] > 0 and onnx_row["gmacs_per_s"] > 0
