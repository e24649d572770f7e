"""``simpleunet-bench``: size, latency and Dice of exported models on the machine in front of you, side by side.

With no ``--models`` it times the default model (``bundled.DEFAULT_MODEL``) in every format it ships, at 1 thread and
at all cores, and ends with the file to use on this CPU (``advice``); ``--all`` times every bundled model.
One row per model file x backend x thread count: latency (ms per image, batch ``--batch``, after warm-up; the
``Segmenter.run`` call on a preprocessed input, so layout transposes and int8 (de)quantization are included and
decoding/resizing is not), images/s, peak RSS, mDice/mIoU (per image) and pooled Dice against the ground truth at
each image's original size, Dice change against the fp32 model of the same weights, and MACs/latency as a % of
the core's peak (``machine.py`` says how the peak is obtained). Needs only the runtime (numpy + onnxruntime
[+ LiteRT]); with the toolkit installed it adds the PyTorch eager fp32 model of the same weights as the baseline
(found through the ``simpleunet_runtime.baselines`` entry point). A row that fails becomes a status, never a lost
table. This module measures; ``bench_report`` writes the tables, files and plot.
"""
from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import os
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import bundled, machine
from .backends import TFLITE_HINT
from .bench_report import COLUMNS, _need_matplotlib, _write, plot, report_markdown, to_csv, to_json
from .errors import SimpleUNetError, console_script
from .folders import masks_by_stem, read_split
from .image import list_images, load_image, load_mask, unwritable_parent
from .metrics import SegmentationMeter
from .sample import SAMPLE_DATASET
from .segmenter import TTA

FORMAT_ORDER = {"pytorch": 0, "onnx": 1, "tflite": 2}
PRECISION_ORDER = {"fp32": 0, "fp16": 1, "int8": 2}


# -- data --------------------------------------------------------------------------------------------------------
@dataclass
class BenchData:
    """Decoded images (HxWx3 uint8, original sizes) and their masks (HxW bool), or no masks."""

    name: str
    images: list[np.ndarray]
    masks: list[np.ndarray] | None
    note: str = ""
    dataset: str = ""  # known for the bundled sample: a model trained on another dataset is not scored on it


def load_data(folder: str | os.PathLike | None = None, split: str | None = None,
              limit: int | None = None) -> BenchData:
    """``folder``/images (+ ``folder``/masks, same stems; ``_mask`` suffixes allowed) [+ a split]; None = the
    bundled sample. A folder without masks/ gives latency and size only (Dice skipped)."""
    if folder is None:
        from .sample import sample_dir

        root, name = sample_dir(), "bundled Kvasir-SEG sample"
    else:
        root, name = Path(folder), str(folder)
        if not root.is_dir():
            raise SimpleUNetError(f"data folder {root} does not exist")
    img_dir = root / "images" if (root / "images").is_dir() else root
    images = list_images(img_dir)
    if split:
        wanted = read_split(root, split)
        by_stem = {p.stem: p for p in images}
        missing = [i for i in wanted if i not in by_stem]
        if missing:
            raise SimpleUNetError(f"split {split!r} names {missing[0]!r}, which is not an image in {img_dir}")
        images = [by_stem[i] for i in wanted]
    if limit:
        images = images[:limit]
    if not images:
        raise SimpleUNetError(f"no images in {img_dir}")
    mask_dir = root / "masks"
    masks: list[np.ndarray] | None = None
    note = ""
    if mask_dir.is_dir():
        by_stem = masks_by_stem(list_images(mask_dir))
        missing = [p.name for p in images if p.stem not in by_stem]
        if missing:
            raise SimpleUNetError(f"no mask in {mask_dir} for image {missing[0]}"
                                  + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                  + "; masks must share the image's file stem")
        masks = []
    else:
        note = f"no masks/ folder in {root}: Dice skipped (latency and size only)"
    decoded = []
    for p in images:
        img = load_image(p)
        decoded.append(img)
        if masks is not None:
            m = load_mask(by_stem[p.stem])
            if m.shape != img.shape[:2]:
                raise SimpleUNetError(f"mask {by_stem[p.stem].name} is {m.shape[1]}x{m.shape[0]} but image {p.name} "
                                      f"is {img.shape[1]}x{img.shape[0]}: mismatched pair")
            masks.append(m)
    label = f"{name}{f' ({split})' if split else ''}: {len(decoded)} images" \
        + ("" if masks is not None else ", no masks")
    return BenchData(label, decoded, masks, note, dataset=SAMPLE_DATASET if folder is None else "")


