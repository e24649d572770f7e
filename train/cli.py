"""``simpleunet-train`` and ``simpleunet-eval``."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from simpleunet_runtime.errors import SimpleUNetError, console_script

from .data import dataset_root
from .config import AUGMENTS, CARVE_BY, FAMILIES, HEADS, LOSSES, ConfigError, TrainConfig

RECIPES = Path(__file__).parent / "recipes"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.json"))


def load_recipe(name: str) -> TrainConfig:
    path = RECIPES / f"{name}.json" if not name.endswith(".json") else Path(name)
    if not path.is_file():
        raise SimpleUNetError(f"unknown recipe {name!r}; choose one of {', '.join(recipe_names())} or pass a "
                              ".json path")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SimpleUNetError(f"recipe {path} is not readable JSON ({exc}); fix it or pick a named recipe") from None
    if not isinstance(data, dict):
        raise SimpleUNetError(f"recipe {path} must be a JSON object of training settings")
    return TrainConfig.from_dict(data)


def checkpoint_data_root(meta: dict, explicit: str | None, checkpoint: str | os.PathLike) -> Path:
    """--data, else the folder the run trained on (``train.data_root``) while it exists, else its dataset by name."""
    recorded = (meta.get("train") or {}).get("data_root")
    if not explicit and recorded and Path(recorded).is_dir():
        return Path(recorded)
    if not (explicit or meta.get("dataset")):
        raise SimpleUNetError(f"checkpoint {checkpoint} does not record its dataset; pass --data <folder>")
    return dataset_root(meta.get("dataset", ""), explicit)


def training_overlap(meta: dict, root: Path, split: str | None, layout: str = "auto") -> int | None:
    """How many images of ``split`` in ``root`` the run trained on (by id, carve-out included); None if unrecorded."""
    from .data import discover, select_split, training_pool

    train = meta.get("train") or {}
    if not train.get("split_used"):
        return None  # a run from before the record: unknown, as it always was
    samples = discover(root, layout)
    try:
        home = dataset_root(meta.get("dataset", ""), train.get("data_root"))
        pool = training_pool(samples if home.resolve() == Path(root).resolve() else discover(home), home,
                             train["split_used"])
    except SimpleUNetError:  # the training folder is gone: take ``root`` as the same dataset
        pool = training_pool(samples, root, train["split_used"])
    if pool is None:
        return None
    ids = {s.id for s in pool}
    return sum(s.id in ids for s in select_split(samples, root, split))


#: What a resumed run may change: how fast and where it runs, not what it learns (data_root is compared apart).
RESUME_MAY_CHANGE = ("threads", "workers", "data_root", "split_used", "init_sha256", "teacher_sha256")


def resumed_config(saved: TrainConfig, asked: TrainConfig, data: str | None, threads: int | None,
                   out: str) -> TrainConfig:
    """The saved config: a changed setting would move the carve-out or schedule under the run's kept best/history."""
    old, new = saved.flat(), asked.flat()
    changed = [f"{k} ({old[k]} -> {new[k]})" for k in new if k not in RESUME_MAY_CHANGE and new[k] != old[k]]
    data_root = saved.data_root
    if data:
        try:
            before = dataset_root(saved.dataset, saved.data_root)
        except SimpleUNetError:
            before = None
        if before is not None and before.is_dir() and before.resolve() != Path(data).resolve():
            changed.append(f"data_root ({before} -> {data})")
        elif before is None or not before.is_dir():  # the data moved: the only way to go on
            data_root = str(Path(data).resolve())
    if changed:
        raise ConfigError(f"--resume cannot change {', '.join(changed)}: {out} was trained with the saved values; "
                          "start a new --out run to change them")
    return dataclasses.replace(saved, data_root=data_root, threads=saved.threads if threads is None else threads)


