"""The benchmark suite: ``python -m simpleunet.benchmarks.run`` writes ``benchmarks/RESULTS.md`` (+ JSON + plot).

Every zoo model x format (PyTorch eager fp32, ONNX fp32/int8, TFLite fp32/int8) x 1/2 threads, scored on its own
dataset's test split (Kvasir-SEG val_120, BUSI test), next to the classic U-Net peer (random weights: latency and
size only), with ratios measured in the same run; then one-knob-at-a-time speed experiments on SimpleUNet-16.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from simpleunet_runtime import bench, bench_report, machine
from simpleunet_runtime.errors import SimpleUNetError, console_script

from simpleunet.train.checkpoint import read_run
from simpleunet.train.data import dataset_root
from simpleunet.train.data import cache_dir

from . import eager, tuning
from .models import (Subject, checkpoint_subject, export_subject, load_checkpoint, random_subject, unet_peer,
                     zoo_subjects)
from .peers import PEERS

HERE = Path(__file__).resolve().parent
#: dataset name in the checkpoint -> (dataset folder name, split scored)
DATASETS = {"kvasir-seg": ("kvasir-seg", "val_120"), "busi": ("busi", "test")}
UNTRAINED = "untrained (random weights): Dice not scored"


def log(msg: str, t0: float = time.time()) -> None:
    print(f"[{time.time() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)


def _jobs_for(subject: Subject) -> list[bench.Job]:
    """The eager fp32 job of the checkpoint + one job per exported file, sharing one weights key."""
    files = [bench.describe(bench.file_job(f)) for f in subject.files]
    described = next((j for j in files if j.metadata is not None), None)
    if described is None:
        return files
    model, _ = load_checkpoint(subject)
    ej = eager.eager_job_from_model(model, described.metadata, subject.checkpoint, described.key)
    ej.name = described.name
    ej.file_bytes = (subject.checkpoint / "model.safetensors").stat().st_size
    for j in [ej] + files:
        j.key = described.key
        j.macs = j.macs or ej.macs  # same architecture (files exported before the exporter stored MACs)
        if subject.untrained:
            j.dice_note = UNTRAINED
    return [ej] + files


def _subject_of(row: dict[str, Any], subjects: list[Subject]) -> Subject | None:
    for s in subjects:
        if row["path"] == str(s.checkpoint) or row["path"] in {str(f) for f in s.files}:
            return s
    return None


def _is_su16(s: Subject) -> bool:
    cfg = read_run(s.checkpoint)["model"]
    return cfg["family"] == "simpleunet" and cfg["width"] == 16 and cfg.get("blocks", 1) == 1


def _default_su16(subjects: list[Subject]) -> Subject | None:
    """The SimpleUNet-16 the ratio table and speed experiments use: the trained Kvasir-SEG one (the toolkit's
    default model) if present. The other SimpleUNet-16s share its architecture, so their latency is the same."""
    trained = [s for s in subjects if _is_su16(s) and not s.untrained]
    return next((s for s in trained if s.dataset == "kvasir-seg"), None) or next(iter(trained), None) \
        or next((s for s in subjects if _is_su16(s)), None)


def _find(rows, subject, fmt, precision, threads):
    for r in rows:
        if r["_subject"] is subject and r["format"] == fmt and r["precision"] == precision \
                and r["threads"] == threads and r["p50_ms"]:
            return r
    return None


def head_to_head(subject: Subject, data: bench.BenchData, threads: list[int], rounds: int, runs: int
                 ) -> dict[int, dict[tuple[str, str], tuple[float, float]]]:
    """Every path of one model (PyTorch eager + each file) timed round-robin on the same preprocessed image, per
    thread count: {threads: {(format, precision): (median of round medians ms, fastest call ms)}}. Rows of the
    main table are timed one after another, so a noisy neighbour can favour one row; interleaved rounds share it."""
    out: dict[int, dict[tuple[str, str], tuple[float, float]]] = {}
    jobs = [j for j in _jobs_for(subject) if not (j.skip or j.error)]
    for t in threads:
        variants = {}
        for j in jobs:
            try:
                runner = j.open(t)
            except SimpleUNetError:
                continue
            x = runner.preprocess(data.images[:1])
            variants[(j.format, j.precision)] = lambda r=runner, x=x: r.run(x)
        out[t] = tuning.interleaved(variants, rounds=rounds, runs=runs)
    return out


def ratios(rows: list[dict[str, Any]], subjects: list[Subject], threads: list[int],
           h2h: dict[str, dict] | None = None) -> list[str]:
    """Markdown rows: speed-ups measured in this run (same machine, same process, same input). Within a model the
    interleaved timings (``h2h``, by subject name) are used where present; against the U-Net peer, the table's."""
    out = ["| comparison | threads | timing | A ms | B ms | B / A (median) | B / A (fastest call) |",
           "|---|---|---|---|---|---|---|"]

    def line(label: str, t: int, how: str, a: tuple[float, float], b: tuple[float, float], bold: bool = False):
        r = f"{b[0] / a[0]:.2f}x"
        return f"| {label} | {t} | {how} | {a[0]:.2f} | {b[0]:.2f} | {'**' + r + '**' if bold else r} | " \
               f"{b[1] / a[1]:.2f}x |"

    def timed(s: Subject, fmt: str, prec: str, t: int) -> tuple[str, tuple[float, float]] | None:
        hit = ((h2h or {}).get(s.name) or {}).get(t, {}).get((fmt, prec))
        if hit:
            return "interleaved", hit
        r = _find(rows, s, fmt, prec, t)
        return ("table rows", (r["p50_ms"], r["min_ms"])) if r else None

    su16 = [s for s in (_default_su16(subjects),) if s is not None]
    peer = next((s for s in subjects if s.name.startswith("unet")), None)
    for s in su16:
        for t in threads:
            eager_t = timed(s, "pytorch", "fp32", t)
            for fmt, prec in (("tflite", "int8"), ("onnx", "int8"), ("tflite", "fp32"), ("onnx", "fp32")):
                a = timed(s, fmt, prec, t)
                if a and eager_t:
                    out.append(line(f"{s.name} {fmt} {prec} (A) vs PyTorch eager fp32 (B)", t, a[0], a[1],
                                    eager_t[1], True))
            for fmt in ("onnx", "tflite"):
                a, b = timed(s, fmt, "int8", t), timed(s, fmt, "fp32", t)
                if a and b:
                    out.append(line(f"{s.name} {fmt} int8 (A) vs {fmt} fp32 (B)", t, a[0], a[1], b[1]))
            if peer:
                for fmt, prec in (("pytorch", "fp32"), ("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"),
                                  ("tflite", "int8")):
                    a, b = _find(rows, s, fmt, prec, t), _find(rows, peer, fmt, prec, t)
                    if a and b:
                        out.append(line(f"{s.name} (A) vs U-Net peer (B), {fmt} {prec}", t, "table rows",
                                        (a["p50_ms"], a["min_ms"]), (b["p50_ms"], b["min_ms"])))
    return out if len(out) > 2 else []


