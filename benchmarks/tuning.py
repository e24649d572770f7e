"""Make the fastest SimpleUNet-16 path faster: one knob at a time against the runtime's defaults, same input.

Variants are timed in interleaved rounds (A B C A B C ...) so a background load that comes and goes hits every
variant alike. Each variant reports the median of its round medians and its fastest single call; the verdict uses
the fastest call, the figure least disturbed by other processes on a shared CPU (noise only ever adds time), and
counts a change as helping or hurting only beyond +-5 %.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

# The graph rewrites live in the exporter, which applies them (simpleunet.export.rewrites); named here for experiments.
from simpleunet.export.rewrites import head_as_matmul, split_concat_conv  # noqa: F401

NOISE = 0.05


@dataclass
class Result:
    group: str
    variant: str
    ms: float
    best_ms: float
    baseline_ms: float
    baseline_best_ms: float
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.best_ms / self.baseline_best_ms

    @property
    def verdict(self) -> str:
        if self.variant.endswith("(baseline)"):
            return "baseline"
        if self.ratio < 1 - NOISE:
            return f"helps ({1 / self.ratio:.2f}x faster)"
        if self.ratio > 1 + NOISE:
            return f"hurts ({self.ratio:.2f}x slower)"
        return "no effect (within 5 %)"


def interleaved(variants: dict, rounds: int = 5, runs: int = 20, warmup: int = 3) -> dict:
    """{variant: (median of round medians, fastest call)} in ms, measured round-robin."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    per: dict = {k: [] for k in variants}
    best: dict = {k: float("inf") for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t = []
            for _ in range(runs):
                t0 = time.perf_counter()
                fn()
                t.append(time.perf_counter() - t0)
            per[name].append(float(np.median(t)) * 1000)
            best[name] = min(best[name], min(t) * 1000)
    return {k: (float(np.median(v)), best[k]) for k, v in per.items()}


def _results(group: str, times: dict, notes: dict[str, str] | None = None) -> list[Result]:
    base = next(v for k, v in times.items() if k.endswith("(baseline)"))
    return [Result(group, k, med, bst, base[0], base[1], (notes or {}).get(k, "")) for k, (med, bst) in times.items()]


# -- onnxruntime ---------------------------------------------------------------------------------------------------
def _ort_session(path: Path, threads: int = 1, level: str = "ORT_ENABLE_ALL", parallel: bool = False,
                 spinning: bool = True, arena: bool = True, mem_pattern: bool = True, disabled: tuple = (),
                 profile: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 2 if parallel else 1
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    opts.enable_cpu_mem_arena = arena
    opts.enable_mem_pattern = mem_pattern
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.enable_profiling = profile
    if profile:  # the trace goes to this run's private temp folder, not the working directory
        opts.profile_file_prefix = str(_scratch() / "ort-profile")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled))


def _scratch() -> Path:
    """A private temp folder for this process (no fixed, guessable /tmp names), removed at exit."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = Path(tempfile.mkdtemp(prefix="simpleunet-tuning-"))
        atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
    return _SCRATCH


_SCRATCH: Path | None = None


def _ort_call(sess, x: np.ndarray) -> Callable[[], object]:
    feed = {sess.get_inputs()[0].name: x}
    return lambda: sess.run(None, feed)


def _ort_iobinding(sess, x: np.ndarray) -> Callable[[], object]:
    b = sess.io_binding()
    b.bind_cpu_input(sess.get_inputs()[0].name, x)
    b.bind_output(sess.get_outputs()[0].name, "cpu")
    return lambda: sess.run_with_iobinding(b)


def onnx_variants(path: Path, x: np.ndarray, segmenter_run: Callable[[], object],
                  alternatives: dict[str, Path] | None = None, threads: int = 2, plain: Path | None = None,
                  **timing) -> list[Result]:
    """Session options of onnxruntime on one ONNX file, 1 thread unless named. ``plain``: the same weights
    exported without the exporter's onnxruntime rewrites; it is timed too, alone and with each rewrite applied by
    itself (fp32 rewrites to an fp32 file, int8 ones to an int8 file), so each rewrite's share shows."""
    from simpleunet.export import rewrites

    v: dict[str, Callable[[], object]] = {"session.run, runtime defaults (baseline)": _ort_call(_ort_session(path), x)}
    v["Segmenter.run (the bench's timed call)"] = segmenter_run
    for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_LAYOUT"):
        try:
            v[f"graph optimization {level}"] = _ort_call(_ort_session(path, level=level), x)
        except AttributeError:  # a level this onnxruntime lacks
            pass
    no_nchwc = _ort_session(path, disabled=("NchwcTransformer",))
    v["no NCHWc layout transformer (plain NCHW convs)"] = _ort_call(no_nchwc, x)
    v["execution mode PARALLEL (2 inter-op threads)"] = _ort_call(_ort_session(path, parallel=True), x)
    v["no CPU memory arena, no memory pattern"] = _ort_call(_ort_session(path, arena=False, mem_pattern=False), x)
    v["IO binding (no output copy)"] = _ort_iobinding(_ort_session(path), x)
    v[f"{threads} intra-op threads"] = _ort_call(_ort_session(path, threads=threads), x)
    v[f"{threads} intra-op threads, no spinning"] = _ort_call(_ort_session(path, threads=threads, spinning=False), x)
    if plain is not None:
        v["plain graph: no onnxruntime rewrites (before)"] = _ort_call(_ort_session(plain), x)
        for rw in rewrites.INT8 if "int8" in path.name else rewrites.FP32:
            try:
                other = rewritten(plain, (rw,))
            except Exception as exc:  # noqa: BLE001 - an experiment that cannot run is skipped, not fatal
                print(f"rewrite {rw.__name__} skipped: {type(exc).__name__}: {exc}")
                continue
            if other is not None:
                v[f"plain graph + {rw.__name__} only"] = _ort_call(_ort_session(other), x)
    for label, other in (alternatives or {}).items():  # another file of the same weights (e.g. QDQ vs QOperator)
        v[label] = _ort_call(_ort_session(other), x)
    return _results(f"onnxruntime, {path.name}", interleaved(v, **timing))


