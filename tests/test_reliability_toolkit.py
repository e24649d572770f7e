"""The toolkit's commands as processes (issue 19): kill -9 during ``simpleunet-export`` and during training, then
the rerun or ``--resume``; ``simpleunet-infer``, ``simpleunet-export`` and ``simpleunet-bench`` without a network.

A kill is sent by the process to itself from a hook at a chosen call (inside a save, between batches, in the
middle of the export's final moves), so each case is the same on every run; the real console script runs in a
fresh interpreter. Tiny sizes (a width-4 model at 32 px, ONNX fp32 only) keep each test to seconds.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from simpleunet.export import cli as export_cli
from simpleunet.export.manifest import sha256
from simpleunet.train.checkpoint import load_model, read_training_state
from simpleunet.train.cli import train_main
from simpleunet_runtime import Segmenter
from simpleunet_runtime.sample import sample_pairs

BIN = Path(sys.executable).parent
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "simpleunet16-kvasir-early"
TINY_MODEL = Path(__file__).resolve().parents[1] / "runtime" / "tests" / "fixtures" / "tiny_fp32.onnx"


def _script(name: str, args: list[str], hook: str = "", prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Console script ``name ARGS`` in a fresh interpreter (under ``prefix``, e.g. unshare), after ``hook``."""
    exe = str(BIN / name)
    code = f"import runpy, sys\n{hook}\nsys.argv = [{exe!r}, *{args!r}]\nrunpy.run_path({exe!r}, run_name='__main__')"
    return subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def _kill_at(module: str, name: str, call: int = 1, when: str = "True") -> str:
    """Hook source: kill -9 of the process itself at the ``call``-th call of ``module.name`` (``Class.attr`` too)
    whose arguments ``a`` make ``when`` true."""
    owner, _, attr = name.rpartition(".")
    return (f"import importlib, os, signal\nfrom pathlib import Path\n_owner = importlib.import_module({module!r})\n"
            + (f"_owner = _owner.{owner}\n" if owner else "")
            + f"_real, _calls = _owner.{attr}, [0]\n"
            "def _hooked(*a, **k):\n"
            f"    _calls[0] += bool({when})\n"
            f"    if _calls[0] == {call} and {when}:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return _real(*a, **k)\n"
            f"setattr(_owner, {attr!r}, _hooked)\n")


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.exists() else []


# ---- training: kill -9, then --resume -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    """16 image/mask pairs (random ellipses on noise): the data of a run that only has to be resumable."""
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir()
    for i in range(16):
        image = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
        mask = Image.new("L", (40, 40))
        x, y = rng.integers(4, 24, 2)
        for im, fill in ((image, (255, 64, 64)), (mask, 255)):
            ImageDraw.Draw(im).ellipse([int(x), int(y), int(x) + 14, int(y) + 12], fill=fill)
        image.save(root / "images" / f"s{i:02d}.png")
        mask.save(root / "masks" / f"s{i:02d}.png")
    return root


def _train_flags(data: Path, out: Path) -> list[str]:
    return ["--data", str(data), "--dataset", "tiny", "--out", str(out), "--width", "4", "--imgsz", "32",
            "--epochs", "3", "--batch-size", "4", "--val-fraction", "0.25", "--augment", "strong", "--threads", "1",
            "--no-progress"]