def speed_experiments(subject: Subject, work: Path, data: bench.BenchData, args) -> tuple[list[str], dict]:
    """Knob-by-knob timings on SimpleUNet-16's files, plus input size (latency and Dice)."""
    from simpleunet_runtime import Segmenter

    results: list[tuning.Result] = []
    timing = {"rounds": args.tune_rounds, "runs": args.tune_runs}
    plain = _plain(subject, work)
    for f in subject.files:
        seg = Segmenter(f, threads=1)
        x = seg.preprocess(data.images[:1])
        if f.suffix == ".onnx":
            alt = _qdq(subject, work) if seg.metadata.precision == "int8" else {}
            results += tuning.onnx_variants(f, x, lambda s=seg, x=x: s.run(x), alternatives=alt,
                                            plain=plain.get(seg.metadata.precision), **timing)
        elif bench._has_tflite():
            results += tuning.tflite_variants(f, x, lambda s=seg, x=x: s.run(x), **timing)
        log(f"  tuned {f.name}")
    lines = [tuning.markdown(results)]
    profile = {}
    for path in (f for f in subject.files if f.suffix == ".onnx"):
        ops = tuning.ort_profile(path, Segmenter(path, threads=1).preprocess(data.images[:1]))
        profile[path.name] = ops
        total = sum(ms for _, ms, _ in ops) or 1.0
        lines += ["", f"Where the time goes in {path.name} (onnxruntime's profiler, 1 thread, kernel time per run; "
                  "profiling adds its own overhead, so read the shares; `_nchwc`/Reorder = onnxruntime's blocked "
                  "NCHWc layout and the conversions to and from it):", "",
                  "| operator | ms per run | share | nodes |", "|---|---|---|---|"]
        lines += [f"| {op} | {ms:.2f} | {100 * ms / total:.0f} % | {n} |" for op, ms, n in ops]
    sizes = _input_sizes(subject, work, data, args) if args.sizes else []
    raw = {"variants": [r.__dict__ | {"verdict": r.verdict} for r in results], "input_sizes": sizes,
           "profile": profile}
    if sizes:
        trained = subject_imgsz(subject)
        lines += ["", f"Input size (ONNX, 1 thread, Segmenter.run; the model was trained at {trained}; Dice at each "
                  "image's original size):", "",
                  f"| imgsz | precision | median ms | fastest ms | fastest vs {trained} | mDice "
                  f"| ΔmDice vs {trained} |",
                  "|---|---|---|---|---|---|---|"]
        base = {s["precision"]: s for s in sizes if s["imgsz"] == trained and "skipped" not in s}
        for s in sizes:
            if "skipped" in s:
                lines.append(f"| {s['imgsz']} | {s['precision']} | not exported: {s['skipped']} | | | | |")
                continue
            b = base.get(s["precision"])
            rel = f"{s['best_ms'] / b['best_ms']:.2f}" if b else "–"
            dd = f"{s['mDice'] - b['mDice']:+.4f}" if b and s["mDice"] is not None and b["mDice"] is not None else "–"
            md = f"{s['mDice']:.4f}" if s["mDice"] is not None else "–"
            lines.append(f"| {s['imgsz']} | {s['precision']} | {s['ms']:.2f} | {s['best_ms']:.2f} | {rel} | {md} "
                         f"| {dd} |")
    return lines, raw


