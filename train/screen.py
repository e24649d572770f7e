"""Recipe screening: short runs of one base recipe, each with one change, ranked on the carve-out.

Every candidate is data (a few training settings over the base recipe), runs as an ordinary resumable
``simpleunet-train`` run in ``runs/screen/<candidate>-e<epochs>``, and is ranked on the carve-out of the training
images (never on the test split). ``confirm`` scores the chosen few on the test split once. The table
(``table``) prints every finished or running candidate with the one command that reproduces it.

    python -m simpleunet.train.screen run baseline structure --epochs 40 --threads 1
    python -m simpleunet.train.screen table
    python -m simpleunet.train.screen confirm structure --epochs 40
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from simpleunet_runtime.errors import SimpleUNetError, console_script

from .zoo import FLAGS

#: The recipe every candidate changes, and the candidates: name -> (what it tries, its settings over the base).
BASE = "simpleunet16-kvasir"
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline": ("the zoo recipe as it is", {}),
    "structure": ("PraNet's structure loss (weighted BCE + weighted IoU)", {"loss": "structure"}),
    "ema": ("EMA of the weights, decay 0.999", {"ema": 0.999}),
    "heavy": ("heavier augmentation: zoom 0.6-1.6, shift ±15 %, colour ±30 %, gamma, blur", {"augment": "heavy"}),
    "distill32": ("distillation from the zoo's SimpleUNet-32 (same images, same carve-out)",
                  {"teacher": "train/zoo/simpleunet32-kvasir"}),
    "structure+ema": ("structure loss + EMA 0.999", {"loss": "structure", "ema": 0.999}),
}
RUNS = Path("runs/screen")


def run_dir(name: str, epochs: int) -> Path:
    return RUNS / f"{name}-e{epochs}"


def command(name: str, epochs: int, threads: int | None = None) -> list[str]:
    """The simpleunet-train command of one candidate (resumed when its folder already holds a run)."""
    if name not in CANDIDATES:
        raise SimpleUNetError(f"unknown candidate {name!r}; choose from {', '.join(CANDIDATES)}")
    flags = ["--recipe", BASE, "--epochs", str(epochs)]
    for key, value in CANDIDATES[name][1].items():
        flags += [FLAGS[key], str(value)]
    flags += ["--out", str(run_dir(name, epochs))]
    if threads:
        flags += ["--threads", str(threads)]
    return ["simpleunet-train", *flags]


def _train(name: str, epochs: int, threads: int | None) -> int:
    cmd = command(name, epochs, threads) + ["--no-progress"]
    if (run_dir(name, epochs) / "last.safetensors").is_file():
        cmd.append("--resume")
    exe = Path(sys.executable).with_name("simpleunet-train")
    print("+", " ".join(cmd), flush=True)
    return subprocess.call([str(exe) if exe.is_file() else cmd[0], *cmd[1:]])


def rows(epochs: int | None = None) -> list[dict[str, Any]]:
    """One row per candidate run found under runs/screen: its carve-out scores, epochs done, minutes."""
    out = []
    for name, (what, _) in CANDIDATES.items():
        for folder in sorted(RUNS.glob(f"{name}-e*")):
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
                        "command": " ".join(command(name, e))})
    return out


def table(epochs: int | None = None) -> str:
    lines = ["| candidate | change | epochs (done) | carve-out mDice (best epoch) | val_120 mDice | minutes "
             "| command |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows(epochs), key=lambda r: (r["epochs"], -r["carve_out"])):
        test = f"{r['test']:.4f}" if r["test"] is not None else "—"
        lines.append(f"| {r['candidate']} | {r['change']} | {r['epochs']} ({r['done']}) | {r['carve_out']:.4f} "
                     f"({r['best_epoch']}) | {test} | {r['minutes']:.0f} | `{r['command']}` |")
    return "\n".join(lines)


@console_script
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simpleunet.train.screen", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    for what in ("run", "confirm"):
        s = sub.add_parser(what)
        s.add_argument("names", nargs="*", default=list(CANDIDATES) if what == "run" else None)
        s.add_argument("--epochs", type=int, default=40)
        s.add_argument("--threads", type=int)
    t = sub.add_parser("table")
    t.add_argument("--epochs", type=int)
    args = p.parse_args(argv)
    if args.what == "table":
        print(table(args.epochs))
        return 0
    for name in args.names:
        if args.what == "run":
            rc = _train(name, args.epochs, args.threads)
        else:
            folder = run_dir(name, args.epochs)
            exe = Path(sys.executable).with_name("simpleunet-eval")
            rc = subprocess.call([str(exe), str(folder), "--split", "test", "--json", str(folder / "test.json")])
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
