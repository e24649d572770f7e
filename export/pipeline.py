"""``export_model``: checkpoint -> fp32 ONNX -> int8 ONNX -> TFLite fp32 + int8, every file checked.

Everything is built in a staging folder beside ``out`` and moved into ``out`` only after every check passed
(``outfolder``), so a failed export never replaces good files with partial ones. One status line per step
(Ultralytics style), then a table, "Export complete", where the files are and the next command.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from simpleunet_runtime.errors import SimpleUNetError
from simpleunet_runtime.image import normalize
from simpleunet_runtime.machine import cpu_model, int8_kernels
from simpleunet_runtime.metadata import ModelMetadata
from simpleunet_runtime.regions import KEEP_ALL
from simpleunet_runtime.sample import SAMPLE_DATASET

from simpleunet.train.config import FAMILIES

from . import manifest as manifest_mod
from . import outfolder
from .errors import ExportError
from .images import ImageSet, calibration_set, own_dataset, verification_set

FORMATS = ("onnx", "tflite", "tflm")
#: What an export writes unless told: tflm (TensorFlow Lite Micro, export/micro.py) is asked for by name.
DEFAULT_FORMATS = ("onnx", "tflite")
INT8_ONNX = ("qoperator", "qdq", "both")
#: int8 ONNX weight grids the exporter writes (``quantize.WEIGHTS``): both are int16-safe on AVX2 without VNNI.
#: auto quantizes on both and keeps the file closer to fp32 on the ``SELECT_IMAGES`` training images, as bias
#: correction's auto does (the finer pair-safe grid is closer for some models, int7 for others: export/README.md).
INT8_WEIGHTS = ("int7", "pair-safe", "auto")
#: int8 ONNX bias correction (``quantize.correct_bias``): auto quantizes with and without it and keeps the file
#: whose masks agree better with fp32 on ``SELECT_IMAGES`` training images (of the calibration folder, or of the
#: model's own dataset when it calibrates on the bundled sample; bias correction helps some models and hurts
#: others: export/README.md); the check images never take part in the choice.
BIAS_CORRECTION = ("auto", "on", "off")
SELECT_IMAGES = 200
OPSETS = range(13, 21)  # per-channel DequantizeLinear needs 13; the legacy exporter stops at 20


@dataclass
class Step:
    """One line of the report: a stage, whether it passed, its file and its checks."""

    name: str
    ok: bool
    seconds: float
    file: Path | None = None
    bytes: int = 0
    checks: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def line(self) -> str:
        mark = _mark(self.ok)
        if not self.ok:
            return f"{self.name}: failure {mark} {self.seconds:.1f}s: {self.message}"
        detail = ", ".join(_fmt_check(k, v) for k, v in self.checks.items() if v is not None)
        saved = f", saved as '{self.file}' ({self.bytes / 1024:.1f} KB)" if self.file else ""
        return f"{self.name}: success {mark} {self.seconds:.1f}s{', ' + detail if detail else ''}{saved}" \
               f"{'; ' + self.message if self.message else ''}"


@dataclass
class ExportResult:
    """What ``export_model`` made: ``files`` (key like "onnx-int8" -> final path), the manifest and the report."""

    files: dict[str, Path]
    manifest: Path
    report: list[Step]
    seconds: float = 0.0

    def table(self) -> str:
        rows = [("file", "KB", "int8 weights B", "max |Δ| vs PyTorch", "Dice vs fp32", "Dice vs GT")]
        entries = {e["file"]: e for e in manifest_mod.read(self.manifest)["files"]}
        for path in self.files.values():
            e = entries[path.name]
            if "int8_weight_bytes" not in e:  # the TFLite Micro C files: their figures are on their own line
                continue
            c = e["checks"]
            rows.append((path.name, f"{e['bytes'] / 1024:.1f}", f"{e['int8_weight_bytes']:,}",
                         _num(c.get("max_abs_delta_vs_pytorch"), "{:.1e}"), _num(c.get("dice_vs_fp32"), "{:.4f}"),
                         _num(c.get("dice_vs_gt"), "{:.4f}")))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                                   enumerate(zip(r, widths))) for r in rows)


def _num(v, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def _fmt_check(key: str, value: Any) -> str:
    names = {"max_abs_delta_vs_pytorch": "max |Δ| vs PyTorch {:.1e}", "dice_vs_fp32": "Dice vs fp32 {:.4f}",
             "dice_vs_gt": "Dice vs GT {:.4f}", "avx2_int16_safe": "int16-safe on AVX2 {}",
             "largest_weight_pair": "largest weight pair {} <= 128", "checked_on": "checked on {}"}
    return names[key].format(value) if key in names else f"{key} {value}"


def _mark(ok: bool) -> str:
    enc = getattr(sys.stdout, "encoding", None) or "ascii"
    mark = "✅" if ok else "❌"
    try:
        mark.encode(enc)
        return mark
    except (UnicodeEncodeError, LookupError):
        return "ok" if ok else "FAILED"


# ---- argument checks ---------------------------------------------------------------------------------------------

def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    items = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats)]
    items = [f for f in items if f]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise ExportError(f"unknown format {bad[0] if bad else '(none)'!r}; choose from {', '.join(FORMATS)} "
                          "(comma-separated)")
    return tuple(f for f in FORMATS if f in items)


def check_imgsz(imgsz: int) -> int:
    if not isinstance(imgsz, int) or isinstance(imgsz, bool) or imgsz < 16 or imgsz % 16:
        hint = f"; try {max(16, round(imgsz / 16) * 16)}" if isinstance(imgsz, int) and imgsz > 0 else ""
        raise ExportError(f"--imgsz must be a positive multiple of 16 (the model halves it 4 times), got "
                          f"{imgsz!r}{hint}")
    if imgsz > 2048:
        raise ExportError(f"--imgsz {imgsz} is above 2048; SimpleUNet is trained at 256")
    return imgsz


def zoo_dir() -> Path:
    import simpleunet.train as train

    return Path(train.__file__).resolve().parent / "zoo"


def find_pretrained(family: str, width: int, blocks: int, zoo: Path | None = None,
                    imgsz: int | None = None) -> Path:
    """The shipped checkpoint for a config, or an error listing what ships: the one trained at ``imgsz`` when one
    was (e.g. the 112-px micro model), else the 256-px one; Kvasir-SEG first."""
    from simpleunet.train.checkpoint import read_run, run_folders

    zoo = zoo or zoo_dir()
    found, have = [], []
    for folder in run_folders(zoo):
        try:
            run = read_run(folder)
        except SimpleUNetError:
            continue
        m = run["model"]
        have.append(folder.name)
        if (m.get("family"), m.get("width"), m.get("blocks", 1)) == (family, width, blocks):
            found.append((run["preprocess"]["imgsz"] != (imgsz or 256), "kvasir" not in folder.name, folder.name,
                          folder))
    if not found:
        ships = f"shipped: {', '.join(have)}" if have else "none are shipped yet"
        raise ExportError(f"no pretrained weights for {family} width {width} blocks {blocks} in {zoo} ({ships}); "
                          "pass --checkpoint RUN_DIR (a folder written by simpleunet-train)")
    return min(found)[-1]


# ---- the export --------------------------------------------------------------------------------------------------

@dataclass
class _Run:
    """What every stage needs: the model, its metadata, the real images and PyTorch's answers on them, and what
    has been staged so far."""

    name: str
    out: Path
    staging: Path
    model: Any
    base: ModelMetadata
    val: ImageSet
    calib: ImageSet | None
    xval: np.ndarray
    reference: np.ndarray
    threshold: float
    max_delta: float
    min_agreement: float
    say: Callable[[str], None]
    report: list[Step] = field(default_factory=list)
    cpu: str = ""  # onnxruntime's int8 kernel family here (machine.int8_kernels), named in every int8 verdict
    saturates: bool = False  # this CPU sums int8 product pairs in saturating int16
    entries: list[dict[str, Any]] = field(default_factory=list)
    staged: dict[str, Path] = field(default_factory=dict)
    fp32_plain: Path | None = None  # the plain fp32 graph the converters read
    select: ImageSet | None = None  # training images that choose between int8 candidates (never the check images)

    def done(self, step: Step) -> None:
        self.report.append(step)
        self.say(step.line())

    def fail(self, label: str, seconds: float, message: str) -> None:
        self.done(Step(label, False, seconds, message=message))
        raise ExportError(f"{label}: {message}; nothing was written to {self.out}")

    def metadata(self, precision: str, layout: str, fmt: str) -> ModelMetadata:
        """The file's metadata; data other than the model's own dataset is named in it (own data: bytes as before)."""
        extra = {**self.base.extra, "format": fmt}
        if precision == "int8":
            extra["calibration_images"] = len(self.calib.images)
            if self.calib.dataset != self.base.dataset:
                extra["calibration_data"] = self.calib.dataset
        if self.val.dataset != self.base.dataset:
            extra["check_data"] = self.val.dataset
        return self.base.replace(precision=precision, input_layout=layout, extra=extra)

    def checks(self, label: str, precision: str, prob: np.ndarray, t: float, file: Path | None = None,
               verdict=None) -> dict[str, Any]:
        """fp32: max |Δ| vs PyTorch <= max_delta; int8: mask Dice vs PyTorch fp32 >= min_agreement (``file`` and
        the int8 ONNX file's saturation ``verdict`` name the cause when it fails)."""
        from .verify import agreement, dice_vs_truth, foreground, max_abs_delta

        mask = foreground(prob, self.threshold)
        truth = dice_vs_truth(mask, self.val.masks)
        n = f"on {len(self.xval)} real images"
        if precision == "fp32":
            delta = max_abs_delta(prob, self.reference)
            if not delta <= self.max_delta:
                self.fail(label, time.perf_counter() - t, f"max |Δ| vs PyTorch {delta:.2e} > {self.max_delta:.0e} {n}")
            return {"max_abs_delta_vs_pytorch": delta, "dice_vs_gt": truth}
        agree = agreement(mask, foreground(self.reference, self.threshold))
        if not agree >= self.min_agreement:
            self.fail(label, time.perf_counter() - t, f"{file.name}: int8 mask agrees with fp32 at Dice {agree:.4f} < "
                                                      f"--min-agreement {self.min_agreement} {n} on this CPU "
                                                      f"({self.cpu}); {_likely_cause(verdict, self.saturates)}")
        return {"dice_vs_fp32": agree, "dice_vs_gt": truth}

    def keep(self, key: str, label: str, path: Path, t: float, checks: dict, message: str = "",
             **fields: Any) -> None:
        """Stage ``path`` for the commit, add its manifest row and print its status line."""
        self.staged[key] = path
        self.entries.append(manifest_mod.file_entry(path, checks=checks, **fields))
        self.done(Step(label, True, time.perf_counter() - t, self.out / path.name, path.stat().st_size, checks,
                       message))


def _onnx_fp32(run: _Run, imgsz: int, opset: int, fold: bool, keep: bool, rewrites: bool) -> Path:
    """The fp32 ONNX file (with ``rewrites``: ``rewrites.FP32`` applied, checked like any file) and the path of
    the plain graph, which the int8 quantizer and onnx2tf read (the rewrites are for onnxruntime only)."""
    import onnx

    from .metadata import set_onnx_metadata
    from .onnx_export import check, export_onnx
    from .rewrites import FP32, apply
    from .verify import onnx_probabilities

    t = time.perf_counter()
    cfg = run.model.config
    proto, sizes = export_onnx(run.model, imgsz, cfg.num_classes, opset, cfg.in_channels, fold=fold)
    plain = run.staging / f".{run.name}-fp32-plain.onnx"
    onnx.save(proto, str(plain))
    message = f"opset {opset}, simplified with {'onnxsim' if 'onnxsim' in sizes else 'onnxslim'}"
    applied: dict[str, int] = {}
    if keep and rewrites:
        applied = apply(proto, FP32)
        check(proto)
        sizes["onnxruntime rewrites"] = proto.ByteSize()
        message += _rewrites_note(applied)
    path = run.staging / f"{run.name}-fp32.onnx"
    onnx.save(set_onnx_metadata(proto, run.metadata("fp32", "NCHW", "onnx")), str(path))
    sizes["+ simpleunet metadata"] = path.stat().st_size
    checks = run.checks("ONNX", "fp32", onnx_probabilities(path, run.xval), t)
    if keep:
        run.keep("onnx-fp32", "ONNX", path, t, checks, message, format="onnx", precision="fp32", layout="NCHW",
                 parameters=run.base.parameters, int8_weight_bytes=0, size_steps=sizes, rewrites=applied)
    else:
        run.done(Step("ONNX", True, time.perf_counter() - t, checks=checks, message=message + " (intermediate)"))
    return plain


def _rewrites_note(applied: dict[str, int]) -> str:
    done = [f"{name} x{count}" for name, count in applied.items() if count]
    return f"; onnxruntime rewrites: {', '.join(done)}" if done else ""


def _likely_cause(verdict, saturates: bool) -> str:
    """The likely cause of a failed int8 agreement check and what to try, for its one-line error."""
    if verdict is not None and not verdict.safe and saturates:
        return ("likely cause: int16 saturation of full-range int8 weights on this CPU's AVX2 kernels; export with "
                "--int8-weights int7 (the default) or pair-safe")
    return ("likely cause: quantization error of this model's weights or activations; try --calib-size 128, "
            "quantization-aware fine-tuning (simpleunet-train --init RUN --qat), or the TFLite int8 file")


def _onnx_int8(run: _Run, fp32: Path, kinds: list[str], mean, std, rewrites: bool, weights: str,
               bias_correction: str = "auto") -> None:
    import onnx

    from simpleunet_runtime.saturation import check_onnx

    from .metadata import set_onnx_metadata
    from .quantize import int8_weight_bytes, quantize_onnx
    from .verify import dice_vs_truth, foreground, onnx_probabilities

    xcal = normalize(run.calib.images, mean, std)
    grids = ("int7", "pair-safe") if weights == "auto" else (weights,)
    corrections = {"auto": (False, True), "on": (True,), "off": (False,)}[bias_correction]
    options = [(grid, c) for grid in grids for c in corrections]  # in order of preference on a tie
    if len(options) > 1:
        xsel = normalize(run.select.images, mean, std)
        want = foreground(onnx_probabilities(fp32, xsel), run.threshold)
    chosen = None  # (grid, bias correction): chosen on the first layout, kept for a second (the same weights)
    for i, kind in enumerate(kinds):
        t = time.perf_counter()
        label = f"ONNX int8 {kind}"
        suffix = "" if i == 0 else f"-{kind}"
        path = run.staging / f"{run.name}-int8{suffix}.onnx"
        candidates = options if chosen is None else [chosen]
        tried: dict[tuple[str, bool], tuple] = {}
        for option in candidates:
            applied: dict[str, int] = {}
            proto, sizes = quantize_onnx(fp32, xcal, kind, rewrites=rewrites, applied=applied, weights=option[0],
                                         bias_correction=option[1])
            score = None
            if len(candidates) > 1:
                onnx.save(proto, str(path))
                score = dice_vs_truth(foreground(onnx_probabilities(path, xsel), run.threshold), want)
            tried[option] = (score, proto, sizes, applied)
        if chosen is None:
            chosen = max(candidates, key=lambda o: tried[o][0] or 0.0)  # max keeps the first of a tie
            choice = {"used": chosen[1], "chosen_by": bias_correction}
            grid_choice = {"used": chosen[0], "chosen_by": weights}
            if len(corrections) > 1:
                choice.update(train_images=len(xsel), mdice_vs_fp32={"off": tried[chosen[0], False][0],
                                                                     "on": tried[chosen[0], True][0]})
            if len(grids) > 1:  # every candidate's score
                grid_choice.update(train_images=len(xsel), mdice_vs_fp32={
                    g + (" + bias correction" if c else ""): tried[g, c][0] for g, c in options})
        grid, corrected = chosen
        _, proto, sizes, applied = tried[chosen]
        verdict = check_onnx(proto.SerializeToString())  # from the graph alone: the same on every machine
        if not verdict.safe:
            run.fail(label, time.perf_counter() - t, f"{path.name}: {verdict.summary()}: it would lose masks on "
                     f"x86 CPUs without VNNI; export with --int8-weights int7 (the default) or pair-safe")
        meta = run.metadata("int8", "NCHW", f"onnx-{kind}")
        meta = meta.replace(extra={**meta.extra, "int8_weights": grid, "avx2_int16_safe": verdict.safe,
                                   "bias_correction": corrected})
        onnx.save(set_onnx_metadata(proto, meta), str(path))
        sizes["+ simpleunet metadata"] = path.stat().st_size
        checks = run.checks(label, "int8", onnx_probabilities(path, run.xval), t, path, verdict)
        checks.update(avx2_int16_safe=verdict.safe, largest_weight_pair=verdict.peak, checked_on=run.cpu)
        note = _rewrites_note(applied).lstrip("; ")
        if corrected:
            note = "bias-corrected" + (f"; {note}" if note else "")
        if grid != "int7":
            note = f"{grid} weights" + (f"; {note}" if note else "")
        run.keep(f"onnx-int8{suffix}", label, path, t, checks, note,
                 format="onnx", precision="int8", layout="NCHW", quant_format=kind, int8_weights=grid,
                 int8_weights_choice=grid_choice, bias_correction=choice, parameters=run.base.parameters,
                 int8_weight_bytes=int8_weight_bytes(proto), size_steps=sizes, rewrites=applied)


def _grid_used(entries: list[dict], requested: str) -> str:
    """The int8 ONNX weight grid the files of an export use (``auto`` resolved), else what was asked for."""
    used = {e["int8_weights"] for e in entries if e.get("int8_weights")}
    return used.pop() if len(used) == 1 else requested


def _tflite(run: _Run, fp32: Path, int8: bool, mean, std) -> None:
    """One onnx2tf run for both precisions; each file checked like the ONNX ones."""
    from .tflite import convert

    t = time.perf_counter()
    precisions = ["fp32", "int8"] if int8 else ["fp32"]
    outputs = {p: run.staging / f"{run.name}-{p}.tflite" for p in precisions}
    metas = {p: run.metadata(p, "NHWC", "tflite").to_json() for p in precisions}
    calib = run.calib.images if int8 else run.val.images[:1]
    results = convert(fp32, outputs, calib, mean, std, metas)
    for p in precisions:
        _keep_tflite(run, p, outputs[p], results[p], t, "onnx2tf: fp32 and int8 from one conversion"
                     if p == "fp32" and int8 else "")
        t = time.perf_counter()


def _keep_tflite(run: _Run, precision: str, path: Path, result: dict, t: float, message: str = "") -> None:
    """Check one converted TFLite file against PyTorch and stage it with its manifest row."""
    from .verify import tflite_probabilities

    label = "TFLite" if precision == "fp32" else "TFLite int8"
    checks = run.checks(label, precision, tflite_probabilities(path, run.xval), t, path)
    run.keep(f"tflite-{precision}", label, path, t, checks, message, format="tflite", precision=precision,
             layout="NHWC", io="int8" if precision == "int8" else "float32", parameters=run.base.parameters,
             int8_weight_bytes=result["int8_weight_bytes"], size_steps=result["sizes"])


def _micro(run: _Run, mean, std) -> None:
    """The TFLite Micro files (micro.py): the int8 TFLite file (converted here when --formats has no tflite), run in
    TFLite Micro to find its smallest arena and to compare its outputs with LiteRT's, and its C array."""
    from . import micro
    from .tflite import convert
    from .verify import agreement, dice_vs_truth, foreground

    t = time.perf_counter()
    path = run.staged.get("tflite-int8")
    if path is None:  # tflm alone: the int8 file is made, checked and kept like any TFLite int8 file
        path = run.staging / f"{run.name}-int8.tflite"
        result = convert(run.fp32_plain, {"int8": path}, run.calib.images, mean, std,
                         {"int8": run.metadata("int8", "NHWC", "tflite").to_json()})["int8"]
        _keep_tflite(run, "int8", path, result, t)
        t = time.perf_counter()
    data = path.read_bytes()
    arena = micro.smallest_arena(data)
    q, io = micro.run(data, arena, run.xval)
    steps = {kind: int(np.abs(q.astype(np.int16) - micro.litert_int8(path, run.xval, io, ref).astype(np.int16)).max())
             for kind, ref in (("reference", True), ("default", False))}
    prob = ((q.astype(np.float32) - io["output_zero_point"]) * io["output_scale"]).transpose(0, 3, 1, 2)
    mask = foreground(prob, run.threshold)
    checks = {"dice_vs_fp32": agreement(mask, foreground(run.reference, run.threshold)),
              "dice_vs_gt": dice_vs_truth(mask, run.val.masks),
              "max_int8_steps_vs_litert_reference": steps["reference"],
              "max_int8_steps_vs_litert_default": steps["default"]}
    ops = micro.operators(data)
    record = {"model": path.name, "arena_bytes": arena, "flash_bytes": len(data), "ops": ops, **io,
              "allocation_report": micro.allocation_report(data, arena).splitlines()}
    header, code = micro.c_files(f"{run.name}_int8", data, io, arena, run.metadata("int8", "NHWC", "tflite"))
    ident = micro.c_identifier(f"{run.name}_int8")
    for key, text, suffix in (("tflm-header", header, ".h"), ("tflm-source", code, ".cc")):
        file = run.staging / f"{ident}{suffix}"
        file.write_text(text)
        run.staged[key] = file
        run.entries.append(manifest_mod.file_entry(file, format="c", precision="int8", target="tflite-micro",
                                                   checks=checks, micro=record))
    parity = ("equal to LiteRT's reference kernels" if steps["reference"] == 0
              else f"within {steps['reference']} int8 step(s) of LiteRT's reference kernels")
    run.done(Step("TFLite Micro", True, time.perf_counter() - t, run.out / f"{ident}.cc", len(code.encode()), checks,
                  f"arena {arena:,} B ({arena / 1024:.0f} KiB), flash {len(data):,} B, {len(ops)} ops; outputs "
                  f"{parity} ({steps['default']} step(s) from its default kernels)"))


def _load(checkpoint, family, width, blocks, imgsz=None):
    """(model, meta, checkpoint folder): the given checkpoint, or the shipped one for the config."""
    from simpleunet.train.checkpoint import load_model

    if checkpoint is None:
        checkpoint = find_pretrained(family or "simpleunet", width or 16, blocks or 1, imgsz=imgsz)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise ExportError(f"checkpoint folder {checkpoint} does not exist (pass a run folder written by "
                          "simpleunet-train)")
    model, meta = load_model(checkpoint)
    cfg = model.config
    for flag, want, have in (("--family", family, cfg.family), ("--width", width, cfg.width),
                             ("--blocks", blocks, cfg.blocks)):
        if want is not None and want != have:
            raise ExportError(f"{flag} {want} does not match the checkpoint {checkpoint} ({cfg.name}: "
                              f"{flag[2:]} {have}); drop {flag} or pick another checkpoint")
    return model, meta, checkpoint


def export_model(checkpoint: str | os.PathLike | None = None, *, family: str | None = None,
                 width: int | None = None, blocks: int | None = None, imgsz: int | None = None, int8: bool = False,
                 formats: str | Iterable[str] = DEFAULT_FORMATS, calib_data: str | os.PathLike | None = None,
                 calib_size: int | None = 32, out: str | os.PathLike | None = None, opset: int = 17,
                 int8_onnx: str = "qoperator", int8_weights: str = "int7", bias_correction: str = "auto",
                 min_agreement: float = 0.98,
                 max_delta: float = 1e-4,
                 val_data: str | os.PathLike | None = None, val_size: int | None = None, name: str | None = None,
                 fold_aff: bool = True, ort_rewrites: bool = True, require_own_data: bool = False,
                 log: Callable[[str], None] | None = print) -> ExportResult:
    """Export a trained SimpleUNet/SimpleESKNet to ONNX and TFLite (fp32, and int8 with ``int8``: off by default,
    as in the CLI's ``--int8``).

    ``checkpoint``: a run folder written by simpleunet-train; default: the shipped weights for
    (family, width, blocks) (defaults simpleunet, 16, 1). ``imgsz``: default the checkpoint's. ``out``: default
    ``exports/<name>``. ``int8_onnx``: qoperator (default), qdq or both. ``bias_correction``: auto (default: with
    and without, the file closer to fp32 on training images kept; ``BIAS_CORRECTION``), on or off.
    ``val_data``: images/ + masks/ for the checks (default: the runtime's bundled Kvasir-SEG val sample).
    ``ort_rewrites``: apply the exact graph rewrites that make the ONNX files faster in onnxruntime
    (``rewrites.py``; TFLite is converted from the plain graph either way). ``require_own_data`` (publishing): a
    model whose dataset folder is not found here is an error, not calibrated and checked on the bundled Kvasir-SEG
    sample. Raises ``SimpleUNetError`` (one line) on
    bad input or a failed check; ``out`` is then left as it was. Files a previous export in ``out`` listed in its
    manifest and this one does not write are deleted (``outfolder``).
    """
    from simpleunet.train.checkpoint import WEIGHTS
    from simpleunet.train.flops import count_macs
    from simpleunet.train.model import count_parameters

    from .onnx_export import Probabilities
    from .verify import dice_vs_truth, foreground, torch_probabilities

    say = log or (lambda _msg: None)
    start = time.perf_counter()
    formats = parse_formats(formats)
    if int8_onnx not in INT8_ONNX:
        raise ExportError(f"unknown int8 ONNX format {int8_onnx!r}; choose one of {', '.join(INT8_ONNX)}")
    if bias_correction not in BIAS_CORRECTION:
        raise ExportError(f"unknown --bias-correction {bias_correction!r}; choose one of {', '.join(BIAS_CORRECTION)}")
    if int8_weights not in INT8_WEIGHTS:
        raise ExportError(f"unknown --int8-weights {int8_weights!r}; choose one of {', '.join(INT8_WEIGHTS)} (each "
                          "keeps the int8 ONNX exact on x86 CPUs without VNNI; see export/README.md)")
    if "tflm" in formats:
        if not int8:
            raise ExportError("--formats tflm writes a full-integer int8 file for TensorFlow Lite Micro: add --int8")
        from .micro import require_tflm

        require_tflm()  # before minutes of work: the arena is measured in TFLite Micro itself
    if opset not in OPSETS:
        raise ExportError(f"--opset must be between {OPSETS.start} and {OPSETS.stop - 1}, got {opset}")
    if imgsz is not None:
        check_imgsz(imgsz)
    if not 0 < min_agreement <= 1:
        raise ExportError(f"--min-agreement must be in (0, 1], got {min_agreement}")
    if not 0 < max_delta < math.inf:
        raise ExportError(f"--max-delta must be a positive number, got {max_delta}")
    if family not in (None, *FAMILIES):
        raise ExportError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")

    t = time.perf_counter()
    model, meta, checkpoint = _load(checkpoint, family, width, blocks, imgsz)
    cfg, pre = model.config, meta["preprocess"]
    imgsz = check_imgsz(imgsz or int(pre["imgsz"]))
    mean, std, threshold = tuple(pre["mean"]), tuple(pre["std"]), float(pre.get("threshold", 0.5))
    # A shipped checkpoint is named by its zoo folder (simpleunet16-kvasir), a run by its architecture.
    name = name or (checkpoint.name if checkpoint.resolve().parent == zoo_dir() else cfg.name)
    out = Path(out) if out is not None else Path("exports") / name
    params = count_parameters(model)
    weights_sha = manifest_mod.sha256(checkpoint / WEIGHTS)
    report: list[Step] = []
    first = Step("PyTorch", True, time.perf_counter() - t,
                 message=f"{cfg.name} ({params:,} parameters) from {checkpoint}, input 1x3x{imgsz}x{imgsz}")
    report.append(first)
    say(first.line())

    t = time.perf_counter()
    dataset = str(meta.get("dataset", ""))
    notes: list[str] = []  # warnings, printed and kept in the manifest
    if dataset and dataset != SAMPLE_DATASET and (calib_data is None or val_data is None):
        own = own_dataset(dataset)  # calibrate and check a BUSI model on BUSI, not on the bundled Kvasir-SEG sample
        if own is not None:
            calib_data = own if calib_data is None else calib_data
            val_data = own if val_data is None else val_data
        elif require_own_data:
            raise ExportError(f"{name}: its dataset folder {dataset!r} was not found (looked in $SIMPLEUNET_DATA and "
                              f"../shared/datasets); set SIMPLEUNET_DATA to the folder that holds {dataset}/")
        else:
            notes.append(f"the model was trained on {dataset!r}, which is not found here; calibrating and checking "
                         "on the bundled Kvasir-SEG sample (pass --calib-data/--val-data, or set SIMPLEUNET_DATA)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calib = calibration_set(calib_data, imgsz, calib_size) if int8 else None
    notes += [str(w.message) for w in caught]
    select = None
    if int8 and "auto" in (bias_correction, int8_weights) and "onnx" in formats:
        folder = calib_data if calib_data is not None else own_dataset(dataset) if dataset else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a small folder was already named by the calibration's warning
            select = calibration_set(folder, imgsz, max(SELECT_IMAGES, calib_size or 0))
    val = verification_set(val_data, imgsz, val_size)
    if not val.held_out:
        notes.append(f"check images {val.source} include training images: the checks are not on held-out images")
    if calib is not None and set(calib.names) & set(val.names):
        notes.append("calibration and check images overlap: the int8 checks are not on held-out images")
        val.held_out = False
    for note in notes:
        say(f"warning: {note}")
    xval = normalize(val.images, mean, std)
    reference = torch_probabilities(Probabilities(model, cfg.num_classes).eval(), xval)
    pytorch_gt = dice_vs_truth(foreground(reference, threshold), val.masks)
    data = Step("Data", True, time.perf_counter() - t, checks={"dice_vs_gt": pytorch_gt},
                message=(f"calibration: {len(calib.images)} images from {calib.source}; " if calib else "")
                + f"checks: {len(val.images)} images from {val.source}")
    report.append(data)
    say(data.line())

    base = ModelMetadata(family=cfg.family, width=cfg.width, blocks=cfg.blocks, rate=cfg.rate,
                         imgsz=(imgsz, imgsz), mean=mean, std=std, num_classes=cfg.num_classes,
                         channel_order=pre.get("channel_order", "RGB"), output="probabilities",
                         threshold=threshold, min_region=pre.get("min_region", KEEP_ALL), aff=cfg.aff,
                         parameters=params, weights_sha256=weights_sha,
                         dataset=str(meta.get("dataset", "")), name=name, toolkit_version=_version(),
                         extra={"head": cfg.head, "opset": opset, "macs": count_macs(model, (imgsz, imgsz))},
                         architecture=cfg.to_dict())
    cpu, saturates = int8_kernels()
    run = _Run(name, out, outfolder.staging(out), model, base, val, calib, xval, reference, threshold, max_delta,
               min_agreement, say, report, cpu=cpu, saturates=saturates, select=select)
    written = "nothing was written to"
    try:
        fp32 = _onnx_fp32(run, imgsz, opset, fold_aff, keep="onnx" in formats, rewrites=ort_rewrites)
        if int8 and "onnx" in formats:
            _onnx_int8(run, fp32, ["qoperator", "qdq"] if int8_onnx == "both" else [int8_onnx], mean, std,
                       ort_rewrites, int8_weights, bias_correction)
        if "tflite" in formats:
            _tflite(run, fp32, int8, mean, std)
        if "tflm" in formats:
            run.fp32_plain = fp32
            _micro(run, mean, std)
        t = time.perf_counter()
        man = manifest_mod.build(
            run.entries, name=name, family=cfg.family, config=cfg.to_dict(), parameters=params,
            checkpoint={"path": str(checkpoint), "weights_sha256": weights_sha, "dataset": meta.get("dataset")},
            imgsz=[imgsz, imgsz], preprocess={"mean": list(mean), "std": list(std), "threshold": threshold,
                                              "min_region": list(base.min_region),
                                              "channel_order": base.channel_order},
            calibration=None if calib is None else {"source": calib.source, "dataset": calib.dataset,
                                                    "images": len(calib.images), "names": calib.names},
            verification={"source": val.source, "dataset": val.dataset, "images": len(val.images),
                          "held_out": val.held_out, "names": val.names, "pytorch_dice_vs_gt": pytorch_gt},
            warnings=notes,
            thresholds={"max_abs_delta": max_delta, "min_agreement": min_agreement}, aff_folded=fold_aff,
            int8_weights=_grid_used(run.entries, int8_weights) if int8 else None,
            int8_weights_requested=int8_weights if int8 else None,
            checked_on={"int8_kernels": cpu, "cpu": cpu_model()},
            onnxruntime_rewrites=ort_rewrites)
        staged_manifest = manifest_mod.write(run.staging / manifest_mod.MANIFEST, man)
        written = "the new files may be partly moved into"
        with outfolder.hold_interrupt(f"the export was already written to {out}"):  # from here to the end
            files = outfolder.commit(run.staged, staged_manifest, out)
            manifest = out / manifest_mod.MANIFEST
            run.done(Step("Manifest", True, time.perf_counter() - t, manifest, manifest.stat().st_size))
            shutil.rmtree(run.staging, ignore_errors=True)
            result = ExportResult(files, manifest, report, time.perf_counter() - start)
            return _finish(result, out, say, xval if log is not None else None)
    except SimpleUNetError as exc:
        if report[-1].ok:  # a tool failed (a failed check has printed its own line)
            say(Step("Export", False, time.perf_counter() - start, message=f"{exc}; {written} {out}").line())
        raise
    finally:
        shutil.rmtree(run.staging, ignore_errors=True)


def _speeds(files: dict[str, Path], x: np.ndarray, runs: int = 20) -> dict[Path, float]:
    """Median ms per image of each file through the runtime's backends (1 thread, one check image): the export
    recommends the fastest correct file for the CPU at hand (int8 is not always faster for these tiny nets)."""
    from simpleunet_runtime.backends import open_backend

    out = {}
    for path in files.values():
        try:
            backend = open_backend(path, threads=1)
            for _ in range(3):
                backend.run(x[:1])
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                backend.run(x[:1])
                times.append(time.perf_counter() - t)
            out[path] = 1e3 * float(np.median(times))
        except SimpleUNetError:
            continue  # no TFLite runtime here, say: that file is simply not timed
    return out


def _finish(result: ExportResult, out: Path, say: Callable[[str], None],
            xval: np.ndarray | None = None) -> ExportResult:
    """The closing report: the table, where the files are, which file is fastest here, and the next commands."""
    files = {k: p for k, p in result.files.items() if p.suffix in (".onnx", ".tflite")}  # not the C sources
    say("\n" + result.table())
    say(f"\nExport complete ({result.seconds:.1f}s)")
    say(f"Results saved to {out.resolve()}")
    speeds = _speeds(files, xval) if xval is not None else {}
    main = min(speeds, key=speeds.get) if speeds else \
        files.get("onnx-int8") or files.get("tflite-int8") or next(iter(files.values()))
    if speeds:
        cpu = int8_kernels()[0]
        say(f"Speed on this CPU ({cpu_model()}, {cpu}; 1 thread, median ms per image): "
            + ", ".join(f"{p.name} {ms:.1f}" for p, ms in sorted(speeds.items(), key=lambda kv: kv[1]))
            + f". Every file passed its checks, so the fastest is the one to use here: {main.name}")
    say(f"Next:   simpleunet-infer IMAGE --model {main} --out masks/")
    say(f"        simpleunet-bench --models {' '.join(str(p) for p in files.values())}")
    return result


def _version() -> str:
    from simpleunet import __version__

    return __version__
