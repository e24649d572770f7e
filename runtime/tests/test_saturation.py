"""The int8-on-every-CPU proof (``saturation``), its protobuf reader, the runtime's warning and the bench status.

``full_range_int8.onnx`` is the simpleunet8-kvasir int8 file the runtime bundled until 2026-12-03 (full-range int8
weights): files like it lost whole masks on AVX2-only CPUs. No onnx package here: these tests also run in the slim venv.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simpleunet_runtime import machine, saturation
from simpleunet_runtime.errors import SimpleUNetError, SimpleUNetWarning
from simpleunet_runtime.onnx_file import read_graph
from simpleunet_runtime.bundled import index, models_dir


def vpmaddubsw(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """What AVX2's VPMADDUBSW computes for adjacent pairs: uint8 x int8, summed and saturated to int16."""
    prod = x.astype(np.int64) * w.astype(np.int64)
    pairs = prod.reshape(-1, 2).sum(axis=1)
    return np.clip(pairs, -32768, 32767)


def test_pair_limit_is_where_vpmaddubsw_starts_to_clip():
    """The bound is exact: two same-sign weights summing to 128 never clip with any uint8 input, 129 can."""
    x = np.full(2, 255, np.uint8)
    for a in range(0, 128):
        b = 128 - a
        if b > 127:
            continue
        for w in (np.array([a, b], np.int8), -np.array([a, b], np.int8)):
            assert vpmaddubsw(x, w)[0] == int(x[0]) * int(w[0]) + int(x[1]) * int(w[1])
    w = np.array([65, 64], np.int8)
    assert vpmaddubsw(x, w)[0] != 255 * 129  # clipped at 32767
    assert saturation.pair_peaks(w[None])[0] == 129 > saturation.PAIR_LIMIT


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-127, 127), min_size=1, max_size=12))
def test_pair_peaks_is_the_worst_pairing(ws):
    """pair_peaks equals the brute-force worst case over every pairing and every uint8 input."""
    q = np.array(ws, np.int64)
    brute = max((abs(int(q[i]) + int(q[j])) for i, j in itertools.combinations(range(len(q)), 2)
                 if q[i] * q[j] >= 0), default=0)
    brute = max(brute, int(np.abs(q).max())) if len(q) else brute
    assert saturation.pair_peaks(q[None])[0] == brute


def test_reader_decodes_the_bundled_files(fixtures):
    g = read_graph(fixtures / "full_range_int8.onnx")
    ops = {n.op for n in g.nodes}
    assert "QLinearConv" in ops and not g.external
    convs = [n for n in g.nodes if n.op == "QLinearConv"]
    assert all(n.inputs[3] in g.constants or any(p.outputs == [n.inputs[3]] for p in g.nodes) for n in convs)
    weights = [g.constants[n.inputs[3]] for n in convs if n.inputs[3] in g.constants]
    assert {a.dtype for a in weights} == {np.dtype(np.int8)}


def test_reader_refuses_what_is_not_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x3a\xff\xff\xff\xff\x0f garbage")
    with pytest.raises(SimpleUNetError, match="not a readable ONNX file"):
        read_graph(bad)
    with pytest.raises(SimpleUNetError, match="holds no ONNX graph"):
        read_graph(b"")


def test_full_range_file_fails_the_proof(fixtures):
    v = saturation.check_onnx(fixtures / "full_range_int8.onnx")
    assert not v.safe and v.peak > saturation.PAIR_LIMIT and v.unsafe
    assert "not int16-safe on AVX2" in v.summary()


def test_every_bundled_int8_onnx_passes_the_proof():
    """The acceptance check, the same on any machine: every bundled int8 ONNX file is int16-safe."""
    rows = [r for r in index() if r["format"] == "onnx" and r["precision"] == "int8"]
    assert rows
    for r in rows:
        v = saturation.check_onnx(models_dir() / r["file"])
        assert v.safe and v.ops > 0 and v.peak <= saturation.PAIR_LIMIT, (r["file"], v.summary())


def test_fp32_file_has_no_integer_ops(fixtures):
    v = saturation.check_onnx(fixtures / "tiny_fp32.onnx")
    assert v.safe and v.ops == 0


@pytest.mark.parametrize("isa, arch, saturates", [
    (["avx2", "fma"], "x86_64", True), (["avx2", "avx512f", "avx512bw"], "x86_64", True),
    (["avx2", "avx512f", "avx512_vnni"], "x86_64", False), (["avx2", "avx_vnni"], "x86_64", False),
    (["asimd"], "aarch64", False), (["asimd", "asimddp"], "aarch64", False)])
def test_int8_kernel_families(isa, arch, saturates):
    assert machine.int8_kernels(isa, arch)[1] is saturates


def _on_avx2(monkeypatch):
    monkeypatch.setattr(machine, "int8_kernels", lambda *a, **k: ("x86 AVX2 without VNNI", True))


def test_runtime_warns_once_for_an_unsafe_file_on_avx2(monkeypatch, fixtures):
    from simpleunet_runtime import Segmenter

    _on_avx2(monkeypatch)
    with pytest.warns(SimpleUNetWarning, match="may give wrong masks on this CPU") as got:
        Segmenter(fixtures / "full_range_int8.onnx")
    assert len(got) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", SimpleUNetWarning)
        Segmenter(models_dir() / "simpleunet16-kvasir-int8.onnx")  # bundled: proven safe, no warning


def test_runtime_does_not_warn_where_kernels_do_not_saturate(monkeypatch, fixtures):
    from simpleunet_runtime import Segmenter

    monkeypatch.setattr(machine, "int8_kernels", lambda *a, **k: ("x86 AVX-512 VNNI", False))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SimpleUNetWarning)
        Segmenter(fixtures / "full_range_int8.onnx")


def test_infer_cli_prints_one_warning_line(monkeypatch, fixtures, tmp_path, capsys):
    from simpleunet_runtime.cli import infer_main
    from simpleunet_runtime.sample import sample_pairs

    _on_avx2(monkeypatch)
    image = sample_pairs()[0][0]
    assert infer_main([str(image), "--model", str(fixtures / "full_range_int8.onnx"), "--out",
                       str(tmp_path / "out")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(err) == 1 and "full_range_int8.onnx may give wrong masks" in err[0]


def test_bench_marks_disagreeing_int8_rows_degraded():
    """A row's status is degraded when its int8 masks agree with its fp32 file's below the export threshold."""
    from simpleunet_runtime.bench import MIN_AGREEMENT, add_derived

    full = [np.ones((8, 8), bool)] * 4
    half = [np.pad(np.ones((8, 4), bool), ((0, 0), (0, 4)))] * 4

    def row(precision, masks, fmt="onnx"):
        return {"precision": precision, "format": fmt, "mDice": 0.5, "macs": None, "p50_ms": 1.0, "threads": 1,
                "backend": "onnxruntime", "status": "ok", "_key": "w", "_masks": masks}

    rows = [row("fp32", full), row("int8", half), row("int8", full, "tflite")]
    add_derived(rows, None)
    assert rows[1]["agreement_vs_fp32"] < MIN_AGREEMENT and rows[1]["status"].startswith("degraded: int8 masks")
    assert rows[2]["agreement_vs_fp32"] == 1.0 and rows[2]["status"] == "ok"
