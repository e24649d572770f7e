"""The TensorFlow Lite Micro target: one real export (SimpleUNet-16 at 32 px), run in TFLite Micro itself."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from simpleunet.export import cli
from simpleunet.export.pipeline import export_model
from simpleunet.train.checkpoint import load_model, save_model

pytest.importorskip("tflite_micro")
from simpleunet.export import micro  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "simpleunet16-kvasir-early"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    ckpt = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_model(ckpt, *load_model(FIXTURE))
    out = tmp_path_factory.mktemp("micro")
    export_model(ckpt, imgsz=32, int8=True, formats="tflm", out=out, name="tiny", val_size=4, min_agreement=1e-9,
                 log=None)
    return out


def test_writes_the_int8_file_its_c_array_and_the_measured_arena(exported):
    names = sorted(p.name for p in exported.iterdir())
    assert names == ["manifest.json", "tiny-int8.tflite", "tiny_int8.cc", "tiny_int8.h"]
    rows = {r["file"]: r for r in json.loads((exported / "manifest.json").read_text())["files"]}
    record = rows["tiny_int8.h"]["micro"]
    data = (exported / "tiny-int8.tflite").read_bytes()
    assert record["flash_bytes"] == len(data) and record["model"] == "tiny-int8.tflite"
    arena = record["arena_bytes"]
    runtime = micro.require_tflm()
    assert micro._fits(runtime, data, arena) and not micro._fits(runtime, data, arena - micro.ARENA_STEP)
    assert "CONV_2D" in record["ops"] and any("Arena allocation total" in line for line in record["allocation_report"])
    header = (exported / "tiny_int8.h").read_text()
    assert f"#define TINY_INT8_ARENA_BYTES {arena} " in header and "#define TINY_INT8_INPUT_HEIGHT 32" in header
    assert f"#define TINY_INT8_INPUT_ZERO_POINT {record['input_zero_point']}" in header
    source = (exported / "tiny_int8.cc").read_text()
    array = bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", source))
    assert array == data and f"tiny_int8_model_len = {len(data)};" in source and "alignas(16)" in source


def test_tflite_micro_output_equals_litert_reference_kernels(exported):
    rows = {r["file"]: r for r in json.loads((exported / "manifest.json").read_text())["files"]}
    checks = rows["tiny_int8.h"]["checks"]
    assert checks["max_int8_steps_vs_litert_reference"] == 0 and 0 <= checks["dice_vs_gt"] <= 1
    data = (exported / "tiny-int8.tflite").read_bytes()
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    q, io = micro.run(data, rows["tiny_int8.h"]["micro"]["arena_bytes"], x)
    assert q.shape == (3, 32, 32, 1) and q.dtype == np.int8
    assert np.array_equal(q, micro.litert_int8(exported / "tiny-int8.tflite", x, io, reference=True))


def test_tflm_needs_int8_and_the_package(capsys, monkeypatch, tmp_path):
    assert cli.main(["--checkpoint", str(FIXTURE), "--formats", "tflm", "--out", str(tmp_path / "a")]) == 2
    assert "add --int8" in capsys.readouterr().err
    import sys

    monkeypatch.setitem(sys.modules, "tflite_micro.python.tflite_micro", None)
    assert cli.main(["--checkpoint", str(FIXTURE), "--formats", "tflm", "--int8", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install tflite-micro" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_shipped_weights_follow_the_asked_input_size():
    from simpleunet.export.pipeline import find_pretrained

    assert find_pretrained("simpleunet", 8, 1).name == "simpleunet8-kvasir"
    assert find_pretrained("simpleunet", 8, 1, imgsz=112).name == "simpleunet8-kvasir-112"  # the micro model
    assert find_pretrained("simpleunet", 8, 1, imgsz=128).name == "simpleunet8-kvasir-128"  # the command
    assert find_pretrained("simpleunet", 16, 1, imgsz=112).name == "simpleunet16-kvasir"  # none at 112: the 256 one


def test_the_header_says_when_the_runtime_would_drop_small_regions():
    """The C example thresholds only; a model with a small-region rule says so in its header."""
    from simpleunet_runtime.metadata import ModelMetadata

    meta = ModelMetadata(family="simpleunet", width=8, blocks=1, rate=0.5, imgsz=(96, 96), mean=(0.5,) * 3,
                         std=(0.25,) * 3)
    io = {"input_scale": 0.1, "input_zero_point": 0, "output_scale": 1 / 256, "output_zero_point": -128}
    plain = micro.c_files("m", b"\0" * 4, io, 1024, meta)[0]
    ruled = micro.c_files("m", b"\0" * 4, io, 1024, meta.replace(min_region=(0.003, 0.3)))[0]
    assert "min_region" not in plain
    assert "drops regions under 0.003 of the input or 0.3 of the largest (min_region); this C example does not" \
        in ruled
