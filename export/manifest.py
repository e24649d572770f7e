"""``manifest.json`` beside the exported files: what each file is, its sha256 and sizes, and the checks it passed,
so a deployment can verify what it ships and a reader can see how it was made."""
from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from simpleunet_runtime.bundled import sha256  # noqa: F401  (re-exported: manifest.sha256)

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
TOOLS = ("torch", "onnx", "onnxruntime", "onnxsim", "onnxslim", "onnx2tf", "tensorflow", "ai-edge-litert")




def tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def file_entry(path: Path, **fields: Any) -> dict[str, Any]:
    """One row: file name, sha256, bytes, plus the caller's fields (format, precision, checks...)."""
    return {"file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size, **fields}


def build(files: list[dict[str, Any]], **header: Any) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **header, "tools": tool_versions(), "files": files}


def write(path: Path, manifest: dict[str, Any]) -> Path:
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


def read(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
