"""simpleunet-infer and simpleunet-models, run in-process (same code as the console scripts)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_tflite

from simpleunet_runtime.cli import infer_main
from simpleunet_runtime.image import load_image
from simpleunet_runtime.sample import sample_dir, sample_pairs

MEANSTD = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]


def test_segments_the_bundled_sample(tmp_path, fixtures, capsys):
    rc = infer_main([str(sample_dir() / "images"), "--model", str(fixtures / "tiny_fp32.onnx"),
                     "--out", str(tmp_path / "out"), "--overlay", "--threads", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.startswith("segmented 16/16 images") and "tiny_fp32.onnx [onnxruntime]" in out
    assert len(out.strip().splitlines()) == 1
    pairs = sample_pairs()
    for image, _ in pairs:
        mask = load_image(tmp_path / "out" / f"{image.stem}.png")
        assert mask.shape == load_image(image).shape and set(np.unique(mask)) <= {0, 255}
        assert (tmp_path / "out" / f"{image.stem}_overlay.png").is_file()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left
    assert "16/16" in err  # progress counter


def test_bad_files_cost_one_line_each_and_the_batch_goes_on(tmp_path, fixtures, capsys):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    good = sample_pairs()[:2]
    for image, _ in good:
        shutil.copy(image, mixed / image.name)
    (mixed / "broken.jpg").write_bytes(good[0][0].read_bytes()[:200])
    (mixed / "notes.txt").write_text("ignored: not an image suffix")
    (mixed / "fake.png").write_bytes(b"GIF89a nope")
    rc = infer_main([str(mixed), str(tmp_path / "missing.jpg"), "--model", str(fixtures / "tiny_int8.onnx"),
                     "--out", str(tmp_path / "out"), "-q"])
    out, err = capsys.readouterr()
    assert rc == 2  # refused inputs: a usage error
    notes = [line for line in err.strip().splitlines() if line.startswith("note: ")]
    errors = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert len(notes) == 1 and "skipped 1 file(s)" in notes[0] and "notes.txt" in notes[0]  # said, not silent
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    assert any("broken.jpg" in e for e in errors) and any("fake.png" in e for e in errors)
    assert any("missing.jpg: no such file" in e for e in errors)
    assert "segmented 2/5 images" in out and "3 failed" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{i.stem}.png" for i, _ in good)


def test_model_errors_are_one_line(tmp_path, fixtures, capsys):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"nope")
    image = str(sample_pairs()[0][0])
    for args, msg in [(["--model", str(junk)], "not a loadable ONNX model"),
                      (["--model", str(fixtures / "tiny_nometa.onnx")], "no simpleunet metadata"),
                      (["--model", "no-such-model"], "unknown model 'no-such-model'"),
                      (["--model", str(tmp_path / "gone.tflite")], "not found")]:
        assert infer_main([image, "--out", str(tmp_path / "o"), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1


def test_overrides_for_a_model_without_metadata(tmp_path, fixtures, capsys):
    image = sample_pairs()[0][0]
    rc = infer_main([str(image), "--model", str(fixtures / "tiny_nometa.onnx"), "--out", str(tmp_path), *MEANSTD,
                     "--imgsz", "32", "--threshold", "0.4", "--min-region", "0.003,0.3"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / f"{image.stem}.png").is_file()


@pytest.mark.parametrize("value", ["0.1", "2,0", "a,b"])
def test_a_bad_min_region_is_refused_by_its_rule(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exc:
        infer_main(["x.jpg", "--out", str(tmp_path), "--min-region", value])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert exc.value.code == 2 and last.startswith("simpleunet-infer: error: argument --min-region: ")
    assert "AREA,RATIO" in last and "Traceback" not in err


@needs_tflite
def test_tflite_model_and_duplicate_stems(tmp_path, fixtures, capsys):
    image = sample_pairs()[0][0]
    png = tmp_path / f"{image.stem}.png"
    load = load_image(image)
    from PIL import Image
    Image.fromarray(load).save(png)
    rc = infer_main([str(image), str(png), "--model", str(fixtures / "tiny_int8.tflite"), "--out",
                     str(tmp_path / "out"), "--backend", "tflite"])
    out = capsys.readouterr().out
    assert rc == 0 and "[tflite]" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{image.stem}-2.png", f"{image.stem}.png"]


def test_colliding_stems_each_get_a_mask_and_inputs_are_never_overwritten(tmp_path, fixtures, capsys):
    image = sample_pairs()[0][0]
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.jpg", "a-2.jpg"):
        shutil.copy(image, src / name)
    from PIL import Image
    Image.fromarray(load_image(image)).save(src / "a.png")
    model = ["--model", str(fixtures / "tiny_int8.onnx"), "-q"]
    assert infer_main([str(src), "--out", str(tmp_path / "out"), *model]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a-2.png", "a-3.png", "a.png"]
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    assert infer_main([str(src), "--out", str(src), *model]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "would overwrite an input image" in err and len(err.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_nothing_written_means_no_out_folder_and_no_per_image_time(tmp_path, fixtures, capsys):
    (tmp_path / "notes.txt").write_text("not an image")
    rc = infer_main([str(tmp_path / "notes.txt"), str(tmp_path / "gone.jpg"), "--out", str(tmp_path / "out"),
                     "--model", str(fixtures / "tiny_int8.onnx")])
    out, err = capsys.readouterr()
    assert rc == 2 and not (tmp_path / "out").exists()
    assert "segmented 0/2 images" in out and "ms/image" not in out and "nothing written" in out
    notes = next(line for line in err.splitlines() if "notes.txt" in line)  # named once, no Python object repr
    assert notes.count("notes.txt") == 1 and "_io." not in notes, notes


def test_explicit_precision_with_a_model_file_is_an_error(tmp_path, fixtures, capsys):
    image = str(sample_pairs()[0][0])
    assert infer_main([image, "--model", str(fixtures / "tiny_fp32.onnx"), "--precision", "int8",
                       "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --precision applies to bundled model names only") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    help_text = " ".join(infer_main.__wrapped__.__globals__["parser"]().format_help().split())
    assert "(default: int8)" in help_text


def test_std_zero_blames_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        infer_main(["x.jpg", "--out", str(tmp_path), "--std", "0,0,0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--std" in err and "metadata" not in err


def test_renamed_outputs_are_announced(tmp_path, fixtures, capsys):
    image = sample_pairs()[0][0]
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(image, tmp_path / sub / "x.jpg")
    out = tmp_path / "out"
    assert infer_main([str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.jpg"), "--model",
                       str(fixtures / "tiny_int8.onnx"), "--out", str(out), "-q"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: {tmp_path / 'b' / 'x.jpg'} -> {out / 'x-2.png'} (x.png is taken by an earlier input)"]
    assert sorted(p.name for p in out.iterdir()) == ["x-2.png", "x.png"]


COLD_START = Path(__file__).resolve().parents[1] / "tools" / "cold_start.py"


def test_cold_start_takes_a_bundled_name_and_reports_child_failures(tmp_path, fixtures):
    """README: `python runtime/tools/cold_start.py simpleunet16-kvasir`; a failing child is one error: line."""
    shutil.copy(fixtures / "tiny_int8.onnx", tmp_path / "t.onnx")
    sha = hashlib.sha256((tmp_path / "t.onnx").read_bytes()).hexdigest()
    (tmp_path / "index.json").write_text(json.dumps([{"name": "tiny", "format": "onnx", "precision": "int8",
                                                      "file": "t.onnx", "sha256": sha}]))
    env = {**os.environ, "SIMPLEUNET_MODELS_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, str(COLD_START), "tiny", str(fixtures / "tiny_nometa.onnx"), "--runs", "1"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stdout.startswith("tiny [onnxruntime]: cold start ")
    assert run.stderr.count("\n") == 1 and run.stderr.startswith(f"error: {fixtures / 'tiny_nometa.onnx'}: ")
    assert "no simpleunet metadata" in run.stderr  # the child's last stderr line


def test_usage_errors_exit_2(tmp_path, capsys):
    for args in (["x.jpg"], ["x.jpg", "--out", str(tmp_path), "--threads", "0"],
                 ["x.jpg", "--out", str(tmp_path), "--mean", "1,2"]):
        with pytest.raises(SystemExit) as exc:
            infer_main(args)
        assert exc.value.code == 2
    capsys.readouterr()


def test_console_script_keeps_the_exit_code_rule(capsys):
    """Every CLI goes through console_script: 2 for a SimpleUNetError, 130 for Ctrl-C, main's own code otherwise."""
    from simpleunet_runtime.errors import SimpleUNetError, console_script

    def fails(exc):
        def main():
            raise exc
        return main

    assert console_script(lambda: 1)() == 1
    assert console_script(fails(SimpleUNetError("no such file x.jpg")))() == 2
    assert capsys.readouterr().err == "error: no such file x.jpg\n"
    assert console_script(fails(KeyboardInterrupt()))() == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert console_script(interrupted="nothing written")(fails(KeyboardInterrupt()))() == 130
    assert capsys.readouterr().err == "interrupted: nothing written\n"
    assert console_script(interrupted="nothing written")(fails(KeyboardInterrupt("all written")))() == 130
    assert capsys.readouterr().err == "interrupted: all written\n"


