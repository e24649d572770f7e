"""simpleunet-infer as a process: signals, kill -9 leftovers, a full disk, out of memory, odd terminals (issue 19).

Signals are sent by the process to itself from a hook at a chosen point (inside a PNG write, inside a prediction),
so each case is the same on every run; the real command runs in a fresh interpreter.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

import simpleunet_runtime.cli as cli
from simpleunet_runtime.cli import infer_main
from simpleunet_runtime.sample import sample_pairs
from simpleunet_runtime.segmenter import Segmenter

LINUX = sys.platform.startswith("linux")


@pytest.fixture
def images(tmp_path) -> Path:
    """Three real images."""
    folder = tmp_path / "in"
    folder.mkdir()
    for image, _ in sample_pairs()[:3]:
        shutil.copy(image, folder / image.name)
    return folder


def _infer(args: list[str], hook: str = "", timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """``simpleunet-infer ARGS`` in a fresh interpreter, after ``hook`` (Python source that patches something)."""
    code = f"import sys\n{hook}\nfrom simpleunet_runtime.cli import infer_main\nsys.exit(infer_main({args!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, **kw)


def _signal_at(module: str, name: str, call: int, signum: int) -> str:
    """Hook source: the process sends itself ``signum`` at the ``call``-th call of ``module.name``
    (``name`` may be ``Class.method``)."""
    owner, _, attr = name.rpartition(".")
    return (f"import importlib, os\n"
            f"_owner = importlib.import_module({module!r})\n"
            + (f"_owner = _owner.{owner}\n" if owner else "")
            + f"_real, _calls = _owner.{attr}, [0]\n"
            "def _hooked(*a, **k):\n"
            "    _calls[0] += 1\n"
            f"    if _calls[0] == {call}:\n"
            f"        os.kill(os.getpid(), {int(signum)})\n"
            "    return _real(*a, **k)\n"
            f"setattr(_owner, {attr!r}, _hooked)\n")


def _outputs(out: Path) -> tuple[set[str], set[str], list[str]]:
    """(mask stems, overlay stems, temp files) in ``out``; every PNG there must decode."""
    if not out.exists():
        return set(), set(), []
    for png in out.glob("*.png"):
        Image.open(png).load()
    masks = {p.stem for p in out.glob("*.png") if not p.stem.endswith("_overlay")}
    overlays = {p.stem.removesuffix("_overlay") for p in out.glob("*_overlay.png")}
    return masks, overlays, sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))


# ---- SIGINT / SIGTERM -----------------------------------------------------------------------------------------

SAVE, PREDICT = ("PIL.Image", "Image.save"), ("simpleunet_runtime.segmenter", "Segmenter.predict")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("target, call, written", [(SAVE, 3, 2), (PREDICT, 2, 1)], ids=["mid-write", "mid-predict"])
def test_a_signal_ends_the_batch_with_the_summary_and_nothing_half_written(images, fixtures, tmp_path, signum,
                                                                            target, call, written):
    """SIGTERM used to kill the run mid-write (a .tmp left, a mask without its overlay, no summary); SIGINT printed
    a 29-line traceback. Now both: the pair being written is finished, the summary says "interrupted", 130/143."""
    out = tmp_path / "out"
    run = _infer([str(images), "--model", str(fixtures / "tiny_fp32.onnx"), "--out", str(out), "--overlay", "-q",
                  "--threads", "1"], _signal_at(*target, call, signum))
    assert run.returncode == 128 + signum, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"segmented {written}/3 images"), run.stdout
    assert lines[0].endswith(f"interrupted by {signal.Signals(signum).name}, {3 - written} not processed")
    masks, overlays, temps = _outputs(out)
    assert temps == [] and len(masks) == written and masks == overlays


def test_a_signal_while_loading_the_model_is_one_line(images, fixtures, tmp_path):
    run = _infer([str(images), "--model", str(fixtures / "tiny_fp32.onnx"), "--out", str(tmp_path / "out")],
                 _signal_at("simpleunet_runtime.cli", "_open", 1, signal.SIGTERM))
    assert (run.returncode, run.stdout, run.stderr) == (143, "", "interrupted by SIGTERM: nothing written\n")


def test_a_rerun_removes_the_temp_files_a_kill_9_left(images, fixtures, tmp_path):
    """kill -9 cannot be handled: the rerun (the same command) removes the temp file the killed run left."""
    out = tmp_path / "out"
    args = [str(images), "--model", str(fixtures / "tiny_fp32.onnx"), "--out", str(out), "--overlay", "-q"]
    killed = _infer(args, _signal_at(*SAVE, 3, signal.SIGKILL))
    assert killed.returncode == -signal.SIGKILL
    masks, overlays, temps = _outputs(out)
    assert len(temps) == 1 and masks <= overlays  # the mask is written last: a mask means its overlay is there
    rerun = _infer(args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"note: removed 1 temp file(s) an interrupted run left in {out}" in rerun.stderr
    masks, overlays, temps = _outputs(out)
    assert temps == [] and len(masks) == 3 and masks == overlays


def test_stale_temp_files_of_other_names_go_once_old_and_other_files_stay(images, fixtures, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    old, fresh = out / ".other.png.abcd_123.tmp", out / ".other_overlay.png.zz9zz9zz.tmp"
    keep = [out / ".keep", out / "notes.tmp", out / ".x.png.tmp", out / ".a.png.abcdefgh.tmp.bak", fresh]
    for path in [old, *keep]:
        path.write_bytes(b"partial")
    before = time.time() - cli.STALE_S - 60
    os.utime(old, (before, before))
    assert infer_main([str(images), "--model", str(fixtures / "tiny_int8.onnx"), "--out", str(out), "-q"]) == 0
    assert "removed 1 temp file(s)" in capsys.readouterr().err
    assert not old.exists() and all(p.exists() for p in keep)


# ---- a full disk, out of memory -------------------------------------------------------------------------------

def _fail_at(monkeypatch, name: str, call: int, exc: BaseException) -> None:
    """``cli.<name>`` raises ``exc`` at its ``call``-th call."""
    real, calls = getattr(cli, name), [0]

    def hooked(*a, **k):
        calls[0] += 1
        if calls[0] == call:
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(cli, name, hooked)


def _failing_batch(images, fixtures, out, capsys):
    """Run the 3-image batch with overlays, expecting exit 1 (a failure while running); (captured output, the
    second image, the one the hooked call fails on)."""
    assert infer_main([str(images), "--model", str(fixtures / "tiny_int8.onnx"), "--out", str(out), "--overlay",
                       "-q"]) == 1
    return capsys.readouterr(), sorted(images.iterdir())[1]


def test_a_full_disk_keeps_neither_file_of_an_image_it_reports_failed(images, fixtures, tmp_path, monkeypatch,
                                                                       capsys):
    """The mask of an image whose overlay could not be written was kept, though the image was reported failed."""
    _fail_at(monkeypatch, "save_png", 4, OSError(errno.ENOSPC, "No space left on device"))  # image 2's 2nd file
    out = tmp_path / "out"
    captured, second = _failing_batch(images, fixtures, out, capsys)
    assert captured.err == f"error: {second}: cannot write output: No space left on device\n"
    assert "segmented 2/3 images" in captured.out and "1 failed" in captured.out
    masks, overlays, temps = _outputs(out)
    assert temps == [] and masks == overlays == {p.stem for p in images.iterdir()} - {second.stem}


def test_a_failure_while_running_decides_the_exit_code_of_a_batch_with_refused_inputs(images, fixtures, tmp_path,
                                                                                      monkeypatch, capsys):
    """Refused inputs alone exit 2 (usage); a full disk on top of one exits 1 (a failure while running)."""
    args = [str(images), str(tmp_path / "gone.jpg"), "--model", str(fixtures / "tiny_int8.onnx"), "-q"]
    assert infer_main(args + ["--out", str(tmp_path / "a")]) == 2
    _fail_at(monkeypatch, "save_png", 2, OSError(errno.ENOSPC, "No space left on device"))
    assert infer_main(args + ["--out", str(tmp_path / "b")]) == 1
    captured = capsys.readouterr()
    assert "segmented 2/4 images" in captured.out and "2 failed" in captured.out


@pytest.mark.skipif(not LINUX or shutil.which("unshare") is None, reason="needs Linux user namespaces (unshare)")
def test_a_really_full_disk_leaves_only_complete_pairs(fixtures, tmp_path):
    """The 16 sample images onto a 600 KB tmpfs (mounted in a private user + mount namespace)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    code = (f"from simpleunet_runtime.cli import infer_main; import sys; sys.exit(infer_main(["
            f"{str(sample_pairs()[0][0].parent)!r}, '--model', {str(fixtures / 'tiny_fp32.onnx')!r}, "
            f"'--out', {str(disk / 'out')!r}, '--overlay', '-q']))")
    script = f"mount -t tmpfs -o size=600k none {disk} || exit 77; {sys.executable} -c \"{code}\"; echo rc=$?; " \
             f"ls -a {disk / 'out'}"
    run = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    if run.returncode == 77 or "rc=" not in run.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr.strip()[-200:]}")
    listing = run.stdout.split("rc=", 1)[1].split()
    failed = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert listing[0] == "1" and failed and all("No space left on device" in e for e in failed), run.stderr
    names = [n for n in listing[1:] if n not in (".", "..")]
    masks = {n[:-4] for n in names if n.endswith(".png") and not n.endswith("_overlay.png")}
    overlays = {n[:-12] for n in names if n.endswith("_overlay.png")}
    assert masks == overlays and len(masks) == 16 - len(failed) and not [n for n in names if n.endswith(".tmp")]