# -- what to benchmark ---------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One model (a file, or the eager model of a checkpoint) to time at every thread count.

    ``open(threads)`` returns a runner: ``.metadata``, ``.preprocess(images)``, ``.run(x)``, ``.predict_proba(image)``
    (a ``Segmenter`` is one). ``skip`` = why it is not run; ``dice_note`` = why Dice is not scored.
    """

    path: Path
    format: str
    backend: str
    open: Callable[[int], Any]
    name: str = ""
    precision: str = "?"
    parameters: int | None = None
    macs: int | None = None
    imgsz: tuple[int, int] | None = None
    key: str = ""
    skip: str = ""
    error: str = ""
    dice_note: str = ""
    file_bytes: int | None = None
    metadata: Any = None
    tta: str | None = None  # Segmenter's test-time augmentation (segmenter.TTA), None: plain


def _cuda_providers() -> list[str]:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise SimpleUNetError("--device cuda: this onnxruntime has no CUDAExecutionProvider (providers: "
                              f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu on a machine "
                              "with an NVIDIA GPU, or use --device cpu")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _segmenter_opener(path: Path, device: str, tta: str | None = None) -> Callable[[int], Any]:
    from .segmenter import Segmenter

    def open_(threads: int):
        if device == "cuda":
            seg = Segmenter(path, threads=threads, providers=_cuda_providers(), tta=tta)
            session = getattr(getattr(seg, "_backend", None), "session", None)
            if session is not None and "CUDAExecutionProvider" not in session.get_providers():
                raise SimpleUNetError("onnxruntime could not start its CUDA provider (no GPU or driver?)")
            return seg
        return Segmenter(path, threads=threads, tta=tta)

    return open_


def tta_job(job: Job, tta: str, device: str = "cpu") -> Job:
    """The same model file timed and scored with test-time augmentation: a row of its own, compared with the fp32
    file's TTA row (its own weights key)."""
    import dataclasses

    return dataclasses.replace(job, open=_segmenter_opener(job.path, device, tta), tta=tta,
                               backend=f"{job.backend} tta-{tta}", key=f"{job.key}+tta-{tta}")


def _has_tflite() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("ai_edge_litert", "tflite_runtime"))


def file_job(path: Path, device: str = "cpu") -> Job:
    """A job for one .onnx/.tflite file (format from the suffix; metadata filled by ``describe``)."""
    path = Path(path)
    fmt = "tflite" if path.suffix.lower() == ".tflite" else "onnx"
    backend = "tflite" if fmt == "tflite" else ("onnxruntime-cuda" if device == "cuda" else "onnxruntime")
    job = Job(path=path, format=fmt, backend=backend, open=_segmenter_opener(path, device), name=path.stem)
    job.file_bytes = path.stat().st_size if path.is_file() else None
    if fmt == "tflite" and device == "cuda":
        job.skip = "skipped: TFLite runs on the CPU here (no GPU delegate); use --device cpu"
    elif fmt == "tflite" and not _has_tflite():
        job.skip = f"skipped: no TFLite runtime installed ({TFLITE_HINT})"
    return job


def describe(job: Job) -> Job:
    """Open the model once to read its metadata (name, precision, parameters, MACs); a failure is kept as the
    job's error so its row says why."""
    if job.skip or job.error or job.metadata is not None:
        return job
    try:
        runner = job.open(1)
    except SimpleUNetError as exc:
        job.error = f"error: {exc}"
        return job
    except Exception as exc:  # a runtime raising its own type: keep it as a row status
        job.error = f"error: {type(exc).__name__}: {_line(exc)}"
        return job
    m = runner.metadata
    job.metadata = m
    job.name = m.name or job.path.stem
    job.precision = m.precision
    job.parameters = m.parameters or None
    job.imgsz = tuple(m.imgsz)
    extra = m.extra or {}
    macs = extra.get("macs")
    job.macs = int(macs) if isinstance(macs, (int, float)) and macs > 0 else None
    job.key = m.weights_sha256 or m.name or job.path.stem
    del runner
    return job


