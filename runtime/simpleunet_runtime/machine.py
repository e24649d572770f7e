"""The machine a benchmark ran on, and its peak multiply-accumulate rate per precision.

Latency figures mean little without the hardware, so every bench output starts with this header.

How the peaks are obtained (and printed with the results, so nobody has to guess):

- **fp32**: measured. A single-threaded 1024x1024 float32 matrix product in numpy (its BLAS, run in a child
  process with every BLAS/OpenMP thread count set to 1), best of several repeats, MACs = n^3. Where numpy uses
  OpenBLAS and OpenBLAS does not recognise a virtualised x86 CPU (it then falls back to an SSE3 kernel), the child
  is also run with the kernel the CPU's ISA flags allow (``OPENBLAS_CORETYPE``) and the faster of the two is kept.
- **int8**: not measurable with numpy, so it is fp32 x a documented factor per ISA (``INT8_FACTORS``): how many
  int8 MACs one SIMD instruction does per 32-bit lane compared with one fp32 FMA, at the same issue rate.
- **N threads**: per-core peak x N (N capped at the usable cores).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata as _md
from pathlib import Path
from typing import Any

#: ISA features worth reporting for int8/fp32 inference (x86 /proc/cpuinfo "flags", ARM "Features").
ISA_FLAGS = ("sse4_2", "avx", "fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16",
             "neon", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2")

#: int8 MACs per fp32 MAC at the same instruction rate, first match wins: (required flags, factor, reason).
INT8_FACTORS: tuple[tuple[tuple[str, ...], int, str], ...] = (
    (("avx512_vnni", "avx512f"), 4, "AVX-512 VNNI: VPDPBUSD does 4 int8 MACs per 32-bit lane, one FMA does 1"),
    (("avx_vnni", "avx512f"), 2, "AVX-VNNI (256-bit) against 512-bit fp32 FMA: 4 MACs x half the lanes"),
    (("avx_vnni",), 4, "AVX-VNNI: VPDPBUSD does 4 int8 MACs per 32-bit lane, one FMA does 1"),
    (("avx2",), 2, "AVX2 without VNNI: VPMADDUBSW + VPMADDWD, 4 int8 MACs per lane in 2 instructions"),
    (("i8mm",), 8, "ARM I8MM: SMMLA does 32 int8 MACs per 128-bit instruction, FMLA does 4 fp32"),
    (("asimddp",), 4, "ARM dot product: SDOT does 16 int8 MACs per 128-bit instruction, FMLA does 4 fp32"),
    (("asimd",), 2, "ARM NEON without dot product: widening SMLAL, 8 int8 MACs per instruction vs 4 fp32"),
    (("neon",), 2, "ARM NEON without dot product: widening multiply-accumulate, about 2x fp32"),
)


def _cpuinfo() -> dict[str, str]:
    """First value of each key in /proc/cpuinfo (empty off Linux)."""
    out: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out.setdefault(k.strip().lower(), v.strip())
    return out


def cpu_model(info: dict[str, str] | None = None) -> str:
    info = _cpuinfo() if info is None else info
    for key in ("model name", "hardware", "cpu model", "processor"):
        value = info.get(key, "")
        if value and not value.isdigit():
            return value
    if info.get("cpu implementer"):  # ARM lists part numbers only
        return f"ARM implementer {info['cpu implementer']} part {info.get('cpu part', '?')}"
    return platform.processor() or platform.machine() or "unknown"


def isa_features(info: dict[str, str] | None = None) -> list[str]:
    """The ``ISA_FLAGS`` this CPU reports (x86 ``flags`` / ARM ``Features``)."""
    info = _cpuinfo() if info is None else info
    flags = set((info.get("flags", "") + " " + info.get("features", "")).split())
    return [f for f in ISA_FLAGS if f in flags]


def int8_kernels(isa: list[str] | None = None, arch: str | None = None) -> tuple[str, bool]:
    """(name, saturates) of onnxruntime's int8 (U8S8) kernel family on this CPU: ``saturates`` is True where
    pairs of uint8 x int8 products are summed in saturating int16 (x86 without VNNI), see ``saturation``."""
    isa = isa_features() if isa is None else isa
    arch = (arch or platform.machine()).lower()
    if arch in ("aarch64", "arm64") or arch.startswith("arm"):
        return ("ARM dot product" if "asimddp" in isa else "ARM NEON"), False
    if "amx_int8" in isa:
        return "x86 AMX", False
    if "avx512_vnni" in isa:
        return "x86 AVX-512 VNNI", False
    if "avx_vnni" in isa:
        return "x86 AVX-VNNI", False
    if arch in ("x86_64", "amd64", "i386", "i686", "x86"):
        return ("x86 AVX2 without VNNI" if "avx2" in isa else "x86 without AVX2 or VNNI"), True
    return f"{arch or 'unknown'} CPU", False


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _version(dist: str) -> str | None:
    try:
        return _md.version(dist)
    except _md.PackageNotFoundError:
        return None


def busy_cores(seconds: float = 0.5) -> float | None:
    """Cores' worth of CPU time other work used over ``seconds`` (Linux /proc/stat), now: the load average is a
    1-minute mean that still counts work stopped a minute ago. None where /proc/stat is missing."""
    def sample() -> tuple[int, int, int]:
        lines = Path("/proc/stat").read_text().splitlines()
        fields = [int(v) for v in lines[0].split()[1:]]
        return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0), \
            sum(line.startswith("cpu") and line[3:4].isdigit() for line in lines)
    try:
        total0, idle0, n = sample()
        time.sleep(seconds)
        total1, idle1, _ = sample()
    except (OSError, ValueError, IndexError):
        return None
    dt = total1 - total0
    return round(n * (dt - (idle1 - idle0)) / dt, 2) if dt > 0 else None


def machine_info() -> dict[str, Any]:
    """CPU, ISA, cores, memory, OS, Python and package versions (torch is looked up, never imported)."""
    info = _cpuinfo()
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        load = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load = None
    versions = {d: _version(d) for d in ("simpleunet-runtime", "simpleunet", "numpy", "onnxruntime",
                                          "onnxruntime-gpu", "ai-edge-litert", "tflite-runtime", "torch")}
    return {
        "cpu": cpu_model(info),
        "arch": platform.machine(),
        "cores": os.cpu_count() or 1,
        "usable_cores": usable_cores(),
        "isa": isa_features(info),
        "int8_kernels": int8_kernels(isa_features(info))[0],
        "memory_gib": mem,
        "load_average_1min": load,
        "busy_cores_at_start": busy_cores(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {k: v for k, v in versions.items() if v},
    }


_MATMUL = """
import json, time, numpy as np
n = {n}
a = np.random.default_rng(0).random((n, n), dtype=np.float32)
b = np.random.default_rng(1).random((n, n), dtype=np.float32)
a @ b
best, t_end = 1e9, time.perf_counter() + {seconds}
while True:
    t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
    if time.perf_counter() > t_end: break