def subject_imgsz(subject: Subject) -> int:
    return int(read_run(subject.checkpoint)["preprocess"]["imgsz"])


def _plain(subject: Subject, work: Path) -> dict[str, Path]:
    """precision -> the same weights' ONNX file without the exporter's onnxruntime rewrites (before/after)."""
    try:
        s = export_subject(Subject(subject.name, subject.checkpoint, subject.dataset, untrained=subject.untrained),
                           work, formats=("onnx",), ort_rewrites=False, log=log)
        return {("int8" if "int8" in f.name else "fp32"): f for f in s.files}
    except SimpleUNetError as exc:
        log(f"  plain-graph variant skipped: {exc}")
        return {}


def _qdq(subject: Subject, work: Path) -> dict[str, Path]:
    """The same weights quantized as a QDQ graph (the exporter's default int8 ONNX is QOperator)."""
    try:
        s = export_subject(Subject(subject.name, subject.checkpoint, subject.dataset, untrained=subject.untrained),
                           work, formats=("onnx",), int8_onnx="qdq", log=log)
        int8 = [f for f in s.files if "int8" in f.name]
        return {"QDQ int8 graph instead of QOperator": int8[-1]} if int8 else {}
    except SimpleUNetError as exc:
        log(f"  QDQ variant skipped: {exc}")
        return {}