@pytest.mark.parametrize("name, call", [("load_image", 2), ("overlay", 2), ("save_png", 3)],
                         ids=["decode", "overlay", "encode"])
def test_out_of_memory_in_one_image_is_its_error_and_the_batch_goes_on(images, fixtures, tmp_path, monkeypatch,
                                                                        capsys, name, call):
    """A MemoryError used to end the batch with a traceback; the images after it were never written."""
    _fail_at(monkeypatch, name, call, MemoryError())
    out = tmp_path / "out"
    captured, second = _failing_batch(images, fixtures, out, capsys)
    assert captured.err == f"error: {second}: not enough memory to segment this image; downscale it or free memory\n"
    assert "segmented 2/3 images" in captured.out
    masks, overlays, _ = _outputs(out)
    assert masks == overlays == {p.stem for p in images.iterdir()} - {second.stem}


def test_out_of_memory_in_predict_is_that_images_error(images, fixtures, tmp_path, monkeypatch, capsys):
    real, calls = Segmenter.predict, [0]

    def predict(self, image):
        calls[0] += 1
        if calls[0] == 2:
            raise MemoryError("Unable to allocate 1.0 GiB")
        return real(self, image)

    monkeypatch.setattr(Segmenter, "predict", predict)
    assert infer_main([str(images), "--model", str(fixtures / "tiny_int8.onnx"), "--out", str(tmp_path), "-q"]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "not enough memory" in captured.err
    assert len(list(tmp_path.glob("*.png"))) == 2


@pytest.mark.skipif(not LINUX, reason="RLIMIT_AS is a Linux limit")
def test_a_huge_image_under_a_1gb_address_space_costs_one_line(fixtures, tmp_path):
    """Issue 19's acceptance: ``ulimit -v 1000000``, folder [good, 8000x8000, good, good] -> 3 masks, one error
    line. It ended the batch with a MemoryError traceback (the 8000x8000 probability map did not fit); now it is
    refused from its header (exit 2, a refused input) and costs its own line only."""
    import resource

    folder = tmp_path / "in"
    folder.mkdir()
    for name, (image, _) in zip("acd", sample_pairs()[:3]):
        shutil.copy(image, folder / f"{name}.jpg")
    Image.new("RGB", (8000, 8000), (120, 60, 30)).save(folder / "b.png", compress_level=1)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (1_000_000 * 1024, 1_000_000 * 1024))

    run = _infer([str(folder), "--model", str(fixtures / "tiny_fp32.onnx"), "--out", str(tmp_path / "out"), "-q",
                  "--threads", "1"], preexec_fn=limit)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: ") and str(folder / "b.png") in run.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png", "d.png"]


