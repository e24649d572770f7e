"""The models bundled inside the package (``models/index.json`` + files), addressable by name.

Each index entry: name, format (onnx|tflite), precision (fp32|int8), file, sha256, bytes, parameters, dataset,
metrics. A bundled file is hashed every time it is loaded (they are KB-sized), so a corrupted install fails
loudly instead of segmenting wrongly; an entry's file must lie inside the models folder. ``SIMPLEUNET_MODELS_DIR``
points the runtime at another folder of bundled models. ``check_manifest`` holds any model file to the exporter's
``manifest.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

from .errors import SimpleUNetError, console_script

EMPTY = "no bundled models (the toolkit's simpleunet-publish installs them)"
FORMATS, PRECISIONS = ("onnx", "tflite"), ("fp32", "int8")
DEFAULT_MODEL = "simpleunet16-kvasir"  # the paper's 16 K model, what simpleunet-infer runs unless told
MANIFEST = "manifest.json"  # what simpleunet-export writes beside its files (export/manifest.py)


def models_dir() -> Path:
    return Path(os.environ.get("SIMPLEUNET_MODELS_DIR") or Path(__file__).resolve().parent / "models")


def empty_message() -> str:
    """Why there are no models, naming SIMPLEUNET_MODELS_DIR and its folder when that is where the runtime looked."""
    folder = models_dir()
    if not os.environ.get("SIMPLEUNET_MODELS_DIR"):
        return f"no bundled models in {folder}; reinstall simpleunet-runtime (in the toolkit: make zoo-publish)"
    state = "does not exist" if not folder.is_dir() else "has no index.json"
    return (f"SIMPLEUNET_MODELS_DIR={folder} {state}; fill it with the toolkit's simpleunet-publish --dest DIR, "
            "or unset SIMPLEUNET_MODELS_DIR to use the bundled models")


def index(folder: str | os.PathLike | None = None) -> list[dict]:
    """The entries of ``index.json`` ([] when there is none), each checked by ``_check_entry``."""
    path = Path(folder or models_dir()) / "index.json"
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SimpleUNetError(f"bundled model index {path} is unreadable ({exc}); reinstall simpleunet-runtime") \
            from None
    entries = data.get("models", []) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise SimpleUNetError(f"bundled model index {path} is malformed (no list of models); reinstall "
                              "simpleunet-runtime")
    for i, entry in enumerate(entries):
        problem = _check_entry(entry)
        if problem:
            raise SimpleUNetError(f"bundled model index {path} is malformed (entry {i + 1}: {problem}); reinstall "
                                  "simpleunet-runtime")
    return entries


def _check_entry(entry) -> str | None:
    """What is wrong with one index entry, or None: the fields the runtime reads must have their types (a list of
    models is printed, sorted and joined into paths), and ``file`` must name a file inside the models folder."""
    if not isinstance(entry, dict):
        return "not an object"
    for key in ("name", "file"):
        if not isinstance(entry.get(key), str) or not entry[key] or not entry[key].isprintable():
            return f"{key} must be a non-empty printable string, got {entry.get(key)!r}"[:200]
    for key in ("format", "precision", "sha256", "dataset"):
        if key in entry and not isinstance(entry[key], str):
            return f"{key} must be a string, got {entry[key]!r}"[:200]
    file = Path(entry["file"])
    if file.is_absolute() or ".." in file.parts or "\\" in entry["file"]:
        return f"file {entry['file']!r} is not a plain path inside the models folder"
    return None


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
    root = Path(folder or models_dir())
    path = root / entry["file"]
    if not path.is_file():
        raise SimpleUNetError(f"bundled model file {path} is missing; reinstall simpleunet-runtime")
    if not path.resolve().is_relative_to(root.resolve()):  # a symlink out of the folder
        raise SimpleUNetError(f"bundled model file {path} leads outside {root}; reinstall simpleunet-runtime")
    want = entry.get("sha256")
    if not want:
        raise SimpleUNetError(f"bundled model {entry['file']} has no sha256 in the index; reinstall")
    got = sha256(path)
    if got != want:
        raise SimpleUNetError(f"bundled model {entry['file']} is corrupt: sha256 {got[:12]}… != index "
                              f"{want[:12]}…; reinstall simpleunet-runtime")
    return path


def check_manifest(path: Path, data: bytes) -> None:
    """When the exporter's ``manifest.json`` sits beside ``path`` and lists it, ``data`` (the file's bytes, as the
    runtime will run them) must have its sha256: a file changed or damaged after export is refused. A manifest.json
    that is not the exporter's (not JSON, no "files" list) or does not list the file is none of our business."""
    manifest = path.parent / MANIFEST
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return
    rows = doc.get("files") if isinstance(doc, dict) else None
    entry = next((r for r in rows if isinstance(r, dict) and r.get("file") == path.name), None) \
        if isinstance(rows, list) else None
    if entry is None:
        return
    want = entry.get("sha256")
    if not isinstance(want, str):
        raise SimpleUNetError(f"{manifest} lists {path.name} without a sha256; re-export it with simpleunet-export")
    got = hashlib.sha256(data).hexdigest()
    if got != want.lower():
        raise SimpleUNetError(f"{path} does not match {manifest} (its sha256 {got[:12]}… is not the one listed): "
                              "changed or damaged since export; copy or re-export it (an edited file needs a new "
                              "manifest)")


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
    if os.environ.get("SIMPLEUNET_MODELS_DIR") and not models_dir().is_dir():
        raise SimpleUNetError(empty_message())  # console_script: one error line, exit 2
    entries = index()
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
