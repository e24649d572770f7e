"""Reliability of what the runtime reads: hostile ONNX files (external data), manifests, the bundled-model index,
thread-shared Segmenters, ``threads`` bounds, and a seeded fuzz of model decoding (issue 19, items 1, 2, 4, 6).

Hostile files are made here from the committed fixtures with a few lines of protobuf encoding (no onnx package:
these tests also run in the slim venv). ``SIMPLEUNET_FUZZ=N`` fuzzes N mutants per model file (default 100).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, HAS_TFLITE, needs_tflite

from simpleunet_runtime import Segmenter, SimpleUNetError, backends, bundled
from simpleunet_runtime.errors import SimpleUNetWarning
from simpleunet_runtime.onnx_file import _fields, read_graph
from _protobuf import varint

REFUSED = "refers to data outside the file"


# -- protobuf encoding, enough to build hostile ONNX files -----------------------------------------------------


def pb(number: int, value: int | bytes | str) -> bytes:
    """One protobuf field: a varint for an int, length-delimited for bytes/str."""
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    value = value.encode() if isinstance(value, str) else bytes(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def _raw(number: int, wire: int, value) -> bytes:
    return pb(number, value) if wire in (0, 2) else varint(number << 3 | wire) + bytes(value)


def edit(message: bytes, number: int, fn) -> bytes:
    """``message`` with its first field ``number`` replaced by ``fn(old bytes)``."""
    out, done = b"", False
    for n, w, v in _fields(memoryview(message)):
        if n == number and w == 2 and not done:
            out, done = out + pb(n, fn(bytes(v))), True
        else:
            out += _raw(n, w, v)
    return out


def _external_fields(location: str | None) -> bytes:
    """external_data entries for ``location`` and data_location = EXTERNAL (None: the mark alone)."""
    return (b"" if location is None else pb(13, pb(1, "location") + pb(2, location))) + pb(14, 1)


def external_tensor(location: str | None) -> bytes:
    """A float TensorProto of 2 values whose data is external."""
    return pb(1, 2) + pb(2, 1) + pb(8, "evil") + _external_fields(location)


def externalize(tensor: bytes, location: str | None) -> bytes:
    """An existing TensorProto with its data moved out to ``location``."""
    keep = b"".join(_raw(n, w, v) for n, w, v in _fields(memoryview(tensor)) if n not in (4, 5, 7, 9))
    return keep + _external_fields(location)


def node(op: str, outputs=("evil_out",), inputs=(), attrs: bytes = b"") -> bytes:
    return b"".join(pb(1, i) for i in inputs) + b"".join(pb(2, o) for o in outputs) + pb(4, op) + attrs


def attribute(name: str, field: int, value: bytes, kind: int) -> bytes:
    return pb(5, pb(1, name) + pb(20, kind) + pb(field, value))


def constant(tensor: bytes) -> bytes:
    return node("Constant", attrs=attribute("value", 5, tensor, 4))


def in_graph(fixture: bytes, extra: bytes) -> bytes:
    return edit(fixture, 7, lambda g: g + extra)


def hostile(placement: str, location: str | None) -> bytes:
    """tiny_fp32.onnx with an external-data tensor at ``placement``."""
    model = (FIXTURES / "tiny_fp32.onnx").read_bytes()
    t = external_tensor(location)
    sparse = pb(1, t) + pb(2, pb(1, 1) + pb(2, 7) + pb(9, bytes(8))) + pb(3, 2)
    if placement == "initializer":  # the fixture's first weight, really used: onnxruntime < 1.24 reads the file
        return edit(model, 7, lambda g: edit(g, 5, lambda w: externalize(w, location)))
    if placement == "constant":
        return in_graph(model, pb(1, constant(t)))
    if placement == "attribute tensors":
        return in_graph(model, pb(1, node("Foo", attrs=attribute("ts", 10, t, 9))))
    if placement == "sparse initializer":
        return in_graph(model, pb(15, sparse))
    if placement == "sparse attribute":
        return in_graph(model, pb(1, node("Constant", attrs=attribute("sparse_value", 22, sparse, 11))))
    if placement == "If subgraph":
        return in_graph(model, pb(1, node("If", inputs=("c",), attrs=attribute("then_branch", 6, pb(5, t), 5))))
    if placement == "nested 3000 deep":  # the reader walks, it does not recurse
        g = pb(5, t)
        for _ in range(3000):
            g = pb(1, node("Loop", attrs=attribute("body", 11, g, 10)))
        return in_graph(model, g)
    if placement == "function":
        return model + pb(25, pb(1, "f") + pb(7, constant(t)))
    if placement == "training graph":
        return model + pb(20, pb(1, pb(5, t)))
    if placement == "second graph field":  # protobuf merges repeated singular fields: onnxruntime sees both
        return model + pb(7, pb(5, t))
    raise ValueError(placement)


PLACEMENTS = ["initializer", "constant", "attribute tensors", "sparse initializer", "sparse attribute",
              "If subgraph", "nested 3000 deep", "function", "training graph", "second graph field"]


@pytest.fixture
def secret(tmp_path) -> Path:
    """A file outside the model's folder, and the folder models go in (tmp_path/models/sub)."""
    path = tmp_path / "secret"
    path.write_bytes(np.full(64, 7.0, np.float32).tobytes())
    (tmp_path / "models" / "sub").mkdir(parents=True)
    return path


