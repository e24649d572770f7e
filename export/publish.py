"""Publish the zoo into the runtime: export every checkpoint in ``train/zoo/`` and bundle its fp32 + int8 ONNX and
TFLite files in ``runtime/simpleunet_runtime/models/`` with ``index.json``.

``simpleunet-publish [--zoo DIR] [--dest DIR]``. Each entry of index.json (a list): name, format,
precision, file, sha256, bytes, parameters, dataset, metrics (the file's own test-split scores when the zoo
scored these exact files (by sha256), else PyTorch's, plus ``export_checks``: the export's checks and the images
they ran on). Everything is exported into a staging
folder first; files and index are replaced only when every model exported and passed its checks.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from simpleunet_runtime.errors import console_script

from .errors import ExportError
from .manifest import read as read_manifest

REPO = Path(__file__).resolve().parents[1]
DEST = REPO / "runtime" / "simpleunet_runtime" / "models"
SUFFIXES = (".onnx", ".tflite")
#: Zoo models the runtime does not bundle, and why (each stays in train/zoo for PyTorch and for export).
NOT_BUNDLED = {
    "simpleunet8-kvasir": "its int8 ONNX on the int7 grid, exact on every CPU, agrees with fp32 at mask Dice 0.979 < "
                          "0.98 on the check images (2026-12-03; int7 QAT reached 0.976, pair-safe 0.975); the "
                          "full-range file it shipped with lost masks on x86 CPUs without VNNI",
    "simpleunet8-kvasir-112": "a microcontroller model (TensorFlow Lite Micro, 112 px): it ships as the C array in "
                              "runtime/examples/micro; its int8 ONNX agrees with fp32 at 0.979 < 0.98",
}


def zoo_checkpoints(zoo: Path) -> list[Path]:
    if not zoo.is_dir():
        raise ExportError(f"zoo folder {zoo} does not exist")
    from simpleunet.train.checkpoint import run_folders

    found = run_folders(zoo)
    if not found:
        raise ExportError(f"no trained models (run folders written by simpleunet-train) in {zoo}")
    return found


def _metrics(folder: Path, file_sha256: str, checks: dict[str, Any], checked_on: dict[str, Any]) -> dict[str, Any]:
    """The file's own test-split scores if the zoo scored these exact bytes, else PyTorch's; then the export
    checks, apart and saying which images they ran on (a few sample images are not the test split). The export
    is deterministic, so a re-export of the scored checkpoint matches by sha256."""
    out: dict[str, Any] = {}
    path = folder / "metrics.json"
    if path.is_file():
        zoo = json.loads(path.read_text())
        own = next((s for s in (zoo.get("exports") or {}).values() if s.get("sha256") == file_sha256), None)
        test = own or zoo.get("test") or {}
        for key in ("mDice", "mIoU", "pooled_dice"):
            if isinstance(test.get(key), (int, float)):
                out[f"test_{key}"] = test[key]
        if out:
            out["scored"] = "this file" if own else "PyTorch fp32"
        if own and (zoo.get("int8_onnx") or {}).get("scored_on"):  # an int8 score names the kernels it came from
            out["scored_on"] = zoo["int8_onnx"]["scored_on"]
    held_out = "held-out " if checked_on.get("held_out") else ""
    out["export_checks"] = {"on": f"{checked_on.get('images')} {held_out}{checked_on.get('dataset') or ''} images",
                            **{k: v for k, v in checks.items() if v is not None}}
    return out


def publish(zoo: Path, dest: Path = DEST, formats: Iterable[str] = ("onnx", "tflite"),
            log: Callable[[str], None] | None = print) -> list[dict]:
    """Export every zoo checkpoint and install the files + index.json into ``dest``; returns the index."""
    from .pipeline import export_model

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    entries: list[dict] = []
    staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=dest))
    try:
        for folder in zoo_checkpoints(Path(zoo)):
            name = folder.name
            if name in NOT_BUNDLED:
                if log:
                    log(f"{name}: not bundled: {NOT_BUNDLED[name]}")
                continue
            result = export_model(folder, int8=True, formats=tuple(formats), out=staging / name, name=name, log=log,
                                  require_own_data=True)  # never calibrate a BUSI model on the Kvasir sample
            manifest = read_manifest(result.manifest)
            for row in manifest["files"]:
                if row.get("quant_format") not in (None, "qoperator") and row["precision"] == "int8":
                    continue  # one int8 ONNX per model: the default layout
                entries.append({"name": name, "format": row["format"], "precision": row["precision"],
                                "file": row["file"], "sha256": row["sha256"], "bytes": row["bytes"],
                                "parameters": manifest["parameters"],
                                "dataset": (manifest.get("checkpoint") or {}).get("dataset") or "",
                                "metrics": _metrics(folder, row["sha256"], row["checks"], manifest["verification"])})
        for e in entries:
            os.replace(staging / e["name"] / e["file"], dest / e["file"])
        index = dest / "index.json"
        tmp = dest / ".index.json.tmp"
        tmp.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, index)
        keep = {e["file"] for e in entries}
        for old in dest.iterdir():
            if old.suffix in SUFFIXES and old.name not in keep:
                old.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if log:
        log(f"\nPublished {len(entries)} files for {len({e['name'] for e in entries})} model(s) into {dest}")
    return entries


@console_script
def main(argv: list[str] | None = None) -> int:
    """``simpleunet-publish``: the zoo's runs -> the runtime's bundled models and their index."""
    p = argparse.ArgumentParser("simpleunet-publish", description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--zoo", type=Path, default=None, help="zoo folder (default train/zoo)")
    p.add_argument("--dest", type=Path, default=DEST, help=f"runtime models folder (default {DEST})")
    args = p.parse_args(argv)
    from .pipeline import zoo_dir

    publish(args.zoo or zoo_dir(), args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