print(json.dumps({{"macs_per_s": n ** 3 / best}}))
"""
_ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS")}


def _openblas_coretype(isa: list[str]) -> str | None:
    """The OpenBLAS kernel the ISA flags allow (x86 only; OpenBLAS detects ARM cores itself)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    if {"avx512f", "avx512bw", "avx512vl"} <= set(isa):
        return "SkylakeX"
    if {"avx2", "fma"} <= set(isa):
        return "Haswell"
    return None


def _matmul_rate(env: dict[str, str], n: int, seconds: float) -> float | None:
    try:
        done = subprocess.run([sys.executable, "-c", _MATMUL.format(n=n, seconds=seconds)], env=env,
                              capture_output=True, text=True, timeout=120)
        return float(json.loads(done.stdout.strip().splitlines()[-1])["macs_per_s"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError):
        return None


def measure_fp32_peak(n: int = 1024, seconds: float = 0.4, isa: list[str] | None = None) -> tuple[float, str]:
    """Single-thread fp32 MAC/s of a numpy matrix product, and how it was obtained."""
    isa = isa_features() if isa is None else isa
    env = {**os.environ, **_ONE_THREAD}
    rates = {"default BLAS kernel": _matmul_rate(env, n, seconds)}
    core = _openblas_coretype(isa)
    if core and "OPENBLAS_CORETYPE" not in os.environ:
        rates[f"OPENBLAS_CORETYPE={core}"] = _matmul_rate({**env, "OPENBLAS_CORETYPE": core}, n, seconds)
    good = {k: v for k, v in rates.items() if v}
    if not good:
        return float("nan"), "fp32 peak could not be measured (numpy matmul child process failed)"
    how, rate = max(good.items(), key=lambda kv: kv[1])
    return rate, (f"fp32: measured, numpy {n}x{n} float32 matmul on 1 thread, best repeat over {seconds:g} s "
                  f"({how}) = {rate / 1e9:.1f} G MAC/s")


def int8_factor(isa: list[str]) -> tuple[int, str]:
    flags = set(isa)
    for need, factor, why in INT8_FACTORS:
        if set(need) <= flags:
            return factor, why
    return 1, "no int8 SIMD dot-product instructions known for this CPU: int8 peak taken equal to fp32"


def peak_macs(isa: list[str] | None = None, fp32: float | None = None) -> dict[str, Any]:
    """Per-core peak MAC/s for ``fp32`` and ``int8`` plus the sentences saying how each was obtained."""
    isa = isa_features() if isa is None else isa
    how_fp32 = "fp32: given by the caller"
    if fp32 is None:
        fp32, how_fp32 = measure_fp32_peak(isa=isa)
    factor, why = int8_factor(isa)
    how_int8 = f"int8: theoretical, {factor} x the fp32 figure ({why})"
    if "amx_int8" in isa:
        how_int8 += "; AMX-INT8 tiles are present and not counted, so an AMX kernel can exceed 100 %"
    return {"fp32": fp32, "int8": fp32 * factor, "int8_factor": factor,
            "how": [how_fp32, how_int8, "N threads: per-core peak x N"]}


def header_lines(info: dict[str, Any], peaks: dict[str, Any] | None = None) -> list[str]:
    """The human-readable machine header (Markdown-friendly lines)."""
    v = info.get("versions", {})
    lines = [f"CPU: {info['cpu']} ({info['arch']}), {info['usable_cores']} usable of {info['cores']} cores"
             + (f", {info['memory_gib']} GiB RAM" if info.get("memory_gib") else ""),
             f"ISA: {', '.join(info['isa']) or 'none of ' + '/'.join(ISA_FLAGS[:4])}; int8 kernels: "
             f"{info.get('int8_kernels') or int8_kernels(info['isa'], info['arch'])[0]}",
             f"OS: {info['os']}; Python {info['python']}; "
             + ", ".join(f"{k} {val}" for k, val in v.items())]
    busy, load = info.get("busy_cores_at_start"), info.get("load_average_1min")
    if busy is not None:
        lines.append(f"CPU in use by other work at start: {busy} of {info['usable_cores']} cores over 0.5 s "
                     f"({'busy' if busy >= 0.5 else 'idle'}; 1-minute load average {load}, which lags)")
    elif load is not None:
        lines.append(f"Load average at start: {load} ({'other work was using the CPU' if load >= 0.5 else 'idle'})")
    if peaks:
        lines.append(f"Peak per core: fp32 {peaks['fp32'] / 1e9:.1f} G MAC/s, int8 {peaks['int8'] / 1e9:.1f} G MAC/s")
        lines += [f"  - {h}" for h in peaks["how"]]
    return lines


def markdown_lines(lines: list[str]) -> list[str]:
    """Header lines as a Markdown list (indented lines stay nested)."""
    return [line if line.startswith("  - ") else f"- {line}" for line in lines]
