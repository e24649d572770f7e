"""``simpleunet-infer``: segment image files/folders with a bundled or exported model, write mask PNGs.

A bad file costs one ``error:`` line and the batch goes on; the exit code is non-zero if any file failed.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from .backends import BACKENDS
from .errors import SimpleUNetError, console_script
from .image import list_images, load_image, overlay, save_png, unwritable_parent
from .zoo import DEFAULT_MODEL



def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 3 comma-separated numbers, got {text!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected 3 comma-separated numbers (R,G,B), got {text!r}")
    return values


def _std(text: str) -> tuple[float, ...]:
    """--std: checked here so a zero is blamed on the flag, not on the model's metadata."""
    values = _floats(text)
    if min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected 3 numbers > 0 (R,G,B), got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simpleunet-infer", description="Segment images with a SimpleUNet model "
                                "file (.onnx / .tflite) or a bundled model; writes one mask PNG per image.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR", help="image files and/or folders of images")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"bundled model name or a model file (default {DEFAULT_MODEL};"
                   " list them with simpleunet-models)")
    p.add_argument("--out", required=True, type=Path, help="output folder for <stem>.png masks")
    p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png (mask blended on the image)")
    p.add_argument("--threads", type=_positive, help="inference threads (default: the runtime's choice)")
    p.add_argument("--backend", choices=BACKENDS, help="force a backend (default: by the model file; for a bundled "
                   "model, tflite picks its .tflite file)")
    p.add_argument("--precision", choices=("int8", "fp32"), help="precision of a bundled model (default: int8); "
                   "not for a model file")
    p.add_argument("--imgsz", type=_positive, help="override the model's input size")
    p.add_argument("--mean", type=_floats, help="override the normalization mean, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", type=_std, help="override the normalization std, e.g. 0.229,0.224,0.225")
    p.add_argument("--threshold", type=float, help="override the foreground probability threshold")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress counter")
    return p


def _collect(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to segment, and (input, error) for inputs that cannot be used at all."""
    files: list[Path] = []
    bad: list[tuple[str, str]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = list_images(path)
            if not found:
                bad.append((raw, "folder has no image files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            bad.append((raw, "no such file or folder"))
    return files, bad


def _names(files: list[Path], out: Path, overlay: bool) -> list[str]:
    """Output stems, unique within the run (a-2.jpg, a.jpg and a.png give a-2, a and a-3). Raises if a mask or
    overlay would land on one of the input images."""
    inputs = {f.resolve() for f in files}
    taken: set[str] = set()
    names = []
    for f in files:
        stem, n = f.stem, 1
        while stem in taken or f"{stem}_overlay" in taken:
            n += 1
            stem = f"{f.stem}-{n}"
        written = [stem] + ([f"{stem}_overlay"] if overlay else [])
        for name in written:
            if (out / f"{name}.png").resolve() in inputs:
                raise SimpleUNetError(f"writing {out / (name + '.png')} would overwrite an input image; "
                                      "choose another --out folder")
        taken.update(written)
        names.append(stem)
    return names


class _Progress:
    """A counter on stderr: rewritten in place on a terminal, about every 10 % otherwise."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.tty = total, sys.stderr.isatty()
        self.on = not quiet and total > 1
        self.every = 1 if self.tty else max(1, math.ceil(total / 10))

    def update(self, done: int) -> None:
        if self.on and (done % self.every == 0 or done == self.total):
            end = "" if self.tty else "\n"
            print(f"\r{done}/{self.total}" if self.tty else f"{done}/{self.total}", end=end, file=sys.stderr,
                  flush=True)
            if self.tty and done == self.total:
                print(file=sys.stderr)

    def error(self, msg: str) -> None:
        print(("\r" if self.on and self.tty else "") + f"error: {msg}", file=sys.stderr, flush=True)


def _open(args):
    from .segmenter import Segmenter

    kw = dict(threads=args.threads, imgsz=args.imgsz, mean=args.mean, std=args.std, threshold=args.threshold)
    model = Path(args.model)
    if model.exists() or model.suffix.lower() in (".onnx", ".tflite"):
        if args.precision:  # default None, so an explicit --precision with a file is caught, not ignored
            raise SimpleUNetError(f"--precision applies to bundled model names only; {args.model} is a file, whose "
                                  "precision was fixed when it was exported")
        return Segmenter(model, backend=args.backend, **kw)
    fmt = "tflite" if args.backend == "tflite" else "onnx"
    return Segmenter.pretrained(args.model, precision=args.precision or "int8", format=fmt, backend=args.backend,
                                **kw)


def _check_out(out: Path) -> None:
    """Refuse an --out that cannot be created, without creating it (that waits for the first mask)."""
    if out.exists() and not out.is_dir():
        raise SimpleUNetError(f"--out {out} is a file, not a folder")
    bad = unwritable_parent(out)
    if bad:
        raise SimpleUNetError(f"cannot create output folder {out}: {bad} is not a writable folder")


@console_script
def infer_main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        _check_out(args.out)
        seg = _open(args)
    except SimpleUNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    load_s = time.perf_counter() - t0
    files, bad = _collect(args.inputs)
    try:
        names = _names(files, args.out, args.overlay)
    except SimpleUNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path, stem in zip(files, names):
        if stem != path.stem:  # a shared stem: say where this input's mask went
            print(f"note: {path} -> {args.out / stem}.png ({path.stem}.png is taken by an earlier input)",
                  file=sys.stderr)
    progress = _Progress(len(files), args.quiet)
    for raw, msg in bad:
        progress.error(f"{raw}: {msg}")
    failed, t1 = len(bad), time.perf_counter()
    for i, (path, stem) in enumerate(zip(files, names), 1):
        try:
            image = load_image(path)
            mask = seg.predict(image)
            save_png(args.out / f"{stem}.png", mask)
            if args.overlay:
                save_png(args.out / f"{stem}_overlay.png", overlay(image, mask), compress_level=1)
        except SimpleUNetError as exc:
            failed += 1
            progress.error(str(exc) if str(path) in str(exc) else f"{path}: {exc}")  # name the file once
        except OSError as exc:
            failed += 1
            progress.error(f"{path}: cannot write output: {exc.strerror or exc}")
        progress.update(i)
    total = len(files) + len(bad)
    ok = total - failed
    run_s = time.perf_counter() - t1
    per = f", {1000 * run_s / len(files):.1f} ms/image" if ok else ""
    print(f"segmented {ok}/{total} images in {run_s:.2f} s{per} (model load {load_s:.2f} s) with "
          f"{seg.path.name} [{seg.backend}] -> " + (str(args.out) if ok else "nothing written")
          + (f"; {failed} failed" if failed else ""))
    return 1 if failed or not total else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(infer_main())