@pytest.fixture(scope="module")
def uninterrupted(synthetic_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full") / "run"
    assert train_main(_train_flags(synthetic_data, out)) == 0
    return out


@pytest.mark.parametrize("module, name, call", [("simpleunet.train.loop", "segmentation_loss", 5),
                                                ("simpleunet.train.checkpoint", "save_file", 3)],
                         ids=["between-batches", "inside-a-save"])
def test_kill_9_during_training_then_resume_gives_the_uninterrupted_weights(synthetic_data, uninterrupted, tmp_path,
                                                                            module, name, call):
    """3 batches an epoch: killed in epoch 2, between two batches or while epoch 2's first file is being saved."""
    out = tmp_path / "run"
    killed = _script("simpleunet-train", _train_flags(synthetic_data, out), _kill_at(module, name, call))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    load_model(out)  # weights and the config that names their sha256 are one save: nothing corrupt
    assert read_training_state(out)["epoch"] == 0  # epoch 1, the last one saved
    assert [h["epoch"] for h in json.loads((out / "metrics.json").read_text())["history"]] == [1]
    assert len(_hidden(out)) == (1 if name == "save_file" else 0)  # the kill's temp file, until the next save
    assert train_main(_train_flags(synthetic_data, out) + ["--resume"]) == 0
    assert _hidden(out) == []
    for file in ("last.safetensors", "model.safetensors"):
        a, b = load_file(str(uninterrupted / file)), load_file(str(out / file))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file


# ---- export: kill -9, then the rerun --------------------------------------------------------------------------

EXPORT = ["--checkpoint", str(FIXTURE), "--formats", "onnx", "--val-size", "2"]


@pytest.fixture(scope="module")
def previous_export(tmp_path_factory) -> Path:
    """An export already in --out (the plain graph, so that the re-export changes the file's bytes)."""
    out = tmp_path_factory.mktemp("previous") / "su"
    assert export_cli.main([*EXPORT, "--no-ort-rewrites", "--out", str(out)]) == 0
    return out


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _assert_consistent(out: Path) -> None:
    """The manifest lists exactly the files beside it, with their sha256."""
    rows = json.loads((out / "manifest.json").read_text())["files"]
    assert sorted(r["file"] for r in rows) == sorted(p.name for p in out.iterdir() if p.name != "manifest.json")
    assert all(sha256(out / r["file"]) == r["sha256"] for r in rows)


@pytest.mark.parametrize("module, name, when", [
    ("onnx", "save", "str(a[1]).endswith('-fp32.onnx')"),  # while staging the ONNX file
    ("simpleunet.export.outfolder", "commit", "True"),
    ("os", "replace", "Path(a[0]).name == 'manifest.json'"),  # the ONNX file moved in, the new manifest not yet
], ids=["writing-the-onnx-file", "before-the-moves", "between-the-moves"])
def test_kill_9_during_export_leaves_whole_files_and_the_rerun_cleans_up(previous_export, tmp_path, module, name,
                                                                         when):
    """The runtime refused the ONNX file a kill between the moves left beside the previous manifest, and every
    killed export left its staging folder beside --out for good."""
    out = tmp_path / "su"
    shutil.copytree(previous_export, out)
    before = _contents(out)
    killed = _script("simpleunet-export", [*EXPORT, "--out", str(out)], _kill_at(module, name, when=when))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _hidden(out) == [] and _hidden(tmp_path) != []  # its staging folder is left beside --out
    if name != "replace":
        assert _contents(out) == before
    image = str(sample_pairs()[0][0])
    for model in out.glob("*.onnx"):
        assert Segmenter(model, threads=1).predict(image).dtype == np.uint8
    assert export_cli.main([*EXPORT, "--out", str(out)]) == 0  # the rerun
    _assert_consistent(out)
    assert _contents(out).keys() == before.keys() and _contents(out) != before
    assert _hidden(tmp_path) == [], "the killed export's staging folder is still beside --out"


def test_only_the_staging_folders_of_dead_exports_into_the_same_out_are_removed(tmp_path):
    from simpleunet.export.outfolder import staging

    pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                         text=True).stdout.strip()  # a process that has ended
    dead, other = tmp_path / f".su.staging-{pid}-abcd1234", tmp_path / f".su2.staging-{pid}-abcd1234"
    dead.mkdir()
    other.mkdir()
    live = staging(tmp_path / "su")  # this process's: running
    assert staging(tmp_path / "su") != live and live.is_dir() and other.is_dir() and not dead.exists()


# ---- no network -----------------------------------------------------------------------------------------------

#: Every socket use in Python (create, connect, name lookups, ...) is printed and refused, whatever catches it.
NO_SOCKETS = """import sys
def _refuse(event, args):
    if event.startswith("socket."):
        print(f"NETWORK {event}", file=sys.__stderr__, flush=True)
        raise OSError(f"network disabled by the test ({event})")
sys.addaudithook(_refuse)
"""


def _unshare() -> tuple[str, ...]:
    """``unshare -rn``: a network namespace with no interface up (native code is cut off too), where it works."""
    try:
        ok = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return ("unshare", "-rn") if ok else ()


def test_the_socket_guard_catches_a_connection():
    run = subprocess.run([sys.executable, "-c", NO_SOCKETS + "import socket\ntry:\n"
                          "    socket.create_connection(('192.0.2.1', 80), timeout=1)\nexcept OSError:\n    pass"],
                         capture_output=True, text=True, timeout=30)
    assert "NETWORK socket." in run.stderr


@pytest.mark.parametrize("name, args", [
    ("simpleunet-infer", [str(sample_pairs()[0][0]), "--model", str(TINY_MODEL), "--out", "{tmp}/masks"]),
    ("simpleunet-export", [*EXPORT, "--out", "{tmp}/export"]),
    ("simpleunet-bench", ["--models", str(TINY_MODEL), "--limit", "2", "--threads", "1", "--runs", "3",
                          "--warmup", "1", "--no-eager", "--no-peak", "--json", "{tmp}/bench.json"]),
], ids=["infer", "export", "bench"])
def test_commands_run_without_a_network(tmp_path, name, args):
    run = _script(name, [a.replace("{tmp}", str(tmp_path)) for a in args], NO_SOCKETS, _unshare())
    assert run.returncode == 0, run.stderr[-2000:]
    assert "NETWORK" not in run.stderr
    assert any(tmp_path.iterdir())