@console_script(interrupted="the last finished epoch is saved; continue with --resume")
def train_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("simpleunet-train", description="Train a SimpleUNet/SimpleESKNet on image/mask pairs.")
    p.add_argument("--recipe", help=f"a named recipe ({', '.join(recipe_names())}) or a recipe .json")
    p.add_argument("--data", help="dataset folder (default: ../shared/datasets/<dataset>)")
    p.add_argument("--dataset", help="dataset name recorded in the model (kvasir-seg, busi, ...)")
    p.add_argument("--layout", default="auto", help="folder layout: auto, folder, kvasir-zip, busi-original, isic2018")
    p.add_argument("--out", required=True, help="run folder for checkpoints and metrics")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--family", choices=FAMILIES)
    p.add_argument("--width", type=int)
    p.add_argument("--blocks", type=int)
    p.add_argument("--rate", type=float, help="skip selection rate R in (0, 1]")
    p.add_argument("--classes", type=int, dest="num_classes")
    p.add_argument("--head", choices=HEADS)
    p.add_argument("--kernel-size", type=int, help="k of every k x k conv (SimpleUNet; default 3)")
    p.add_argument("--dilation", type=int, help="dilation d of every k x k conv (SimpleUNet; default 1): the same "
                   "parameters over a wider receptive field")
    p.add_argument("--no-aff", action="store_true")
    for name, typ in (("epochs", int), ("batch-size", int), ("lr", float), ("weight-decay", float),
                      ("eta-min", float), ("imgsz", int), ("seed", int), ("patience", int), ("threads", int),
                      ("val-fraction", float)):
        p.add_argument(f"--{name}", type=typ)
    p.add_argument("--carve-by", choices=CARVE_BY, help="how the validation carve-out is drawn: random (default) "
                   "or lesion-area (the fraction from each lesion-size bin)")
    p.add_argument("--augment", choices=AUGMENTS)
    p.add_argument("--loss", choices=LOSSES, help="bce_dice (default) or structure (PraNet's weighted BCE + IoU)")
    p.add_argument("--ema", type=float, help="keep an exponential moving average of the weights with this decay "
                   "(e.g. 0.999) and validate, keep and export it; 0 = off")
    p.add_argument("--swa", type=float, metavar="F", help="stochastic weight averaging over the last (1 - F) of "
                   "the epochs (e.g. 0.75): average each epoch's weights; validate and export it; 0 = off")
    p.add_argument("--swa-lr", type=float, help="the constant lr while --swa averages (default 0: the cosine goes on)")
    p.add_argument("--teacher", metavar="DIR", help="distil from this run folder's model (trained on the same images "
                   "and carve-out)")
    p.add_argument("--distill-weight", type=float, help="weight of the distillation term (default 1)")
    p.add_argument("--deep-supervision", type=float, metavar="W", help="add W x the mean loss of side outputs on "
                   "the decoder's 1/8, 1/4 and 1/2 levels (training only: the saved model is unchanged); 0 = off")
    p.add_argument("--border-smooth", type=float, metavar="SIGMA", help="label smoothing of mask borders: blur the "
                   "training masks by a Gaussian of SIGMA px (e.g. 2); 0 = off")
    p.add_argument("--train-imgsz", type=int, metavar="PX", help="train on images resized to PX (e.g. 320) while "
                   "the model, its carve-out and its export stay at --imgsz; 0 = train at --imgsz")
    p.add_argument("--init", metavar="DIR", help="start from this checkpoint folder's weights (a fine-tune; same "
                   "architecture)")
    p.add_argument("--qat", action="store_true", help="quantization-aware fine-tuning through the int8 graph the "
                   "export writes (simpleunet family; needs --init)")
    p.add_argument("--qat-weights", choices=("int7", "pair-safe", "int8"), help="the int8 weight grid --qat trains "
                   "through (default int7, the exporter's default; int8 is the full-range grid of files before "
                   "2026-12-03, which is not exact on x86 CPUs without VNNI)")
    p.add_argument("--qat-agreement", type=float, metavar="W", help="with --qat, also train the fp32 view on the "
                   "task and W x the two views' disagreement (default 0: the int8 view alone)")
    p.add_argument("--max-minutes", type=float, metavar="M", help="stop after the last epoch that ends within M "
                   "minutes of wall-clock time (saved; --resume goes on): one chunk of a run on a GPU lent for a "
                   "few minutes")
    p.add_argument("--fast", action="store_true", help="on CUDA: cuDNN autotuning and TF32 instead of deterministic "
                   "kernels (faster; a resumed run is then not bit-identical to an uninterrupted one)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    def go() -> int:
        from .checkpoint import read_training_state
        from .data import ALL_IMAGES
        from .loop import train
        saved = None
        if args.resume and (Path(args.out) / "last.safetensors").is_file():
            saved = TrainConfig.from_dict(read_training_state(Path(args.out))["train"])
        cfg = load_recipe(args.recipe) if args.recipe else saved or TrainConfig()
        model_over = {k: getattr(args, k) for k in ("family", "width", "blocks", "rate", "num_classes", "head",
                                                     "kernel_size", "dilation")
                      if getattr(args, k) is not None}
        if args.no_aff:
            model_over["aff"] = False
        train_over = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "eta_min", "imgsz",
                                                     "seed", "patience", "threads", "val_fraction", "carve_by",
                                                     "augment", "dataset", "init", "qat_weights", "loss", "ema", "swa",
                                                     "swa_lr", "teacher", "distill_weight", "deep_supervision",
                                                     "border_smooth", "train_imgsz", "qat_agreement")
                      if getattr(args, k) is not None}
        if args.qat:
            train_over["qat"] = True
        d = cfg.to_dict()
        d["model"].update(model_over)
        d.update(train_over)
        if args.data:
            d["data_root"] = str(Path(args.data).resolve())  # eval finds the run's own data from any folder
        cfg = TrainConfig.from_dict(d)
        if saved:
            cfg = resumed_config(saved, cfg, args.data, args.threads, args.out)
        root = dataset_root(cfg.dataset, cfg.data_root)
        result = train(cfg, root, Path(args.out), resume=args.resume, device=args.device, layout=args.layout,
                       progress=not args.no_progress, max_minutes=args.max_minutes, fast=args.fast)
        b = result["best"]
        if not result.get("main", True):  # another rank of a torchrun job: rank 0 reports
            return 0
        if result.get("paused"):
            print(f"paused: {result['history'][-1]['epoch']} of {cfg.epochs} epochs done, best val mDice "
                  f"{b['val_mDice']:.4f} at epoch {b['epoch']}. Next: simpleunet-train --out {args.out} --resume")
            return 0
        nxt = (f"simpleunet-eval {args.out} --data <a folder of images it never saw>"
               if result.get("split_used") == ALL_IMAGES else f"simpleunet-eval {args.out} --split test")
        print(f"done: best val mDice {b['val_mDice']:.4f} at epoch {b['epoch']} (threshold {b['threshold']}); "
              f"weights in {args.out}. Next: {nxt}")
        return 0

    return go()


