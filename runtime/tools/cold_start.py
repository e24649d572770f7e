#!/usr/bin/env python3
"""Cold start of the runtime: import + model load + first inference, and peak RSS, each in a fresh process.

Usage: python runtime/tools/cold_start.py MODEL [MODEL ...] [--runs 5] [--threads N] [--precision int8|fp32]
        [--format onnx|tflite]
MODEL is a bundled name (simpleunet-models lists them; --precision/--format pick its file) or an .onnx/.tflite file.
Prints one line per model: median (min-max) over the runs, and the peak RSS of the whole process; a model that
fails gives one ``error:`` line (with the child's last stderr line) and exit code 1.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from simpleunet_runtime import Segmenter
from simpleunet_runtime.image import load_image
from simpleunet_runtime.sample import sample_pairs
t1 = time.perf_counter()
seg = Segmenter(sys.argv[1], threads=int(sys.argv[2]) or None)
t2 = time.perf_counter()
image = load_image(sample_pairs()[0][0])
mask = seg.predict(image)
t3 = time.perf_counter()
for _ in range(10):
    seg.predict(image)
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first": t3 - t2, "steady": (t4 - t3) / 10,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "backend": seg.backend}))
"""


def model_file(model: str, precision: str, format: str) -> str:
    """A file path as given; anything else is looked up as a bundled name (sha256-checked), as the docs use it."""
    if Path(model).exists() or Path(model).suffix.lower() in (".onnx", ".tflite"):
        return model
    from simpleunet_runtime.bundled import resolve  # the parent only: the child's import time stays measured

    return str(resolve(model, precision=precision, format=format))


def child_run(path: str, threads: int) -> dict:
    """One fresh process; a failure raises RuntimeError with the child's last stderr line, not a traceback."""
    proc = subprocess.run([sys.executable, "-c", CHILD, path, str(threads)], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}, no output"])[-1]
        raise RuntimeError(last)
    return json.loads(lines[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", metavar="MODEL", help="bundled model name or .onnx/.tflite file")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--precision", choices=("int8", "fp32"), default="int8", help="for bundled names (default: int8)")
    p.add_argument("--format", choices=("onnx", "tflite"), default="onnx", help="for bundled names (default: onnx)")
    args = p.parse_args()
    if args.runs < 1:
        p.error(f"--runs must be >= 1, got {args.runs}")
    from simpleunet_runtime.errors import SimpleUNetError

    failed = 0
    for model in args.models:
        try:
            path = model_file(model, args.precision, args.format)
            runs = [child_run(path, args.threads) for _ in range(args.runs)]
        except (SimpleUNetError, RuntimeError) as exc:
            print(f"error: {model}: {exc}", file=sys.stderr)
            failed += 1
            continue

        def fmt(key: str, scale: float = 1000.0, runs: list = runs) -> str:
            vals = [r[key] * scale for r in runs]
            return f"{statistics.median(vals):.0f} ({min(vals):.0f}-{max(vals):.0f})"
        total = [(r["import"] + r["load"] + r["first"]) * 1000 for r in runs]
        print(f"{model} [{runs[0]['backend']}]: cold start {statistics.median(total):.0f} ms "
              f"(import {fmt('import')} + load {fmt('load')} + first predict {fmt('first')} ms); "
              f"steady predict {fmt('steady')} ms; peak RSS {fmt('rss_mb', 1.0)} MB; {args.runs} runs")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
