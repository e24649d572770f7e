"""What the suite benchmarks: the zoo checkpoints and the classic U-Net peer, each exported the same way.

Exports are cached under ``--work`` (default ``$SIMPLEUNET_CACHE/benchmarks``) keyed by the checkpoint's weights
hash and the toolkit version, so re-running the suite re-measures without re-converting. The U-Net peer cannot be
trained on a CPU in a session, so it gets seeded random weights: its latency and size are real, its Dice is not
scored (marked "untrained").
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

import simpleunet
from simpleunet.train.checkpoint import (WEIGHTS, copy_run, is_run, load_model, read_run, run_folders, save_model,
                                         write_json)
from simpleunet.train.config import ConfigError, ModelConfig, TrainConfig
from simpleunet.train.model import build_model
from simpleunet.train.zoo import EXPORT_OPTIONS, ZOO
from simpleunet_runtime.bundled import sha256

UNET_PEER = ModelConfig(family="unet", width=32, num_classes=1, head="logits")
DEFAULT_PREPROCESS = TrainConfig().preprocess()


@dataclass
class Subject:
    """One set of weights: its checkpoint folder, the exported files, the dataset to score it on."""

    name: str
    checkpoint: Path
    dataset: str
    files: list[Path] = field(default_factory=list)
    untrained: bool = False
    note: str = ""


def zoo_subjects(names: list[str] | None = None) -> list[Subject]:
    """Every ``train/zoo/<name>/`` with a config and weights (or just ``names``)."""
    folders = run_folders(ZOO)
    if names:
        missing = sorted(set(names) - {p.name for p in folders})
        if missing:
            have = ", ".join(p.name for p in folders) or "none"
            raise ConfigError(f"no zoo model {missing[0]!r} in {ZOO} (have: {have})")
        folders = [p for p in folders if p.name in names]
    return [Subject(p.name, p, read_run(p).get("dataset", "kvasir-seg")) for p in folders]


def checkpoint_subject(folder: Path, work: Path) -> Subject:
    """A checkpoint outside the zoo (e.g. a run still training), snapshotted first: its weights must not change
    between the export and the eager baseline."""
    folder = Path(folder)
    if not is_run(folder):
        raise ConfigError(f"{folder} is not a run folder written by simpleunet-train (needs its config and weights)")
    snap = work / "checkpoints" / f"{folder.name}-{_weights_key(folder)}"
    if not (snap / WEIGHTS).is_file():
        copy_run(folder, snap)
    if _weights_key(snap) != snap.name.rsplit("-", 1)[1]:  # copied while the run was rewriting it
        shutil.rmtree(snap)
        return checkpoint_subject(folder, work)
    return Subject(folder.name, snap, read_run(snap).get("dataset", "kvasir-seg"))


def unet_peer(work: Path, seed: int = 0) -> Subject:
    """A seeded random-weight classic U-Net (width 32, ~7.8 M parameters) saved as a checkpoint folder."""
    folder = work / f"unet32-random-seed{seed}"
    if not (folder / WEIGHTS).is_file():
        torch.manual_seed(seed)
        model = build_model(UNET_PEER).eval()
        save_model(folder, model, {"model": UNET_PEER.to_dict(), "preprocess": DEFAULT_PREPROCESS,
                                   "dataset": "kvasir-seg", "note": "random weights (benchmark peer, untrained)"})
    return Subject("unet32-random", folder, "kvasir-seg", untrained=True,
                   note="classic U-Net peer, seeded random weights: latency and size only")


def random_subject(work: Path, seed: int = 0) -> Subject:
    """A seeded random-weight SimpleUNet-16, to exercise the suite before the zoo has a trained model."""
    cfg = ModelConfig(width=16)
    folder = work / f"simpleunet16-random-seed{seed}"
    if not (folder / WEIGHTS).is_file():
        torch.manual_seed(seed)
        save_model(folder, build_model(cfg).eval(), {"model": cfg.to_dict(), "preprocess": DEFAULT_PREPROCESS,
                                                     "dataset": "kvasir-seg", "note": "random weights"})
    return Subject("simpleunet16-random", folder, "kvasir-seg", untrained=True, note="random weights")


def _weights_key(folder: Path) -> str:
    return sha256(folder / WEIGHTS)[:16]


def _exporter_key() -> str:
    """Hash of the exporter's source: a changed exporter means a fresh export, not a stale cached one."""
    import simpleunet.export as export

    h = hashlib.sha256()
    for f in sorted(Path(export.__file__).parent.glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:8]


def export_subject(subject: Subject, work: Path, formats: tuple[str, ...] = ("onnx", "tflite"),
                   imgsz: int | None = None, int8: bool = True, int8_onnx: str = "qoperator", ort_rewrites: bool = True,
                   log=print) -> Subject:
    """Export (or reuse the cached export of) ``subject`` with ``simpleunet.export.export_model`` and, if trained,
    the zoo's export options, as ``simpleunet-publish`` (``ort_rewrites=False``: the plain ONNX graphs, for before/after
    timings)."""
    from simpleunet.export import export_model

    size = imgsz or read_run(subject.checkpoint)["preprocess"]["imgsz"]
    options = {} if subject.untrained else EXPORT_OPTIONS  # a random-weight peer: the exporter's defaults
    tag = f"{subject.name}-{_weights_key(subject.checkpoint)}-{size}-{'-'.join(formats)}" \
          f"{'-int8-' + int8_onnx if int8 else ''}" \
          f"{''.join(f'-{k}-{v}' for k, v in sorted(options.items()))}" \
          f"{'' if ort_rewrites else '-plain'}-v{simpleunet.__version__}" \
          f"-{_exporter_key()}"
    out = work / "exports" / tag
    done = out / "bench-files.json"
    if done.is_file():
        files = [out / f for f in json.loads(done.read_text())]
        if all(f.is_file() for f in files):
            subject.files = files
            log(f"  {subject.name}: cached export in {out}")
            return subject
    shutil.rmtree(out, ignore_errors=True)
    log(f"  {subject.name}: exporting {', '.join(formats)} at {size} px (fp32{' + int8' if int8 else ''}) ...")
    # Random weights give near-constant masks, so the exporter's int8-vs-fp32 agreement check means nothing there.
    # Fewer calibration images too: they set int8 ranges (meaningless here), not the graph, so not the latency.
    checks = {"min_agreement": 1e-9, "max_delta": 1e-2, "calib_size": 8} if subject.untrained else {}

    def step(line: str) -> None:  # the exporter's one line per step, without its long staging paths
        if ": success" in line or ": failure" in line:
            log(f"    {line.split(', saved as')[0]}")

    result = export_model(subject.checkpoint, imgsz=size, int8=int8, formats=formats, out=out, name=subject.name,
                          int8_onnx=int8_onnx, ort_rewrites=ort_rewrites, log=step, **checks, **options)
    files = sorted({Path(p).resolve() for p in result.files.values() if Path(p).suffix in (".onnx", ".tflite")})
    write_json(done, [str(f.relative_to(out.resolve())) for f in files])
    subject.files = files
    return subject


def load_checkpoint(subject: Subject):
    return load_model(subject.checkpoint)
