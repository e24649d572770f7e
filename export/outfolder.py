"""An export's output folder, written so that no failure or kill leaves it half done.

Files are built in a staging folder beside ``out`` (same filesystem: the final moves are atomic renames) and
moved in only after every check passed: the files first, then the manifest that lists them, and Ctrl-C waits
for the moves to end. A later export removes the staging folders that killed ones left, and the files a previous
export listed that this one no longer writes.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from . import manifest as manifest_mod
from .errors import ExportError


def staging(out: Path) -> Path:
    """A fresh folder beside ``out`` (same filesystem, so the final moves are atomic renames). Its name carries
    this process's id, so that a later export into ``out`` removes the folders of killed ones (``remove_dead``)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_dead(out)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-{os.getpid()}-", dir=out.parent))
    except OSError as exc:
        raise ExportError(f"cannot write to --out {out}: {exc.strerror or exc}") from None


def remove_dead(out: Path) -> None:
    """Remove the staging folders that exports into ``out`` killed by kill -9 or a power cut left: those whose
    process is gone (an export running now keeps its own). POSIX only: on Windows os.kill(pid, 0) is a Ctrl-C."""
    if os.name != "posix":
        return
    pattern = re.compile(rf"\.{re.escape(out.name)}\.staging-(\d+)-[a-z0-9_]{{8}}")
    for folder in out.parent.iterdir():
        match = pattern.fullmatch(folder.name)
        if match and folder.is_dir() and not _running(int(match[1])):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        pass
    return True


def _stale(out: Path, keep: set[str]) -> list[Path]:
    """Files the previous manifest in ``out`` lists, unchanged (same sha256: the toolkit wrote them), that this run
    does not write: left beside the new manifest, ``simpleunet-bench --models out`` would pick them up."""
    try:
        rows = manifest_mod.read(out / manifest_mod.MANIFEST)["files"]
        names = {r["file"]: r["sha256"] for r in rows if isinstance(r, dict)}
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [out / n for n, sha in names.items() if isinstance(n, str) and n and Path(n).name == n
            and n not in keep and (out / n).is_file() and manifest_mod.sha256(out / n) == sha]


@contextlib.contextmanager
def hold_interrupt(message: str):
    """Ctrl-C inside the block waits for its end, then raises ``KeyboardInterrupt(message)``: the moves into
    ``out`` are never left half done, and the CLI can say that the export was written."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    held: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if held:
        raise KeyboardInterrupt(message)


def _unlist(out: Path, names: set[str], scratch: Path) -> None:
    """Rewrite the manifest in ``out`` without the rows of ``names``, the files about to be replaced: a kill -9
    between the moves then leaves them unlisted, never beside a manifest listing other bytes (the runtime refuses
    those). The other rows stay, so the rerun still finds the previous export's stale files."""
    path = out / manifest_mod.MANIFEST
    try:
        doc = manifest_mod.read(path)
        rows = doc["files"]
        keep = [r for r in rows if not (isinstance(r, dict) and r.get("file") in names)]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # no previous manifest, or not one of ours: nothing to check the new files against
    if len(keep) < len(rows):
        os.replace(manifest_mod.write(scratch / f".unlisted-{manifest_mod.MANIFEST}", {**doc, "files": keep}), path)


def commit(staged: dict[str, Path], manifest: Path, out: Path) -> dict[str, Path]:
    """Move the staged files, then the manifest, into ``out``; then delete the stale files of a previous export."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        stale = _stale(out, {p.name for p in staged.values()} | {manifest.name})
        _unlist(out, {p.name for p in staged.values()}, manifest.parent)
        final = {}
        for key, path in staged.items():
            final[key] = out / path.name
            os.replace(path, final[key])
        os.replace(manifest, out / manifest.name)
        for path in stale:
            path.unlink(missing_ok=True)
        return final
    except OSError as exc:
        raise ExportError(f"cannot write to --out {out}: {exc.strerror or exc}") from None