def resolve_models(specs: Sequence[str] | None, device: str = "cpu") -> list[Job]:
    """``--models``: bundled names (every format/precision of that name), model files, or folders of them;
    None = every bundled model. An unknown name is an error before anything runs."""
    jobs: list[Job] = []
    if not specs:
        entries = bundled.index()
        if not entries:
            raise SimpleUNetError(f"{bundled.empty_message()}; or pass --models PATH (an .onnx/.tflite file or a "
                                  "folder)")
        specs = sorted({e["name"] for e in entries})
    known = set(bundled.names())
    for spec in specs:
        path = Path(spec)
        if spec in known:
            for e in bundled.index():
                if e["name"] != spec:
                    continue
                job = file_job(bundled.models_dir() / e["file"], device)
                try:  # the sha256 check; a corrupt bundled file becomes that row's error
                    bundled.resolve(spec, precision=e.get("precision", "fp32"), format=e.get("format", "onnx"))
                except SimpleUNetError as exc:
                    job.error = f"error: {exc}"
                jobs.append(job)
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".onnx", ".tflite"))
            if not files:
                raise SimpleUNetError(f"no .onnx or .tflite files in {path}")
            jobs += [file_job(p, device) for p in files]
        elif path.is_file():
            if path.suffix.lower() not in (".onnx", ".tflite"):  # refused before minutes of timing, like bad names
                raise SimpleUNetError(f"--models {spec} is not an .onnx or .tflite file")
            jobs.append(file_job(path, device))
        else:
            have = ", ".join(sorted(known)) or "none bundled"
            raise SimpleUNetError(f"unknown model {spec!r}: not a bundled name ({have}) nor an existing "
                                  ".onnx/.tflite file or folder")
    return jobs


#: Entry-point group through which an installed toolkit offers the eager baseline, so the runtime names no toolkit
#: module and never imports torch itself. The ``pytorch`` entry is an object with ``eager_job(metadata, path,
#: device) -> Job``, ``macs_from_metadata(metadata) -> int | None`` and ``cuda_available() -> bool``.
BASELINES = "simpleunet_runtime.baselines"


def _baseline(name: str = "pytorch") -> Any:
    """Load the baseline registered as ``name`` in ``BASELINES``; ImportError when none is installed."""
    try:
        group = importlib.metadata.entry_points(group=BASELINES)
    except TypeError:  # Python 3.9: no keyword, a dict of group -> entry points
        group = importlib.metadata.entry_points().get(BASELINES, ())
    entry = next((ep for ep in group if ep.name == name), None)
    if entry is None:
        raise ImportError(f"no {name!r} entry point in group {BASELINES!r}")
    return entry.load()


def _eager_plugin_cuda() -> bool:
    """Whether the toolkit's eager baseline can run on CUDA (False when the toolkit or torch is absent)."""
    if importlib.util.find_spec("torch") is None:
        return False
    try:
        return bool(_baseline().cuda_available())
    except ImportError:
        return False


def eager_jobs(jobs: Sequence[Job], device: str = "cpu") -> tuple[list[Job], str]:
    """PyTorch eager fp32 jobs for the weights behind ``jobs``, when the toolkit is installed; else a note."""
    if importlib.util.find_spec("torch") is None:
        return [], "PyTorch eager baseline: not run (torch not installed; the runtime alone needs no torch)"
    try:
        plugin = _baseline()
    except ImportError as exc:
        return [], f"PyTorch eager baseline: not run (simpleunet toolkit not importable: {_line(exc)})"
    out, seen = [], set()
    for job in jobs:
        if job.metadata is None or job.key in seen:
            continue
        seen.add(job.key)
        out.append(plugin.eager_job(job.metadata, job.path, device))
    for job in jobs:  # a file exported without extra.macs: the toolkit counts them from the architecture
        if job.macs is None and job.metadata is not None:
            job.macs = plugin.macs_from_metadata(job.metadata)
    return out, "PyTorch eager baseline: the fp32 checkpoint each model file was exported from"


