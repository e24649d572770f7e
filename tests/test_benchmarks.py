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
from simpleunet_runtime.metadata import ModelMetadata
from simpleunet_runtime.segmenter import Segmenter

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
    onnx.helper.set_model_props(proto, meta.to_props())
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
    img = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    proba = runner.predict_proba(img)  # what the bench scores: same pixels and rule as the exported file
    assert proba.shape == (40, 50)
    np.testing.assert_allclose(proba, Segmenter(tiny["onnx"]).predict_proba(img), atol=1e-5)


def test_eager_job_refuses_other_weights_and_missing_checkpoint(tiny, tmp_path):
    other = tiny["meta"].replace(weights_sha256="0" * 64)
    assert "holds other weights" in eager.eager_job(other, tiny["onnx"]).skip
    lost = tiny["meta"].replace(extra={}, name="no-such-zoo-model")
    assert eager.eager_job(lost, tmp_path / "x.onnx").skip.startswith("skipped: no checkpoint")


def test_macs_from_metadata_matches_spec():
    meta = ModelMetadata(family="simpleunet", width=16, blocks=1, rate=0.5, imgsz=(256, 256), mean=MEAN, std=STD)
    assert round(eager.macs_from_metadata(meta) / 1e9, 2) == 0.21
    assert eager.macs_from_metadata(meta.replace(family="unknown")) is None


def test_the_runtime_finds_the_baseline_through_its_entry_point():
    assert bench._baseline() is eager.BASELINE  # pyproject.toml's simpleunet_runtime.baselines entry point


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


# -- the suite (benchmarks/run.py), with the exporter replaced by a plain torch.onnx export --------------------------
def _export_like(ckpt: Path, out: Path, name: str) -> Path:
    from simpleunet.train.checkpoint import load_model

    model, meta = load_model(ckpt)

    class Prob(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return torch.sigmoid(self.model(x))

    size = meta["preprocess"]["imgsz"]
    path = out / f"{name}-fp32.onnx"
    torch.onnx.export(Prob().eval(), torch.zeros(1, 3, size, size), str(path), input_names=["image"],
                      output_names=["prob"], opset_version=17, dynamo=False)
    cfg = ModelConfig.from_dict(meta["model"])
    md = ModelMetadata(family=cfg.family, width=cfg.width, blocks=cfg.blocks, rate=cfg.rate, imgsz=(size, size),
                       mean=MEAN, std=STD, parameters=1, name=name,
                       weights_sha256=hashlib.sha256((ckpt / WEIGHTS).read_bytes()).hexdigest())
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, md.to_props())
    onnx.save(proto, str(path))
    return path


def test_suite_writes_results(tmp_path, monkeypatch):
    from simpleunet.benchmarks import run as suite
    from simpleunet.benchmarks.models import Subject
    from simpleunet_runtime.sample import sample_pairs

    torch.manual_seed(0)
    cfg = ModelConfig(width=16)
    ckpt = tmp_path / "su16"
    save_model(ckpt, build_model(cfg).eval(), {"model": cfg.to_dict(), "dataset": "kvasir-seg",
                                               "preprocess": {"imgsz": SIZE, "mean": list(MEAN), "std": list(STD),
                                                              "channel_order": "RGB", "threshold": 0.5}})
    data = tmp_path / "datasets" / "kvasir-seg"
    (data / "splits").mkdir(parents=True)
    (data / "images").symlink_to(sample_pairs()[0][0].parent)
    (data / "masks").symlink_to(sample_pairs()[0][1].parent)
    (data / "splits" / "val_120.txt").write_text("\n".join(p.stem for p, _ in sample_pairs()[:4]))

    def fake_export(subject, work, **kw):
        if subject.name == "micro-test":  # a model whose export fails a check is reported, the suite goes on
            from simpleunet.export.errors import ExportError
            raise ExportError("micro-test-int8.onnx: int8 mask agrees with fp32 at Dice 0.97 < 0.98; likely cause: x")
        out = work / "exports" / subject.name
        out.mkdir(parents=True, exist_ok=True)
        subject.files = [_export_like(subject.checkpoint, out, subject.name)]
        return subject

    monkeypatch.setattr(suite, "zoo_subjects", lambda names: [Subject("su16-test", ckpt, "kvasir-seg"),
                                                              Subject("micro-test", ckpt, "kvasir-seg")])
    monkeypatch.setattr(suite, "export_subject", fake_export)
    out = tmp_path / "out"
    argv = ["--out", str(out), "--work", str(tmp_path / "work"), "--no-unet", "--threads", "1", "--runs", "3",
            "--warmup", "1", "--sizes", "", "--tune-rounds", "1", "--tune-runs", "2", "--data-root",
            str(tmp_path / "datasets")]
    assert suite.main(argv) == 0
    md = (out / "RESULTS.md").read_text()
    for part in ("# Benchmark results", "python -m simpleunet.benchmarks.run --out", "Peak per core",
                 "## Ratios measured in this run", "su16-test onnx fp32 (A) vs PyTorch eager fp32 (B)",
                 "## Kvasir-SEG val_120", "## Making the fastest SimpleUNet-16 path faster", "Where the time goes",
                 "No BUSI model in the zoo yet", "micro-test is not benchmarked: its export failed a check "
                 "(micro-test-int8.onnx: int8 mask agrees with fp32 at Dice 0.97 < 0.98)."):
        assert part in md, part
    result = json.loads((out / "results.json").read_text())
    rows = result["datasets"]["kvasir-seg"]["rows"]
    assert [r["format"] for r in rows] == ["pytorch", "onnx"] and all(r["status"] == "ok" for r in rows)
    assert rows[0]["images"] == 4 and abs(rows[0]["mDice"] - rows[1]["mDice"]) < 0.01
    assert result["tuning_raw"]["variants"] and result["tuning_raw"]["profile"]
    timed = result["interleaved"]["su16-test"]["1"]
    assert set(timed) == {"pytorch fp32", "onnx fp32"} and all(0 < best <= med for med, best in timed.values())
    assert "| su16-test onnx fp32 (A) vs PyTorch eager fp32 (B) | 1 | interleaved |" in md