def test_console_script_does_not_import_torch_tensorflow_or_onnx(tmp_path, fixtures):
    """The runtime's whole path (import, load, infer, write) in a fresh interpreter, checked for heavy imports."""
    code = ("import sys; from simpleunet_runtime.cli import infer_main; "
            f"rc = infer_main([{str(sample_pairs()[0][0])!r}, '--model', {str(fixtures / 'tiny_int8.onnx')!r}, "
            f"'--out', {str(tmp_path)!r}]); "
            "heavy = sorted(m for m in ('torch', 'tensorflow', 'onnx', 'onnx2tf', 'tqdm') if m in sys.modules); "
            "print('HEAVY', heavy); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


def test_a_reader_that_stops_early_ends_the_script_quietly():
    """`simpleunet-models | head -1`: stdout closed by the reader -> exit 0, no traceback (console_script)."""
    code = ("import os, sys; r, w = os.pipe(); os.close(r); os.dup2(w, 1); "
            "from simpleunet_runtime.bundled import list_main; sys.exit(list_main([]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stderr) == (0, "")


@needs_tflite
def test_output_has_no_third_party_log_lines_and_json_is_the_whole_stdout(tmp_path):
    image = str(sample_pairs()[0][0])
    exe = Path(sys.executable).with_name("simpleunet-infer")
    run = subprocess.run([str(exe), image, "--out", str(tmp_path / "out"), "--backend", "tflite", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "INFO" not in run.stderr and "XNNPACK" not in run.stderr  # LiteRT's C++ logger, dropped
    report = json.loads(run.stdout)
    assert report["images"] == [{"input": image, "mask": str(tmp_path / "out" / (Path(image).stem + ".png"))}]
    assert run.stderr.startswith("segmented 1/1 images")