def _input_sizes(subject: Subject, work: Path, data: bench.BenchData, args) -> list[dict]:
    from simpleunet_runtime import Segmenter

    out = []
    runners = {}
    for size in args.sizes:
        s = Subject(subject.name, subject.checkpoint, subject.dataset, untrained=subject.untrained)
        try:
            export_subject(s, work, formats=("onnx",), imgsz=size, log=log)
        except SimpleUNetError as exc:  # int8 at a size the model never saw can miss the agreement check
            log(f"  int8 at {size} px skipped: {exc}")
            out.append({"imgsz": size, "precision": "int8", "skipped": str(exc).split("; likely cause")[0]})
            s = Subject(subject.name, subject.checkpoint, subject.dataset, untrained=subject.untrained)
            export_subject(s, work, formats=("onnx",), imgsz=size, int8=False, log=log)
        for f in s.files:
            seg = Segmenter(f, threads=1)
            x = seg.preprocess(data.images[:1])
            runners[(size, seg.metadata.precision)] = (seg, x)
    times = tuning.interleaved({k: (lambda s=s, x=x: s.run(x)) for k, (s, x) in runners.items()},
                               rounds=args.tune_rounds, runs=args.tune_runs)
    for (size, prec), (seg, _) in runners.items():
        dice = None if subject.untrained or data.masks is None else bench.score(seg, data)["mDice"]
        med, best = times[(size, prec)]
        out.append({"imgsz": size, "precision": prec, "ms": med, "best_ms": best, "mDice": dice})
    return sorted(out, key=lambda d: (d["precision"], d["imgsz"]))


def write_results(out: Path, result: dict[str, Any]) -> None:
    md = render(result)
    bench_report._write(out / "RESULTS.md", md)
    bench_report._write(out / "results.json", bench_report.to_json(result))


def render(result: dict[str, Any]) -> str:
    p = ["# Benchmark results", "",
         f"Generated {result['date']} by `{result['command']}` in {result['elapsed_s']:.0f} s.", ""]
    p += machine.markdown_lines(machine.header_lines(result["machine"], result["peak"]))
    s = result["settings"]
    p += [f"- Latency: ms per image, batch 1, {s['warmup']} warm-up runs then up to {s['runs']} timed runs "
          f"(at most {s['max_seconds']:g} s per row); the timed call is `Segmenter.run` on a preprocessed image "
          "(inference incl. layout transpose and int8 (de)quantization, excluding JPEG decoding and resizing); "
          "PyTorch eager = the checkpoint in torch (`torch.inference_mode`, same preprocessing).",
          "- Exports: `simpleunet.export.export_model` with the zoo's options for trained models (`train/zoo.py` "
          "`EXPORT_OPTIONS`: int8 ONNX weight grid `auto`, as simpleunet-publish), its defaults for the "
          "random-weight peer.", ""]
    for note in result["notes"]:
        p.append(f"> {note}")
    if result["notes"]:
        p.append("")
    if result["ratios"]:
        p += ["## Ratios measured in this run", "",
              "Within SimpleUNet-16, every path is timed in interleaved rounds on the same image (timing "
              "\"interleaved\": median of the round medians, and the fastest call), so load from elsewhere falls on "
              "all of them alike; against the U-Net peer the ratios come from the table's rows (p50, min).", ""] \
            + result["ratios"] + [""]
    for block in result["datasets"].values():
        p += [f"## {block['title']}", "", f"Data: {block['data']}.", "",
              bench_report.markdown_table(block["rows"]), ""]
    p += ["Columns: peak RSS = the process's high-water mark during the row "
          "(interpreter, torch, libraries and decoded images included), (+model) its rise while the model ran; "
          "mDice/mIoU per-image means and pooled Dice over all pixels, masks at each image's original size; "
          "ΔmDice against the fp32 ONNX file of the same weights; GMAC/s = MACs per image / p50; % peak = that "
          "against the per-core peak of the row's precision x threads.", ""]
    if result.get("plot"):
        p += [f"![size and latency against Dice]({result['plot']})", ""]
    if result.get("tuning"):
        p += ["## Making the fastest SimpleUNet-16 path faster", "",
              "One knob at a time against the runtime's defaults, 1 thread unless named, interleaved rounds; "
              "the verdict compares each variant's fastest call (the least disturbed by other load; ±5 % = no "
              "effect), the median is shown beside it.", ""] + result["tuning"] + [""]
        if result.get("tuning_summary"):
            p += result["tuning_summary"] + [""]
    return "\n".join(p)


