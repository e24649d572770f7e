"""The training loop and evaluation. One process, or several under ``torchrun`` (DistributedDataParallel)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from simpleunet_runtime.machine import cpu_model
from simpleunet_runtime.metrics import SegmentationMeter
from simpleunet_runtime.regions import KEEP_ALL, MinRegion, small_regions

from .checkpoint import (LAST, METRICS, CheckpointError, init_weights, load_model, load_training_state,
                         read_training_state, save_model, save_training_state, write_json)
from .config import ConfigError, TrainConfig
from .data import (ALL_IMAGES, DataError, InMemorySegmentation, area_bins, carve_validation, discover, load_arrays,
                   select_split, smooth_borders, training_samples)
from .losses import distill_loss, foreground_probability, segmentation_loss
from .model import DeepSupervision, build_model, count_parameters

THRESHOLDS = np.round(np.arange(0.30, 0.71, 0.05), 2)
#: Training runs channels_last: a training step is 1.2-1.4x faster on CPU than NCHW (measured, widths 8-32).
MEMORY_FORMAT = torch.channels_last


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def hardware(dev: torch.device) -> str:
    """The machine a run trains or is scored on, kept in metrics.json so a model card never guesses it."""
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model() if dev.type == "cpu" else dev.type
    return f"{name}, torch {dev.type.upper()}"


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@torch.no_grad()
def predict_probabilities(model: nn.Module, data: InMemorySegmentation, device: torch.device,
                          batch_size: int = 16) -> np.ndarray:
    """Foreground probabilities (N, H, W) float32 for every image of ``data`` at its cached size."""
    model.eval()
    out = []
    for x, _ in data.batches(batch_size, epoch=0, seed=0, shuffle=False, drop_last=False):
        out.append(foreground_probability(model(x.to(device)))[:, 0].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + data.masks.shape[1:], np.float32)


def score(prob: np.ndarray, masks: np.ndarray, threshold: float, min_region: MinRegion = KEEP_ALL
          ) -> dict[str, float]:
    """Scores of ``prob > threshold`` (then ``min_region``'s small regions dropped, as the runtime does)."""
    meter = SegmentationMeter()
    for p, m in zip(prob, masks):
        fg = p > threshold
        meter.update(fg & ~small_regions(fg, min_region), m)
    return meter.summary()


def best_threshold(prob: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """The threshold (0.30..0.70) with the best mDice on a validation set carved from train."""
    scores = [(score(prob, masks, t)["mDice"], float(t)) for t in THRESHOLDS]
    d, t = max(scores, key=lambda s: (s[0], -abs(s[1] - 0.5)))
    return t, d


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", 1))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(int(os.environ.get("RANK", 0)), world, int(os.environ.get("LOCAL_RANK", 0)))


def load_training_data(cfg: TrainConfig, root: Path, layout: str = "auto", device: torch.device | None = None):
    """(train, val, split_used): the train split (else every image) minus a seeded validation carve-out, the first
    at the training size, the carve-out at ``imgsz``; on a GPU ``device`` both stay resident there
    (``InMemorySegmentation``)."""
    samples, split_used = training_samples(discover(root, layout), root)
    images, masks = load_arrays(samples, cfg.imgsz)
    tr, va = carve_validation(len(samples), cfg.val_fraction, cfg.seed,
                              area_bins(masks) if cfg.carve_by == "lesion-area" else None)
    if len(tr) == 0:
        raise DataError(f"{len(samples)} training image(s) in {root}: too few to carve out a validation set")
    val_set = InMemorySegmentation(images[va], masks[va], cfg.mean, cfg.std, device)
    if cfg.training_size != cfg.imgsz:
        images, masks = load_arrays(samples, cfg.training_size)
    return InMemorySegmentation(images[tr], masks[tr], cfg.mean, cfg.std, device), val_set, split_used


def finished(cfg: TrainConfig, state: dict[str, Any]) -> str | None:
    """Why a saved run is over (every epoch done, or stopped early by patience), else None."""
    done = state["epoch"] + 1
    if done >= cfg.epochs:
        return f"all {cfg.epochs} epochs done"
    if state.get("stopped_early") or (cfg.patience and done - state["best"]["epoch"] >= cfg.patience):
        return f"stopped early after epoch {done}: no improvement for {cfg.patience} epochs"
    return None


def checkpoint_meta(cfg: TrainConfig, threshold: float) -> dict[str, Any]:
    return {"model": cfg.model.to_dict(), "preprocess": cfg.preprocess(threshold),
            "dataset": cfg.dataset, "train": cfg.to_dict()}


def init_record(cfg: TrainConfig) -> dict[str, Any]:
    """What a fine-tune started from, kept in its metrics.json so its model card tells the whole training: the
    checkpoint, its weights' sha256 and (when the run folder has them) its epochs, best epoch and history."""
    record: dict[str, Any] = {"checkpoint": cfg.init, "weights_sha256": cfg.init_sha256}
    path = Path(str(cfg.init)) / METRICS
    if path.is_file():
        try:
            metrics = json.loads(path.read_text())
            before = (metrics.get("init") or {}).get("history") or []  # a fine-tune of a fine-tune: the whole chain
            history = before + [{**h, "epoch": len(before) + h["epoch"]} for h in metrics["history"]]
            best = {**metrics["best"], "epoch": len(before) + metrics["best"]["epoch"]}
            record.update(epochs=len(history), best=best, history=history)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # the weights are what matter; an unreadable history only leaves the card shorter
    return record


class WeightAverage:
    """An average of a model's weights: exponential (``TrainConfig.ema``, updated every step, with the usual warm-up
    decay min(d, (1 + step) / (10 + step)) so the first steps are not frozen at the initial weights) or, with
    ``decay=None``, the equal-weight mean of every update (SWA, ``TrainConfig.swa``, updated once an epoch). Buffers
    (BatchNorm statistics) are copied, not averaged; SWA re-measures them (torch's ``swa_utils.update_bn``)."""

    def __init__(self, model: nn.Module, decay: float | None):
        import copy

        self.decay = decay
        self.model = copy.deepcopy(getattr(model, "module", model)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.steps = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        model = getattr(model, "module", model)
        self.steps += 1
        if self.decay is None:  # the mean of every update so far
            d = (self.steps - 1) / self.steps
        else:
            d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for avg, p in zip(self.model.parameters(), model.parameters()):
            avg.lerp_(p.detach(), 1 - d)
        for avg, b in zip(self.model.buffers(), model.buffers()):
            avg.copy_(b)


def load_teacher(cfg: TrainConfig, split_used: str) -> tuple[nn.Module, str]:
    """The teacher of a distillation run and its weights' sha256, refused unless it trained on the same images
    with the same carve-out and sees the same input."""
    from simpleunet_runtime.bundled import sha256

    from .checkpoint import WEIGHTS

    teacher, meta = load_model(cfg.teacher)
    theirs = {"carve_by": "random", **(meta.get("train") or {})}  # a run before the field drew it at random
    same = {"split_used": split_used, "seed": cfg.seed, "val_fraction": cfg.val_fraction, "dataset": cfg.dataset,
            "carve_by": cfg.carve_by}
    differ = [f"{k} {theirs.get(k)!r} (this run: {v!r})" for k, v in same.items() if theirs.get(k) != v]
    pre = meta["preprocess"]
    if (pre["imgsz"], list(pre["mean"]), list(pre["std"])) != (cfg.imgsz, list(cfg.mean), list(cfg.std)):
        differ.append(f"input {pre['imgsz']} px mean {pre['mean']} std {pre['std']} (this run: {cfg.imgsz} px "
                      f"mean {list(cfg.mean)} std {list(cfg.std)})")
    if meta["model"].get("num_classes") != 1:
        differ.append(f"num_classes {meta['model'].get('num_classes')} (distillation needs a 1-class teacher)")
    if differ:
        raise ConfigError(f"teacher {cfg.teacher} has {', '.join(differ)}: it must have trained on this run's images "
                          "with its carve-out held out, or the carve-out scores would not be of unseen images")
    return teacher, sha256(Path(cfg.teacher) / WEIGHTS)


def train(cfg: TrainConfig, root: Path, out: Path, *, resume: bool = False, device: str = "auto",
          layout: str = "auto", progress: bool = True, stop_after_batches: int | None = None,
          max_minutes: float | None = None, fast: bool = False) -> dict[str, Any]:
    """Train ``cfg`` on ``root``; writes ``out/{config.json, model.safetensors (best), metrics.json,
    last.safetensors}`` every epoch. ``stop_after_batches`` simulates a crash (for tests). With ``cfg.qat`` the
    run trains and validates the int8 view of the model (train/qat.py) and saves its fp32 weights.
    ``max_minutes``: stop (``paused`` in the result) after the last epoch that ends inside this wall-clock budget,
    counted from this call, so a GPU allotment ends on a saved epoch; ``--resume`` goes on. ``fast``: on CUDA,
    cuDNN autotuning and TF32 instead of deterministic kernels (faster; a resumed run is then not bit-identical)."""
    started = time.perf_counter()
    if max_minutes is not None and not max_minutes > 0:  # also rejects nan
        raise ConfigError(f"--max-minutes must be a positive number of minutes, got {max_minutes}")
    ddp = Distributed.from_env()
    if cfg.qat and ddp.world > 1:
        raise ConfigError("quantization-aware fine-tuning runs in one process; start it without torchrun")
    dev = pick_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    if fast and dev.type == "cuda":
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    out = Path(out)
    if resume and not (out / LAST).is_file():
        raise CheckpointError(f"nothing to resume: {out / LAST} does not exist (start without --resume)")
    if not resume and (out / LAST).is_file():
        raise CheckpointError(f"{out} already holds a run; add --resume to continue it or choose another --out")
    if resume:  # a finished run (incl. an early stop) must not train one more epoch per resume
        saved = read_training_state(out)
        why = finished(cfg, saved)
        if why:
            if ddp.main:
                print(f"{out}: already finished ({why}); nothing to train")
            return {"best": saved["best"], "history": saved["history"], "split_used": cfg.split_used,
                    "main": ddp.main}
    start_from = None
    if cfg.init and not resume:  # before the data: a wrong --init is reported at once
        start_from, sha = init_weights(cfg.init, cfg.model)
        cfg = dataclasses.replace(cfg, init_sha256=sha)
    train_set, val_set, split_used = load_training_data(cfg, root, layout, dev)
    if cfg.split_used not in (None, split_used):
        raise ConfigError(f"the training images changed since this run started: it trained on {cfg.split_used!r}, "
                          f"{root} now gives {split_used!r}; start a new --out run")
    cfg = dataclasses.replace(cfg, split_used=split_used)
    teacher = None
    if cfg.teacher:
        teacher, teacher_sha = load_teacher(cfg, split_used)
        if cfg.teacher_sha256 not in (None, teacher_sha):
            raise ConfigError(f"teacher {cfg.teacher} changed since this run started (its weights' sha256 differs); "
                              "start a new --out run")
        cfg = dataclasses.replace(cfg, teacher_sha256=teacher_sha)
        teacher = teacher.to(dev, memory_format=MEMORY_FORMAT)
    if split_used == ALL_IMAGES and ddp.main:
        print(f"warning: {root} has no splits/: training on all {len(train_set) + len(val_set)} images, so none of "
              "them is a held-out test set (add splits/train.txt + splits/test.txt to keep one)", file=sys.stderr)
    model = build_model(cfg.model).to(dev, memory_format=MEMORY_FORMAT)
    init: dict[str, Any] | None = None
    if start_from is not None:
        model.load_state_dict(start_from)
        init = init_record(cfg)
    runner: nn.Module = model  # what trains and is validated: the model, or its int8 view
    calib_x = None
    if cfg.qat and cfg.ema:
        raise ConfigError("ema and qat do not combine (QAT validates the int8 view of the raw weights); drop one")
    if cfg.qat:
        from .qat import FakeQuantSimpleUNet, agreement_loss

        runner = FakeQuantSimpleUNet(model, cfg.qat_weights)
        calib_x = next(train_set.batches(32, epoch=0, seed=cfg.seed, shuffle=False, drop_last=False))[0]
        calib_x = calib_x.to(dev, memory_format=MEMORY_FORMAT)
    supervised = DeepSupervision(model).to(dev, memory_format=MEMORY_FORMAT) if cfg.deep_supervision else None
    trained = supervised or model  # every parameter the optimizer steps: the model (and the side heads)
    decay = [p for n, p in trained.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in trained.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = len(train_set) // ddp.world // cfg.batch_size or 1
    history: list[dict[str, Any]] = []
    start_epoch, best = 0, {"val_mDice": -1.0, "epoch": -1, "threshold": 0.5}
    use_amp = cfg.amp and dev.type == "cuda" and not cfg.qat  # fake-quant rounding wants fp32
    # bf16 where the GPU has it (Ampere and later: fp32's range, so no loss scaling), else fp16 with a GradScaler
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    average = WeightAverage(model, cfg.ema) if cfg.ema else WeightAverage(model, None) if cfg.swa else None
    swa_from = int(cfg.swa * cfg.epochs) if cfg.swa else None  # the first epoch (0-based) whose end is averaged
    if resume:
        state = load_training_state(out, model, optimizer, scaler, average=average, side=supervised)
        start_epoch, best, history, init = state["epoch"] + 1, state["best"], state["history"], state.get("init")
    net: nn.Module = supervised or runner
    if ddp.world > 1:
        net = nn.parallel.DistributedDataParallel(supervised or model,
                                                  device_ids=[dev.index] if dev.type == "cuda" else None)
    total_steps = cfg.epochs * steps_per_epoch
    trained_on = hardware(dev) + (f" x{ddp.world} processes" if ddp.world > 1 else "") \
        + (f", {'bf16' if amp_dtype == torch.bfloat16 else 'fp16'} autocast" if use_amp else "")

    def lr_at(step: int) -> float:  # cosine annealing per step, eta_min at the end; SWA's constant lr
        if swa_from is not None and cfg.swa_lr and step >= swa_from * steps_per_epoch:
            return cfg.swa_lr
        progress = min(step, total_steps) / total_steps
        return cfg.eta_min + (cfg.lr - cfg.eta_min) * 0.5 * (1 + math.cos(math.pi * progress))

    if ddp.main:
        sizes = (f"{len(train_set)} train / {len(val_set)} val images at {cfg.imgsz}px" if cfg.training_size ==
                 cfg.imgsz else f"{len(train_set)} train images at {cfg.training_size}px / {len(val_set)} val at "
                 f"{cfg.imgsz}px")
        print(f"{cfg.model.name}: {count_parameters(model):,} parameters, {sizes} on {dev}"
              + (f" x{ddp.world} processes" if ddp.world > 1 else "")
              + (f", resuming at epoch {start_epoch + 1}" if resume else "")
              + (f"; quantization-aware fine-tune of {cfg.init}" if cfg.qat else
                 f"; starting from {cfg.init}" if cfg.init else ""))

    def calibrate() -> None:
        if calib_x is not None:
            runner.calibrate(calib_x)

    def _end_of_epoch(epoch: int, losses: list[float], t0: float) -> bool:
        """Validate, keep the best, save the resumable state; True to stop early."""
        nonlocal best
        calibrate()  # the ranges the export would measure on these weights
        if swa_from is not None and epoch >= swa_from:
            average.update(model)
            # the average's BatchNorm statistics, measured afresh: the last weights' ones do not fit it
            torch.optim.swa_utils.update_bn((x.to(dev, memory_format=MEMORY_FORMAT) for x, _ in
                                             train_set.batches(cfg.batch_size, epoch=0, seed=cfg.seed, shuffle=False,
                                                               drop_last=False) if len(x) > 1), average.model)
        averaged = average is not None and average.steps > 0
        judged = average.model if averaged else runner  # the weights the checkpoint keeps
        prob = predict_probabilities(judged, val_set, dev)
        val = score(prob, val_set.masks, 0.5)
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_mDice": val["mDice"],
               "val_mIoU": val["mIoU"], "lr": lr_at((epoch + 1) * steps_per_epoch - 1),  # its last step's
               "seconds": round(time.perf_counter() - t0, 2), "trained_on": trained_on}
        if cfg.qat:  # the int8 view's masks against the fp32 view's on the carve-out (the export's agreement)
            fp32 = predict_probabilities(runner.float_view(), val_set, dev) > 0.5
            meter = SegmentationMeter()
            for a, b in zip(prob > 0.5, fp32):
                meter.update(a, b)
            row["val_agreement"] = meter.summary()["pooled_dice"]
        history.append(row)
        improved = val["mDice"] > best["val_mDice"]
        if improved:
            threshold, tuned = best_threshold(prob, val_set.masks)
            best = {"val_mDice": val["mDice"], "epoch": epoch + 1, "threshold": threshold, "val_mDice_tuned": tuned}
            save_model(out, judged if averaged else model, checkpoint_meta(cfg, threshold))
        stop = bool(cfg.patience) and epoch + 1 - best["epoch"] >= cfg.patience
        extra = {"init": init} if init else {}
        save_training_state(out, model, optimizer, {"epoch": epoch, "best": best, "history": history,
                                                    "train": cfg.to_dict(), "stopped_early": stop, **extra}, scaler,
                            average=average, side=supervised)
        write_json(out / METRICS, {"best": best, "history": history, "stopped_early": stop, **extra})
        print(f"epoch {epoch + 1}/{cfg.epochs}  loss {row['loss']:.4f}  val mDice {val['mDice']:.4f}  "
              f"mIoU {val['mIoU']:.4f}  " + (f"int8 vs fp32 {row['val_agreement']:.4f}  " if cfg.qat else "")
              + f"{row['seconds']:.1f}s" + eta(history, cfg.epochs)
              + ("  *best" if improved else ""), flush=True)
        if stop:
            print(f"early stop: no improvement for {cfg.patience} epochs")
        return stop

    def out_of_time() -> bool:
        """The next epoch (as long as the slowest of the last three) would end past ``max_minutes``."""
        if max_minutes is None:
            return False
        recent = max(row["seconds"] for row in history[-3:])
        return time.perf_counter() - started + 1.1 * recent > 60 * max_minutes

    batches_done, paused = 0, False
    calibrate()  # once here: each epoch's validation re-measures the ranges the next epoch trains with
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        t0 = time.perf_counter()
        losses = []
        it: Iterable = train_set.batches(cfg.batch_size, epoch=epoch, seed=cfg.seed, augment_with=cfg.augment,
                                         rank=ddp.rank, world=ddp.world)
        bar = tqdm(it, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (progress and ddp.main), dynamic_ncols=True)
        for i, (x, y) in enumerate(bar):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch * steps_per_epoch + i)
            x = x.to(dev, non_blocking=True, memory_format=MEMORY_FORMAT)
            y = y.to(dev, non_blocking=True)
            if cfg.border_smooth:
                y = smooth_borders(y, cfg.border_smooth)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                logits, sides = net(x) if supervised is not None else (net(x), [])
                loss = segmentation_loss(logits, y, cfg.loss)
                if sides:  # deep supervision: the mean loss of the side outputs, weighted
                    loss = loss + cfg.deep_supervision * sum(segmentation_loss(s, y, cfg.loss) for s in sides) \
                        / len(sides)
                if teacher is not None and cfg.distill_weight:
                    with torch.no_grad():
                        soft = torch.sigmoid(teacher(x).float())
                    loss = loss + cfg.distill_weight * distill_loss(logits, soft)
                if cfg.qat and cfg.qat_agreement:  # train the fp32 view too, and the two views together
                    fp32_logits = runner.fp32(x)
                    loss = loss + segmentation_loss(fp32_logits, y, cfg.loss) \
                        + cfg.qat_agreement * agreement_loss(logits, fp32_logits)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if average and swa_from is None:
                average.update(model)
            losses.append(loss.item())
            if bar.disable is False:
                with torch.no_grad():
                    hard = (foreground_probability(logits.detach()) > 0.5).float()
                    dice = (2 * (hard * y).sum() + 1) / (hard.sum() + y.sum() + 1)
                bar.set_postfix(loss=f"{np.mean(losses):.4f}", dice=f"{dice.item():.3f}")
            batches_done += 1
            if stop_after_batches is not None and batches_done >= stop_after_batches:
                raise KeyboardInterrupt("simulated crash")
        stop = ddp.main and _end_of_epoch(epoch, losses, t0)
        pause = ddp.main and not stop and epoch + 1 < cfg.epochs and out_of_time()
        if ddp.world > 1:  # every rank must agree on early stop, or the others wait forever
            flag = [stop, pause]
            dist.broadcast_object_list(flag, src=0)
            stop, pause = flag
        if stop:
            break
        if pause:
            paused = True
            if ddp.main:
                print(f"time budget of {max_minutes:g} min reached after epoch {epoch + 1}/{cfg.epochs}: saved; "
                      "continue with --resume")
            break
    if ddp.world > 1:  # every rank leaves the group together: one still in gloo when another exits can abort
        dist.barrier()
        dist.destroy_process_group()
    return {"best": best, "history": history, "split_used": split_used, "paused": paused, "main": ddp.main}


def eta(history: list[dict[str, Any]], epochs: int) -> str:
    """``  eta 5h12m`` for the epochs left, at the pace of the last five (a long run's log says when it ends)."""
    left = epochs - history[-1]["epoch"]
    if left <= 0:
        return ""
    recent = [row["seconds"] for row in history[-5:]]
    minutes = round(left * sum(recent) / len(recent) / 60)
    return f"  eta {minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"  eta {minutes or '<1'}m"


def evaluate(model: nn.Module, meta: dict[str, Any], root: Path, split: str | None, layout: str = "auto",
             device: str = "auto", threshold: float | None = None, min_region: MinRegion | None = None
             ) -> dict[str, Any]:
    """mDice/mIoU (per-image), pooled Dice/IoU, precision, recall of a checkpoint on a split, at the cached size,
    with its threshold and small-region rule (checkpoints from before the rule keep every region)."""
    pre = meta["preprocess"]
    samples = select_split(discover(root, layout), root, split)
    images, masks = load_arrays(samples, pre["imgsz"])
    data = InMemorySegmentation(images, masks, pre["mean"], pre["std"])
    dev = pick_device(device)
    t = pre.get("threshold", 0.5) if threshold is None else threshold
    rule = MinRegion(*pre.get("min_region", (0.0, 0.0))) if min_region is None else MinRegion(*min_region)
    result = score(predict_probabilities(model.to(dev), data, dev), masks, t, rule)
    return {"threshold": t, "min_region": list(rule), "split": split or "all", **result}
