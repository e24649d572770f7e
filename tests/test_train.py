"""Training: a killed run resumes to the same weights, torchrun/DDP runs, checkpoints and errors behave."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import simpleunet.train.checkpoint as checkpoint
from simpleunet.train.checkpoint import CheckpointError, load_model, save_model
from simpleunet.train.cli import eval_main, train_main
from simpleunet.train.config import ModelConfig, TrainConfig
from simpleunet.train.loop import train
from simpleunet.train.model import build_model

NOT_HELD_OUT = ("warning: 16 of these 16 images are in the run's training pool (all images (no splits/)): this is not "
                "a held-out score\n")
TINY = dict(dataset="tiny", imgsz=32, epochs=3, batch_size=4, val_fraction=0.25, augment="strong", threads=1,
            model=ModelConfig(width=4))


def test_resume_after_crash_matches_uninterrupted(tiny_data, tmp_path):
    cfg = TrainConfig(**TINY)
    train(cfg, tiny_data, tmp_path / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):  # dies in the middle of epoch 2 (3 batches per epoch)
        train(cfg, tiny_data, tmp_path / "crash", progress=False, stop_after_batches=5)
    state = json.loads(Path(tmp_path / "crash" / "metrics.json").read_text())
    assert [h["epoch"] for h in state["history"]] == [1]
    train(cfg, tiny_data, tmp_path / "crash", resume=True, progress=False)
    a = load_file(str(tmp_path / "full" / "last.safetensors"))
    b = load_file(str(tmp_path / "crash" / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_time_budget_pauses_on_a_saved_epoch_and_resume_finishes_the_same_run(tiny_data, tmp_path, capsys):
    # One GPU allotment is a few minutes: --max-minutes ends the chunk on a saved epoch (exit 0, "paused"), and
    # --resume goes on to the weights an uninterrupted run reaches.
    cfg = TrainConfig(**TINY)
    train(cfg, tiny_data, tmp_path / "full", progress=False)
    flags = ["--data", str(tiny_data), "--dataset", "tiny", "--out", str(tmp_path / "chunks"), "--width", "4",
             "--imgsz", "32", "--epochs", "3", "--batch-size", "4", "--val-fraction", "0.25", "--threads", "1",
             "--no-progress"]
    assert train_main(flags + ["--max-minutes", "0.0001"]) == 0
    out = capsys.readouterr().out
    assert "time budget of 0.0001 min reached after epoch 1/3" in out
    assert "paused: 1 of 3 epochs done" in out and "--resume" in out.splitlines()[-1]
    assert [h["epoch"] for h in json.loads((tmp_path / "chunks" / "metrics.json").read_text())["history"]] == [1]
    assert train_main(flags + ["--resume", "--max-minutes", "60"]) == 0
    assert "done: best val mDice" in capsys.readouterr().out
    a = load_file(str(tmp_path / "full" / "last.safetensors"))
    b = load_file(str(tmp_path / "chunks" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_parked_run_resumes_on_a_new_machine_to_the_same_weights(tiny_data, tmp_path):
    # runs/ does not outlive a machine; train/parked/ in git does: park, lose runs/, unpark, resume.
    from simpleunet.train.park import park, unpark

    cfg = TrainConfig(**TINY)
    train(cfg, tiny_data, tmp_path / "full", progress=False)
    runs, parked = tmp_path / "runs", tmp_path / "parked"
    train(TrainConfig(**{**TINY, "epochs": 3}), tiny_data, runs / "screen" / "a", progress=False, max_minutes=1e-6)
    train(cfg, tiny_data, runs / "done", progress=False)
    assert park(runs, parked, log=lambda _: None) == [parked / "done", parked / "screen" / "a"]
    assert (parked / "screen" / "a" / "last.safetensors").is_file()
    assert not (parked / "done" / "last.safetensors").exists()  # finished: its row, not its training state
    shutil.rmtree(runs)
    assert unpark(parked, runs, log=lambda _: None) == [runs / "done", runs / "screen" / "a"]
    train(cfg, tiny_data, runs / "screen" / "a", resume=True, progress=False)
    a = load_file(str(tmp_path / "full" / "last.safetensors"))
    b = load_file(str(runs / "screen" / "a" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert unpark(parked, runs, log=lambda _: None) == []  # never over a run that trained further


def test_torchrun_two_processes_gloo(tiny_data, tmp_path):
    exe = Path(sys.executable).with_name("simpleunet-train")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",  # a free port
           "--no-python", str(exe), "--data", str(tiny_data), "--dataset", "tiny", "--out", str(tmp_path / "ddp"),
           "--width", "4", "--imgsz", "32", "--epochs", "2", "--batch-size", "2", "--no-progress", "--threads", "1"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[:2000] + "\n...\n" + run.stderr[-2000:]
    assert "x2 processes" in run.stdout
    assert run.stdout.count("done: best val mDice") == 1, run.stdout  # rank 0 reports; rank 1 said -1 at epoch -1
    history = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_cli_train_eval_and_errors(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--data", str(tiny_data), "--dataset", "tiny", "--out", str(out), "--width", "4", "--imgsz", "32",
            "--epochs", "1", "--no-progress", "--threads", "1", "--weight-decay", "0.02", "--eta-min", "0"]
    assert train_main(["--resume"] + base) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    assert train_main(base) == 0
    assert train_main(base) == 2  # refuses to overwrite a run
    assert "--resume" in capsys.readouterr().err
    report = tmp_path / "eval.json"
    assert eval_main([str(out), "--data", str(tiny_data), "--split", "all", "--json", str(report)]) == 0
    res = json.loads(report.read_text())
    assert res["images"] == 16 and 0 <= res["mDice"] <= 1
    train_cfg = json.loads((out / "config.json").read_text())["train"]
    assert (train_cfg["weight_decay"], train_cfg["eta_min"]) == (0.02, 0.0)
    assert "torch CPU" in json.loads((out / "metrics.json").read_text())["history"][0]["trained_on"]
    assert train_main(["--data", str(tiny_data), "--out", str(tmp_path / "x"), "--imgsz", "33"]) == 2
    assert "multiple of 16" in capsys.readouterr().err


@pytest.mark.parametrize("flags, msg", [
    (["--batch-size", "0"], "batch_size must be an integer >= 1"),
    (["--lr", "-1"], "lr must be > 0"),
    (["--epochs", "0"], "epochs must be an integer >= 1"),
    (["--val-fraction", "1.5"], "val_fraction must be in (0, 1)"),
    (["--val-fraction", "0"], "val_fraction must be in (0, 1)"),
    (["--device", "gpu"], "unknown --device 'gpu'"),
    (["--recipe", "RECIPE"], "is not readable JSON"),
    (["--max-minutes", "0"], "--max-minutes must be a positive number of minutes"),
])
def test_bad_training_settings_are_one_line_errors(flags, msg, tiny_data, tmp_path, capsys):
    recipe = tmp_path / "broken.json"
    recipe.write_text('{"epochs": 3,')
    flags = [str(recipe) if f == "RECIPE" else f for f in flags]
    out = tmp_path / "run"
    rc = train_main(["--data", str(tiny_data), "--dataset", "tiny", "--out", str(out), "--width", "4", "--imgsz",
                     "32", "--no-progress", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir())


def test_corrupt_resume_state_and_unwritable_report_are_one_line(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    train(TrainConfig(**{**TINY, "epochs": 1}), tiny_data, out, progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    capsys.readouterr()  # training's warning: tiny_data has no splits/
    assert eval_main([str(out), "--data", str(tiny_data), "--split", "all", "--json", str(blocker / "r.json")]) == 2
    err = capsys.readouterr().err.replace(NOT_HELD_OUT, "")  # --split all of the training folder: warned apart
    assert err.startswith("error: cannot write") and len(err.strip().splitlines()) == 1, err
    (out / "last.safetensors").write_bytes(b"\xff" * 64)
    assert train_main(["--data", str(tiny_data), "--out", str(out), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not a readable training state" in err and len(err.strip().splitlines()) == 1
    meta = json.loads((out / "config.json").read_text())
    del meta["preprocess"]
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a simpleunet config"):
        load_model(out)


def test_checkpoint_config_mismatch_is_one_line(tmp_path, tiny_data):
    out = tmp_path / "run"
    train(TrainConfig(**{**TINY, "epochs": 1}), tiny_data, out, progress=False)
    cfg = json.loads((out / "config.json").read_text())
    cfg["model"]["width"] = 8
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match its config: .*shape of") as err:
        load_model(out)
    assert "\n" not in str(err.value)
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(out)


def test_loss_decreases_on_real_images(tiny_data, tmp_path):
    result = train(TrainConfig(**{**TINY, "epochs": 4, "augment": "none", "lr": 3e-3}), tiny_data,
                   tmp_path / "r", progress=False)
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < losses[0]


def _tiny_checkpoint(folder: Path, **meta) -> Path:
    cfg = TrainConfig(**TINY)
    save_model(folder, build_model(cfg.model), {"model": cfg.model.to_dict(), "preprocess": cfg.preprocess(), **meta})
    return folder


@pytest.mark.parametrize("value", ["7", "nan", "inf", "0", "1", "-0.5"])
def test_eval_rejects_a_threshold_outside_0_1(value, tiny_data, tmp_path, capsys):
    """--threshold 7 or nan used to score every image as empty and exit 0."""
    ckpt = _tiny_checkpoint(tmp_path / "ck", dataset="tiny")
    assert eval_main([str(ckpt), "--data", str(tiny_data), "--split", "all", "--threshold", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --threshold must be between 0 and 1") and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("meta", [{}, {"dataset": ""}])
def test_eval_of_a_checkpoint_without_dataset_asks_for_data(meta, tmp_path, capsys):
    """Without a recorded dataset the error blamed the layout of the shared datasets folder."""
    ckpt = _tiny_checkpoint(tmp_path / "ck", **meta)
    assert eval_main([str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "does not record its dataset" in err and "--data" in err and len(err.strip().splitlines()) == 1, err


def test_crash_between_weights_and_config_is_caught(tmp_path, monkeypatch):
    """Best weights and config.json are two renames: new weights with the old config's threshold must not load."""
    ckpt = _tiny_checkpoint(tmp_path / "ck", dataset="tiny")
    assert json.loads((ckpt / "config.json").read_text())["weights_sha256"]
    load_model(ckpt)
    monkeypatch.setattr(checkpoint, "write_json", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # dies after the weights' rename, before config.json's
        _tiny_checkpoint(ckpt, dataset="tiny")
    with pytest.raises(CheckpointError, match="is not the file .*config.json was saved with") as err:
        load_model(ckpt)
    assert "\n" not in str(err.value)
    cfg = json.loads((ckpt / "config.json").read_text())
    del cfg["weights_sha256"]  # checkpoints from before the field (the shipped zoo) still load
    (ckpt / "config.json").write_text(json.dumps(cfg))
    load_model(ckpt)


def test_checkpoint_files_get_normal_modes(tmp_path):
    """Temp-file-and-rename must not leave mkstemp's 0600: a checkpoint is read by other users and tools."""
    old = os.umask(0o022)
    try:
        ckpt = _tiny_checkpoint(tmp_path / "ck", dataset="tiny")
    finally:
        os.umask(old)
    assert {f.name: f.stat().st_mode & 0o777 for f in ckpt.iterdir()} == {"model.safetensors": 0o644,
                                                                           "config.json": 0o644}


def _base(data: Path, out: Path, *flags: str) -> list[str]:
    return ["--data", str(data), "--dataset", "tiny", "--out", str(out), "--width", "4", "--imgsz", "32",
            "--batch-size", "4", "--val-fraction", "0.25", "--no-progress", "--threads", "1", *flags]


@pytest.fixture(scope="module")
def split_data(tiny_data, tmp_path_factory) -> Path:
    """tiny_data's 16 pairs under a folder named like its dataset, with splits/train.txt (12) + test.txt (4)."""
    root = tmp_path_factory.mktemp("datasets") / "tiny"
    shutil.copytree(tiny_data, root)
    ids = sorted(p.stem for p in (root / "images").iterdir())
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("\n".join(ids[:12]) + "\n")
    (root / "splits" / "test.txt").write_text("\n".join(ids[12:]) + "\n")
    return root


def test_a_run_on_all_images_is_recorded_and_its_eval_is_not_called_held_out(tiny_data, split_data, tmp_path,
                                                                              capsys, monkeypatch):
    """No splits/ trained on every image silently, and eval then found the data by dataset name (the shared copy
    of the same images): the test score was contaminated and reported as held out."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data, copy)
    out = tmp_path / "run"
    assert train_main(_base(copy, out, "--epochs", "1")) == 0
    std = capsys.readouterr()
    assert "warning: " in std.err and "no splits/: training on all 16 images" in std.err
    assert "--split test" not in std.out
    train_cfg = json.loads((out / "config.json").read_text())["train"]
    assert train_cfg["split_used"] == "all images (no splits/)" and train_cfg["data_root"] == str(copy.resolve())
    report = tmp_path / "eval.json"
    assert eval_main([str(out), "--split", "all", "--json", str(report)]) == 0  # the recorded folder, not "tiny"
    assert "16 of these 16 images are in the run's training pool" in capsys.readouterr().err
    res = json.loads(report.read_text())
    assert res["data"] == str(copy.resolve()) and res["held_out"] is False
    shutil.rmtree(copy)  # gone: eval falls back to the dataset by name, the same images with a test split
    monkeypatch.setenv("SIMPLEUNET_DATA", str(split_data.parent))
    assert eval_main([str(out), "--split", "test", "--json", str(report)]) == 0
    assert "4 of these 4 images are in the run's training pool" in capsys.readouterr().err
    res = json.loads(report.read_text())
    assert res["data"] == str(split_data) and res["held_out"] is False


def test_a_run_on_a_train_split_scores_its_test_split_as_held_out(split_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(_base(split_data, out, "--epochs", "1")) == 0
    assert "warning" not in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["train"]["split_used"] == "train.txt"
    report = tmp_path / "eval.json"
    assert eval_main([str(out), "--json", str(report)]) == 0
    assert "warning" not in capsys.readouterr().err and "held_out" not in json.loads(report.read_text())
    assert eval_main([str(out), "--split", "train", "--json", str(report)]) == 0
    assert "12 of these 12 images are in the run's training pool (train.txt)" in capsys.readouterr().err
    assert json.loads(report.read_text())["held_out"] is False


def test_publish_refuses_a_test_split_the_run_trained_on(tiny_data, split_data, tmp_path, monkeypatch):
    import simpleunet.train.zoo as zoo
    from simpleunet_runtime.errors import SimpleUNetError
    out = tmp_path / "run"
    assert train_main(_base(tiny_data, out, "--epochs", "1")) == 0
    monkeypatch.setattr(zoo, "ZOO", tmp_path / "zoo")
    with pytest.raises(SimpleUNetError, match="4 test image.s. in .* are in the run's training pool"):
        zoo.publish_run(out, "x", data=str(split_data))
    assert not (tmp_path / "zoo" / "x").exists()


def test_resume_refuses_changed_settings(split_data, tmp_path, capsys):
    """--resume used to apply a new seed/val_fraction/imgsz on top of the run: a moved carve-out, same history."""
    out = tmp_path / "run"
    assert train_main(_base(split_data, out, "--epochs", "2", "--seed", "0")) == 0
    capsys.readouterr()
    resume = ["--out", str(out), "--resume", "--no-progress"]
    for flags, names in ((["--seed", "3", "--val-fraction", "0.5", "--imgsz", "64"], ["seed", "val_fraction", "imgsz"]),
                         (["--width", "8", "--epochs", "3"], ["model.width", "epochs"]),
                         (["--data", str(tmp_path)], ["data_root"]),
                         (["--lr", "0.01", "--weight-decay", "0", "--augment", "none"], ["lr", "weight_decay",
                                                                                         "augment"])):
        assert train_main(resume + flags) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --resume cannot change ") and "start a new --out run" in err, err
        assert len(err.strip().splitlines()) == 1 and all(f"{n} (" in err for n in names), err
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    # the same values, the same folder and the machine-local flags are fine (here: the run is already finished)
    assert train_main(resume + _base(split_data, out, "--epochs", "2", "--seed", "0", "--device", "cpu")) == 0
    assert "already finished (all 2 epochs done)" in capsys.readouterr().out


def test_an_early_stopped_run_stays_stopped_on_resume(split_data, tmp_path, capsys, monkeypatch):
    """An early stop (patience) trained one more epoch on every --resume, moving the best checkpoint."""
    import simpleunet.train.loop as loop
    flat = {"mDice": 0.5, "mIoU": 0.4, "pooled_dice": 0.5, "pooled_iou": 0.4, "precision": 0.5, "recall": 0.5}
    monkeypatch.setattr(loop, "score", lambda *a: flat)  # no epoch after the first improves
    out = tmp_path / "run"
    assert train_main(_base(split_data, out, "--epochs", "5", "--patience", "1")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["stopped_early"] is True
    capsys.readouterr()
    assert train_main(["--out", str(out), "--resume", "--no-progress"]) == 0
    assert "already finished (stopped early after epoch 2" in capsys.readouterr().out
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 2


def _as_saved_by_old_code(run: Path) -> None:
    """Strip what this version adds (train.split_used, stopped_early) from a run's files, as the old code wrote them."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(run / "last.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    state = json.loads(meta["state"])
    del state["train"]["split_used"], state["stopped_early"]
    save_file(tensors, str(run / "last.safetensors"), metadata={**meta, "state": json.dumps(state)})
    cfg = json.loads((run / "config.json").read_text())
    del cfg["train"]["split_used"]
    (run / "config.json").write_text(json.dumps(cfg))


def test_a_run_saved_by_the_old_code_resumes_to_the_same_weights(tiny_data, tmp_path):
    cfg = TrainConfig(**TINY)
    train(cfg, tiny_data, tmp_path / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_data, tmp_path / "crash", progress=False, stop_after_batches=5)
    _as_saved_by_old_code(tmp_path / "crash")
    assert train_main(["--data", str(tiny_data), "--out", str(tmp_path / "crash"), "--resume", "--no-progress",
                       "--threads", "1"]) == 0
    a = load_file(str(tmp_path / "full" / "last.safetensors"))
    b = load_file(str(tmp_path / "crash" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_mixed_precision_loss_scale_survives_a_resume(tmp_path):
    # A GPU run's loss scale has backed off and grown over many steps; a resume that restarted it at 65536 would
    # skip steps on overflow and not match the uninterrupted run. (GradScaler on "cpu" keeps the same state.)
    model = build_model(ModelConfig(width=4))
    optimizer = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    scaler.load_state_dict({**scaler.state_dict(), "scale": 1024.0, "_growth_tracker": 37})
    checkpoint.save_training_state(tmp_path, model, optimizer, {"epoch": 3}, scaler)
    fresh = torch.amp.GradScaler("cpu")
    assert checkpoint.load_training_state(tmp_path, model, optimizer, fresh) == {"epoch": 3}
    assert fresh.state_dict() == scaler.state_dict() and fresh.get_scale() == 1024.0
    checkpoint.save_training_state(tmp_path, model, optimizer, {"epoch": 3})  # a CPU run: nothing to restore
    fresh = torch.amp.GradScaler("cpu")
    checkpoint.load_training_state(tmp_path, model, optimizer, fresh)
    assert fresh.get_scale() == 2.0 ** 16


def test_training_saves_and_resumes_with_its_loss_scaler(tiny_data, tmp_path, monkeypatch):
    import simpleunet.train.loop as loop

    seen = []
    for name in ("save_training_state", "load_training_state"):
        real = getattr(loop, name)
        def spy(*a, _real=real, _name=name, **kw):
            seen.append((_name, a[-1]))
            return _real(*a, **kw)
        monkeypatch.setattr(loop, name, spy)
    cfg = TrainConfig(**{**TINY, "epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_data, tmp_path, progress=False, stop_after_batches=4)  # one epoch saved, then a crash
    train(cfg, tiny_data, tmp_path, resume=True, progress=False)
    assert [name for name, _ in seen] == ["save_training_state", "load_training_state", "save_training_state"]
    assert all(isinstance(arg, torch.amp.GradScaler) for _, arg in seen)


def test_every_recipe_is_named_after_its_model_and_dataset():
    from simpleunet.train.cli import load_recipe, recipe_names

    short = {"kvasir-seg": "kvasir", "busi": "busi"}
    assert {"simpleunet16-kvasir", "simpleesknet32-n2-kvasir"} <= set(recipe_names())
    for name in recipe_names():
        cfg = load_recipe(name)
        qat = "" if not cfg.qat else "-qat" if cfg.qat_weights == "int8" else f"-qat-{cfg.qat_weights}"
        size = "" if cfg.imgsz == 256 else f"-{cfg.imgsz}"  # another input size is another model: its own name
        assert name == f"{cfg.model.name}-{short[cfg.dataset]}{size}{qat}", name  # -qat: the full-range grid of before


def test_the_epoch_line_says_when_the_run_ends():
    from simpleunet.train.loop import eta

    rows = [{"epoch": e, "seconds": s} for e, s in ((1, 400.0), (2, 100.0), (3, 100.0), (4, 100.0), (5, 100.0),
                                                    (6, 100.0))]
    assert eta(rows, 200) == "  eta 5h23m"  # 194 epochs at the last five's 100 s (the slow first one has left)
    assert eta(rows[:1], 2) == "  eta 7m" and eta(rows, 6) == ""
    assert eta([{"epoch": 1, "seconds": 0.1}], 3) == "  eta <1m"


def test_the_gpu_chunk_script_trains_a_chunk_and_hands_back_the_run(tiny_data, tmp_path):
    # train/gpu_chunk.sh is the one command a lent GPU machine runs (here on the CPU): toolkit from the checkout,
    # a time budget, the state files and the log in $OUT; run again, it resumes the same run folder.
    recipe = tmp_path / "tiny-chunk.json"
    recipe.write_text(json.dumps({"dataset": tiny_data.name, "imgsz": 32, "epochs": 2, "batch_size": 4,
                                  "val_fraction": 0.25, "threads": 1, "model": {"width": 4}}))
    script = Path(__file__).resolve().parents[1] / "train" / "gpu_chunk.sh"
    env = {**os.environ, "DEVICE": "cpu", "SIMPLEUNET_DATA": str(tiny_data.parent),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for minutes, said in (("0.0001", "paused: 1 of 2 epochs done"), ("5", "done: best val mDice")):
        out = tmp_path / f"out-{minutes}"
        out.mkdir()
        run = subprocess.run(["bash", str(script), str(recipe), minutes], cwd=tmp_path, env={**env, "OUT": str(out)},
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        assert said in (out / "train.log").read_text()
        assert sorted(p.name for p in out.iterdir()) == ["config.json", "last.safetensors", "metrics.json",
                                                         "model.safetensors", "train.log"]
    history = json.loads((tmp_path / "runs" / "tiny-chunk" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_the_small_region_rule_is_written_for_the_zoo_datasets_and_scored_as_the_runtime_applies_it(tmp_path):
    """Training writes config.MIN_REGION into kvasir-seg / BUSI checkpoints (other data keeps every region); the
    zoo's 256-px models carry the same rule; ``score`` drops what the runtime's rule drops."""
    from simpleunet.train.config import MIN_REGION
    from simpleunet.train.loop import score
    from simpleunet_runtime.regions import MinRegion

    assert TrainConfig(**{**TINY, "dataset": "busi"}).preprocess()["min_region"] == list(MIN_REGION["busi"])
    assert TrainConfig(**{**TINY, "dataset": "cells"}).preprocess()["min_region"] == [0.0, 0.0]
    zoo = Path(__file__).resolve().parents[1] / "train" / "zoo"
    for name in ("simpleunet16-kvasir", "simpleunet32-kvasir", "simpleunet16-busi", "simpleunet32-busi"):
        meta = json.loads((zoo / name / "config.json").read_text())
        assert meta["preprocess"]["min_region"] == list(MIN_REGION[meta["dataset"]]), name
    prob = np.zeros((1, 32, 32), np.float32)
    prob[0, 2:12, 2:12] = prob[0, 30, 0:3] = 0.9  # a 100-pixel region and a 3-pixel speck
    truth = prob > 0.5
    truth[0, 30] = False
    assert score(prob, truth, 0.5)["mDice"] < 1
    assert score(prob, truth, 0.5, MinRegion(0.003, 0.3))["mDice"] == 1


@pytest.mark.parametrize("value", ["0.1", "2,0", "a,b", "nan,0"])
def test_eval_rejects_a_bad_min_region(value, tiny_data, tmp_path, capsys):
    ckpt = _tiny_checkpoint(tmp_path / "ck", dataset="tiny")
    assert eval_main([str(ckpt), "--data", str(tiny_data), "--split", "all", "--min-region", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --min-region must be two numbers") and len(err.strip().splitlines()) == 1, err


def test_eval_reports_the_rule_it_scored_with(tiny_data, tmp_path, capsys):
    ckpt = _tiny_checkpoint(tmp_path / "ck", dataset="tiny")
    assert eval_main([str(ckpt), "--data", str(tiny_data), "--split", "all", "--min-region", "0.01,0.5",
                      "--json", str(tmp_path / "r.json")]) == 0
    assert "small-region rule 0.01,0.5" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["min_region"] == [0.01, 0.5]