def _no_onnxruntime(monkeypatch):
    import onnxruntime

    def refuse(*args, **kwargs):
        raise AssertionError("onnxruntime opened a hostile model")
    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_external_data_anywhere_is_refused_before_onnxruntime(placement, secret, monkeypatch):
    model = secret.parent / "models" / "sub" / "evil.onnx"
    model.write_bytes(hostile(placement, "../../secret"))
    assert read_graph(model).external == ["../../secret"]
    _no_onnxruntime(monkeypatch)
    with pytest.raises(SimpleUNetError, match=REFUSED) as exc:
        Segmenter(model)
    assert "'../../secret'" in str(exc.value) and len(str(exc.value).splitlines()) == 1


@pytest.mark.parametrize("how", ["relative", "absolute", "symlink", "no location"])
def test_external_data_is_refused_however_it_points(how, secret, capsys):
    """The real leak (onnxruntime 1.23 returned the secret's bytes as weights), by every kind of path."""
    from simpleunet_runtime.cli import infer_main
    from simpleunet_runtime.sample import sample_pairs

    folder = secret.parent / "models" / "sub"
    location = {"relative": "../../secret", "absolute": str(secret), "symlink": "inside.bin", "no location": None}[how]
    (folder / "inside.bin").symlink_to(secret)
    model = folder / "evil.onnx"
    model.write_bytes(hostile("initializer", location))
    with pytest.raises(SimpleUNetError, match=REFUSED):
        Segmenter(model)
    capsys.readouterr()
    assert infer_main([str(sample_pairs()[0][0]), "--model", str(model), "--out", str(folder / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and REFUSED in err[0]
    assert not (folder / "out").exists()


def test_non_utf8_names_and_metadata_are_one_line_errors(tmp_path, capfd):
    """onnxruntime hands names and metadata to Python as UTF-8: a corrupt byte there raised UnicodeDecodeError,
    or printed "EP Error" lines to stdout and retried."""
    model = (FIXTURES / "tiny_fp32.onnx").read_bytes()
    meta = model.index(b'"imgsz"')
    cases = {"name.onnx": model.replace(b"/model/", b"/model\xc3", 1),
             "metadata.onnx": model[:meta] + b'"\xffmgsz"' + model[meta + 7:]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SimpleUNetError) as exc:
            Segmenter(tmp_path / name)
        assert len(str(exc.value).splitlines()) == 1
    out = capfd.readouterr()
    assert "EP Error" not in out.out + out.err


# The fuzzed files that segfaulted or stalled LiteRT 2.1 before tflite_file.verify and the shape probe, made
# again on purpose: defect -> what its fuzz case did. (A remade file corrupts memory the same way; whether that
# crashes depends on the heap, so the test asserts the refusal, not the crash.)
TFLITE_DEFECTS = {"writes a constant": "segfault", "reads a later tensor": "segfault",
                  "reads its own output": "segfault", "huge dimension": "stall", "huge input": "stall",
                  "vtable too long": "segfault"}


def hostile_tflite(how: str) -> bytes:
    import struct

    from simpleunet_runtime.tflite_file import _Reader

    data = bytearray((FIXTURES / "tiny_int8.tflite").read_bytes())
    r = _Reader(bytes(data), "fixture")
    model = r.table(r.indirect(0))
    sg = r.tables(model, 2)[0]
    ops, tensors, buffers = r.tables(sg, 3), r.tables(sg, 0), r.tables(model, 4)
    codes = [max(r.scalar(c, 0, "<b"), r.scalar(c, 3, "<i")) for c in r.tables(model, 1)]
    concat = [op for op in ops if codes[r.scalar(op, 0, "<I")] == 2]
    constants = [i for i, t in enumerate(tensors) if r.field(buffers[r.scalar(t, 2, "<I")], 0) is not None]

    def put(table: int, field: int, i: int, value: int) -> None:
        start, _ = r.vector(r.field(table, field), 4)
        struct.pack_into("<i", data, start + 4 * i, value)

    if how == "writes a constant":  # into the file's read-only bytes
        put(ops[0], 2, 0, constants[-1])
    elif how == "reads a later tensor":  # XNNPACK then concatenates mismatched shapes
        put(concat[0], 1, 0, r.ints(ops[-1], 1)[0])
    elif how == "reads its own output":
        put(ops[-1], 1, 0, r.ints(ops[-1], 2)[0])
    elif how == "huge dimension":  # 17 GB: minutes of page faults, or the OOM killer
        put(tensors[r.ints(concat[2], 2)[0]], 0, 1, 1 << 28)
    elif how == "huge input":  # within the file's own sums; XNNPACK touched 15 GB
        put(tensors[r.ints(sg, 1)[0]], 0, 1, 6684704)
    elif how == "vtable too long":  # the quantization tables' fields read from whatever follows them
        q = r.child(tensors[0], 4)
        struct.pack_into("<H", data, q - r._unpack("<i", q), 164)
    return bytes(data)


@needs_tflite
def test_tflite_files_that_crashed_or_stalled_the_interpreter_are_refused(tmp_path):
    paths = []
    for how in TFLITE_DEFECTS:
        paths.append(tmp_path / f"{how.replace(' ', '_')}.tflite")
        paths[-1].write_bytes(hostile_tflite(how))
    code = ("import sys\nfrom simpleunet_runtime import Segmenter, SimpleUNetError\nfor p in sys.argv[1:]:\n"
            "    try: Segmenter(p); print('loaded', flush=True)\n"
            "    except SimpleUNetError as e: print('error:', e, flush=True)")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True,
                          errors="replace", timeout=120)  # a child: a segfault must not end the test run
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == len(paths), (proc.returncode, lines, proc.stderr[-500:])
    assert all(line.startswith("error: ") for line in lines), dict(zip(TFLITE_DEFECTS, lines))


def test_tflite_external_buffers_are_refused(tmp_path):
    """A Model whose only field is external_buffer_groups = [ExternalBufferGroup(name="/etc")], laid out by hand."""
    import struct

    data = (struct.pack("<I", 32) + b"TFL3" + struct.pack("<11H", 22, 8, *[0] * 8, 4) + bytes(2)  # root, vtable
            + struct.pack("<iI", 24, 4) + struct.pack("<II", 1, 12)  # Model table at 32, vector of one table
            + struct.pack("<3H", 6, 8, 4) + bytes(2) + struct.pack("<iI", 8, 4)  # the group's vtable and table
            + struct.pack("<I", 4) + b"/etc\0")
    (tmp_path / "external.tflite").write_bytes(data)
    from simpleunet_runtime.tflite_file import verify

    with pytest.raises(SimpleUNetError, match="refers to buffers outside the file"):
        verify(data, "external.tflite")


def test_the_files_we_make_have_no_external_data():
    for f in ("tiny_fp32.onnx", "tiny_int8.onnx", "three_class.onnx", "full_range_int8.onnx"):
        assert read_graph(FIXTURES / f).external == []


# -- manifest.json beside a model file --------------------------------------------------------------------------
def _export_folder(tmp_path: Path, names=("tiny_int8.onnx", "tiny_fp32.onnx", "tiny_int8.tflite")) -> Path:
    out = tmp_path / "export"
    out.mkdir()
    rows = []
    for name in names:
        data = (FIXTURES / name).read_bytes()
        (out / name).write_bytes(data)
        rows.append({"file": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
    (out / "manifest.json").write_text(json.dumps({"schema_version": 1, "files": rows}))
    return out


def _tamper(path: Path) -> None:
    """Still a loadable model (an unknown protobuf field, or bytes after the flatbuffer), not the exported bytes."""
    path.write_bytes(path.read_bytes() + pb(99, "tampered"))


@pytest.mark.parametrize("name", ["tiny_int8.onnx", pytest.param("tiny_int8.tflite", marks=needs_tflite)])
def test_manifest_sha256_is_checked(tmp_path, name, capsys):
    out = _export_folder(tmp_path)
    Segmenter(out / name)  # as exported: loads
    _tamper(out / name)
    with pytest.raises(SimpleUNetError, match="does not match .*manifest.json") as exc:
        Segmenter(out / name)
    assert len(str(exc.value).splitlines()) == 1
    from simpleunet_runtime.cli import infer_main
    from simpleunet_runtime.sample import sample_pairs

    assert infer_main([str(sample_pairs()[0][0]), "--model", str(out / name), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([e for e in err if e.startswith("error:")]) == 1 and "does not match" in err[-1]


def test_manifest_that_is_not_ours_or_does_not_list_the_file_is_ignored(tmp_path):
    out = _export_folder(tmp_path, ("tiny_fp32.onnx",))
    (out / "tiny_int8.onnx").write_bytes((FIXTURES / "tiny_int8.onnx").read_bytes())
    Segmenter(out / "tiny_int8.onnx")  # not listed: nothing to compare
    _tamper(out / "tiny_fp32.onnx")
    for foreign in ('{"name": "My web app", "icons": []}', "{not json", '{"files": "x"}', "[" * 100000):
        (out / "manifest.json").write_text(foreign)
        Segmenter(out / "tiny_fp32.onnx")
    (out / "manifest.json").write_text(json.dumps({"files": [{"file": "tiny_fp32.onnx", "sha256": 5}]}))
    with pytest.raises(SimpleUNetError, match="without a sha256"):
        Segmenter(out / "tiny_fp32.onnx")


# -- index.json of the bundled models ---------------------------------------------------------------------------
def _zoo(tmp_path: Path, monkeypatch, file: str, **extra) -> Path:
    folder = tmp_path / "zoo"
    folder.mkdir(exist_ok=True)
    target = (folder / file) if not Path(file).is_absolute() else Path(file)
    sha = hashlib.sha256(target.read_bytes()).hexdigest() if target.is_file() else "0" * 64
    entry = {"name": "tiny", "format": "onnx", "precision": "fp32", "file": file, "sha256": sha, **extra}
    (folder / "index.json").write_text(json.dumps({"models": [entry]}))
    monkeypatch.setenv("SIMPLEUNET_MODELS_DIR", str(folder))
    return folder


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_index_entries_stay_inside_the_models_folder(tmp_path, monkeypatch, how, capsys):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((FIXTURES / "tiny_fp32.onnx").read_bytes())  # a real model with the right sha256
    if how == "symlink":
        (tmp_path / "zoo").mkdir()
        (tmp_path / "zoo" / "link.onnx").symlink_to(outside)
    _zoo(tmp_path, monkeypatch, {"dotdot": "../outside.onnx", "absolute": str(outside), "symlink": "link.onnx"}[how])
    with pytest.raises(SimpleUNetError, match="outside|not a plain path inside") as exc:
        Segmenter.pretrained("tiny", precision="fp32")
    assert len(str(exc.value).splitlines()) == 1


@pytest.mark.parametrize("entry", [{"name": 5, "file": "x.onnx"}, {"name": "x", "file": ["x.onnx"]}, {"file": "x"},
                                   {"name": "x"}, "x.onnx", {"name": "x", "file": "x.onnx", "format": 1},
                                   {"name": "x", "file": "x.onnx", "sha256": None},
                                   {"name": "x\x1b[2J", "file": "x.onnx"}, {"name": "x", "file": "a\x00b"}])
def test_malformed_index_entries_are_one_line_errors(tmp_path, monkeypatch, capsys, entry):
    (tmp_path / "index.json").write_text(json.dumps({"models": [{"name": "ok", "file": "ok.onnx"}, entry]}))
    monkeypatch.setenv("SIMPLEUNET_MODELS_DIR", str(tmp_path))
    with pytest.raises(SimpleUNetError, match="entry 2"):
        Segmenter.pretrained("x")
    assert bundled.list_main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: bundled model index") and "entry 2" in err[0]


def test_models_command_fails_when_the_models_dir_does_not_exist(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SIMPLEUNET_MODELS_DIR", str(tmp_path / "nope"))
    assert bundled.list_main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: SIMPLEUNET_MODELS_DIR=") and "does not exist" in err[0]


# -- threads -----------------------------------------------------------------------------------------------------
SHARED = ["tiny_fp32.onnx", "tiny_int8.onnx", pytest.param("tiny_int8.tflite", marks=needs_tflite)]


@pytest.mark.parametrize("name", SHARED)
def test_one_segmenter_shared_by_8_threads(name, sample_images):
    """8 threads x 50 calls on one Segmenter: every mask equals the single-threaded one (before its lock, TFLite
    failed 164 of the 400 calls and 11 masks were wrong)."""
    seg = Segmenter(FIXTURES / name)
    want = [seg.predict(im) for im in sample_images]
    barrier = threading.Barrier(8)

    def work(t: int) -> tuple[int, int]:
        barrier.wait()
        errors = wrong = 0
        for k in range(50):
            i = (t * 50 + k) % len(sample_images)
            try:
                wrong += not np.array_equal(seg.predict(sample_images[i]), want[i])
            except Exception:
                errors += 1
        return errors, wrong

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    assert [sum(r[0] for r in results), sum(r[1] for r in results)] == [0, 0]  # [errors, mismatches] of 400


def test_threads_are_bounded_by_the_usable_cores(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(backends, "usable_cores", lambda: 2, raising=False)
    with pytest.warns(SimpleUNetWarning, match="threads=64 is more than the 2 usable cores here; using 2"):
        seg = Segmenter(FIXTURES / "tiny_fp32.onnx", threads=64)
    assert seg._backend.session.get_session_options().intra_op_num_threads == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Segmenter(FIXTURES / "tiny_fp32.onnx", threads=2)
        Segmenter(FIXTURES / "tiny_fp32.onnx", threads=0)  # the runtime's own choice
    if HAS_TFLITE:
        with pytest.warns(SimpleUNetWarning, match="using 2"):
            Segmenter(FIXTURES / "tiny_int8.tflite", threads=10000)
    from simpleunet_runtime.cli import infer_main
    from simpleunet_runtime.sample import sample_pairs

    capsys.readouterr()
    assert infer_main([str(sample_pairs()[0][0]), "--model", str(FIXTURES / "tiny_fp32.onnx"), "--out",
                       str(tmp_path), "--threads", "10000", "-q"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert [line for line in err if "usable cores" in line] == [
        "warning: threads=10000 is more than the 2 usable cores here; using 2"]


# -- fuzz: mutated model files through the Segmenter API --------------------------------------------------------
FUZZ = int(os.environ.get("SIMPLEUNET_FUZZ", "100") or 100)
FUZZED = ["tiny_int8.onnx", "tiny_fp32.onnx", pytest.param("tiny_int8.tflite", marks=needs_tflite)]


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One seeded mutation: flipped bytes, a truncation, or inserted random bytes."""
    kind = rng.choice(("flip", "truncate", "insert"))
    buf = bytearray(data)
    if kind == "flip":
        for _ in range(rng.choice((1, 1, 2, 4, 8))):  # few flips often survive the parsers: deeper paths
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == "truncate":
        del buf[rng.randrange(len(buf)):]
    else:
        at = rng.randrange(len(buf) + 1)
        buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return kind, bytes(buf)


def fuzz_main(name: str, start: int, count: int, folder: str) -> None:
    """The child process: ``count`` mutants of fixture ``name`` from case ``start``, one outcome line each
    ("i kind ok|error|other: ..."); a hang of 20 s in one case ends the process (faulthandler)."""
    import faulthandler

    data = (FIXTURES / name).read_bytes()
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    path = Path(folder) / f"mutant{Path(name).suffix}"
    warnings.simplefilter("ignore")
    for i in range(start, start + count):
        kind, mutant = mutate(data, random.Random(f"{name}:{i}"))
        path.write_bytes(mutant)
        faulthandler.dump_traceback_later(20, exit=True)
        try:
            Segmenter(path, threads=1).predict(image)
            outcome = "ok"
        except SimpleUNetError as exc:
            outcome = "error" if len(str(exc).splitlines()) == 1 else f"other: multi-line message {exc!r}"[:300]
        except Exception as exc:  # noqa: BLE001 (the point of the test)
            outcome = f"other: {type(exc).__name__}: {exc}".splitlines()[0][:300]
        faulthandler.cancel_dump_traceback_later()
        print(i, kind, outcome, flush=True)


def fuzz(name: str, count: int, folder: Path) -> dict:
    """Run ``fuzz_main`` in child processes (a crash or a hang then ends only the child, and is counted):
    outcome counts plus the first failures."""
    counts = {"ok": 0, "error": 0, "other": 0, "crash": 0, "hang": 0}
    failures: list[str] = []
    done = 0
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_reliability_files as t; "
            "t.fuzz_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])")
    while done < count:
        proc = subprocess.run([sys.executable, "-c", code, name, str(done), str(count - done), str(folder)],
                              capture_output=True, text=True, errors="replace", timeout=60 + 2 * count)
        lines = [line.split(" ", 2) for line in proc.stdout.splitlines() if line[:1].isdigit()]
        for i, kind, outcome in lines:
            key = outcome.split(":")[0]
            counts[key] += 1
            if key == "other":
                failures.append(f"{name} case {i} ({kind}): {outcome}")
        done += len(lines)
        if proc.returncode != 0 and done < count:  # the case after the last line crashed or hung
            key = "hang" if "Timeout" in proc.stderr else "crash"
            counts[key] += 1
            failures.append(f"{name} case {done}: {key} (exit {proc.returncode}) {proc.stderr.strip()[-300:]}")
            done += 1
    return {"counts": counts, "failures": failures}


@pytest.mark.parametrize("name", FUZZED)
def test_fuzzed_model_files_give_a_mask_or_a_one_line_error(name, tmp_path):
    result = fuzz(name, FUZZ, tmp_path)
    print(f"fuzz {name}: {FUZZ} mutants: {result['counts']}")
    assert result["failures"] == [], result["failures"][:5]
    assert result["counts"]["ok"] + result["counts"]["error"] == FUZZ
