"""Measure what the export produces and what each size-reduction step saves:
``python -m simpleunet.benchmarks.sizes [--json PATH]``.

Sizes depend on the architecture, not on the weight values, so random-weight models stand in for trained ones:
SimpleUNet-8/16/32 (N=1) and SimpleESKNet-32 (N=2), each exported with the AFF fold and (SimpleUNet only)
without it. The int8 agreement gate is off here (random weights give meaningless masks); parity is still checked.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

CONFIGS = (("simpleunet", 8, 1), ("simpleunet", 16, 1), ("simpleunet", 32, 1), ("simpleesknet", 32, 2))
COLUMNS = (("onnx", "fp32", None), ("onnx", "int8", "qoperator"), ("onnx", "int8", "qdq"),
           ("tflite", "fp32", None), ("tflite", "int8", None))


def _checkpoint(folder: Path, family: str, width: int, blocks: int) -> Path:
    import torch

    from simpleunet.train.checkpoint import save_model
    from simpleunet.train.config import ModelConfig, TrainConfig
    from simpleunet.train.model import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(family=family, width=width, blocks=blocks)
    train = TrainConfig(model=cfg)
    meta = {"model": cfg.to_dict(), "preprocess": train.preprocess(), "dataset": "random weights (size measurement)"}
    model = build_model(cfg).eval()
    with torch.no_grad():  # trained AFF scales are not 1 (a Mul by exactly 1 is dropped by some converters)
        for p in list(model.alpha) + list(model.beta):
            p.uniform_(0.5, 1.5)
    save_model(folder, model, meta)
    return folder


def measure(family: str, width: int, blocks: int, fold: bool, work: Path) -> dict:
    from simpleunet.export.manifest import read
    from simpleunet.export.pipeline import export_model

    tag = f"{family}{width}-n{blocks}-{'fold' if fold else 'nofold'}"
    ckpt = _checkpoint(work / f"ckpt-{tag}", family, width, blocks)
    result = export_model(ckpt, int8=True, int8_onnx="both", out=work / tag, val_size=4, min_agreement=1e-9,
                          max_delta=1e-3, fold_aff=fold, log=None)
    man = read(result.manifest)
    return {"family": family, "width": width, "blocks": blocks, "aff_folded": fold,
            "parameters": man["parameters"], "seconds": round(result.seconds, 1), "files": man["files"]}


def _kb(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def markdown(rows: list[dict]) -> str:
    def size(row, fmt, precision, quant):
        for f in row["files"]:
            if (f["format"], f["precision"], f.get("quant_format")) == (fmt, precision, quant):
                return f["bytes"]
        return None

    out = ["| model | params | fp32 ONNX | int8 ONNX QOperator | int8 ONNX QDQ | fp32 TFLite | int8 TFLite | "
           "int8 weight bytes |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["aff_folded"]:
            continue
        w8 = max(f["int8_weight_bytes"] for f in r["files"])
        name = f"{'SimpleUNet' if r['family'] == 'simpleunet' else 'SimpleESKNet'}-{r['width']} (N={r['blocks']})"
        out.append(f"| {name} | {r['parameters']:,} | " + " | ".join(_kb(size(r, *c)) for c in COLUMNS)
                   + f" | {w8:,} |")
    out += ["", "Bytes after each step (AFF folded):", ""]
    for r in rows:
        if not r["aff_folded"]:
            continue
        for f in r["files"]:
            steps = " -> ".join(f"{k} {v:,}" for k, v in f["size_steps"].items())
            out.append(f"- {r['family']}{r['width']} N={r['blocks']} `{f['file']}`: {steps}")
    unfolded = {(r["family"], r["width"], r["blocks"]): r for r in rows if not r["aff_folded"]}
    if unfolded:
        out += ["", "AFF fold saves (bytes, same model exported without the fold minus with it):", ""]
        for r in rows:
            other = unfolded.get((r["family"], r["width"], r["blocks"])) if r["aff_folded"] else None
            if other:
                diffs = [f"{c[0]} {c[1]}{' ' + c[2] if c[2] else ''}: {size(other, *c) - size(r, *c):,}"
                         for c in COLUMNS]
                out.append(f"- {r['family']}{r['width']} N={r['blocks']}: " + ", ".join(diffs))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("python -m simpleunet.benchmarks.sizes",
                                description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--json", type=Path, help="also write the raw rows as JSON")
    p.add_argument("--no-unfolded", action="store_true", help="skip the exports without the AFF fold")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these, e.g. simpleunet16 simpleesknet32")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family, width, blocks in CONFIGS:
            if args.only and f"{family}{width}" not in args.only:
                continue
            for fold in (True, False) if family == "simpleunet" and not args.no_unfolded else (True,):
                rows.append(measure(family, width, blocks, fold, Path(tmp)))
                print(f"{family}{width} N={blocks} fold={fold}: {rows[-1]['seconds']} s", flush=True)
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=2))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
