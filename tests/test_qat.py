"""Quantization-aware fine-tuning: the int8 view mirrors the exported int8 file, and a --qat run starts from its
--init weights, keeps BatchNorm frozen, records where it started and resumes exactly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors.torch import load_file

from simpleunet.export.images import calibration_set, verification_set
from simpleunet.export.onnx_export import export_onnx
from simpleunet.export.quantize import quantize_onnx
from simpleunet.export.verify import agreement, foreground, onnx_probabilities
from simpleunet.train.checkpoint import load_model
from simpleunet.train.cli import train_main
from simpleunet.train.config import ModelConfig, TrainConfig
from simpleunet.train.loop import train
from simpleunet.train.qat import ActivationRange, FakeQuantSimpleUNet
from simpleunet.train.zoo import ZOO, readme_table, write_card
from simpleunet_runtime.image import normalize
from simpleunet_runtime.bundled import sha256


@pytest.fixture(scope="module")
def init_run(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("init") / "run"
    train(TrainConfig(dataset="tiny", imgsz=32, epochs=2, batch_size=4, val_fraction=0.25, threads=1,
                      model=ModelConfig(width=4)), tiny_data, out, progress=False)
    return out


def _distinct(values) -> list[float]:
    """The distinct values, sorted; two within float32 rounding of each other (torch's and onnxruntime's min/max
    reductions) count as one."""
    out: list[float] = []
    for v in sorted(values):
        if not out or v - out[-1] > 1e-4 * abs(v):
            out.append(v)
    return out


def test_the_int8_view_predicts_the_exported_int8_file(tmp_path):
    """Same calibration images, same ranges as onnxruntime's quantizer, and probabilities nearer the int8 file's
    than fp32's are: what the fine-tune trains through is the file the export writes."""
    model, meta = load_model(ZOO / "simpleunet16-kvasir")
    pre, size = meta["preprocess"], 128
    calib = normalize(calibration_set(None, size, 32).images, pre["mean"], pre["std"]).astype(np.float32)
    x = normalize(verification_set(None, size, 8).images, pre["mean"], pre["std"]).astype(np.float32)
    proto, _ = export_onnx(model, size, 1)
    onnx.save(proto, str(tmp_path / "fp32.onnx"))
    int8, _ = quantize_onnx(tmp_path / "fp32.onnx", calib, rewrites=False)
    onnx.save(int8, str(tmp_path / "int8.onnx"))
    view = FakeQuantSimpleUNet(model).eval()
    view.calibrate(torch.from_numpy(calib))

    file_scales = _distinct(float(numpy_helper.to_array(t)) for t in int8.graph.initializer
                            if t.data_type == onnx.TensorProto.FLOAT and not t.dims)
    view_scales = _distinct((float(r.high) - float(r.low)) / 255 for r in view.modules()
                            if isinstance(r, ActivationRange))
    assert len(view_scales) == len(file_scales) and np.allclose(view_scales, file_scales, rtol=1e-4, atol=0)

    got = onnx_probabilities(tmp_path / "int8.onnx", x)
    with torch.no_grad():
        fq = torch.sigmoid(view(torch.from_numpy(x))).numpy()
        fp = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    assert np.abs(fq - got).mean() < 0.6 * np.abs(fp - got).mean()
    t = pre["threshold"]
    assert agreement(foreground(fq, t), foreground(got, t)) > agreement(foreground(fp, t), foreground(got, t))


def _base(tiny_data: Path, out: Path, init: Path, epochs: int = 1) -> list[str]:
    return ["--data", str(tiny_data), "--dataset", "tiny", "--out", str(out), "--width", "4", "--imgsz", "32",
            "--epochs", str(epochs), "--batch-size", "4", "--val-fraction", "0.25", "--no-progress", "--threads", "1",
            "--init", str(init), "--qat"]


def test_a_qat_run_starts_from_its_init_and_keeps_batchnorm_frozen(tiny_data, init_run, tmp_path):
    out = tmp_path / "qat"
    assert train_main(_base(tiny_data, out, init_run)) == 0
    train_cfg = json.loads((out / "config.json").read_text())["train"]
    assert train_cfg["qat"] is True and train_cfg["init"] == str(init_run)
    assert train_cfg["init_sha256"] == sha256(init_run / "model.safetensors")
    started = json.loads((out / "metrics.json").read_text())["init"]
    assert started["epochs"] == 2 and len(started["history"]) == 2 and started["best"]["epoch"] >= 1
    before = load_file(str(init_run / "model.safetensors"))  # the init's best weights
    after = {k.removeprefix("model."): v for k, v in load_file(str(out / "last.safetensors")).items()
             if k.startswith("model.")}
    stats = [k for k in after if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(after[k], before[k]) for k in stats)  # folded as the export folds them
    convs = [k for k in after if k.endswith("weight") and after[k].ndim == 4]
    assert any(not torch.equal(after[k], before[k]) for k in convs)  # ...while the weights trained