# ---- arguments and terminals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("std", ["1e-40,1,1", "0.2,1e-7,0.2"])
def test_a_tiny_or_denormal_std_is_refused(tmp_path, capsys, std):
    """--std 1e-40 (a float32 denormal) was accepted and turned every input into inf: junk masks, exit 0."""
    with pytest.raises(SystemExit) as exc:
        infer_main(["x.jpg", "--out", str(tmp_path), "--std", std])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argument --std: std must be 3 numbers > 0 (R, G, B), each in [1e-6, 1e6]" in err


def test_a_non_ascii_out_under_an_ascii_terminal_is_escaped(images, fixtures, tmp_path):
    """The summary line crashed with UnicodeEncodeError under LANG=C PYTHONIOENCODING=ascii."""
    out = tmp_path / "masques-é"
    image = next(images.iterdir())
    shutil.copy(image, images / "x.jpg")
    shutil.copy(image, tmp_path / "x.jpg")  # a shared stem: a note: line names the non-ASCII path too
    env = {**os.environ, "LANG": "C", "LC_ALL": "C", "PYTHONIOENCODING": "ascii"}
    run = _infer([str(images / "x.jpg"), str(tmp_path / "x.jpg"), "--model", str(fixtures / "tiny_int8.onnx"),
                  "--out", str(out), "-q"], env=env)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert run.stdout.rstrip().endswith("-> " + str(tmp_path / "masques-\\xe9"))
    assert f"-> {tmp_path / 'masques-'}\\xe9{os.sep}x-2.png" in run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["x-2.png", "x.png"]


def test_the_summary_is_unchanged_on_a_utf8_terminal(images, fixtures, tmp_path, capsys):
    out = tmp_path / "masques-é"
    assert infer_main([str(images), "--model", str(fixtures / "tiny_int8.onnx"), "--out", str(out), "-q"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"-> {out}")


def test_files_a_folder_holds_that_are_not_images_are_said_not_silently_skipped(tmp_path, capsys):
    """An animated GIF (or any other file) inside a folder was skipped without a word."""
    from simpleunet_runtime.sample import sample_pairs

    folder = tmp_path / "in"
    folder.mkdir()
    image = sample_pairs()[0][0]
    (folder / image.name).write_bytes(image.read_bytes())
    (folder / "clip.gif").write_bytes(b"GIF89a")
    assert infer_main([str(folder), "--model", "simpleunet16-kvasir", "--out", str(tmp_path / "out"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 file(s) that are not" in err and "clip.gif" in err