def test_tuning_verdicts_and_interleaving():
    from simpleunet.benchmarks import tuning

    calls = []
    times = tuning.interleaved({"a (baseline)": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               rounds=2, runs=3, warmup=1)
    assert calls == ["a", "b"] + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    assert set(times) == {"a (baseline)", "b"} and all(0 <= best <= med for med, best in times.values())
    r = lambda v, best: tuning.Result("g, f", v, best, best, 10.0, 10.0)
    assert r("x (baseline)", 10).verdict == "baseline"
    assert r("x", 8).verdict.startswith("helps (1.25x")
    assert r("x", 10.4).verdict.startswith("no effect")
    assert r("x", 12).verdict.startswith("hurts (1.20x")


def test_graph_rewrites_keep_the_outputs(tmp_path):
    """The speed experiments' ONNX rewrites (split Concat+Conv, head as MatMul) must not change a single output."""
    import onnxruntime as ort

    from simpleunet.benchmarks import tuning

    torch.manual_seed(1)
    cfg = ModelConfig(width=16)
    ckpt = tmp_path / "ck"
    model = build_model(cfg).eval()
    for m in model.modules():  # non-trivial BN statistics, so folding mistakes would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    save_model(ckpt, model, {"model": cfg.to_dict(), "dataset": "kvasir-seg",
                             "preprocess": {"imgsz": SIZE, "mean": list(MEAN), "std": list(STD), "threshold": 0.5}})
    src = _export_like(ckpt, tmp_path, "su16")
    proto = onnx.load(str(src))
    assert tuning.split_concat_conv(proto) == 4 and tuning.head_as_matmul(proto) == 1
    assert not any(n.op_type == "Concat" for n in proto.graph.node)
    both = tuning.rewritten(src, (tuning.split_concat_conv, tuning.head_as_matmul))
    x = np.random.default_rng(0).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    np.testing.assert_allclose(run(both), run(src), atol=1e-5)


def test_the_eager_baseline_applies_the_files_small_region_rule(tiny):
    """Its masks are the exported file's: the same rule after the same threshold (else a baseline row's Dice
    differs from the fp32 file's for no reason of its own)."""
    x = np.random.default_rng(0).normal(size=(4, 3, SIZE, SIZE)).astype(np.float32)
    prob = eager.eager_job(tiny["meta"], tiny["onnx"]).open(1).run(x)
    t = float(np.median(prob))  # the untrained net says ~0.49 everywhere: half the pixels, in many regions
    rule = dict(threshold=t, min_region=(0.0, 1.0))  # keep each image's largest region only
    ruled = eager.eager_job(tiny["meta"].replace(**rule), tiny["onnx"]).open(1).run(x) > t
    assert (ruled != (prob > t)).any() and not (ruled & ~(prob > t)).any()
    onnx_ruled = Segmenter(tiny["onnx"], **rule).run(x) > t
    assert (onnx_ruled == ruled).mean() > 0.99  # float rounding may move a pixel at the threshold


def test_int8_acceptance_is_judged_on_served_masks():
    """One speck on an image whose truth is empty costs an int8 file a whole image of mDice on raw masks (1/N),
    which the small-region rule removes; a visible blob the int8 file loses still fails as served."""
    from simpleunet.benchmarks.int8_cpus import _versus, meets
    from simpleunet_runtime.regions import MinRegion, keep_large_regions as served

    rule = MinRegion(0.003, 0.3)
    truth = np.zeros((4, 64, 64), bool)
    truth[:3, 10:40, 10:40] = True  # three lesions, one empty (normal) image
    fp32 = truth.copy()
    int8 = fp32.copy()
    int8[3, 50, 50] = True  # a 1-px speck on the normal image
    raw, out = _versus(int8, fp32, truth), _versus(served(int8, rule), served(fp32, rule), truth)
    assert raw["delta"] == pytest.approx(-0.25) and not meets(raw)
    assert out["delta"] == 0 and out["agree_mean_visible"] == 1 and meets(out)
    int8[0] = False  # a lost lesion is visible either way
    out = _versus(served(int8, rule), served(fp32, rule), truth)
    assert out["agree_min_visible"] == 0 and not meets(out)


def test_carve_out_gap_scores_each_lesion_size_bin_apart():
    from simpleunet.benchmarks.carve_out_gap import AREA_LABELS, by_area

    shares = [0.0, 0.01, 0.02, 0.04, 0.3]
    masks = np.zeros((len(shares), 100, 100), np.uint8)
    for m, s in zip(masks, shares):
        m.flat[: int(s * m.size)] = 1
    assert AREA_LABELS == ("empty", "<3%", "3%-6%", "6%-12%", "12%-25%", ">=25%")
    assert by_area(np.array([1.0, 0.2, 0.4, 0.9, 0.7]), masks) == {
        "empty": (1, 1.0), "<3%": (2, pytest.approx(0.3)), "3%-6%": (1, 0.9), ">=25%": (1, 0.7)}
