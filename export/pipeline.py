"""``export_model``: checkpoint -> fp32 ONNX -> int8 ONNX -> TFLite fp32 + int8, every file checked.

Everything is built in a staging folder beside ``out`` and moved into ``out`` only after every check passed, so
a failed export never replaces good files with partial ones. One status line per step (Ultralytics style),
then a table, "Export complete", where the files are and the next command.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from simpleunet_runtime.errors import SimpleUNetError
from simpleunet_runtime.image import normalize
from simpleunet_runtime.metadata import ModelMetadata

from . import manifest as manifest_mod
from .errors import ExportError
from .images import ImageSet, calibration_set, verification_set

FORMATS = ("onnx", "tflite")
INT8_ONNX = ("qoperator", "qdq", "both")
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
             "dice_vs_gt": "Dice vs GT {:.4f}"}
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


def find_pretrained(family: str, width: int, blocks: int, zoo: Path | None = None) -> Path:
    """The shipped checkpoint for a config (Kvasir-SEG first), or an error listing what ships."""
    from simpleunet.train.checkpoint import read_config

    zoo = zoo or zoo_dir()
    found, have = [], []
    for folder in sorted(p for p in zoo.glob("*") if (p / "config.json").is_file()) if zoo.is_dir() else []:
        try:
            m = read_config(folder)["model"]
        except SimpleUNetError:
            continue
        have.append(folder.name)
        if (m.get("family"), m.get("width"), m.get("blocks", 1)) == (family, width, blocks):
            found.append(folder)
    if not found:
        ships = f"shipped: {', '.join(have)}" if have else "none are shipped yet"
        raise ExportError(f"no pretrained weights for {family} width {width} blocks {blocks} in {zoo} ({ships}); "
                          "pass --checkpoint RUN_DIR (a folder written by simpleunet-train)")
    return sorted(found, key=lambda p: ("kvasir" not in p.name, p.name))[0]


def _shown(staged: Path, out: Path) -> tuple[Path, int]:
    """Where a staged file will live once committed, and its size (for the status line)."""
    return out / staged.name, staged.stat().st_size


def _staging(out: Path) -> Path:
    """A fresh folder beside ``out`` (same filesystem, so the final moves are atomic renames)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    except OSError as exc:
        raise ExportError(f"cannot write to --out {out}: {exc.strerror or exc}") from None


def _commit(staged: dict[str, Path], out: Path) -> dict[str, Path]:
    try:
        out.mkdir(parents=True, exist_ok=True)
        final = {}
        for key, path in staged.items():
            dest = out / path.name
            os.replace(path, dest)
            final[key] = dest
        return final
    except OSError as exc:
        raise ExportError(f"cannot write to --out {out}: {exc.strerror or exc}") from None


# ---- the export --------------------------------------------------------------------------------------------------