def summarize_tuning(raw: dict) -> list[str]:
    helped = [v for v in raw.get("variants", []) if v["verdict"].startswith("helps")]
    hurt = [v for v in raw.get("variants", []) if v["verdict"].startswith("hurts")]
    same = [v for v in raw.get("variants", []) if v["verdict"].startswith("no effect")]
    fmt = lambda v: (f"{v['variant']} on {v['group'].split(', ', 1)[1]} (fastest call {v['best_ms']:.2f} vs "
                     f"{v['baseline_best_ms']:.2f} ms)")
    lines = ["**What helped:** " + ("; ".join(fmt(v) for v in helped) or "nothing beyond noise") + ".",
             "", "**What hurt:** " + ("; ".join(fmt(v) for v in hurt) or "nothing") + ".",
             "", "**No effect:** " + ("; ".join(v["variant"] + " on " + v["group"].split(", ", 1)[1] for v in same)
                                      or "–") + "."]
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m simpleunet.benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md, results.json, results.png go")
    p.add_argument("--work", type=Path, help="export cache (default $SIMPLEUNET_CACHE/benchmarks)")
    p.add_argument("--models", nargs="+", help="zoo names (default: every model in train/zoo)")
    p.add_argument("--checkpoints", nargs="+", type=Path, default=[],
                   help="also benchmark these checkpoint folders (e.g. a run still training; copied first)")
    p.add_argument("--random-weights", action="store_true",
                   help="also benchmark a random-weight SimpleUNet-16 (for trying the suite before the zoo exists)")
    p.add_argument("--no-unet", action="store_true", help="skip the classic U-Net peer")
    p.add_argument("--no-tuning", action="store_true", help="skip the speed experiments")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=6.0)
    p.add_argument("--limit", type=int, help="score on the first N test images only (quick runs)")
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")] if s else [], default=[160, 192, 224, 256],
                   help="input sizes to try for SimpleUNet-16 (ONNX), '' to skip")
    p.add_argument("--tune-rounds", type=int, default=5)
    p.add_argument("--tune-runs", type=int, default=20)
    p.add_argument("--data-root", help="folder holding kvasir-seg/ and busi/ (default ../shared/datasets)")
    return p


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    t0 = time.time()
    work = args.work or cache_dir() / "benchmarks"
    work.mkdir(parents=True, exist_ok=True)
    threads = bench.parse_threads(args.threads)
    settings = bench.Settings(threads=threads, runs=args.runs, warmup=args.warmup, max_seconds=args.max_seconds)
    info = machine.machine_info()
    peaks = machine.peak_macs(info["isa"])
    log(f"machine: {info['cpu']}; fp32 peak {peaks['fp32'] / 1e9:.1f} G MAC/s per core")
    subjects = zoo_subjects(args.models) + [checkpoint_subject(c, work) for c in args.checkpoints]
    notes = [f"Checkpoint outside the zoo: {c}" for c in args.checkpoints]
    if args.random_weights:
        subjects.append(random_subject(work))
        notes.append("A random-weight SimpleUNet-16 (`--random-weights`) is included: its latency and size are "
                     "real, its Dice is not scored.")
    if not subjects:
        raise SimpleUNetError("no zoo models in train/zoo (publish one with python -m simpleunet.train.zoo), "
                              "or pass --random-weights to try the suite on random-weight models")
    if not args.no_unet:
        subjects.append(unet_peer(work))
        notes.append("The classic U-Net peer (width 32, Ronneberger-style with BatchNorm) has seeded random weights: "
                     "it cannot be trained on this CPU in the time available, so its Dice is not scored "
                     "(\"untrained\"); its latency, size and MACs are those of the trained network.")
    busy = info.get("busy_cores_at_start")
    load = (busy if busy is not None else info.get("load_average_1min")) or 0
    if load >= 0.5:
        notes.append(f"The CPU was not idle ({load} of {info['usable_cores']} cores in use at start): "
                     "absolute times are pessimistic; ratios within the run are fairer, and the fastest-call "
                     "column is the least disturbed.")
    if load >= info["usable_cores"] - 0.5 and max(threads) > 1:
        notes.append("Other processes kept every core busy, so rows with more than 1 thread compete with them "
                     "(and torch's spinning OpenMP threads suffer most): read multi-thread rows as 'under load', "
                     "not as this CPU's scaling.")
    log("exporting")
    from simpleunet.export.errors import ExportError

    exported = []
    for s in subjects:
        try:
            exported.append(export_subject(s, work, log=log))
        except ExportError as exc:  # one model failing a check (e.g. a microcontroller model's int8 ONNX) is a row
            log(f"  {s.name}: not benchmarked: {exc}")  # of the report, not the end of the suite
            notes.append(f"{s.name} is not benchmarked: its export failed a check "
                         f"({str(exc).split('; likely cause')[0]}).")
    subjects = exported
    groups: dict[str, list[Subject]] = {}
    for s in subjects:
        groups.setdefault(s.dataset if s.dataset in DATASETS else "kvasir-seg", []).append(s)
    if "busi" not in groups:
        notes.append("No BUSI model in the zoo yet: the BUSI test table is absent.")
    datasets, all_rows = {}, []
    data_cache = {}
    for name, subs in groups.items():
        folder, split = DATASETS[name]
        data = bench.load_data(dataset_root(folder, str(Path(args.data_root) / folder) if args.data_root else None),
                               split, args.limit)
        data_cache[name] = data
        jobs = [j for s in subs for j in _jobs_for(s)]
        log(f"benchmarking {len(jobs)} models on {data.name}")
        rows = bench.run_bench(jobs, data, settings, peaks, lambda m: None if m.endswith("...") else log(m))
        for r in rows:
            r["_subject"] = _subject_of(r, subs)
        all_rows += rows
        title = {"kvasir-seg": "Kvasir-SEG val_120", "busi": "BUSI test"}[name]
        datasets[name] = {"title": title, "data": data.name, "rows": rows}
    h2h = {}
    su16 = _default_su16(subjects)
    if su16 is not None and not su16.untrained:
        log(f"interleaved timing of every path of {su16.name}")
        h2h[su16.name] = head_to_head(su16, data_cache[su16.dataset if su16.dataset in DATASETS else "kvasir-seg"],
                                      threads, args.tune_rounds, args.tune_runs)
    ratio_lines = ratios(all_rows, subjects, threads, h2h)
    tuning_lines, tuning_raw = [], {}
    if su16 and not args.no_tuning:
        log(f"speed experiments on {su16.name}")
        data = data_cache[su16.dataset if su16.dataset in DATASETS else "kvasir-seg"]
        tuning_lines, tuning_raw = speed_experiments(su16, work, data, args)
    plot_name = None
    try:
        bench_report.plot(all_rows, args.out / "results.png", "simpleunet benchmark suite", PEERS)
        plot_name = "results.png"
    except SimpleUNetError as exc:
        notes.append(f"No plot: {exc}")
    for r in all_rows:
        r.pop("_subject", None)
    return {"command": "python -m simpleunet.benchmarks.run" + (" " + shlex.join(argv) if argv else ""),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "elapsed_s": time.time() - t0,
            "machine": info, "peak": peaks, "settings": settings.__dict__, "notes": notes, "ratios": ratio_lines,
            "interleaved": {n: {t: {f"{f} {p}": list(v) for (f, p), v in per.items()} for t, per in d.items()}
                            for n, d in h2h.items()},
            "datasets": datasets, "tuning": tuning_lines, "tuning_raw": tuning_raw,
            "tuning_summary": summarize_tuning(tuning_raw) if tuning_raw else [], "plot": plot_name}


@console_script
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    result = run(args, argv)
    write_results(args.out, result)
    log(f"wrote {args.out / 'RESULTS.md'} in {result['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