@console_script
def eval_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("simpleunet-eval", description="Dice/IoU of a checkpoint on a dataset split.")
    p.add_argument("checkpoint", help="a run folder written by simpleunet-train")
    p.add_argument("--data", help="dataset folder (default: the dataset the model was trained on)")
    p.add_argument("--layout", default="auto")
    p.add_argument("--split", default="test", help="train, test, val, all, or a split .txt file (default test)")
    p.add_argument("--threshold", type=float, help="override the checkpoint's tuned threshold")
    p.add_argument("--min-region", metavar="AREA,RATIO", help="override the checkpoint's small-region rule (0,0 "
                   "keeps every region)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the result to this JSON file")
    args = p.parse_args(argv)

    def go() -> int:
        from .checkpoint import load_model, write_json
        from .loop import evaluate
        if args.threshold is not None and not 0 < args.threshold < 1:  # also rejects nan and inf
            raise ConfigError(f"--threshold must be between 0 and 1 (exclusive), got {args.threshold}")
        rule = None
        if args.min_region is not None:
            from simpleunet_runtime.metadata import FieldError, check_min_region
            try:
                rule = check_min_region([float(v) for v in args.min_region.split(",")], "--min-region")
            except (ValueError, FieldError):
                raise ConfigError(f"--min-region must be two numbers AREA,RATIO in [0, 1], got "
                                  f"{args.min_region!r}") from None
        model, meta = load_model(args.checkpoint)
        root = checkpoint_data_root(meta, args.data, args.checkpoint)
        res = evaluate(model, meta, root, args.split, args.layout, args.device, args.threshold, rule)
        res = {"checkpoint": str(args.checkpoint), "data": str(root), "imgsz": meta["preprocess"]["imgsz"], **res}
        seen = training_overlap(meta, root, args.split, args.layout)
        if seen:
            res["held_out"] = False
            print(f"warning: {seen} of these {res['images']} images are in the run's training pool "
                  f"({meta['train']['split_used']}): this is not a held-out score", file=sys.stderr)
        print(f"{'metric':<12}{'value':>8}")
        for k in ("mDice", "mIoU", "pooled_dice", "pooled_iou", "precision", "recall"):
            print(f"{k:<12}{res[k]:>8.4f}")
        print(f"{res['images']} images of split '{res['split']}' at {res['imgsz']}px, threshold {res['threshold']}, "
              f"small-region rule {','.join(f'{v:g}' for v in res['min_region'])}")
        if args.json:
            write_json(Path(args.json), res)
        return 0

    return go()