def export_model(checkpoint: str | os.PathLike | None = None, *, family: str | None = None,
                 width: int | None = None, blocks: int | None = None, imgsz: int | None = None, int8: bool = True,
                 formats: str | Iterable[str] = FORMATS, calib_data: str | os.PathLike | None = None,
                 calib_size: int | None = 32, out: str | os.PathLike | None = None, opset: int = 17,
                 int8_onnx: str = "qoperator", min_agreement: float = 0.98, max_delta: float = 1e-4,
                 val_data: str | os.PathLike | None = None, val_size: int | None = None, name: str | None = None,
                 fold_aff: bool = True, log: Callable[[str], None] | None = print) -> ExportResult:
    """Export a trained SimpleUNet/SimpleESKNet to ONNX and TFLite (fp32, and int8 with ``int8``).

    ``checkpoint``: a folder with config.json + model.safetensors; default: the shipped weights for
    (family, width, blocks) (defaults simpleunet, 16, 1). ``imgsz``: default the checkpoint's. ``out``: default
    ``exports/<name>``. ``int8_onnx``: qoperator (default), qdq or both. ``val_data``: images/ + masks/ for the
    checks (default: the runtime's bundled Kvasir-SEG val sample). Raises ``SimpleUNetError`` (one line) on
    bad input or a failed check; ``out`` is then left as it was.
    """
    from simpleunet.train.checkpoint import WEIGHTS, load_model
    from simpleunet.train.model import count_parameters

    from .verify import agreement, dice_vs_truth, foreground, max_abs_delta, torch_probabilities

    say = log or (lambda _msg: None)
    start = time.perf_counter()
    formats = parse_formats(formats)
    if int8_onnx not in INT8_ONNX:
        raise ExportError(f"unknown int8 ONNX format {int8_onnx!r}; choose one of {', '.join(INT8_ONNX)}")
    if opset not in OPSETS:
        raise ExportError(f"--opset must be between {OPSETS.start} and {OPSETS.stop - 1}, got {opset}")
    if imgsz is not None:
        check_imgsz(imgsz)
    if not 0 < min_agreement <= 1:
        raise ExportError(f"--min-agreement must be in (0, 1], got {min_agreement}")
    if family not in (None, "simpleunet", "simpleesknet", "unet"):
        raise ExportError(f"unknown family {family!r}; choose simpleunet or simpleesknet")

    t = time.perf_counter()
    if checkpoint is None:
        checkpoint = find_pretrained(family or "simpleunet", width or 16, blocks or 1)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise ExportError(f"checkpoint folder {checkpoint} does not exist (expected config.json + {WEIGHTS})")
    model, meta = load_model(checkpoint)
    cfg = model.config
    for flag, want, have in (("--family", family, cfg.family), ("--width", width, cfg.width),
                             ("--blocks", blocks, cfg.blocks)):
        if want is not None and want != have:
            raise ExportError(f"{flag} {want} does not match the checkpoint {checkpoint} ({cfg.name}: "
                              f"{flag[2:]} {have}); drop {flag} or pick another checkpoint")
    pre = meta["preprocess"]
    imgsz = check_imgsz(imgsz or int(pre["imgsz"]))
    mean, std, threshold = tuple(pre["mean"]), tuple(pre["std"]), float(pre.get("threshold", 0.5))
    name = name or cfg.name
    out = Path(out) if out is not None else Path("exports") / name
    params = count_parameters(model)
    weights_sha = manifest_mod.sha256(checkpoint / WEIGHTS)
    report: list[Step] = []

    def done(step: Step) -> Step:
        report.append(step)
        say(step.line())
        return step

    done(Step("PyTorch", True, time.perf_counter() - t, message=f"{cfg.name} ({params:,} parameters) from "
                                                                 f"{checkpoint}, input 1x3x{imgsz}x{imgsz}"))
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calib = calibration_set(calib_data, imgsz, calib_size) if int8 else None
    for w in caught:
        say(f"warning: {w.message}")
    val = verification_set(val_data, imgsz, val_size)
    if calib is not None and set(calib.names) & set(val.names):
        say("warning: calibration and verification images overlap; the int8 checks are not on held-out images")
        val.held_out = False
    xval = normalize(val.images, mean, std)
    from .onnx_export import Probabilities

    reference = torch_probabilities(Probabilities(model, cfg.num_classes).eval(), xval)
    ref_mask = foreground(reference, threshold)
    done(Step("Data", True, time.perf_counter() - t, checks={"dice_vs_gt": dice_vs_truth(ref_mask, val.masks)},
              message=(f"calibration: {len(calib.images)} images from {calib.source}; " if calib else "")
              + f"checks: {len(val.images)} images from {val.source}"))

    base = ModelMetadata(family=cfg.family, width=cfg.width, blocks=cfg.blocks, rate=cfg.rate,
                         imgsz=(imgsz, imgsz), mean=mean, std=std, num_classes=cfg.num_classes,
                         channel_order=pre.get("channel_order", "RGB"), output="probabilities",
                         threshold=threshold, aff=cfg.aff, parameters=params, weights_sha256=weights_sha,
                         dataset=str(meta.get("dataset", "")), name=name, toolkit_version=_version(),
                         extra={"head": cfg.head, "opset": opset})
    staging = _staging(out)
    entries: list[dict[str, Any]] = []
    staged: dict[str, Path] = {}
    try:
        def check_fp32(step: str, prob: np.ndarray) -> dict:
            delta = max_abs_delta(prob, reference)
            checks = {"max_abs_delta_vs_pytorch": delta,
                      "dice_vs_gt": dice_vs_truth(foreground(prob, threshold), val.masks)}
            if not delta <= max_delta:
                fail(step, f"max |Δ| vs PyTorch {delta:.2e} > {max_delta:.0e} on {len(xval)} real images")
            return checks

        def check_int8(step: str, prob: np.ndarray) -> dict:
            mask = foreground(prob, threshold)
            agree = agreement(mask, ref_mask)
            checks = {"dice_vs_fp32": agree, "dice_vs_gt": dice_vs_truth(mask, val.masks)}
            if not agree >= min_agreement:
                fail(step, f"int8 mask agrees with fp32 at Dice {agree:.4f} < --min-agreement {min_agreement} "
                           f"on {len(xval)} real images")
            return checks

        def fail(step: str, message: str) -> None:
            done(Step(step, False, time.perf_counter() - t, message=message))
            raise ExportError(f"{step}: {message}; nothing was written to {out}")

        # ONNX fp32 (also the source of every other file)
        import onnx

        from .metadata import set_onnx_metadata
        from .onnx_export import export_onnx
        from .quantize import int8_weight_bytes, quantize_onnx
        from .verify import onnx_probabilities, tflite_probabilities

        t = time.perf_counter()
        proto, sizes = export_onnx(model, imgsz, cfg.num_classes, opset, cfg.in_channels, fold=fold_aff)
        fp32_onnx = staging / f"{name}-fp32.onnx"
        onnx.save(set_onnx_metadata(proto, base.replace(precision="fp32", extra={**base.extra, "format": "onnx"})),
                  str(fp32_onnx))
        sizes["+ simpleunet metadata"] = fp32_onnx.stat().st_size
        checks = check_fp32("ONNX", onnx_probabilities(fp32_onnx, xval))
        if "onnx" in formats:
            staged["onnx-fp32"] = fp32_onnx
            entries.append(manifest_mod.file_entry(fp32_onnx, format="onnx", precision="fp32", layout="NCHW",
                                                   parameters=params, int8_weight_bytes=0, checks=checks,
                                                   size_steps=sizes))
        shown = _shown(fp32_onnx, out) if "onnx" in formats else (None, 0)
        done(Step("ONNX", True, time.perf_counter() - t, *shown, checks,
                  message=f"opset {opset}, simplified with {'onnxsim' if 'onnxsim' in sizes else 'onnxslim'}"
                  + ("" if "onnx" in formats else " (intermediate, not kept)")))

        # ONNX int8
        if int8 and "onnx" in formats:
            kinds = ["qoperator", "qdq"] if int8_onnx == "both" else [int8_onnx]
            xcal = normalize(calib.images, mean, std)
            for i, kind in enumerate(kinds):
                t = time.perf_counter()
                label = f"ONNX int8 {kind}"
                qproto, qsizes = quantize_onnx(fp32_onnx, xcal, kind)
                path = staging / (f"{name}-int8.onnx" if i == 0 else f"{name}-int8-{kind}.onnx")
                meta8 = base.replace(precision="int8", extra={**base.extra, "format": f"onnx-{kind}",
                                                              "calibration_images": len(calib.images)})
                onnx.save(set_onnx_metadata(qproto, meta8), str(path))
                qsizes["+ simpleunet metadata"] = path.stat().st_size
                checks = check_int8(label, onnx_probabilities(path, xval))
                key = "onnx-int8" if i == 0 else f"onnx-int8-{kind}"
                staged[key] = path
                entries.append(manifest_mod.file_entry(path, format="onnx", precision="int8", layout="NCHW",
                                                       quant_format=kind, parameters=params,
                                                       int8_weight_bytes=int8_weight_bytes(qproto), checks=checks,
                                                       size_steps=qsizes))
                done(Step(label, True, time.perf_counter() - t, *_shown(path, out), checks))

        # TFLite fp32 + int8 (one onnx2tf run)
        if "tflite" in formats:
            from .tflite import convert

            t = time.perf_counter()
            precisions = ["fp32", "int8"] if int8 else ["fp32"]
            outputs = {p: staging / f"{name}-{p}.tflite" for p in precisions}
            metas = {p: base.replace(precision=p, input_layout="NHWC",
                                     extra={**base.extra, "format": "tflite",
                                            **({"calibration_images": len(calib.images)} if p == "int8" else {})})
                     .to_json() for p in precisions}
            results = convert(fp32_onnx, outputs, calib.images if int8 else val.images[:1], mean, std, metas)
            seconds = time.perf_counter() - t
            for p in precisions:
                t = time.perf_counter()
                path = outputs[p]
                prob = tflite_probabilities(path, xval)
                label = "TFLite" if p == "fp32" else "TFLite int8"
                checks = check_fp32(label, prob) if p == "fp32" else check_int8(label, prob)
                staged[f"tflite-{p}"] = path
                entries.append(manifest_mod.file_entry(path, format="tflite", precision=p, layout="NHWC",
                                                       io="int8" if p == "int8" else "float32", parameters=params,
                                                       int8_weight_bytes=results[p]["int8_weight_bytes"],
                                                       checks=checks, size_steps=results[p]["sizes"]))
                done(Step(label, True, seconds + time.perf_counter() - t, *_shown(path, out), checks,
                          message="onnx2tf, fp32 and int8 in one run" if p == "fp32" and int8 else ""))
                seconds = 0.0

        t = time.perf_counter()
        man = manifest_mod.build(
            entries, name=name, family=cfg.family, config=cfg.to_dict(), parameters=params,
            checkpoint={"path": str(checkpoint), "weights_sha256": weights_sha, "dataset": meta.get("dataset")},
            imgsz=[imgsz, imgsz], preprocess={"mean": list(mean), "std": list(std), "threshold": threshold,
                                              "channel_order": base.channel_order},
            calibration=None if calib is None else {"source": calib.source, "images": len(calib.images),
                                                    "names": calib.names},
            verification={"source": val.source, "images": len(val.images), "held_out": val.held_out,
                          "pytorch_dice_vs_gt": dice_vs_truth(ref_mask, val.masks)},
            thresholds={"max_abs_delta": max_delta, "min_agreement": min_agreement},
            aff_folded=fold_aff)
        man_path = manifest_mod.write(staging / manifest_mod.MANIFEST, man)
        files = _commit(staged, out)
        man_final = _commit({"manifest": man_path}, out)["manifest"]
        result = ExportResult(files, man_final, report, time.perf_counter() - start)
        done(Step("Manifest", True, time.perf_counter() - t, man_final, man_final.stat().st_size))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    say("")
    say(result.table())
    say(f"\nExport complete ({result.seconds:.1f}s)")
    say(f"Results saved to {out.resolve()}")
    first = files.get("onnx-int8") or files.get("tflite-int8") or next(iter(files.values()))
    say(f"Next:   simpleunet-infer IMAGE --model {first} --out masks/")
    say(f"        simpleunet-bench --models {' '.join(str(p) for p in files.values())}")
    return result


def _version() -> str:
    from simpleunet import __version__

    return __version__
