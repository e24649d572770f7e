"""The writers of ``simpleunet-bench`` results: Markdown table and report, CSV, JSON and the Pareto plot.

Kept apart from the measuring core (``bench.py``) so the suite (``benchmarks/run.py``) writes its tables with the
same code. They take rows and result dicts only: nothing here measures, and no peer figure is built in.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

from . import machine
from .errors import SimpleUNetError

PLOT_HINT = 'pip install "simpleunet-runtime[plot]"'

#: Every output column, in order (JSON/CSV keep them all; the printed table shows ``TABLE``).
COLUMNS = ("model", "format", "precision", "backend", "tta", "threads", "file_bytes", "parameters",
           "imgsz", "batch", "runs", "p50_ms", "p90_ms", "min_ms", "max_ms", "images_per_s", "peak_rss_mb",
           "model_rss_mb", "images", "mDice", "mIoU", "pooled_dice", "delta_dice", "agreement_vs_fp32", "macs",
           "gmacs_per_s",
           "pct_peak", "path", "status")
TABLE = (("model", "model"), ("format", "format"), ("precision", "prec"), ("backend", "backend"),
         ("threads", "thr"), ("file_bytes", "file KB"), ("parameters", "params"),
         ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"), ("min_ms", "min ms"), ("max_ms", "max ms"),
         ("images_per_s", "img/s"), ("peak_rss_mb", "peak RSS MB (+model)"), ("mDice", "mDice"), ("mIoU", "mIoU"),
         ("pooled_dice", "pooled Dice"), ("delta_dice", "ΔmDice vs fp32"), ("agreement_vs_fp32", "Dice vs fp32"),
         ("gmacs_per_s", "GMAC/s"),
         ("pct_peak", "% peak"), ("status", "status"))


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return "–"
    if key == "file_bytes":  # decimal KB (1000 bytes), as the docs and simpleunet-models quote sizes
        return f"{v / 1000:.1f}"
    if key == "parameters":
        return f"{v:,}"
    if key in ("mDice", "mIoU", "pooled_dice", "agreement_vs_fp32"):
        return f"{v:.4f}"
    if key == "delta_dice":
        return f"{v + 0.0:+.4f}" if abs(v) >= 5e-5 else "+0.0000"
    if key in ("p50_ms", "p90_ms", "min_ms", "max_ms"):
        return f"{v:.2f}"
    if key in ("images_per_s", "gmacs_per_s", "pct_peak"):
        return f"{v:.1f}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for _, h in TABLE) + " |", "|" + "---|" * len(TABLE)]
    for r in rows:
        cells = []
        for key, _ in TABLE:
            cell = _fmt(key, r.get(key))
            if key == "peak_rss_mb" and r.get("model_rss_mb") is not None:
                cell += f" (+{r['model_rss_mb']:.0f})"
            cells.append(cell.replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(result: dict[str, Any]) -> str:
    info, s = result["machine"], result["settings"]
    parts = [f"# simpleunet-bench, {result['date']}", "", f"Command: `{result['command']}`", ""]
    parts += machine.markdown_lines(machine.header_lines(info, result.get("peak")))
    parts += [f"- Data: {result['data']}" + (f" ({result['data_note']})" if result.get("data_note") else ""),
              f"- Latency: ms per image at batch {s['batch']}, {s['warmup']} warm-up runs then up to {s['runs']} "
              f"timed runs (at most {s['max_seconds']:g} s per row); device {s['device']}",
              f"- {result['eager_note']}", "", markdown_table(result["rows"]), ""]
    parts.append("Columns: file KB = 1000 bytes; peak RSS = the process's high-water mark during "
                 "the row (interpreter, libraries and decoded images included), (+model) = its rise while the "
                 "model ran; mDice/mIoU = per-image means, pooled Dice over all pixels, masks at each image's "
                 "original size; ΔmDice against the fp32 file of the same weights; % peak = MACs per image / "
                 "p50 latency against the per-core peak of that precision x threads.")
    if result.get("advice"):
        parts += ["", f"**{result['advice']}**"]
    return "\n".join(parts) + "\n"


def _write(path: Path, text: str) -> None:
    """Temp file + rename: a reader never sees half a report."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SimpleUNetError(f"cannot write {path}: {exc.strerror or exc}") from None


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})
    return buf.getvalue()


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2, default=str) + "\n"


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both axes (smaller x, larger y), sorted by x."""
    front, best = [], -1.0
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _need_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SimpleUNetError(f"--plot needs matplotlib: {PLOT_HINT}") from None
    return plt


def plot(rows: list[dict[str, Any]], path: str | os.PathLike, title: str = "",
         peers: Sequence[tuple[str, float, float, float, str]] = ()) -> Path:
    """Size–Dice and latency–Dice Pareto fronts (one point per model file; latency at the fewest threads),
    with ``peers`` (name, parameters, GFLOPs, Dice, dataset: published figures) on the size panel, at their
    parameters x 4 bytes. With several models only the points on the front are named: thirty labels on top of
    each other name nothing."""
    plt = _need_matplotlib()
    from matplotlib import ticker

    scored = [r for r in rows if r.get("mDice") is not None and r.get("p50_ms") is not None]
    fewest: dict[tuple, dict] = {}
    for r in scored:
        k = (r["model"], r["format"], r["precision"], r["backend"])
        if k not in fewest or (r["threads"] or 0) < (fewest[k]["threads"] or 0):
            fewest[k] = r
    pts = list(fewest.values())
    one_model = len({r["model"] for r in pts}) == 1
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
    marker = {"pytorch": "s", "onnx": "o", "tflite": "^"}
    panels = ((axes[0], "file_bytes", "model size (bytes, log)"),
              (axes[1], "p50_ms", "latency p50 (ms per image, fewest threads, log)"))
    for ax, key, xlabel in panels:
        front = _pareto([((r[key] if key != "file_bytes" else r["file_bytes"] or 0), r["mDice"]) for r in pts
                         if (r[key] if key != "file_bytes" else r["file_bytes"])])
        for r in pts:
            x = r[key] if key != "file_bytes" else (r["file_bytes"] or (r["parameters"] or 0) * 4)
            if not x:
                continue
            ax.scatter(x, r["mDice"], marker=marker.get(r["format"], "o"),
                       color="tab:red" if r["precision"] == "int8" else "tab:blue", zorder=3)
            crowded = any(fx != x and max(fx, x) < 1.1 * min(fx, x) and 0 < fy - r["mDice"] < 0.01 for fx, fy in front)
            if one_model or ((x, r["mDice"]) in front and not crowded):  # of a cluster on the front, name the best
                label = " ".join(([] if one_model else [r["model"]]) + [r["format"], r["precision"]])
                ax.annotate(label, (x, r["mDice"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        if len(front) > 1:
            ax.step(*zip(*front), where="post", color="grey", lw=1, ls="--", label="Pareto front (measured)")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mDice (per image)")
        ax.grid(alpha=0.3, which="both")
    for name, params, _, dice, dataset in peers:
        axes[0].scatter(params * 4, dice, marker="x", color="black", zorder=3)
        axes[0].annotate(f"{name} ({dataset}, published)", (params * 4, dice), fontsize=6, xytext=(3, -8),
                         textcoords="offset points")
    if peers:
        axes[0].scatter([], [], marker="x", color="black", label="peers: published params x 4 B, own dataset")
    axes[0].scatter([], [], marker="o", color="tab:blue", label="fp32 (o ONNX, ^ TFLite, s PyTorch)")
    axes[0].scatter([], [], marker="o", color="tab:red", label="int8")
    axes[0].legend(fontsize=7, loc="best")
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=7, loc="best")
    title = title or "simpleunet-bench: size and latency against Dice"
    fig.suptitle(f"{title} — {pts[0]['model']}" if one_model and pts else title, fontsize=10)
    for ax in axes:
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        lo, hi = ax.get_xlim()
        small = hi / max(lo, 1e-12) < 10  # under one decade: label the minor ticks too
        ax.xaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}") if small else ticker.NullFormatter())
    fig.tight_layout()
    out = Path(path)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}{out.suffix or '.png'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SimpleUNetError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out

