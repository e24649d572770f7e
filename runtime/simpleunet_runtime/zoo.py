"""The models bundled inside the package (``models/index.json`` + files), addressable by name.

Each index entry: name, format (onnx|tflite), precision (fp32|int8), file, sha256, bytes, parameters, dataset,
metrics. A bundled file is hashed every time it is loaded (they are KB-sized), so a corrupted install fails
loudly instead of segmenting wrongly. ``SIMPLEUNET_MODELS_DIR`` points the zoo at another folder.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from .errors import SimpleUNetError, console_script

EMPTY = "no bundled models (the toolkit's python -m simpleunet.export.publish installs them)"
FORMATS, PRECISIONS = ("onnx", "tflite"), ("fp32", "int8")
DEFAULT_MODEL = "simpleunet16-kvasir"  # the paper's 16 K model, what simpleunet-infer runs unless told


def models_dir() -> Path:
    return Path(os.environ.get("SIMPLEUNET_MODELS_DIR") or Path(__file__).resolve().parent / "models")


def empty_message() -> str:
    """Why there are no models, naming SIMPLEUNET_MODELS_DIR and its folder when that is where the zoo looked."""
    folder = models_dir()
    if not os.environ.get("SIMPLEUNET_MODELS_DIR"):
        return f"no bundled models in {folder}; reinstall simpleunet-runtime (in the toolkit: make zoo-publish)"
    state = "does not exist" if not folder.is_dir() else "has no index.json"
    return (f"SIMPLEUNET_MODELS_DIR={folder} {state}; fill it with the toolkit's python -m simpleunet.export.publish "
            "--dest DIR, or unset SIMPLEUNET_MODELS_DIR to use the bundled models")


def index(folder: str | os.PathLike | None = None) -> list[dict]:
    """The entries of ``index.json`` ([] when there is none)."""
    path = Path(folder or models_dir()) / "index.json"
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SimpleUNetError(f"bundled model index {path} is unreadable ({exc}); reinstall simpleunet-runtime") \
            from None
    entries = data.get("models", []) if isinstance(data, dict) else data
    if not isinstance(entries, list) or not all(isinstance(e, dict) and {"name", "file"} <= set(e) for e in entries):
        raise SimpleUNetError(f"bundled model index {path} is malformed; reinstall simpleunet-runtime")
    return entries


def names(folder: str | os.PathLike | None = None) -> list[str]:
    return sorted({e["name"] for e in index(folder)})


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (the one file-hash helper of the toolkit)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find(name: str, precision: str = "int8", format: str = "onnx", folder: str | os.PathLike | None = None) -> dict:
    """The index entry for (name, precision, format), or an error that lists what exists."""
    entries = index(folder)
    if not entries:
        raise SimpleUNetError(f"unknown model {name!r}: {EMPTY if folder else empty_message()}")
    matches = [e for e in entries if e["name"] == name]
    if not matches:
        raise SimpleUNetError(f"unknown model {name!r}; bundled models: {', '.join(names(folder))}")
    for e in matches:
        if e.get("precision", "fp32") == precision and e.get("format", "onnx") == format:
            return e
    have = ", ".join(sorted(f"{e.get('precision', 'fp32')}/{e.get('format', 'onnx')}" for e in matches))
    raise SimpleUNetError(f"model {name!r} has no {precision}/{format} file; it has {have}")


def resolve(name: str, precision: str = "int8", format: str = "onnx", folder: str | os.PathLike | None = None) -> Path:
    """Path of a bundled model file after checking its sha256."""
    if format not in FORMATS:
        raise SimpleUNetError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise SimpleUNetError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    entry = find(name, precision, format, folder)
    path = Path(folder or models_dir()) / entry["file"]
    if not path.is_file():
        raise SimpleUNetError(f"bundled model file {path} is missing; reinstall simpleunet-runtime")
    want = entry.get("sha256")
    if not want:
        raise SimpleUNetError(f"bundled model {entry['file']} has no sha256 in the index; reinstall")
    got = sha256(path)
    if got != want:
        raise SimpleUNetError(f"bundled model {entry['file']} is corrupt: sha256 {got[:12]}… != index "
                              f"{want[:12]}…; reinstall simpleunet-runtime")
    return path


def _metric(entry: dict) -> str:
    """The file's mDice on its dataset's test split (``metrics.test_mDice``), or "-"."""
    metrics = entry.get("metrics")
    value = metrics.get("test_mDice") if isinstance(metrics, dict) else None
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def table(entries: list[dict]) -> str:
    """A plain text table of bundled models (sizes in decimal KB, 1000 bytes, as the docs quote them)."""
    head = ("name", "format", "precision", "size", "params", "dataset", "test mDice")
    rows = [(e["name"], e.get("format", "?"), e.get("precision", "?"),
             f"{e['bytes'] / 1000:.1f} KB" if isinstance(e.get("bytes"), int) else "?",
             f"{e['parameters']:,}" if isinstance(e.get("parameters"), int) else "?",
             str(e.get("dataset", "") or "-"), _metric(e))
            for e in sorted(entries, key=lambda e: (e["name"], e.get("format", ""), e.get("precision", "")))]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows])


@console_script
def list_main(argv: list[str] | None = None) -> int:
    """``simpleunet-models``: list the bundled models."""
    p = argparse.ArgumentParser(prog="simpleunet-models", description="List the models bundled with the runtime.")
    p.add_argument("--json", action="store_true", help="print the index as JSON")
    args = p.parse_args(argv)
    try:
        entries = index()
    except SimpleUNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(entries, indent=2))
    elif not entries:
        print(empty_message())
    else:
        print(table(entries))
        e = min(entries, key=lambda e: (e["name"] != DEFAULT_MODEL, e.get("precision") != "int8",
                                        e.get("format") != "onnx"))  # the example: what infer runs by default
        print(f"\nuse: simpleunet-infer IMAGE --model {e['name']} --out masks/   or   Segmenter.pretrained("
              f"{e['name']!r}, precision={e.get('precision', 'fp32')!r}, format={e.get('format', 'onnx')!r})")
    return 0
