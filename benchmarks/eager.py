"""The PyTorch eager fp32 baseline for ``simpleunet-bench``: the checkpoint a model file was exported from, run in
torch with the runtime's own preprocessing, so "N x faster than PyTorch" compares the same weights on the same
pixels. Found through the model file's metadata: ``extra["checkpoint"]``, else ``train/zoo/<name>/``; when the
metadata carries ``weights_sha256`` the checkpoint must match it (safetensors file hash or state-dict hash).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from simpleunet_runtime.bench import Job
from simpleunet_runtime.errors import SimpleUNetError
from simpleunet_runtime.image import load_image, normalize, resize_image, resize_probabilities
from simpleunet_runtime.metadata import ModelMetadata
from simpleunet_runtime.segmenter import foreground_probability, without_small_regions
from simpleunet_runtime.bundled import sha256

from simpleunet.train.checkpoint import WEIGHTS, is_run, load_model
from simpleunet.train.config import ModelConfig
from simpleunet.train.flops import count_macs
from simpleunet.train.model import build_model
from simpleunet.train.zoo import ZOO


class EagerRunner:
    """Same interface as ``Segmenter`` for the bench: ``metadata``, ``preprocess``, ``run``, ``predict_proba``; the
    file's small-region rule applied as the Segmenter applies it."""

    def __init__(self, model: nn.Module, metadata: ModelMetadata, threads: int | None = None, device: str = "cpu"):
        if threads:
            torch.set_num_threads(int(threads))
        self.device = torch.device("cuda" if device == "cuda" else "cpu")
        self.model = model.eval().to(self.device)
        self.metadata = metadata.replace(precision="fp32")
        self.backend = "torch-cuda" if device == "cuda" else "torch"

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        batch = [resize_image(load_image(np.asarray(im)), self.metadata.imgsz) for im in images]
        return normalize(np.stack(batch), self.metadata.mean, self.metadata.std)

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            y = self.model(torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device))
            y = torch.sigmoid(y) if y.shape[1] == 1 else torch.softmax(y, dim=1)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        return without_small_regions(y.cpu().numpy(), self.metadata)  # as the model files' runners do

    def run(self, x: np.ndarray) -> np.ndarray:
        return foreground_probability(self._probabilities(x))

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        img = load_image(image)
        return resize_probabilities(self.run(self.preprocess([img])), img.shape[:2])[0]


def cuda_available() -> bool:
    """Lets ``simpleunet-bench --device cuda`` run the eager baseline on a GPU even when onnxruntime has no CUDA."""
    return torch.cuda.is_available()


def state_dict_sha(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def find_checkpoint(meta: ModelMetadata, model_path: Path) -> Path | None:
    extra = (meta.extra or {}).get("checkpoint")
    candidates = []
    if isinstance(extra, str) and extra:
        p = Path(extra)
        candidates += [p] if p.is_absolute() else [model_path.parent / p, p]
    if meta.name:
        candidates.append(ZOO / meta.name)
    return next((c for c in candidates if is_run(c)), None)


def eager_job_from_model(model: nn.Module, meta: ModelMetadata, path: Path, key: str, device: str = "cpu",
                         dice_note: str = "") -> Job:
    """A bench job for an in-memory model (the suite's random-weight U-Net peer uses this directly)."""
    macs = (meta.extra or {}).get("macs") or count_macs(model, tuple(meta.imgsz))
    job = Job(path=Path(path), format="pytorch", backend="torch-cuda" if device == "cuda" else "torch",
              open=lambda threads: EagerRunner(model, meta, threads, device), name=meta.name or Path(path).name,
              precision="fp32", parameters=meta.parameters or None, macs=int(macs), imgsz=tuple(meta.imgsz),
              key=key, dice_note=dice_note, metadata=meta.replace(precision="fp32"))
    return job


def eager_job(meta: ModelMetadata, model_path: Path, device: str = "cpu") -> Job:
    """The eager job for the weights behind ``model_path``, or a job whose ``skip`` says why there is none."""
    key = meta.weights_sha256 or meta.name or model_path.stem
    folder = find_checkpoint(meta, model_path)
    if folder is None:
        return Job(path=model_path, format="pytorch", backend="torch", open=_never, name=meta.name or model_path.stem,
                   precision="fp32", key=key, skip=f"skipped: no checkpoint for {meta.name or model_path.name} "
                   f"(looked for metadata extra.checkpoint and {ZOO / (meta.name or '?')})")
    try:
        model, _ = load_model(folder)
    except SimpleUNetError as exc:
        return Job(path=folder, format="pytorch", backend="torch", open=_never, name=meta.name, precision="fp32",
                   key=key, error=f"error: {exc}")
    if meta.weights_sha256:
        file_sha = sha256(folder / WEIGHTS)
        if meta.weights_sha256 not in (file_sha, state_dict_sha(model)):
            return Job(path=folder, format="pytorch", backend="torch", open=_never, name=meta.name,
                       precision="fp32", key=key, skip=f"skipped: checkpoint {folder} holds other weights than "
                       f"the model file (weights_sha256 differs)")
    job = eager_job_from_model(model, meta, folder, key, device)
    job.file_bytes = (folder / WEIGHTS).stat().st_size
    return job


def macs_from_metadata(meta: ModelMetadata) -> int | None:
    """MACs per image at the file's input size, counted on the architecture its metadata carries (files exported
    before ``architecture`` existed: from its family/width/blocks/rate/aff, with the 3x3 kernels they all have);
    None for a family this toolkit does not build."""
    try:
        cfg = ModelConfig.from_dict(meta.architecture) if meta.architecture else ModelConfig(
            family=meta.family, width=meta.width, blocks=meta.blocks, rate=meta.rate, num_classes=meta.num_classes,
            aff=meta.aff)
        return count_macs(build_model(cfg), tuple(meta.imgsz))
    except (SimpleUNetError, TypeError, ValueError):
        return None


def _never(threads: int) -> Any:
    raise SimpleUNetError("this job is not runnable")


#: What ``simpleunet-bench`` loads through the ``simpleunet_runtime.baselines`` entry point ``pytorch``
#: (pyproject.toml), so the runtime names no toolkit module.
BASELINE = SimpleNamespace(eager_job=eager_job, macs_from_metadata=macs_from_metadata, cuda_available=cuda_available)
