"""Checkpoints: ``config.json`` + ``model.safetensors`` (+ ``metrics.json``) in a folder, written atomically.

``config.json`` carries the model's own arguments and its preprocessing, so export and evaluation never need
the training command line. The resumable training state (weights + optimizer + the CUDA loss scaler + RNG-free
counters) is one ``last.safetensors`` file whose metadata holds the JSON state: one file, one atomic rename.
Nothing here unpickles: safetensors and JSON only.
"""
from __future__ import annotations

import glob
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, safe_open
from torch import nn

from simpleunet_runtime.image import umask
from simpleunet_runtime.bundled import sha256

from .config import ConfigError, ModelConfig
from .model import build_model

CONFIG, WEIGHTS, METRICS, LAST = "config.json", "model.safetensors", "metrics.json", "last.safetensors"


class CheckpointError(ConfigError):
    """A checkpoint is missing, corrupt or does not match its config."""


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers never see a half-written file. The temp files
    of earlier writes of ``path`` that a kill -9 left are removed first (one process writes a given file)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; a checkpoint is a file like any other
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def _remove_stale_temps(path: Path) -> None:
    """Remove ``atomic_write``'s leftover temp files of ``path`` (``.<name>.`` + mkstemp's 8 characters)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}")
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if pattern.fullmatch(tmp.name) and tmp.is_file():
            tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)  # unwrap DDP
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_model(folder: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Weights, then ``config.json`` naming their sha256: a crash between the two renames is caught on load."""
    folder = Path(folder)
    atomic_write(folder / WEIGHTS, lambda tmp: save_file(_state_dict(model), tmp))
    write_json(folder / CONFIG, {**meta, "weights_sha256": sha256(folder / WEIGHTS)})


def is_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a run's model: its config and its best weights."""
    return (Path(folder) / CONFIG).is_file() and (Path(folder) / WEIGHTS).is_file()


def run_folders(parent: str | os.PathLike) -> list[Path]:
    """The run folders directly in ``parent`` (the zoo, runs/), sorted by name; none when it does not exist."""
    parent = Path(parent)
    return sorted(p for p in parent.iterdir() if not p.name.startswith(".") and is_run(p)) if parent.is_dir() else []


def copy_run(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a run's model (config and weights, as a pair) into ``dst``."""
    import shutil

    Path(dst).mkdir(parents=True, exist_ok=True)
    for f in (CONFIG, WEIGHTS):
        shutil.copy2(Path(src) / f, Path(dst) / f)


def read_run(folder: str | os.PathLike) -> dict[str, Any]:
    """A run folder's config, checked: ``model`` (ModelConfig fields), ``preprocess`` (imgsz, mean, std,
    channel_order, threshold), ``dataset``, ``train`` (every training setting) and ``weights_sha256``. The one
    place the toolkit reads it; a one-line error when it is not a run's."""
    folder = Path(folder)
    path = folder / CONFIG if folder.is_dir() else folder
    if not path.is_file():
        raise CheckpointError(f"no {CONFIG} in {folder}: pass a checkpoint folder written by simpleunet-train")
    try:
        meta = json.loads(path.read_text())
        ModelConfig.from_dict(meta["model"])
        pre = meta["preprocess"]
        if not (isinstance(pre["imgsz"], int) and len(pre["mean"]) == 3 and len(pre["std"]) == 3):
            raise TypeError("preprocess needs an integer imgsz and 3-value mean/std")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a simpleunet config ({type(exc).__name__}: {exc}); "
                              "pass a checkpoint folder written by simpleunet-train") from None
    return meta


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None


