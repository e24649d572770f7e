"""The shipped zoo (train/zoo/<name>/): every checkpoint loads, and simpleunet-eval reproduces its published score."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from simpleunet.train.cli import eval_main
from simpleunet.train.checkpoint import load_model
from simpleunet.train.config import ModelConfig, TrainConfig
from simpleunet.train.model import count_parameters
from simpleunet.train.zoo import ZOO, readme_table, reproduce_command, write_card
from simpleunet_runtime.errors import SimpleUNetError

SHIPPED = sorted(p for p in ZOO.iterdir() if (p / "config.json").is_file()) if ZOO.is_dir() else []


def test_the_default_model_ships():
    assert "simpleunet16-kvasir" in {p.name for p in SHIPPED}


def test_readme_table_matches_the_shipped_metrics():
    """The README's results table is exactly what the shipped metrics.json files say (python -m simpleunet.train.zoo
    --table regenerates it)."""
    readme = (ZOO.parents[1] / "README.md").read_text()
    assert readme_table() in readme, "README results table is stale: paste `python -m simpleunet.train.zoo --table`"


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_checkpoint_is_complete(folder: Path):
    model, meta = load_model(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert count_parameters(model) == metrics["parameters"]
    card = (folder / "MODEL_CARD.md").read_text()
    assert f"{metrics['test']['mDice']:.4f}" in card and "not for diagnostic use" in card
    assert (folder / "curve.png").stat().st_size > 1000


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_eval_reproduces_the_published_score(folder: Path, tmp_path: Path, datasets: Path):
    """The zoo issue's acceptance: simpleunet-eval on a shipped checkpoint gives its table's number to ±0.002."""
    meta = json.loads((folder / "config.json").read_text())
    if not (datasets / meta["dataset"] / "images").is_dir():
        pytest.skip(f"dataset {meta['dataset']} not in {datasets}")
    out = tmp_path / "eval.json"
    assert eval_main([str(folder), "--split", "test", "--json", str(out)]) == 0
    measured = json.loads(out.read_text())
    published = json.loads((folder / "metrics.json").read_text())["test"]
    assert measured["mDice"] == pytest.approx(published["mDice"], abs=0.002)
    assert measured["mIoU"] == pytest.approx(published["mIoU"], abs=0.002)


def _train_config_of(argv: list[str], monkeypatch) -> dict:
    """The config simpleunet-train would train with for ``argv`` (training itself stubbed out)."""
    import simpleunet.train.cli as cli
    import simpleunet.train.loop as loop
    seen = {}

    def fake_train(cfg, *args, **kwargs):
        seen["cfg"] = cfg
        return {"best": {"val_mDice": 0.0, "epoch": 0, "threshold": 0.5}}

    monkeypatch.setattr(cli, "dataset_root", lambda *a: Path("."))
    monkeypatch.setattr(loop, "train", fake_train)
    assert cli.train_main(argv) == 0
    return seen["cfg"].to_dict()


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_reproduce_command_of_a_shipped_recipe_run(folder: Path):
    meta = json.loads((folder / "config.json").read_text())
    recipe = folder.name + ("-qat" if meta["train"].get("qat") else "")  # a fine-tune has a recipe and run of its own
    want = f"simpleunet-train --recipe {recipe} --out runs/{recipe}"
    assert reproduce_command(folder.name, meta["train"]) == want  # threads=1 of the shipped runs is not a setting
    assert reproduce_command(folder.name, {**meta["train"], "split_used": "train_880.txt"}) == want  # a record


@pytest.mark.parametrize("run", [
    TrainConfig(dataset="busi", epochs=50, weight_decay=0.05, eta_min=0.0, patience=20, augment="light",
                model=ModelConfig(family="simpleesknet", width=12, blocks=2, aff=False, rate=0.25)),
    TrainConfig(dataset="busi", epochs=7, lr=1e-4, init="runs/mine", qat=True, model=ModelConfig(width=12)),
], ids=["esknet", "qat-fine-tune"])
def test_reproduce_command_recreates_a_run_that_is_no_recipe(run, monkeypatch):
    """It used to print only epochs/batch/lr/imgsz/seed/val/augment: a SimpleESKNet BUSI run read as SimpleUNet-16 on
    Kvasir-SEG."""
    run = run.to_dict()
    cmd = reproduce_command("my-run", run)
    assert "#" not in cmd
    got = _train_config_of(shlex.split(cmd)[1:], monkeypatch)
    assert got == run


def test_card_takes_loss_augmentation_and_hardware_from_the_run(tmp_path: Path):
    folder = ZOO / "simpleunet16-kvasir"
    meta = json.loads((folder / "config.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    meta["train"]["augment"] = "light"
    meta["model"]["num_classes"] = meta["train"]["model"]["num_classes"] = 2
    for row in metrics["history"]:  # a run from before the history recorded its hardware
        row.pop("trained_on", None)
    write_card(tmp_path, "x", meta, metrics)
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert f"3x3 convolutions with dilation {meta['model']['dilation']}, 2 output channel(s)" in card
    assert "CE + Dice" in card and "BCE" not in card and "(flips, 90° turns)" in card and "affine" not in card
    assert "Trained on: not recorded" in card and "publishing machine" in card
    for row in metrics["history"]:
        row["trained_on"] = "NVIDIA H100, torch CUDA"
    meta["train"]["amp"] = False
    write_card(tmp_path, "x", meta, metrics)
    assert "Trained on: NVIDIA H100, torch CUDA." in (tmp_path / "MODEL_CARD.md").read_text()
    # a CPU run resumed on a GPU (with mixed precision there) says how many epochs ran where
    metrics["history"][0]["trained_on"] = "Xeon, torch CPU"
    del metrics["history"][1]["trained_on"]
    meta["train"]["amp"] = True
    write_card(tmp_path, "x", meta, metrics)
    n = len(metrics["history"])
    assert (f"Trained on: Xeon, torch CPU (1 epoch); not recorded (1 epoch); NVIDIA H100, torch CUDA ({n - 2} epochs), "
            "CUDA epochs in fp16 mixed precision.") in (tmp_path / "MODEL_CARD.md").read_text()


def test_publish_refuses_exports_made_otherwise_than_the_bundled_files(tmp_path):
    """A card scores the exports it is given; the bundled file is re-exported with EXPORT_OPTIONS, so scored exports
    made with another int8 grid would describe another file: one line, before any scoring."""
    from simpleunet.train.zoo import EXPORT_OPTIONS, _check_export_options

    (tmp_path / "manifest.json").write_text(json.dumps({"int8_weights": "int7"}))  # an export of before auto
    with pytest.raises(SimpleUNetError, match=r"exported with --int8-weights int7.*re-export with --int8-weights "
                                              + EXPORT_OPTIONS["int8_weights"]):
        _check_export_options(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"int8_weights": "pair-safe",
                                                        "int8_weights_requested": EXPORT_OPTIONS["int8_weights"]}))
    _check_export_options(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"int8_weights": None}))  # fp32 only
    _check_export_options(tmp_path)
