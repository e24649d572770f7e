"""Bundled models: index handling, sha256 check, listing; and the acceptance parity of the shipped int8 files
with the PyTorch fp32 model (reference masks made by tests/make_runtime_fixtures.py --zoo (toolkit))."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from conftest import FIXTURES, HAS_TFLITE

from simpleunet_runtime import Segmenter, SimpleUNetError, bundled
from simpleunet_runtime.metrics import dice
from simpleunet_runtime.sample import sample_pairs


def make_zoo(folder, fixtures, tamper=False):
    entries = []
    for name, fmt, prec in (("tiny.onnx", "onnx", "int8"), ("tiny.tflite", "tflite", "int8"),
                            ("tiny32.onnx", "onnx", "fp32")):
        src = {"tiny.onnx": "tiny_int8.onnx", "tiny.tflite": "tiny_int8.tflite", "tiny32.onnx": "tiny_fp32.onnx"}
        shutil.copy(fixtures / src[name], folder / name)
        data = (folder / name).read_bytes()
        entries.append({"name": "tiny-kvasir", "format": fmt, "precision": prec, "file": name,
                        "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "parameters": 1234,
                        "dataset": "kvasir-seg", "metrics": {"export_checks": {"dice_vs_gt": 0.9}, "test_mDice": 0.5}})
    (folder / "index.json").write_text(json.dumps(entries))
    if tamper:
        with open(folder / "tiny.onnx", "ab") as f:
            f.write(b"\0")
    return entries


def test_pretrained_by_name_checks_sha(tmp_path, fixtures, monkeypatch):
    make_zoo(tmp_path, fixtures)
    monkeypatch.setenv("SIMPLEUNET_MODELS_DIR", str(tmp_path))
    seg = Segmenter.pretrained("tiny-kvasir")
    assert seg.path == tmp_path / "tiny.onnx" and seg.metadata.precision == "int8"
    assert Segmenter.pretrained("tiny-kvasir", precision="fp32").path.name == "tiny32.onnx"
    if HAS_TFLITE:
        assert Segmenter.pretrained("tiny-kvasir", format="tflite", threads=1).backend == "tflite"
    with pytest.raises(SimpleUNetError, match="unknown model 'nope'; bundled models: tiny-kvasir"):
        Segmenter.pretrained("nope")
    with pytest.raises(SimpleUNetError, match="no fp32/tflite file; it has fp32/onnx, int8/onnx, int8/tflite"):
        Segmenter.pretrained("tiny-kvasir", precision="fp32", format="tflite")
    with pytest.raises(SimpleUNetError, match="unknown precision"):
        Segmenter.pretrained("tiny-kvasir", precision="int4")
    with open(tmp_path / "tiny.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(SimpleUNetError, match="tiny.onnx is corrupt: sha256"):
        Segmenter.pretrained("tiny-kvasir")
    (tmp_path / "tiny32.onnx").unlink()
    with pytest.raises(SimpleUNetError, match="missing"):
        Segmenter.pretrained("tiny-kvasir", precision="fp32")


def test_empty_or_broken_index(tmp_path, monkeypatch, capsys):
    for folder, state in ((tmp_path / "missing", "does not exist"), (tmp_path, "has no index.json")):
        monkeypatch.setenv("SIMPLEUNET_MODELS_DIR", str(folder))
        assert bundled.index() == []
        with pytest.raises(SimpleUNetError) as exc:
            Segmenter.pretrained("simpleunet16-kvasir")
        msg = str(exc.value)  # names the variable and its folder, and what fills it
        assert f"SIMPLEUNET_MODELS_DIR={folder} {state}" in msg and "simpleunet-publish --dest" in msg
        assert "simpleunet-export" not in msg
        missing = state == "does not exist"  # a mistyped variable is an error; an empty folder is just empty
        assert bundled.list_main([]) == (2 if missing else 0)
        out = capsys.readouterr()
        assert f"SIMPLEUNET_MODELS_DIR={folder}" in (out.err if missing else out.out)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(SimpleUNetError, match="unreadable"):
        bundled.index()
    assert bundled.list_main([]) == 2
    assert capsys.readouterr().err.startswith("error: bundled model index")
    (tmp_path / "index.json").write_text('[{"file": "x"}]')
    with pytest.raises(SimpleUNetError, match="malformed"):
        bundled.index()


def test_list_main_prints_a_table(tmp_path, fixtures, monkeypatch, capsys):
    make_zoo(tmp_path, fixtures)
    monkeypatch.setenv("SIMPLEUNET_MODELS_DIR", str(tmp_path))
    assert bundled.list_main([]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "format", "precision", "size", "params", "dataset", "test", "mDice"]
    assert len([line for line in out if line.startswith("tiny-kvasir")]) == 3 and "0.5000" in out[1]
    size = (fixtures / "tiny_fp32.onnx").stat().st_size  # decimal KB, as the docs quote sizes
    assert any(f" {size / 1000:.1f} KB " in line for line in out) and f"{size / 1024:.1f} KB" != f"{size / 1000:.1f} KB"
    assert bundled.list_main(["--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_installed_index_is_consistent():
    """Every entry of the shipped index points at a file whose sha256 and size match (checked by loading)."""
    entries = bundled.index()
    if not entries:
        pytest.skip(bundled.EMPTY)
    for e in entries:
        if e.get("format") == "tflite" and not HAS_TFLITE:
            continue
        path = bundled.resolve(e["name"], e.get("precision", "fp32"), e.get("format", "onnx"))
        assert path.stat().st_size == e["bytes"]
        seg = Segmenter(path)
        assert seg.metadata.precision == e["precision"]


ZOO_REFERENCES = sorted(FIXTURES.glob("reference_*.npz"))


@pytest.mark.parametrize("ref", ZOO_REFERENCES, ids=[p.stem[len("reference_"):] for p in ZOO_REFERENCES])
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_bundled_int8_masks_agree_with_pytorch_fp32(ref, fmt):
    """Acceptance: the shipped int8 ONNX and TFLite files give the PyTorch fp32 masks (Dice >= 0.98)."""
    name = ref.stem[len("reference_"):]
    if fmt == "tflite" and not HAS_TFLITE:
        pytest.skip("no TFLite runtime")
    seg = Segmenter.pretrained(name, precision="int8", format=fmt)  # a missing or corrupt bundled file fails here
    with np.load(ref, allow_pickle=False) as z:
        want, sha = np.unpackbits(z["masks"], axis=-1)[..., : int(z["imgsz"])].astype(bool), str(z["weights_sha256"])
    assert seg.metadata.weights_sha256 == sha, (f"{ref.name} was made from other weights than the bundled {name}: "
                                                f"rerun tests/make_runtime_fixtures.py --zoo train/zoo/{name}")
    from simpleunet_runtime.image import load_image

    prob = seg.run(seg.preprocess([load_image(p) for p, _ in sample_pairs()]))
    got = prob > seg.metadata.threshold
    assert dice(got, want) >= 0.98, [round(dice(g, w), 3) for g, w in zip(got, want)]  # pooled over the sample
