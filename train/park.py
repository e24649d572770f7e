"""Run folders parked in git between sessions: ``runs/`` belongs to one machine, the repository outlasts it.

A session (or a lent GPU) ends wherever it is, and the next one may start on a new machine with an empty
``runs/``. ``park`` copies every run under ``runs/`` into ``train/parked/`` (same relative path): an unfinished run
whole, so it resumes (its ``last.safetensors``: about 0.2 MB for SimpleUNet-16, 8 MB for SimpleESKNet-32); a
finished one without its training state, so the screening table keeps its row. ``unpark`` puts them back, never
over a run folder that has trained further. Commit ``train/parked/`` after ``park``; a run leaves it once it is
published into the zoo (delete its folder).

    python -m simpleunet.train.park park        # runs/ -> train/parked/ (then git add train/parked)
    python -m simpleunet.train.park unpark      # train/parked/ -> runs/ (then resume as usual)
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from simpleunet_runtime.bundled import sha256
from simpleunet_runtime.errors import console_script

from .checkpoint import CONFIG, LAST, METRICS, WEIGHTS, atomic_write, is_run, read_training_state

RUNS, PARKED = Path("runs"), Path("train/parked")


def _runs(root: Path) -> list[Path]:
    """Every run folder under ``root`` (a run may sit one level down, as ``runs/screen/<candidate>``)."""
    return sorted(p for p in root.rglob("*") if p.is_dir() and not p.name.startswith(".") and is_run(p)) \
        if root.is_dir() else []


def epochs_done(folder: Path) -> int:
    """Epochs a run folder holds: its training state's, else its metrics history's length."""
    if (folder / LAST).is_file():
        return read_training_state(folder)["epoch"] + 1
    metrics = folder / METRICS
    return len(json.loads(metrics.read_text())["history"]) if metrics.is_file() else 0


def _finished(folder: Path) -> bool:
    from .config import TrainConfig
    from .loop import finished

    if not (folder / LAST).is_file():
        return True
    state = read_training_state(folder)
    return finished(TrainConfig.from_dict(state["train"]), state) is not None


def _copy(src: Path, dst: Path, skip: set[str]) -> None:
    """Copy a run folder's files (not its temp files) file by file, each atomically; again when a training still
    writing ``src`` replaced its best weights between the copies of ``config.json`` and ``model.safetensors``."""
    for _ in range(3):
        for f in sorted(src.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.name not in skip:
                atomic_write(dst / f.name, lambda tmp, f=f: shutil.copyfile(f, tmp))
        if json.loads((dst / CONFIG).read_text()).get("weights_sha256") in (None, sha256(dst / WEIGHTS)):
            break
    for f in dst.iterdir():
        if f.is_file() and f.name in skip:
            f.unlink()


def park(runs: Path = RUNS, parked: Path = PARKED, log=print) -> list[Path]:
    """Copy every run under ``runs`` into ``parked``; the training state only of the runs still to finish."""
    done = []
    for run in _runs(runs):
        dst = parked / run.relative_to(runs)
        if dst.is_dir() and epochs_done(dst) > epochs_done(run):
            log(f"{run}: kept the parked copy (it holds more epochs)")
            continue
        finished = _finished(run)
        _copy(run, dst, skip={LAST} if finished else set())
        log(f"{run} -> {dst} ({epochs_done(run)} epochs, {'finished' if finished else 'resumable'})")
        done.append(dst)
    return done


def unpark(parked: Path = PARKED, runs: Path = RUNS, log=print) -> list[Path]:
    """Copy every parked run back into ``runs``, unless the folder there already holds as many epochs."""
    done = []
    for run in _runs(parked):
        dst = runs / run.relative_to(parked)
        if dst.is_dir() and is_run(dst) and epochs_done(dst) >= epochs_done(run):
            log(f"{dst}: already there with {epochs_done(dst)} epochs")
            continue
        _copy(run, dst, skip=set())
        log(f"{run} -> {dst} ({epochs_done(run)} epochs)")
        done.append(dst)
    return done


@console_script
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("python -m simpleunet.train.park", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("park", "unpark"))
    p.add_argument("--runs", type=Path, default=RUNS, help=f"the machine's run folders (default {RUNS})")
    p.add_argument("--parked", type=Path, default=PARKED, help=f"the parked copies (default {PARKED})")
    args = p.parse_args(argv)
    if args.action == "park":
        park(args.runs, args.parked)
    else:
        unpark(args.parked, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
