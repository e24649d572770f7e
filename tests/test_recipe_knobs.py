"""The recipe knobs screened for accuracy (train/screen.py): structure loss, weight averaging, distillation and
heavy augmentation are real, resumable and recorded."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from simpleunet.train import screen
from simpleunet.train.cli import train_main
from simpleunet.train.config import ConfigError, ModelConfig, TrainConfig
from simpleunet.train.losses import segmentation_loss, structure_loss
from simpleunet.train.loop import train

TINY = dict(dataset="tiny", imgsz=32, epochs=2, batch_size=4, val_fraction=0.25, augment="strong", threads=1,
            model=ModelConfig(width=4))


def test_structure_loss_rewards_the_right_mask_and_weighs_borders():
    target = torch.zeros(2, 1, 32, 32)
    target[:, :, 8:24, 8:24] = 1
    right, wrong = (target * 2 - 1) * 8, -(target * 2 - 1) * 8
    assert structure_loss(right, target) < 0.01 < 1 < structure_loss(wrong, target)
    near = torch.full_like(target, 8.0) * (target * 2 - 1)
    near_err, far_err = near.clone(), near.clone()
    near_err[:, :, 7, 8:24] = 8  # one wrong row next to the border
    far_err[:, :, 0, 8:24] = 8  # the same number of wrong pixels far from it
    assert structure_loss(near_err, target) > structure_loss(far_err, target)
    assert torch.isclose(segmentation_loss(right, target, "structure"), structure_loss(right, target))


def _uninterrupted_and_resumed_states(cfg: TrainConfig, data, tmp_path) -> dict[str, torch.Tensor]:
    """``last.safetensors`` of ``cfg`` trained straight through (tmp_path/full), checked identical, tensor by tensor,
    to the same run crashed after 5 batches and resumed (tmp_path/crash)."""
    train(cfg, data, tmp_path / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, data, tmp_path / "crash", progress=False, stop_after_batches=5)
    train(cfg, data, tmp_path / "crash", resume=True, progress=False)
    a, b = (load_file(str(tmp_path / run / "last.safetensors")) for run in ("full", "crash"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return a


def test_weight_average_is_what_the_checkpoint_keeps_and_resumes_exactly(tiny_data, tmp_path):
    a = _uninterrupted_and_resumed_states(TrainConfig(**{**TINY, "epochs": 3, "ema": 0.9}), tiny_data, tmp_path)
    assert any(k.startswith("ema.") for k in a)
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    if metrics["best"]["epoch"] == 3:  # the best checkpoint is the average, not the raw weights
        best = load_file(str(tmp_path / "full" / "model.safetensors"))
        name = next(k for k in best if k.endswith("weight") and best[k].ndim == 4)
        assert torch.equal(best[name], a[f"ema.{name}"]) and not torch.equal(best[name], a[f"model.{name}"])


def test_swa_averages_epoch_ends_at_its_lr_remeasures_batchnorm_and_resumes_exactly(tiny_data, tmp_path):
    cfg = TrainConfig(**{**TINY, "epochs": 4, "swa": 0.5, "swa_lr": 0.0005})  # averages the ends of epochs 3 and 4
    train(cfg, tiny_data, tmp_path / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):  # 3 batches an epoch: the 10th is the first of epoch 4
        train(cfg, tiny_data, tmp_path / "crash", progress=False, stop_after_batches=10)
    third = load_file(str(tmp_path / "crash" / "last.safetensors"))
    train(cfg, tiny_data, tmp_path / "crash", resume=True, progress=False)
    a, b = (load_file(str(tmp_path / run / "last.safetensors")) for run in ("full", "crash"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    weights = [k[6:] for k in a if k.startswith("model.") and k.endswith("weight") and a[k].ndim == 4]
    for name in weights:  # the mean of the raw weights at the ends of epochs 3 and 4
        torch.testing.assert_close(a[f"ema.{name}"], (third[f"model.{name}"] + a[f"model.{name}"]) / 2)
    means = [k[6:] for k in a if k.startswith("model.") and k.endswith("running_mean")]
    assert means and not all(torch.equal(a[f"ema.{k}"], a[f"model.{k}"]) for k in means)  # re-measured
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert [h["lr"] for h in metrics["history"][2:]] == [0.0005, 0.0005]  # the lr each epoch's last step used
    assert metrics["history"][1]["lr"] > 0.0005  # the cosine up to the averaging
    if metrics["best"]["epoch"] >= 3:  # the best checkpoint is the average
        best = load_file(str(tmp_path / "full" / "model.safetensors"))
        assert torch.equal(best[weights[0]], a[f"ema.{weights[0]}"])


def test_deep_supervision_trains_side_heads_resumes_exactly_and_saves_the_plain_model(tiny_data, tmp_path):
    from simpleunet.train.checkpoint import load_model
    from simpleunet.train.model import DeepSupervision, build_model

    model = build_model(ModelConfig(width=4))
    wrapped = DeepSupervision(model)
    logits, sides = wrapped(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 1, 32, 32) and [s.shape for s in sides] == [(2, 1, 32, 32)] * 3
    sum(s.sum() for s in sides).backward()  # the side losses reach the side heads and the decoder, not the head
    assert all(c.weight.grad.abs().sum() > 0 for c in wrapped.side)
    assert model.decoder[0][0][0].weight.grad.abs().sum() > 0 and model.head[0].weight.grad is None
    assert torch.equal(model(torch.zeros(1, 3, 32, 32)), model(torch.zeros(1, 3, 32, 32)))  # the model alone: as ever
    assert wrapped._features is None

    a = _uninterrupted_and_resumed_states(TrainConfig(**{**TINY, "epochs": 3, "deep_supervision": 1.0}), tiny_data,
                                          tmp_path)
    assert sum(k.startswith("side.") for k in a) == 6  # 3 heads: weight + bias
    plain = train(TrainConfig(**{**TINY, "epochs": 3}), tiny_data, tmp_path / "plain", progress=False)
    assert plain["history"][-1]["loss"] != pytest.approx(json.loads((tmp_path / "full" / "metrics.json")
                                                                    .read_text())["history"][-1]["loss"])
    saved, meta = load_model(tmp_path / "full")  # the checkpoint is the plain model, its card names the knob
    assert not any("side" in k for k in saved.state_dict()) and meta["train"]["deep_supervision"] == 1.0
    with pytest.raises(ConfigError, match="deep supervision supports the simpleunet and simpleesknet"):
        TrainConfig(**{**TINY, "deep_supervision": 1.0, "model": ModelConfig(family="unet", width=4)})


def test_distillation_checks_its_teacher_and_records_it(tiny_data, tmp_path, capsys):
    train(TrainConfig(**TINY), tiny_data, tmp_path / "teacher", progress=False)
    config = json.loads((tmp_path / "teacher" / "config.json").read_text())
    del config["train"]["carve_by"]  # as the zoo's teachers, trained before the field: a random carve-out
    (tmp_path / "teacher" / "config.json").write_text(json.dumps(config))
    result = train(TrainConfig(**{**TINY, "teacher": str(tmp_path / "teacher"), "distill_weight": 0.5}), tiny_data,
                   tmp_path / "student", progress=False)
    assert result["best"]["epoch"] >= 1
    saved = json.loads((tmp_path / "student" / "config.json").read_text())["train"]
    assert saved["teacher"] == str(tmp_path / "teacher") and len(saved["teacher_sha256"]) == 64
    with pytest.raises(ConfigError, match="seed 0 .this run: 1.*carve-out"):  # another carve-out: refused
        train(TrainConfig(**{**TINY, "seed": 1, "teacher": str(tmp_path / "teacher")}), tiny_data,
              tmp_path / "other", progress=False)
    with pytest.raises(ConfigError, match="carve_by 'random' .this run: 'lesion-area'"):
        train(TrainConfig(**{**TINY, "carve_by": "lesion-area", "teacher": str(tmp_path / "teacher")}), tiny_data,
              tmp_path / "other", progress=False)
    with pytest.raises(KeyboardInterrupt):  # a run that stopped after one epoch...
        train(TrainConfig(**{**TINY, "teacher": str(tmp_path / "teacher")}), tiny_data, tmp_path / "crash",
              progress=False, stop_after_batches=4)
    for name in ("model.safetensors", "config.json"):  # ...and a teacher retrained since
        (tmp_path / "teacher" / name).write_bytes((tmp_path / "student" / name).read_bytes())
    capsys.readouterr()
    assert train_main(["--out", str(tmp_path / "crash"), "--resume", "--data", str(tiny_data), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "changed since this run started" in err


@pytest.mark.parametrize("bad, msg", [({"loss": "focal"}, "loss must be one of bce_dice, structure"),
                                      ({"ema": 1.0}, "ema must be a decay in"),
                                      ({"deep_supervision": -1}, "deep_supervision must be a number >= 0"),
                                      ({"swa": 1.0}, "swa must be a fraction of the schedule"),
                                      ({"swa": 0.5, "swa_lr": 0.1}, "swa_lr must be between 0"),
                                      ({"swa": 0.5, "ema": 0.9}, "does not combine with ema"),
                                      ({"swa": 0.1}, "leaves no epoch before the averaging"),
                                      ({"swa_lr": 0.0005}, "give --swa too"),
                                      ({"loss": "structure", "model": ModelConfig(width=4, num_classes=2)},
                                       "for a 1-class sigmoid head")])
def test_bad_knobs_are_config_errors(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        TrainConfig(**{**TINY, **bad})


def test_every_screening_candidate_is_a_valid_training_command(monkeypatch, tmp_path):
    import argparse

    from simpleunet.train import cli

    parsed = []
    monkeypatch.setattr(argparse.ArgumentParser, "exit", lambda *a, **k: (_ for _ in ()).throw(SystemExit(2)))
    for name in screen.CANDIDATES:
        cmd = screen.command(name, 5)
        assert cmd[0] == "simpleunet-train" and str(screen.run_dir(name, 5)) in cmd
        monkeypatch.setattr(cli, "dataset_root", lambda *a: (_ for _ in ()).throw(cli.SimpleUNetError("stop")))
        assert train_main(cmd[1:]) == 2  # parsed and configured; stopped before looking for data
        parsed.append(name)
    assert parsed == list(screen.CANDIDATES)
    with pytest.raises(cli.SimpleUNetError, match="unknown candidate"):
        screen.command("nosuch", 5)
    # the zoo recipe moved to dilation 2 after its screens: their commands keep d = 1, dilate2's own setting wins
    assert " ".join(screen.command("baseline", 5)).count("--dilation 1") == 1
    dilate2 = screen.command("dilate2", 5)
    assert dilate2.count("--dilation") == 1 and dilate2[dilate2.index("--dilation") + 1] == "2"
    assert "--dilation" not in screen.command("baseline", 5, base="simpleunet16-busi")
    busi = screen.command("heavy+distill32", 5, base="simpleunet16-busi")  # another base: its own teacher and folder
    assert busi[busi.index("--teacher") + 1] == "train/zoo/simpleunet32-busi"
    assert busi[busi.index("--out") + 1] == str(screen.RUNS / "simpleunet16-busi" / "heavy+distill32-e5")
    assert train_main(busi[1:]) == 2


def test_the_screening_table_reads_runs(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(screen, "RUNS", tmp_path)
    train(TrainConfig(**{**TINY, "loss": "structure"}), tiny_data, tmp_path / "structure-e2", progress=False)
    (tmp_path / "structure-e2" / "test.json").write_text(json.dumps({"mDice": 0.5}))
    text = screen.table()
    row = text.splitlines()[2]
    assert row.startswith("| structure | PraNet") and "| 2 (2) |" in row and "| 0.5000 |" in row
    assert "--loss structure" in row


def test_compare_scores_runs_image_by_image_on_their_shared_carve_out(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(screen, "RUNS", tmp_path)
    train(TrainConfig(**TINY), tiny_data, tmp_path / "a-e2", progress=False)
    train(TrainConfig(**{**TINY, "loss": "structure"}), tiny_data, tmp_path / "b-e2", progress=False)
    dices, _ = screen.carve_out_dice(tmp_path / "a-e2", tiny_data)
    assert len(dices) == 4  # 25 % of 16 images
    best = json.loads((tmp_path / "a-e2" / "metrics.json").read_text())["best"]["val_mDice"]
    assert dices.mean() == pytest.approx(best)  # what training ranked the run by, image by image
    text = screen.compare(["b-e2", str(tmp_path / "a-e2")], "a-e2", tiny_data, shifts=("none", "noise"))
    itself = f"| {tmp_path / 'a-e2'} | 4, none | {best:.4f} | {best:.4f} | +0.0000 [+0.0000, +0.0000] | 0 / 0 |"
    assert itself in text and "| b-e2 | 4, none |" in text and "| b-e2 | 4, noise |" in text
    noisy, _ = screen.carve_out_dice(tmp_path / "a-e2", tiny_data, "noise")
    assert f"| {tmp_path / 'a-e2'} | 4, noise | {noisy.mean():.4f} | {noisy.mean():.4f} |" in text
    with pytest.raises(screen.SimpleUNetError, match="unknown shift 'fog'"):
        screen.carve_out_dice(tmp_path / "a-e2", tiny_data, "fog")
    gap = screen.paired_gap(np.array([1.0, 0.5, 0.5]), np.array([0.5, 0.5, 1.0]))
    assert gap["gap"] == 0 and gap["wins"] == gap["losses"] == 1 and gap["low"] < 0 < gap["high"]
    train(TrainConfig(**{**TINY, "seed": 1}), tiny_data, tmp_path / "c-e2", progress=False)
    with pytest.raises(screen.SimpleUNetError, match="different carve-outs"):
        screen.compare(["c-e2"], "a-e2", tiny_data)
    with pytest.raises(screen.SimpleUNetError, match="no run at nosuch"):
        screen.compare(["nosuch"], "a-e2", tiny_data)


def test_curve_averages_carve_out_histories_over_epoch_windows_against_a_reference(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(screen, "RUNS", tmp_path)

    def run(name, scores):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        history = [{"epoch": e, "val_mDice": v} for e, v in enumerate(scores, 1)]
        best = max(history, key=lambda h: h["val_mDice"])
        (tmp_path / name / "metrics.json").write_text(json.dumps({"history": history, "best": best}))

    run("ref-e5", [0.1, 0.2, 0.3, 0.4, 0.5])
    run("a-e5", [0.2, 0.2, 0.5, 0.4])  # 4 of 5 epochs so far
    text = screen.curve(["a-e5"], "ref-e5", window=2)
    assert "| 1–2 | 0.1500 | 0.2000 (+0.0500) |" in text
    assert "| 3–4 | 0.3500 | 0.4500 (+0.1000) |" in text
    assert "| 5–" not in text  # a window the run has not reached is left out
    text = screen.curve(["a-e5"], "ref-e5", window=3)
    assert "| 4–4 | 0.4000 | 0.4000 (+0.0000) |" in text  # a window the run is in, as far as it got
    assert "best carve-out: a-e5 0.5000 at epoch 3" in text and "(best 0.5000 at epoch 5)" in text
    assert "another carve-out" not in text  # a config from before carve_by drew it at random
    run("b-e5", [0.2, 0.3])
    (tmp_path / "b-e5" / "config.json").write_text(json.dumps({"train": {"carve_by": "lesion-area"}}))
    assert text.endswith("epoch 3") and screen.curve(["a-e5", "b-e5"], "ref-e5").endswith(
        "b-e5 holds out another carve-out than the reference (carve_by lesion-area vs random): its gaps are not the "
        "recipe's alone")
    assert screen.main(["curve", "a-e5", "--against", "ref-e5", "--window", "0"]) == 2
    assert "--window must be at least 1" in capsys.readouterr().err
    (tmp_path / "new-e5").mkdir()
    (tmp_path / "new-e5" / "config.json").write_text("{}")
    with pytest.raises(screen.SimpleUNetError, match="new-e5 has no metrics.json"):
        screen.curve(["new-e5"], "ref-e5")


def test_every_camera_shift_changes_the_images_and_keeps_their_form(kvasir):
    import cv2

    image = cv2.cvtColor(cv2.imread(str(sorted((kvasir / "images").iterdir())[0])), cv2.COLOR_BGR2RGB)
    images = np.stack([cv2.resize(image, (64, 64))] * 2)
    for name, shift in screen.SHIFTS.items():
        out = shift(images)
        assert out.dtype == np.uint8 and out.shape == images.shape, name
        assert (name == "none") == np.array_equal(out, images), name


def test_confirm_gap_pairs_runs_on_the_test_split_at_their_own_threshold_and_rule(tiny_data, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    ids = sorted(p.stem for p in (root / "images").iterdir())
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("\n".join(ids[:12]) + "\n")
    (root / "splits" / "test.txt").write_text("\n".join(ids[12:]) + "\n")
    monkeypatch.setattr(screen, "RUNS", tmp_path)
    train(TrainConfig(**TINY), root, tmp_path / "a-e2", progress=False)
    train(TrainConfig(**{**TINY, "seed": 1}), root, tmp_path / "b-e2", progress=False)
    prob, masks, meta = screen.split_probabilities(tmp_path / "b-e2", root)
    assert len(masks) == 4
    pre = meta["preprocess"]
    b = screen.per_image_dice(prob, masks, pre["threshold"], pre["min_region"])
    text = screen.confirm_gap(["b-e2", "a-e2"], "a-e2", root)
    ref = text.splitlines()[-1].split(" | ")[3]
    assert f"| b-e2 | 4 | {b.mean():.4f} | {ref} |" in text
    assert f"| a-e2 | 4 | {ref} | {ref} | +0.0000 [+0.0000, +0.0000] | 0 / 0 |" in text
    monkeypatch.setattr(screen.subprocess, "call", lambda *a, **k: pytest.fail("scored before checking --against"))
    assert screen.main(["confirm", "b", "--epochs", "2", "--against", "nowhere"]) == 2


def test_border_smoothing_softens_only_near_borders_and_is_recorded(tiny_data, tmp_path):
    from simpleunet.train.data import smooth_borders
    from simpleunet.train.zoo import loss_name
    mask = torch.zeros(1, 1, 32, 32)
    mask[:, :, 0:16, 8:24] = 1  # touches the image's top edge
    soft = smooth_borders(mask, 1.0)
    assert soft.shape == mask.shape and torch.allclose(soft.sum(), mask.sum(), atol=1e-3)  # mass kept inside
    far = soft[0, 0, [0, 8, 28], 16]  # far from a border: the label as it was
    assert torch.allclose(far, torch.tensor([1.0, 1.0, 0.0]), atol=1e-5)
    assert 0.2 < soft[0, 0, 16, 16] < 0.5 < soft[0, 0, 15, 16] < 0.8  # across the bottom border
    assert torch.isclose(soft[0, 0, 0, 15], soft[0, 0, 8, 15])  # the image's edge is not a border
    cfg = TrainConfig(**{**TINY, "border_smooth": 1.5})
    train(cfg, tiny_data, tmp_path / "run", progress=False)
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["train"]["border_smooth"] == 1.5
    assert "mask borders smoothed (Gaussian, sigma 1.5 px)" in loss_name(meta)
    with pytest.raises(ConfigError, match="border_smooth must be a Gaussian sigma in px between 0 .off. and 4"):
        TrainConfig(**{**TINY, "border_smooth": 5})
    with pytest.raises(ConfigError, match="a 2\\+ class model trains on class labels"):
        TrainConfig(**{**TINY, "border_smooth": 1.0, "model": ModelConfig(width=4, num_classes=2)})


def test_training_at_a_larger_size_keeps_the_model_and_its_carve_out_at_imgsz(tiny_data, tmp_path, monkeypatch,
                                                                                capsys):
    from simpleunet.train import loop
    from simpleunet.train.zoo import reproduce_command
    seen = []
    real = loop.segmentation_loss
    monkeypatch.setattr(loop, "segmentation_loss", lambda logits, y, *a: seen.append(tuple(y.shape[-2:])) or
                        real(logits, y, *a))
    cfg = TrainConfig(**{**TINY, "train_imgsz": 48})
    train(cfg, tiny_data, tmp_path / "run", progress=False)
    assert set(seen) == {(48, 48)}  # every training batch at 48 px
    assert "12 train images at 48px / 4 val at 32px" in capsys.readouterr().out
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["preprocess"]["imgsz"] == 32 and meta["train"]["train_imgsz"] == 48  # used, exported at 32
    assert "--train-imgsz 48" in reproduce_command("run", meta["train"])
    with pytest.raises(ConfigError, match="train_imgsz must be 0 .train at imgsz. or a multiple of 16"):
        TrainConfig(**{**TINY, "train_imgsz": 40})
    with pytest.raises(ConfigError, match="drop --train-imgsz"):
        TrainConfig(**{**TINY, "train_imgsz": 48, "teacher": "runs/teacher"})


def test_carve_by_lesion_area_is_the_carve_out_a_run_validates_on(tiny_data):
    from simpleunet.train.data import area_bins, carve_validation, discover, load_arrays, training_samples
    from simpleunet.train.loop import load_training_data

    samples, _ = training_samples(discover(tiny_data), tiny_data)
    _, masks = load_arrays(samples, 32)
    carve_outs = {}
    for carve_by, strata in (("random", None), ("lesion-area", area_bins(masks))):
        _, carve_outs[carve_by] = carve_validation(len(samples), 0.25, 1, strata)
        _, val_set, _ = load_training_data(TrainConfig(**{**TINY, "seed": 1, "carve_by": carve_by}), tiny_data)
        assert np.array_equal(val_set.masks, masks[carve_outs[carve_by]]), carve_by
    assert not np.array_equal(*carve_outs.values())  # seed 1 draws other images per bin than at random
    with pytest.raises(ConfigError, match="carve_by must be one of random, lesion-area"):
        TrainConfig(**{**TINY, "carve_by": "size"})