def test_a_qat_run_resumes_to_the_same_weights(tiny_data, init_run, tmp_path):
    cfg = TrainConfig(dataset="tiny", imgsz=32, epochs=2, batch_size=4, val_fraction=0.25, threads=1,
                      model=ModelConfig(width=4), init=str(init_run), qat=True)
    train(cfg, tiny_data, tmp_path / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):  # dies in epoch 2 (3 batches per epoch)
        train(cfg, tiny_data, tmp_path / "crash", progress=False, stop_after_batches=4)
    train(cfg, tiny_data, tmp_path / "crash", resume=True, progress=False)
    a, b = (load_file(str(tmp_path / run / "last.safetensors")) for run in ("full", "crash"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "crash" / "metrics.json").read_text())["init"]["epochs"] == 2


@pytest.mark.parametrize("change, msg", [
    (lambda a: [x for x in a if x not in ("--init", "INIT")], "qat fine-tunes a trained model"),
    (lambda a: a + ["--family", "simpleesknet"], "supports the simpleunet family"),
    (lambda a: ["MISSING" if x == "INIT" else x for x in a], "no config.json in"),
    (lambda a: [("8" if x == "4" else x) for x in a], "has width 4 (this run: 8)"),
])
def test_qat_mistakes_are_one_line_errors(change, msg, tiny_data, init_run, tmp_path, capsys):
    out = tmp_path / "qat"
    argv = change(["INIT" if x == str(init_run) else x for x in _base(tiny_data, out, init_run)])
    argv = [str(init_run) if x == "INIT" else str(tmp_path / "missing") if x == "MISSING" else x for x in argv]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir())


def test_the_card_and_table_of_a_fine_tune_tell_the_whole_training(tmp_path):

    src = ZOO / "simpleunet16-kvasir"
    meta = json.loads((src / "config.json").read_text())
    metrics = json.loads((src / "metrics.json").read_text())
    meta["train"].update(init="runs/simpleunet16-kvasir", init_sha256="ab" * 32, qat=True, epochs=3)
    metrics["init"] = {"checkpoint": "runs/simpleunet16-kvasir", "epochs": len(metrics["history"]),
                       "best": metrics["best"], "history": metrics["history"]}
    metrics["history"] = metrics["history"][:3]
    write_card(tmp_path, "x", meta, metrics)
    card = (tmp_path / "MODEL_CARD.md").read_text()
    n = metrics["init"]["epochs"]
    assert "quantization-aware fine-tune" in card and "`runs/simpleunet16-kvasir`" in card
    assert "--recipe simpleunet16-kvasir --out runs/simpleunet16-kvasir`" in card  # how to train where it starts
    assert f"{n} epochs, best epoch" in card and "3 epochs planned, 3 trained" in card
    shipped = tmp_path / "zoo" / "x"
    shipped.mkdir(parents=True)
    (shipped / "config.json").write_text(json.dumps(meta))
    (shipped / "metrics.json").write_text(json.dumps(metrics))
    assert f"| {n} + 3 QAT |" in readme_table(tmp_path / "zoo")


def test_the_fp32_view_is_the_plain_graph_and_leaves_the_ranges_alone():
    """qat_agreement trains the fp32 view beside the int8 one: it must be the unrounded graph of the same weights
    and must not move the activation ranges the int8 view (and the exporter) use."""
    from simpleunet.train.model import build_model
    from simpleunet.train.qat import ActivationRange, FakeQuantSimpleUNet

    torch.manual_seed(0)
    model = build_model(ModelConfig(width=4)).eval()
    view = FakeQuantSimpleUNet(model).eval()
    x = torch.randn(4, 3, 32, 32)
    view.calibrate(x)
    ranges = [(r.low.clone(), r.high.clone()) for r in view.modules() if isinstance(r, ActivationRange)]
    with torch.no_grad():
        fp32 = view.fp32(3 * x)  # wider inputs than calibrated: a range that observed them would grow
        plain = model(3 * x)
    assert torch.allclose(fp32, plain, atol=1e-4)
    after = [(r.low, r.high) for r in view.modules() if isinstance(r, ActivationRange)]
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(ranges, after))
