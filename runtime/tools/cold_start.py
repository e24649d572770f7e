#!/usr/bin/env python3
"""Cold start of the runtime: import + model load + first inference, and peak RSS, each in a fresh process.

Usage: python runtime/tools/cold_start.py MODEL [MODEL ...] [--runs 5] [--threads N]
Prints one line per model: median (min-max) over the runs, and the peak RSS of the whole process.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    for model in args.models:
        runs = []
        for _ in range(args.runs):
            out = subprocess.run([sys.executable, "-c", CHILD, model, str(args.threads)], capture_output=True,
                                 text=True, check=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))

        def fmt(key: str, scale: float = 1000.0) -> str:
            vals = [r[key] * scale for r in runs]
            return f"{statistics.median(vals):.0f} ({min(vals):.0f}-{max(vals):.0f})"
        total = [(r["import"] + r["load"] + r["first"]) * 1000 for r in runs]
        print(f"{model} [{runs[0]['backend']}]: cold start {statistics.median(total):.0f} ms "
              f"(import {fmt('import')} + load {fmt('load')} + first predict {fmt('first')} ms); "
              f"steady predict {fmt('steady')} ms; peak RSS {fmt('rss_mb', 1.0)} MB; {args.runs} runs")


if __name__ == "__main__":
    main()
