"""Packing a training set for a GPU machine: lossless, so training on the pack decodes the originals' arrays."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from simpleunet.train import pack as packing
from simpleunet.train.data import discover, load_arrays, training_samples
from simpleunet_runtime.errors import SimpleUNetError


@pytest.fixture(scope="module")
def busi_like(busi, tmp_path_factory) -> Path:
    """8 real BUSI pairs (one with an empty mask) with splits/train.txt (6) + test.txt (2)."""
    root = tmp_path_factory.mktemp("src") / "busi"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ids = (busi / "splits" / "train.txt").read_text().split()
    ids = [i for i in ids if i.startswith("benign")][:7] + [next(i for i in ids if i.startswith("normal"))]
    for i in ids:
        shutil.copy(next((busi / "images").glob(f"{i}.*")), root / "images")
        shutil.copy(next((busi / "masks").glob(f"{i}.*")), root / "masks")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("\n".join(ids[2:]) + "\n")
    (root / "splits" / "test.txt").write_text("\n".join(ids[:2]) + "\n")
    return root


@pytest.mark.parametrize("fmt", ["webp", "png", "source"])
def test_training_on_the_pack_sees_the_originals_arrays(busi_like, tmp_path, fmt):
    out = tmp_path / "packed"
    manifest = packing.pack(busi_like, out, imgsz=64, fmt=fmt)
    source, used = training_samples(discover(busi_like), busi_like)
    packed, packed_used = training_samples(discover(out), out)
    assert used == packed_used == "train.txt" and manifest["images"] == 6
    assert [s.id for s in packed] == [s.id for s in source]  # split order kept: the carve-out picks the same images
    assert all(p.image.suffix == (s.image.suffix if fmt == "source" else f".{fmt}") for p, s in zip(packed, source))
    for a, b in zip(load_arrays(source, 64, cache=False), load_arrays(packed, 64, cache=False)):
        assert np.array_equal(a, b)
    assert json.loads((out / packing.MANIFEST).read_text())["bytes"] == manifest["bytes"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed"]  # no staging folder left


def test_a_pack_that_does_not_decode_back_is_not_written(busi_like, tmp_path, monkeypatch):
    real = packing.load_arrays

    def lossy(samples, imgsz, cache=True):
        images, masks = real(samples, imgsz, cache)
        if not cache:  # the check after writing: as if the format had lost a grey level
            images = images.copy()
            images[0, 0, 0, 0] ^= 1
        return images, masks

    monkeypatch.setattr(packing, "load_arrays", lossy)
    with pytest.raises(SimpleUNetError, match="do not decode to the originals"):
        packing.pack(busi_like, tmp_path / "packed", imgsz=64)
    assert list(tmp_path.iterdir()) == []


def test_pack_command_errors_are_one_line(busi_like, tmp_path, capsys):
    (tmp_path / "there").mkdir()
    for argv, message in ((["no-such-set", "--out", str(tmp_path / "a")], "dataset 'no-such-set' not found"),
                          ([str(busi_like), "--out", str(tmp_path / "there")], "already exists"),
                          ([str(busi_like), "--out", str(tmp_path / "b"), "--imgsz", "0"], "--imgsz must be")):
        assert packing.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert packing.main([str(busi_like), "--out", str(tmp_path / "c"), "--imgsz", "32"]) == 0
    assert "packed 6 training images" in capsys.readouterr().out


def test_a_run_on_a_pack_found_by_name_is_scored_on_the_originals(busi_like, tmp_path, monkeypatch, capsys):
    """The README's way: a pack named after its dataset, found through SIMPLEUNET_DATA, leaves no path in the run;
    eval elsewhere then finds the dataset by name (here: the originals, with their test split)."""
    from simpleunet.train.cli import eval_main, train_main

    packing.pack(busi_like, tmp_path / "packs" / "busi", imgsz=32)
    monkeypatch.setenv("SIMPLEUNET_DATA", str(tmp_path / "packs"))
    out = tmp_path / "run"
    assert train_main(["--dataset", "busi", "--out", str(out), "--width", "4", "--imgsz", "32", "--epochs", "1",
                       "--batch-size", "2", "--val-fraction", "0.34", "--no-progress", "--threads", "1"]) == 0
    train = json.loads((out / "config.json").read_text())["train"]
    assert train["data_root"] is None and train["split_used"] == "train.txt"
    monkeypatch.setenv("SIMPLEUNET_DATA", str(busi_like.parent))  # the machine with the originals
    assert eval_main([str(out), "--split", "test", "--json", str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["data"] == str(busi_like) and report["images"] == 2 and "held_out" not in report
    assert "warning" not in capsys.readouterr().err