def rewritten(src: Path, rewrites: tuple) -> Path | None:
    """``src`` with ``rewrites`` applied, saved in this run's temp folder; None when none of them applied."""
    import onnx

    model = onnx.load(str(src))
    if not sum(rw(model) for rw in rewrites):
        return None
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    dst = _scratch() / f"{src.stem}-{'-'.join(rw.__name__ for rw in rewrites)}.onnx"
    onnx.save(model, str(dst))
    return dst


def ort_profile(path: Path, x: np.ndarray, runs: int = 30) -> list[tuple[str, float, int]]:
    """Where the time goes: (op type, ms per run, nodes) from onnxruntime's own profiler, 1 thread."""
    import json
    import os
    from collections import Counter, defaultdict

    sess = _ort_session(path, profile=True)
    call = _ort_call(sess, x)
    for _ in range(runs):
        call()
    trace = sess.end_profiling()
    try:
        events = json.loads(Path(trace).read_text())
    finally:
        os.remove(trace)
    total, nodes = defaultdict(float), Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"] / 1000.0
            nodes[e["args"]["op_name"]] += 1
    # the first run also lands in the trace: divide by the calls made
    return sorted(((op, ms / runs, nodes[op] // runs) for op, ms in total.items()), key=lambda t: -t[1])


# -- LiteRT --------------------------------------------------------------------------------------------------------
def _tflite_call(path: Path, x_nchw: np.ndarray, threads: int = 1, resolver: str = "AUTO",
                 latest: bool = False) -> Callable[[], object]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(path), num_threads=threads,
                     experimental_op_resolver_type=getattr(OpResolverType, resolver),
                     experimental_default_delegate_latest_features=latest)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    x = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    if np.dtype(d["dtype"]).kind == "i":
        scale, zero = d["quantization"]
        x = np.clip(np.round(x / scale + zero), -128, 127).astype(d["dtype"])
    it.set_tensor(d["index"], x.astype(d["dtype"], copy=False))
    return it.invoke


def tflite_variants(path: Path, x: np.ndarray, segmenter_run: Callable[[], object], threads: int = 2,
                    **timing) -> list[Result]:
    """LiteRT interpreter options on one TFLite file, 1 thread unless named."""
    v = {"invoke, XNNPACK default delegate (baseline)": _tflite_call(path, x),
         "Segmenter.run (NHWC transpose + int8 (de)quantize in numpy)": segmenter_run,
         "no XNNPACK (builtin kernels only)": _tflite_call(path, x, resolver="BUILTIN_WITHOUT_DEFAULT_DELEGATES"),
         "XNNPACK with its latest features": _tflite_call(path, x, latest=True),
         f"{threads} threads": _tflite_call(path, x, threads=threads)}
    return _results(f"LiteRT, {path.name}", interleaved(v, **timing))


def markdown(results: list[Result]) -> str:
    lines = ["| path | variant | median ms | fastest ms | fastest vs baseline | verdict |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.group} | {r.variant} | {r.ms:.2f} | {r.best_ms:.2f} | {r.ratio:.2f} | {r.verdict}"
                     f"{' — ' + r.note if r.note else ''} |")
    return "\n".join(lines)