def load_into(model: nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Load ``weights`` into ``model`` strictly, with a one-line error listing what differs."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    shapes = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if missing or extra or shapes:
        parts = ([f"missing {missing[0]}" + (f" (+{len(missing) - 1})" if len(missing) > 1 else "")] if missing else [])
        parts += [f"unexpected {extra[0]}" + (f" (+{len(extra) - 1})" if len(extra) > 1 else "")] if extra else []
        parts += [f"shape of {shapes[0]} is {tuple(weights[shapes[0]].shape)}, config wants "
                  f"{tuple(expected[shapes[0]].shape)}"] if shapes else []
        raise CheckpointError(f"weights in {source} do not match its config: {'; '.join(parts)}")
    model.load_state_dict(weights)


def load_model(folder: str | os.PathLike, weights: str = WEIGHTS) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from ``config.json`` and load its safetensors weights (eval mode)."""
    folder = Path(folder)
    meta = read_run(folder)
    model = build_model(ModelConfig.from_dict(meta["model"]))
    tensors = _load_weights(folder / weights)
    want = meta.get("weights_sha256") if weights == WEIGHTS else None  # absent in older checkpoints: not checked
    if want and sha256(folder / weights) != want:
        raise CheckpointError(f"{folder / weights} is not the file {folder / CONFIG} was saved with (sha256 differs: "
                              "a save was interrupted or a file replaced); resume the run or copy both from one save")
    load_into(model, tensors, folder / weights)
    return model.eval(), meta


def init_weights(folder: str | os.PathLike, config: ModelConfig) -> tuple[dict[str, torch.Tensor], str]:
    """The best weights of the run a fine-tune starts from, and their sha256; its architecture must be ``config``."""
    init, meta = load_model(folder)
    theirs, ours = init.config.to_dict(), config.to_dict()
    differ = [f"{k} {theirs[k]} (this run: {ours[k]})" for k in ours if theirs[k] != ours[k]]
    if differ:
        raise CheckpointError(f"--init {folder} has {', '.join(differ)}; start from a checkpoint of the same "
                              "architecture")
    return init.state_dict(), sha256(Path(folder) / WEIGHTS)


def save_training_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        state: dict[str, Any], scaler: torch.amp.GradScaler | None = None, average=None,
                        side: nn.Module | None = None) -> None:
    """One file with the weights (``model.*``), the optimizer tensors (``optim.*``) and the JSON state, plus the
    mixed-precision loss scale when AMP is on (without it a resumed GPU run restarts at 65536 and skips steps), the
    weight average (``ema.*``, loop.WeightAverage) when the run keeps one and deep supervision's side heads
    (``side.*``, model.DeepSupervision) when it trains them."""
    tensors = {f"model.{k}": v for k, v in _state_dict(model).items()}
    if side is not None:
        tensors.update({f"side.{k}": v for k, v in _state_dict(side.side).items()})
    if average is not None:
        tensors.update({f"ema.{k}": v for k, v in _state_dict(average.model).items()})
        state = {**state, "ema_steps": average.steps}
    opt = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for pid, pstate in opt["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value) and value.ndim > 0:
                tensors[f"optim.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = float(value)
    meta = {"state": json.dumps(state), "optim_scalars": json.dumps(scalars),
            "param_groups": json.dumps(opt["param_groups"])}
    if scaler is not None and scaler.is_enabled():
        meta["amp_scaler"] = json.dumps(scaler.state_dict())
    atomic_write(Path(folder) / LAST, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _open_training_state(folder: Path, with_tensors: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata with its JSON fields parsed, tensors) of ``folder/last.safetensors``, or a one-line error."""
    path = Path(folder) / LAST
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist (start without --resume)")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
        meta = {k: json.loads(raw[k]) for k in ("state", "optim_scalars", "param_groups")}
        meta["amp_scaler"] = json.loads(raw.get("amp_scaler", "{}"))
    except (SafetensorError, OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable training state ({exc}); start a new run in another "
                              "--out folder") from None
    return meta, tensors


def read_training_state(folder: Path) -> dict[str, Any]:
    """The JSON state of a run (epoch, best, history, train config) without loading its tensors."""
    return _open_training_state(folder, with_tensors=False)[0]["state"]


def load_training_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler | None = None, average=None,
                        side: nn.Module | None = None) -> dict[str, Any]:
    path = Path(folder) / LAST
    meta, tensors = _open_training_state(folder, with_tensors=True)
    state, scalars, groups = meta["state"], meta["optim_scalars"], meta["param_groups"]
    load_into(getattr(model, "module", model), {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    if side is not None:
        load_into(side.side, {k[5:]: v for k, v in tensors.items() if k.startswith("side.")}, path)
    if average is not None:
        load_into(average.model, {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, path)
        average.steps = int(state.get("ema_steps", 0))
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    for key, value in scalars.items():
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = torch.tensor(value)
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    if scaler is not None and scaler.is_enabled() and meta["amp_scaler"]:  # a CPU run resumed on a GPU starts fresh
        scaler.load_state_dict(meta["amp_scaler"])
    return state
