"""Recipe screening: short runs of one base recipe, each with one change, ranked on the carve-out.

Every candidate is data (a few training settings over the base recipe), runs as an ordinary resumable
``simpleunet-train`` run in ``runs/screen/<candidate>-e<epochs>``, and is ranked on the carve-out of the training
images (never on the test split). ``confirm`` scores the chosen few on the test split once. The table
(``table``) prints every finished or running candidate with the one command that reproduces it.

    python -m simpleunet.train.screen run baseline structure --epochs 40 --threads 1
    python -m simpleunet.train.screen table
    python -m simpleunet.train.screen confirm structure --epochs 40
    python -m simpleunet.train.screen compare heavy-e200 --against train/zoo/simpleunet16-kvasir
    python -m simpleunet.train.screen curve heavy-e200 --against train/zoo/simpleunet16-kvasir
    python -m simpleunet.train.screen regions [--confirm]

``compare`` answers "is that gap real?": two runs that share a carve-out are scored image by image on it, and the
mean difference gets a paired bootstrap interval. One seed's carve-out mDice moves by about 0.005 from epoch to
epoch, so a gap inside its interval is not a ranking.

``regions`` chooses the small-region rule (``config.MIN_REGION``) the same way: every rule of a grid applied to the
zoo models' own carve-out masks, ranked by its mean gain over the models (one rule for all, so no model's 62-88
images choose their own); ``--confirm`` then scores the chosen rule on each test split once.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from simpleunet_runtime.errors import SimpleUNetError, console_script

from .zoo import FLAGS

#: The recipe every candidate changes, and the candidates: name -> (what it tries, its settings over the base).
BASE = "simpleunet16-kvasir"
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline": ("the base recipe unchanged (as screened: SCREENED_AS)", {}),
    "structure": ("PraNet's structure loss (weighted BCE + weighted IoU)", {"loss": "structure"}),
    "ema": ("EMA of the weights, decay 0.999", {"ema": 0.999}),
    "heavy": ("heavier augmentation: zoom 0.6-1.6, shift ±15 %, colour ±30 %, gamma, blur", {"augment": "heavy"}),
    "distill32": ("distillation from the zoo's SimpleUNet-32 (same images, same carve-out)",
                  {"teacher": "train/zoo/simpleunet32-{dataset}"}),
    "structure+ema": ("structure loss + EMA 0.999", {"loss": "structure", "ema": 0.999}),
    "dilate2": ("3x3 convolutions dilated by 2 (the paper's d): the same parameters, a receptive field of 284 px "
                "instead of 158", {"model.dilation": 2}),
    "restart": ("a second cosine cycle (peak lr 5e-4) from the zoo's 200-epoch model of the base recipe",
                {"init": "train/zoo/{base}", "lr": 0.0005}),
    "heavy+distill32": ("heavier augmentation and distillation from the zoo's SimpleUNet-32",
                        {"augment": "heavy", "teacher": "train/zoo/simpleunet32-{dataset}"}),
    "dilate2+deepsup": ("dilation 2 and deep supervision (side outputs on the decoder's 1/8, 1/4, 1/2 levels, "
                        "weight 1)", {"model.dilation": 2, "deep_supervision": 1.0}),
    "dilate2+heavy": ("dilation 2 and heavier augmentation (the robust one of the undilated screens)",
                      {"model.dilation": 2, "augment": "heavy"}),
    "dilate2+deepsup+heavy": ("dilation 2, deep supervision weight 1 and heavier augmentation (the carve-out "
                              "leader with the robust augmentation)",
                              {"model.dilation": 2, "deep_supervision": 1.0, "augment": "heavy"}),
    "dilate2+swa-restart": ("SWA from the zoo's dilated model (Izmailov et al.'s use): 10 % of the epochs at lr "
                            "2e-4 to leave its minimum, then the epoch ends averaged at a constant 2e-4",
                            {"model.dilation": 2, "init": "train/zoo/{base}", "lr": 0.0002, "swa": 0.1,
                             "swa_lr": 0.0002}),
    "deepsup": ("deep supervision (side outputs on the decoder's 1/8, 1/4, 1/2 levels, weight 1)",
                {"deep_supervision": 1.0}),
    "dilate2+border-smooth": ("dilation 2 and label smoothing of mask borders (the training masks blurred by a "
                              "Gaussian of sigma 2 px)", {"model.dilation": 2, "border_smooth": 2.0}),
    "dilate2+train320": ("dilation 2, trained on images resized to 320 px (carve-out, test and export at 256)",
                         {"model.dilation": 2, "train_imgsz": 320}),
    "dilate2+carve-by-area": ("dilation 2, the carve-out drawn per lesion-size bin (the random seed-0 one holds no "
                              "polyp under 3 % of the image; this one the split's share): a reference for later "
                              "screens, compared to the zoo on val_120 only", {"model.dilation": 2,
                                                                              "carve_by": "lesion-area"}),
    "border-smooth": ("label smoothing of mask borders (the training masks blurred by a Gaussian of sigma 2 px)",
                      {"border_smooth": 2.0}),
    "border-smooth-restart": ("label smoothing of mask borders as a fine-tune: a second cosine cycle (peak lr "
                              "2e-4) from the zoo's model of the base recipe, on targets blurred by sigma 2 px",
                              {"init": "train/zoo/{base}", "lr": 0.0002, "border_smooth": 2.0}),
}
RUNS = Path("runs/screen")
#: A base recipe as it stood when its candidates were screened, where it has changed since: the zoo's
#: simpleunet16-kvasir moved to dilation 2 when ``dilate2`` won (2026-12-06), so its screens keep d = 1 and their
#: commands still reproduce them. A candidate's own settings override these.
SCREENED_AS = {"simpleunet16-kvasir": {"model.dilation": 1}}


def run_dir(name: str, epochs: int, base: str = BASE) -> Path:
    """runs/screen/<candidate>-e<epochs> for the base recipe, runs/screen/<recipe>/<candidate>-e<epochs> for another."""
    return (RUNS if base == BASE else RUNS / base) / f"{name}-e{epochs}"


def command(name: str, epochs: int, threads: int | None = None, base: str = BASE) -> list[str]:
    """The simpleunet-train command of one candidate over ``base`` (a recipe of train/recipes; a teacher or starting
    point named in a candidate is the zoo's model of that recipe's dataset: ``{dataset}`` is what follows the
    model's name, ``simpleunet16-busi`` -> ``busi``)."""
    if name not in CANDIDATES:
        raise SimpleUNetError(f"unknown candidate {name!r}; choose from {', '.join(CANDIDATES)}")
    flags = ["--recipe", base, "--epochs", str(epochs)]
    dataset = base.split("-", 1)[-1]
    for key, value in {**SCREENED_AS.get(base, {}), **CANDIDATES[name][1]}.items():
        flags += [FLAGS[key], str(value).format(base=base, dataset=dataset)]
    flags += ["--out", str(run_dir(name, epochs, base))]
    if threads:
        flags += ["--threads", str(threads)]
    return ["simpleunet-train", *flags]


def _train(name: str, epochs: int, threads: int | None, base: str = BASE) -> int:
    cmd = command(name, epochs, threads, base) + ["--no-progress"]
    if (run_dir(name, epochs, base) / "last.safetensors").is_file():
        cmd.append("--resume")
    exe = Path(sys.executable).with_name("simpleunet-train")
    print("+", " ".join(cmd), flush=True)
    return subprocess.call([str(exe) if exe.is_file() else cmd[0], *cmd[1:]])


def rows(epochs: int | None = None, base: str = BASE) -> list[dict[str, Any]]:
    """One row per candidate run of ``base`` found under runs/screen: its carve-out scores, epochs done, minutes."""
    out = []
    for name, (what, _) in CANDIDATES.items():
        for folder in sorted(run_dir(name, 0, base).parent.glob(f"{name}-e*")):
            e = int(folder.name.rsplit("-e", 1)[1])
            metrics = folder / "metrics.json"
            if (epochs and e != epochs) or not metrics.is_file():
                continue
            m = json.loads(metrics.read_text())
            confirm = folder / "test.json"
            out.append({"candidate": name, "change": what, "epochs": e, "done": len(m["history"]),
                        "carve_out": m["best"]["val_mDice"], "best_epoch": m["best"]["epoch"],
                        "minutes": sum(h["seconds"] for h in m["history"]) / 60,
                        "test": json.loads(confirm.read_text())["mDice"] if confirm.is_file() else None,
                        "command": " ".join(command(name, e, base=base))})
    return out


def table(epochs: int | None = None, base: str = BASE) -> str:
    lines = ["| candidate | change | epochs (done) | carve-out mDice (best epoch) | val_120 mDice | minutes "
             "| command |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows(epochs, base), key=lambda r: (r["epochs"], -r["carve_out"])):
        test = f"{r['test']:.4f}" if r["test"] is not None else "—"
        lines.append(f"| {r['candidate']} | {r['change']} | {r['epochs']} ({r['done']}) | {r['carve_out']:.4f} "
                     f"({r['best_epoch']}) | {test} | {r['minutes']:.0f} | `{r['command']}` |")
    return "\n".join(lines)


def _folder(name: str) -> Path:
    """A run folder given as a path, or as a screen run's name (``heavy-e200`` -> runs/screen/heavy-e200)."""
    for folder in (Path(name), RUNS / name):
        if (folder / "config.json").is_file():
            return folder
    raise SimpleUNetError(f"no run at {name} or {RUNS / name} (a run folder holds config.json); "
                          "give a run folder or a screen run's name such as heavy-e200")


def _gamma(g: float):
    return lambda im: np.round(255 * (im / 255.0) ** g).astype(np.uint8)


def _warm(im: np.ndarray) -> np.ndarray:
    return np.clip(im * np.array([1.25, 1.0, 0.8]), 0, 255).round().astype(np.uint8)


def _blur(im: np.ndarray) -> np.ndarray:
    import cv2

    return np.stack([cv2.GaussianBlur(x, (0, 0), 2.0) for x in im])


def _jpeg(im: np.ndarray) -> np.ndarray:
    import cv2

    def round_trip(rgb: np.ndarray) -> np.ndarray:  # OpenCV's JPEG codec takes BGR (its chroma planes follow)
        jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 20])[1]
        return cv2.cvtColor(cv2.imdecode(jpg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    return np.stack([round_trip(x) for x in im])


def _noise(im: np.ndarray) -> np.ndarray:
    return np.clip(im + np.random.default_rng(0).normal(0, 12, im.shape), 0, 255).round().astype(np.uint8)


#: Fixed changes of the carve-out's images (masks unchanged) that stand in for another centre's camera, since no
#: other centre's images are in the repository: exposure (gamma 1.6 / 0.6), a warm colour cast (R x1.25, B x0.8),
#: defocus (Gaussian blur, sigma 2 px), heavy compression (JPEG quality 20) and sensor noise (sigma 12 grey levels).
#: The first three lie just beyond ``--augment heavy``'s training ranges; compression and noise are in no recipe.
SHIFTS = {"none": lambda im: im, "dark": _gamma(1.6), "bright": _gamma(0.6), "warm": _warm, "blur": _blur,
          "jpeg": _jpeg, "noise": _noise}


def carve_out_probabilities(folder: Path, root: Path | None = None, shift: str = "none", _cache: dict | None = None
                            ) -> tuple[np.ndarray, np.ndarray, tuple]:
    """A run's best weights' foreground probabilities on its own carve-out, its images changed by
    ``SHIFTS[shift]``; the carve-out's masks; and the key that names that carve-out (dataset, split, seed,
    fraction, size): two runs compare only on the same key."""
    import torch

    from .checkpoint import load_model
    from .config import TrainConfig
    from .data import InMemorySegmentation, dataset_root
    from .loop import load_training_data, predict_probabilities

    if shift not in SHIFTS:
        raise SimpleUNetError(f"unknown shift {shift!r}; choose from {', '.join(SHIFTS)}")
    model, meta = load_model(folder)
    cfg = TrainConfig.from_dict(meta["train"])
    root = Path(root) if root else dataset_root(cfg.dataset, cfg.data_root)
    key = (cfg.dataset, str(root.resolve()), cfg.imgsz, cfg.seed, cfg.val_fraction, cfg.carve_by, tuple(cfg.mean),
           tuple(cfg.std))
    cache = {} if _cache is None else _cache
    if key not in cache:
        cache[key] = load_training_data(cfg, root)[1]
    if (key, shift) not in cache:
        val = cache[key]
        cache[key, shift] = InMemorySegmentation(SHIFTS[shift](val.images), val.masks, cfg.mean, cfg.std)
    val = cache[key, shift]
    return predict_probabilities(model, val, torch.device("cpu")), val.masks, key


def carve_out_dice(folder: Path, root: Path | None = None, shift: str = "none", _cache: dict | None = None
                   ) -> tuple[np.ndarray, tuple]:
    """Per-image Dice (threshold 0.5, as ``val_mDice``) on the run's carve-out (``carve_out_probabilities``)."""
    from simpleunet_runtime.metrics import dice

    prob, masks, key = carve_out_probabilities(folder, root, shift, _cache)
    return np.array([dice(p > 0.5, m) for p, m in zip(prob, masks)]), key


def split_probabilities(folder: Path, root: Path | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """A run's best weights' foreground probabilities on its dataset's (or ``root``'s) test split, the split's masks
    and the checkpoint's meta (``simpleunet-eval --split test`` scores the same images)."""
    import torch

    from .checkpoint import load_model
    from .config import TrainConfig
    from .data import InMemorySegmentation, dataset_root, discover, load_arrays, select_split
    from .loop import predict_probabilities

    model, meta = load_model(folder)
    cfg = TrainConfig.from_dict(meta["train"])
    root = Path(root) if root else dataset_root(cfg.dataset, cfg.data_root)
    images, masks = load_arrays(select_split(discover(root), root, "test"), cfg.imgsz)
    prob = predict_probabilities(model, InMemorySegmentation(images, masks, cfg.mean, cfg.std), torch.device("cpu"))
    return prob, masks, meta


def per_image_dice(prob: np.ndarray, masks: np.ndarray, threshold: float, rule: tuple[float, float] = (0, 0)
                   ) -> np.ndarray:
    """Dice of each image's ``prob > threshold`` with the small regions of ``rule`` dropped (as the runtime)."""
    from simpleunet_runtime.metrics import dice
    from simpleunet_runtime.regions import MinRegion, small_regions

    return np.array([dice((p > threshold) & ~small_regions(p > threshold, MinRegion(*rule)), m)
                     for p, m in zip(prob, masks)])


def confirm_gap(names: list[str], against: str, root: Path | None = None) -> str:
    """Each run against ``against`` image by image on the test split, each at its own threshold and small-region
    rule (what ``simpleunet-eval`` scores): the paired gap of a confirmation, once the choice is made."""
    ref_prob, ref_masks, ref_meta = split_probabilities(_folder(against), root)
    ref_pre = ref_meta["preprocess"]
    ref = per_image_dice(ref_prob, ref_masks, ref_pre["threshold"], ref_pre.get("min_region", (0, 0)))
    lines = ["| run | test images | mDice | reference mDice | gap [95 % paired bootstrap] | images better / worse "
             "| misses (Dice < 0.1) run / reference |", "|---|---|---|---|---|---|---|"]
    for name in names:
        prob, masks, meta = split_probabilities(_folder(name), root)
        if masks.shape != ref_masks.shape or not np.array_equal(masks, ref_masks):
            raise SimpleUNetError(f"{name} and {against} have different test splits (dataset or size differ)")
        pre = meta["preprocess"]
        dices = per_image_dice(prob, masks, pre["threshold"], pre.get("min_region", (0, 0)))
        g = paired_gap(dices, ref)
        lines.append(f"| {name} | {len(ref)} | {dices.mean():.4f} | {ref.mean():.4f} | {g['gap']:+.4f} "
                     f"[{g['low']:+.4f}, {g['high']:+.4f}] | {g['wins']} / {g['losses']} "
                     f"| {int((dices < 0.1).sum())} / {int((ref < 0.1).sum())} |")
    return f"reference: {against}\n\n" + "\n".join(lines)


def paired_gap(a: np.ndarray, b: np.ndarray, rounds: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Mean of ``a - b`` over the same images, its 95 % paired-bootstrap interval, and the images each side wins."""
    d = np.asarray(a, float) - np.asarray(b, float)
    means = d[np.random.default_rng(seed).integers(0, len(d), (rounds, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"gap": float(d.mean()), "low": float(lo), "high": float(hi),
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum())}


def compare(names: list[str], against: str, root: Path | None = None, shifts: tuple[str, ...] = ("none",)) -> str:
    """A table of each run against ``against`` on their shared carve-out, as it is and under each of ``shifts``
    (see the module's docstring)."""
    cache: dict = {}
    lines = ["| run | carve-out images | mDice | reference mDice | gap [95 % paired bootstrap] "
             "| images better / worse |", "|---|---|---|---|---|---|"]
    for shift in shifts:
        ref, ref_key = carve_out_dice(_folder(against), root, shift, cache)
        for name in names:
            dices, key = carve_out_dice(_folder(name), root, shift, cache)
            if key != ref_key:
                raise SimpleUNetError(f"{name} and {against} hold out different carve-outs (dataset, images, size, "
                                      "seed or fraction differ): a paired comparison needs the same images")
            g = paired_gap(dices, ref)
            lines.append(f"| {name} | {len(ref)}, {shift} | {dices.mean():.4f} | {ref.mean():.4f} | {g['gap']:+.4f} "
                         f"[{g['low']:+.4f}, {g['high']:+.4f}] | {g['wins']} / {g['losses']} |")
    return f"reference: {against}\n\n" + "\n".join(lines)


def curve(names: list[str], against: str, window: int = 10) -> str:
    """Each run's carve-out mDice, averaged over windows of ``window`` epochs, beside the reference run's (from the
    runs' metrics.json histories): one epoch's best swings by 0.005 (Kvasir-SEG) to 0.03 (BUSI), a lead that holds
    window after window is a trend. The reference should be a run of the same carve-out (a zoo model's own run); a
    run that holds out other images is named under the table, since its gaps mix the recipe with the images."""
    def carve_out(name: str) -> dict[str, Any]:
        path = _folder(name) / "config.json"
        train = json.loads(path.read_text()).get("train", {}) if path.is_file() else {}
        return {k: train.get(k, default) for k, default in (("dataset", None), ("imgsz", None), ("seed", None),
                                                             ("val_fraction", None), ("carve_by", "random"))}

    def history(name: str) -> tuple[dict[int, float], dict[str, Any]]:
        path = _folder(name) / "metrics.json"
        m = json.loads(path.read_text()) if path.is_file() else {}
        if not m.get("history"):
            raise SimpleUNetError(f"{name} has no metrics.json with an epoch history: give a run that has trained")
        return {h["epoch"]: h["val_mDice"] for h in m["history"]}, m["best"]
    if window < 1:
        raise SimpleUNetError(f"--window must be at least 1 epoch, got {window}")
    ref, ref_best = history(against)
    runs = {name: history(name) for name in names}
    last = max(max(h) for h, _ in runs.values())
    lines = ["| epochs | reference | " + " | ".join(f"{n} (gap)" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for start in range(1, last + 1, window):
        span = range(start, min(start + window, last + 1))  # the last window as far as the longest run got
        ref_ep = [e for e in span if e in ref]
        cells = []
        for h, _ in runs.values():
            both = [e for e in ref_ep if e in h]
            cells.append(f"{np.mean([h[e] for e in both]):.4f} ({np.mean([h[e] - ref[e] for e in both]):+.4f})"
                         if both else "—")
        if any(c != "—" for c in cells):
            mean_ref = f"{np.mean([ref[e] for e in ref_ep]):.4f}" if ref_ep else "—"
            lines.append(f"| {span[0]}–{span[-1]} | {mean_ref} | " + " | ".join(cells) + " |")
    bests = "; ".join(f"{n} {b['val_mDice']:.4f} at epoch {b['epoch']}" for n, (_, b) in runs.items())
    ref_carve = carve_out(against)
    other = [f"{n} holds out another carve-out than the reference ("
             + ", ".join(f"{k} {v} vs {ref_carve[k]}" for k, v in carve_out(n).items() if v != ref_carve[k])
             + "): its gaps are not the recipe's alone" for n in names if carve_out(n) != ref_carve]
    return (f"reference: {against} (best {ref_best['val_mDice']:.4f} at epoch {ref_best['epoch']})\n\n"
            + "\n".join(lines) + f"\n\nbest carve-out: {bests}" + "".join(f"\n{o}" for o in other))


#: The zoo models the small-region rule is chosen for (the 256-px ones: the microcontroller models' C example
#: applies the threshold alone), and the grid: (area fraction of the input, fraction of the largest region).
REGION_MODELS = tuple(f"simpleunet{w}-{d}" for d in ("kvasir", "busi") for w in (8, 16, 32))
REGION_GRID = [(a, r) for a in (0, 0.0005, 0.001, 0.002, 0.003, 0.005) for r in (0, 0.05, 0.1, 0.2, 0.3, 0.5)]


def regions(confirm: bool = False, zoo: Path = Path("train/zoo"), show: int = 8) -> str:
    """Rank ``REGION_GRID`` by mean carve-out mDice gain over ``REGION_MODELS`` (each at its own threshold) and, with
    ``confirm``, score the winner on each model's test split (as ``simpleunet-eval``, no rule vs the rule)."""
    from .checkpoint import load_model

    cache: dict = {}
    gains, thresholds = {}, {}
    for name in REGION_MODELS:
        prob, masks, _ = carve_out_probabilities(zoo / name, _cache=cache)
        t = thresholds[name] = load_model(zoo / name)[1]["preprocess"]["threshold"]
        base = per_image_dice(prob, masks, t, (0, 0))
        gains[name] = {rule: float((per_image_dice(prob, masks, t, rule) - base).mean()) for rule in REGION_GRID}
    ranked = sorted(REGION_GRID, key=lambda r: (-np.mean([gains[n][r] for n in REGION_MODELS]), r))
    lines = ["| area, ratio | mean carve-out gain | worst | " + " | ".join(REGION_MODELS) + " |",
             "|---|---|---|" + "---|" * len(REGION_MODELS)]
    for rule in ranked[:show]:
        g = [gains[n][rule] for n in REGION_MODELS]
        lines.append(f"| {rule[0]:g}, {rule[1]:g} | {np.mean(g):+.4f} | {min(g):+.4f} | "
                     + " | ".join(f"{x:+.4f}" for x in g) + " |")
    best = ranked[0]
    out = "\n".join(lines) + f"\n\nchosen: area {best[0]:g}, ratio {best[1]:g}"
    if confirm:
        lines = ["| model | test images | mDice, every region | mDice, rule | gap [95 % paired bootstrap] "
                 "| images better / worse |", "|---|---|---|---|---|---|"]
        for name in REGION_MODELS:
            prob, masks, _ = split_probabilities(zoo / name)
            t = thresholds[name]
            a, b = per_image_dice(prob, masks, t, best), per_image_dice(prob, masks, t, (0, 0))
            g = paired_gap(a, b)
            lines.append(f"| {name} | {len(masks)} | {b.mean():.4f} | {a.mean():.4f} | {g['gap']:+.4f} "
                         f"[{g['low']:+.4f}, {g['high']:+.4f}] | {g['wins']} / {g['losses']} |")
        out += "\n\n" + "\n".join(lines)
    return out


@console_script
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simpleunet.train.screen", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    for what in ("run", "confirm"):
        s = sub.add_parser(what)
        s.add_argument("names", **({"nargs": "*", "default": list(CANDIDATES)} if what == "run" else {"nargs": "+"}))
        s.add_argument("--epochs", type=int, default=40)
        s.add_argument("--threads", type=int)
    sub.choices["confirm"].add_argument("--against", metavar="RUN", help="also the paired gap on the test split "
                                        "against this run (e.g. train/zoo/simpleunet32-kvasir)")
    t = sub.add_parser("table")
    t.add_argument("--epochs", type=int)
    for s in (sub.choices["run"], sub.choices["confirm"], t):
        s.add_argument("--base", default=BASE, help=f"the recipe the candidates change (default {BASE})")
    c = sub.add_parser("compare", help="runs against a reference, image by image on their shared carve-out")
    c.add_argument("names", nargs="+", help="run folders, or screen runs by name (heavy-e200)")
    c.add_argument("--against", required=True, help="the reference run (e.g. train/zoo/simpleunet16-kvasir)")
    c.add_argument("--data", type=Path, help="dataset folder (default: the runs' own, as in training)")
    c.add_argument("--shift", nargs="+", default=["none"], choices=[*SHIFTS, "all"],
                   help="also score the carve-out's images changed as by another camera (SHIFTS; all: every one)")
    k = sub.add_parser("curve", help="runs' carve-out curves against a reference's, as means over epoch windows")
    k.add_argument("names", nargs="+", help="run folders, or screen runs by name (heavy-e200)")
    k.add_argument("--against", required=True, help="the reference run (e.g. train/zoo/simpleunet16-kvasir)")
    k.add_argument("--window", type=int, default=10, help="epochs per window (default 10)")
    r = sub.add_parser("regions", help="choose the small-region rule on the zoo models' carve-outs")
    r.add_argument("--confirm", action="store_true", help="also score the chosen rule on each test split, once")
    args = p.parse_args(argv)
    if args.what == "regions":
        print(regions(args.confirm))
        return 0
    if args.what == "table":
        print(table(args.epochs, args.base))
        return 0
    if args.what == "curve":
        print(curve(args.names, args.against, args.window))
        return 0
    if args.what == "compare":
        shifts = tuple(SHIFTS) if "all" in args.shift else tuple(args.shift)
        print(compare(args.names, args.against, args.data, shifts))
        return 0
    if args.what == "confirm" and args.against:
        _folder(args.against)  # a wrong reference is reported before the scoring, not after it
    for name in args.names:
        if args.what == "run":
            rc = _train(name, args.epochs, args.threads, args.base)
        else:
            folder = run_dir(name, args.epochs, args.base)
            exe = Path(sys.executable).with_name("simpleunet-eval")
            rc = subprocess.call([str(exe), str(folder), "--split", "test", "--json", str(folder / "test.json")])
        if rc:
            return rc
    if args.what == "confirm" and args.against:
        print(confirm_gap([str(run_dir(name, args.epochs, args.base)) for name in args.names], args.against))
    return 0


if __name__ == "__main__":
    sys.exit(main())