# -- measuring -----------------------------------------------------------------------------------------------------
def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _reset_peak_rss() -> bool:
    """Linux: reset the process's RSS high-water mark (clear_refs 5), so each row's peak is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_mb(field_name: str = "VmHWM") -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)
    except (ImportError, OSError):
        return None


#: An int8 row whose masks agree with its fp32 file's below this (pooled Dice, the exporter's --min-agreement
#: default) is ``degraded``, not ``ok``.
MIN_AGREEMENT = 0.98


def score(runner: Any, data: BenchData) -> dict[str, Any]:
    """mDice/mIoU/pooled Dice of the foreground decision at each image's original size against the truth: the
    same ``foreground_probability > threshold`` rule (after the file's small-region rule) as training and
    ``simpleunet-eval`` (also for C > 1).
    ``_masks`` (dropped before output) are kept to compare an int8 file with its fp32 file."""
    meter = SegmentationMeter()
    masks = []
    for img, truth in zip(data.images, data.masks or []):
        masks.append(np.asarray(runner.predict_proba(img)) > runner.metadata.threshold)
        meter.update(masks[-1], truth)
    s = meter.summary()
    return {"images": s["images"], "mDice": s["mDice"], "mIoU": s["mIoU"], "pooled_dice": s["pooled_dice"],
            "_masks": masks}


def _agreement(masks: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Pooled Dice of two lists of masks (the exporter's int8 check)."""
    meter = SegmentationMeter()
    for m, r in zip(masks, reference):
        meter.update(m, r)
    return meter.summary()["pooled_dice"]


@dataclass
class Settings:
    threads: list[int]
    runs: int = 100
    warmup: int = 10
    batch: int = 1
    max_seconds: float = 10.0
    device: str = "cpu"


def _base_row(job: Job, threads: int | None) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(model=job.name, format=job.format, precision=job.precision, backend=job.backend, tta=job.tta,
               threads=threads,
               file_bytes=job.file_bytes, parameters=job.parameters, path=str(job.path), macs=job.macs,
               imgsz=list(job.imgsz) if job.imgsz else None)
    return row


def measure(job: Job, threads: int, data: BenchData, s: Settings, dice: dict[str, dict]) -> dict[str, Any]:
    """One row. Errors become the row's status; Dice is computed once per job (``dice`` caches it)."""
    row = _base_row(job, threads)
    gc.collect()
    before = _rss_mb("VmRSS")
    _reset_peak_rss()
    try:
        runner = job.open(threads)
        imgs = [data.images[i % len(data.images)] for i in range(s.batch)]
        x = runner.preprocess(imgs)
        for _ in range(s.warmup):
            runner.run(x)
        times, deadline = [], time.perf_counter() + s.max_seconds
        for _ in range(s.runs):
            t0 = time.perf_counter()
            runner.run(x)
            times.append(time.perf_counter() - t0)
            if time.perf_counter() > deadline and len(times) >= 5:
                break
        ms = np.asarray(times) * 1000.0 / s.batch
        row.update(batch=s.batch, runs=len(times), p50_ms=float(np.median(ms)), p90_ms=float(np.percentile(ms, 90)),
                   min_ms=float(ms.min()), max_ms=float(ms.max()), images_per_s=float(1000.0 / np.median(ms)))
        status = "ok"
        # the dataset's name, without a note such as "kvasir-seg (bundled sample, test fixture)"
        trained_on = job.metadata.dataset.split("(")[0].strip() if job.metadata is not None else ""
        if job.dice_note:
            status = f"ok; {job.dice_note}"
        elif data.dataset and trained_on and trained_on != data.dataset:
            status = f"ok; Dice not scored: trained on {trained_on}, data is {data.dataset} (give --data)"
        elif data.masks is None:
            status = "ok; Dice skipped (no masks)"
        else:
            if id(job) not in dice:
                dice[id(job)] = score(runner, data)
            row.update(dice[id(job)])  # with "_masks", dropped after add_derived
        row["status"] = status
        del runner
    except SimpleUNetError as exc:
        row["status"] = f"error: {exc}"
    except Exception as exc:  # keep every other row: one bad model must not lose the table
        row["status"] = f"error: {type(exc).__name__}: {_line(exc)}"
    peak = _rss_mb("VmHWM")
    if peak is not None:
        row["peak_rss_mb"] = round(peak, 1)
        if before is not None:
            row["model_rss_mb"] = round(max(peak - before, 0.0), 1)
    return row


def add_derived(rows: list[dict[str, Any]], peaks: dict[str, Any] | None) -> None:
    """ΔmDice against the fp32 row of the same weights (ONNX, else TFLite, else PyTorch) and % of peak."""
    refs: dict[str, float] = {}
    for fmt in ("onnx", "tflite", "pytorch"):
        for r in rows:
            if r["precision"] == "fp32" and r["format"] == fmt and r["mDice"] is not None:
                refs.setdefault(r["_key"], r["mDice"])
    masks: dict[tuple[str, str], list] = {}  # (weights key, format) -> the fp32 file's masks
    for r in rows:
        if r["precision"] == "fp32" and r.get("_masks") is not None:
            masks.setdefault((r["_key"], r["format"]), r["_masks"])
    for r in rows:
        if r["mDice"] is not None and r["_key"] in refs:
            r["delta_dice"] = r["mDice"] - refs[r["_key"]]
        ref = masks.get((r["_key"], r["format"])) or next(
            (m for (k, _), m in masks.items() if k == r["_key"]), None)
        if r["precision"] == "int8" and r.get("_masks") is not None and ref is not None:
            r["agreement_vs_fp32"] = _agreement(r["_masks"], ref)
            if r["agreement_vs_fp32"] < MIN_AGREEMENT and str(r["status"]).startswith("ok"):
                r["status"] = (f"degraded: int8 masks agree with fp32 at Dice {r['agreement_vs_fp32']:.4f} < "
                               f"{MIN_AGREEMENT} on this CPU ({machine.int8_kernels()[0]})")
        if r["macs"] and r["p50_ms"]:
            r["gmacs_per_s"] = r["macs"] / (r["p50_ms"] / 1000.0) / 1e9
            peak = (peaks or {}).get("int8" if r["precision"] == "int8" else "fp32")
            if peak and peak == peak and r["backend"] != "onnxruntime-cuda" and r["backend"] != "torch-cuda":
                cores = min(r["threads"] or 1, machine.usable_cores())
                r["pct_peak"] = 100.0 * r["gmacs_per_s"] * 1e9 / (peak * cores)


def run_bench(jobs: list[Job], data: BenchData, settings: Settings, peaks: dict[str, Any] | None = None,
              progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Measure every job at every thread count; returns the rows (sorted, derived columns filled)."""
    for job in jobs:
        describe(job)
    plan = [(j, t) for j in jobs for t in ((None,) if j.skip or j.error else settings.threads)]
    rows, dice = [], {}
    try:
        for i, (job, threads) in enumerate(plan, 1):
            label = f"{job.name} {job.format} {job.precision} {job.backend}" + (f" x{threads}" if threads else "")
            if job.skip or job.error:
                row = _base_row(job, None)
                row["status"] = job.skip or job.error
            else:
                if progress:
                    progress(f"[{i}/{len(plan)}] {label} ...")
                row = measure(job, threads, data, settings, dice)
            row["_key"] = job.key or str(job.path)
            rows.append(row)
            if progress:
                lat = f"{row['p50_ms']:.2f} ms" if row["p50_ms"] is not None else row["status"]
                progress(f"[{i}/{len(plan)}] {label}: {lat}")
    except KeyboardInterrupt:
        rows.append({**{c: None for c in COLUMNS}, "status": "interrupted: later rows not measured", "_key": ""})
    add_derived(rows, peaks)
    rows.sort(key=lambda r: (r["model"] or "", FORMAT_ORDER.get(r["format"], 9),
                             PRECISION_ORDER.get(r["precision"], 9), r["backend"] or "", r["threads"] or 0))
    for r in rows:
        r.pop("_key", None)
        r.pop("_masks", None)
    return rows


def check_output_path(flag: str, path: str) -> None:
    """Refuse an output path that cannot be written before the benchmark runs, not after minutes of timing."""
    out = Path(path)
    if out.is_dir():
        raise SimpleUNetError(f"{flag} {path} is a folder; give a file path such as {out / 'bench'}.json")
    bad = unwritable_parent(out.parent)
    if bad:
        raise SimpleUNetError(f"{flag} {path} cannot be written: {bad} is not a writable folder")


# -- command line --------------------------------------------------------------------------------------------------
def parse_threads(text: str) -> list[int]:
    try:
        values = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise SimpleUNetError(f"--threads must be comma-separated integers such as 1,2,4, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise SimpleUNetError(f"--threads values must be >= 1 (got {text!r}); 0 would mean 'the runtime decides', "
                              "which is not a benchmark setting")
    return list(dict.fromkeys(values))


def default_threads() -> str:
    n = machine.usable_cores()
    return "1" if n == 1 else f"1,{n}"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where the help does not state its own default and there is a value to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simpleunet-bench", description=__doc__.splitlines()[0].split(": ", 1)[1],
                                formatter_class=_HelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="cuda: onnxruntime's CUDA provider (and torch CUDA for the eager baseline)")
    p.add_argument("--models", nargs="+", metavar="NAME|PATH",
                   help="bundled model names, .onnx/.tflite files or folders of them (default: "
                        f"{bundled.DEFAULT_MODEL} in every format it ships)")
    p.add_argument("--all", action="store_true", help="every bundled model in every format (the full grid)")
    p.add_argument("--data", metavar="DIR", help="images/ + masks/ (same stems) [+ splits/]; without masks/ Dice "
                   "is skipped (default: the bundled Kvasir-SEG sample; models trained on another dataset then "
                   "get no Dice)")
    p.add_argument("--split", help="ids to use: a file, or a name under DIR/splits/ (e.g. val_120) (default: every "
                   "image)")
    p.add_argument("--limit", type=int, help="use only the first N images (default: all)")
    p.add_argument("--threads", default=default_threads(), help="comma-separated thread counts")
    p.add_argument("--runs", type=int, default=100, help="timed runs per row")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first")
    p.add_argument("--max-seconds", type=float, default=3.0, help="stop timing a row after this (min 5 runs)")
    p.add_argument("--batch", type=int, default=1, help="images per run (latency is reported per image)")
    p.add_argument("--json", metavar="PATH", help="write every column and the machine header as JSON")
    p.add_argument("--csv", metavar="PATH", help="write the rows as CSV")
    p.add_argument("--markdown", metavar="PATH", help="write the header and table as Markdown")
    p.add_argument("--plot", metavar="PATH", help="size-Dice and latency-Dice Pareto plot (PNG; needs matplotlib)")
    p.add_argument("--dice-floor", type=float, metavar="X",
                   help="exit 1 if any model's mDice (0-1) is below X or could not be scored (a CI gate)")
    p.add_argument("--tta", choices=tuple(TTA), help="also time and score every model file with test-time "
                   "augmentation (flip: the image and its 3 flips averaged, 4 runs per image)")
    p.add_argument("--no-eager", action="store_true", help="skip the PyTorch eager baseline")
    p.add_argument("--no-peak", action="store_true", help="skip the 1-second peak-MAC measurement")
    return p


def _check(args: argparse.Namespace) -> Settings:
    for name in ("runs", "batch"):
        if getattr(args, name) < 1:
            raise SimpleUNetError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise SimpleUNetError(f"--warmup must be >= 0, got {args.warmup}")
    if args.limit is not None and args.limit < 1:
        raise SimpleUNetError(f"--limit must be >= 1, got {args.limit}")
    if args.max_seconds <= 0:
        raise SimpleUNetError(f"--max-seconds must be > 0, got {args.max_seconds}")
    if args.dice_floor is not None and not 0.0 <= args.dice_floor <= 1.0:
        raise SimpleUNetError(f"--dice-floor is a Dice between 0 and 1 (e.g. 0.80), got {args.dice_floor}")
    for flag in ("json", "csv", "markdown", "plot"):
        if getattr(args, flag):
            check_output_path(f"--{flag}", getattr(args, flag))
    if args.plot:
        _need_matplotlib()
    if args.device == "cuda":
        try:
            _cuda_providers()
        except SimpleUNetError:
            if args.no_eager or not _eager_plugin_cuda():
                raise
    return Settings(threads=parse_threads(args.threads), runs=args.runs, warmup=args.warmup, batch=args.batch,
                    max_seconds=args.max_seconds, device=args.device)


def benchmark(args: argparse.Namespace, argv: Sequence[str], progress: Callable[[str], None] | None = None
              ) -> dict[str, Any]:
    """Everything ``main`` does except printing/writing: returns the result dict (machine, peak, rows...)."""
    settings = _check(args)
    if args.dice_floor is not None and args.data and not (Path(args.data) / "masks").is_dir():
        raise SimpleUNetError(f"--dice-floor needs masks, and {args.data} has no masks/ folder")
    if args.all and args.models:
        raise SimpleUNetError("--all times every bundled model; drop it or --models")
    default = None if args.all or bundled.DEFAULT_MODEL not in bundled.names() else [bundled.DEFAULT_MODEL]
    jobs = resolve_models(args.models or default, settings.device)
    data = load_data(args.data, args.split, args.limit)
    info = machine.machine_info()
    peaks = None if args.no_peak else machine.peak_macs(info["isa"])
    for job in jobs:
        describe(job)
    if args.tta:
        jobs += [tta_job(j, args.tta, settings.device) for j in jobs if not (j.skip or j.error)]
    eager_note = "PyTorch eager baseline: not run (--no-eager)"
    if not args.no_eager:
        extra, eager_note = eager_jobs(jobs, settings.device)
        jobs = extra + jobs
    rows = run_bench(jobs, data, settings, peaks, progress)
    return {"command": "simpleunet-bench " + shlex.join(argv), "date": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "machine": info, "peak": peaks, "data": data.name, "data_note": data.note,
        "settings": settings.__dict__, "eager_note": eager_note, "rows": rows, "advice": advice(rows)}


def advice(rows: list[dict[str, Any]]) -> str:
    """The table's last sentence: the fastest model file here whose masks hold (status ok: an int8 file agrees with
    its fp32 file at Dice >= MIN_AGREEMENT), per model when several were timed."""
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        files = [r for r in rows if r["model"] == name and r["format"] != "pytorch" and r["p50_ms"] is not None
                 and not r.get("tta")]  # a TTA row is a way of running a file, not a file to pick
        good = [r for r in files if r["status"] == "ok"]
        if not good:
            continue
        best = min(good, key=lambda r: r["p50_ms"])
        faster = [r for r in files if r["p50_ms"] < best["p50_ms"] and r["status"].startswith("degraded")]
        why = (f"the fastest file whose masks agree with fp32 (Dice >= {MIN_AGREEMENT})" if best["precision"] != "fp32"
               else "the fastest file here")
        out.append(f"{name}: use {Path(best['path']).name} ({best['backend']}, {best['threads']} thread"
                   f"{'s' * (best['threads'] != 1)}) on this CPU, {best['p50_ms']:.2f} ms per image: {why}"
                   + (f"; {len(faster)} faster row(s) left out: their int8 masks drift from fp32" if faster else ""))
    return " ".join(f"{line}." for line in out)


def floor_failures(rows: list[dict[str, Any]], floor: float) -> list[str]:
    bad = []
    for r in rows:
        if r["status"].startswith(("skipped", "interrupted")) or "Dice not scored" in r["status"]:
            continue
        what = f"{r['model']} {r['format']} {r['precision']} {r['backend']}"
        if r["mDice"] is None:
            bad.append(f"{what}: not scored ({r['status']})")
        elif r["mDice"] < floor:
            bad.append(f"{what}: mDice {r['mDice']:.4f} < {floor}")
    return sorted(set(bad))


@console_script
def main(argv: Sequence[str] | None = None) -> int:
    """Exit 2: a usage error (arguments or input refused before timing); 1: a row failed, the Dice floor was
    missed or an output could not be written; 130: interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    tty = sys.stderr.isatty()

    def progress(msg: str) -> None:
        if tty:
            print(f"\r\033[K{msg}", end="" if msg.endswith("...") else "\n", file=sys.stderr, flush=True)
        elif not msg.endswith("..."):
            print(msg, file=sys.stderr, flush=True)

    try:  # everything it raises is about what was asked for: each model's own failure is a row status
        result = benchmark(args, argv, progress)
    except SimpleUNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = report_markdown(result)
    print(text)
    try:  # the paths were checked before timing, so a failure here happened while running
        if args.json:
            _write(Path(args.json), to_json(result))
        if args.csv:
            _write(Path(args.csv), to_csv(result["rows"]))
        if args.markdown:
            _write(Path(args.markdown), text)
        if args.plot:
            plot(result["rows"], args.plot, result["data"])
    except SimpleUNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = result["rows"]
    code = 0
    if any(r["status"].startswith("error") for r in rows):
        print(f"error: {sum(r['status'].startswith('error') for r in rows)} row(s) failed; see the status column",
              file=sys.stderr)
        code = 1
    if any(r["status"].startswith("interrupted") for r in rows):
        return 130
    if args.dice_floor is not None:
        bad = floor_failures(rows, args.dice_floor)
        if bad:
            print(f"error: below the Dice floor {args.dice_floor}: " + "; ".join(bad), file=sys.stderr)
            code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
