"""``simpleunet-infer``: segment image files/folders, videos, cameras and streams with a bundled or exported model;
write mask PNGs (images) or mask videos (streams: video.py).

A bad file costs one ``error:`` line and the batch goes on; the exit code is then 2 (a refused input) or 1 (an image
that could not be written or ran out of memory). SIGINT and SIGTERM end the batch with the summary line (exit 130 /
143); nothing half-written is left.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

from .backends import BACKENDS
from .errors import EXIT_FAILURE, EXIT_USAGE, SimpleUNetError, console_script, say as _say
from .image import IMAGE_SUFFIXES, TEMP_FILE, list_images, load_image, overlay, save_png, unwritable_parent
from .metadata import check_mean, check_min_region, check_std
from .segmenter import TTA
from .video import VIDEO_SUFFIXES, is_stream, stream_name
from .bundled import DEFAULT_MODEL

#: A temp file of another output name is removed once untouched this long (a run writing there now keeps its own).
STALE_S = 3600


def _floats(text: str, count: int = 3, names: str = "R,G,B") -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers ({names}), got {text!r}")
    return values


def _checked(rule, count: int = 3, names: str = "R,G,B"):
    """An argparse type for --mean/--std/--min-region: the metadata's own rule (``metadata.check_*``), so a flag
    and a model file are held to the same bounds (a std of 1e-40 only blows the input up to inf)."""
    def parse(text: str) -> tuple[float, ...]:
        try:
            return rule(_floats(text, count, names))
        except SimpleUNetError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simpleunet-infer", description="Segment images, videos, cameras and streams "
                                "with a SimpleUNet model file (.onnx / .tflite) or a bundled model; writes one mask "
                                "PNG per image and a mask video per stream.")
    p.add_argument("inputs", nargs="+", metavar="SOURCE", help="image files, folders of images, video files "
                   f"({'/'.join(VIDEO_SUFFIXES[:3])}...), a camera index (0) or an rtsp:// / http:// stream URL "
                   "(videos need the video extra)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="bundled model name or a model file (default "
                   f"{DEFAULT_MODEL};"
                   " list them with simpleunet-models)")
    p.add_argument("--out", required=True, type=Path, help="output folder for <stem>.png masks and "
                   "<stem>_mask.mkv mask videos (lossless)")
    p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png / <stem>_overlay.mp4 "
                   "(mask blended on the image)")
    p.add_argument("--show", action="store_true", help="show a stream's overlay in a window (needs a display and "
                   "opencv-python rather than the headless build); q closes it")
    p.add_argument("--json", action="store_true", help="print one JSON report on stdout (the summary lines go to "
                   "stderr)")
    p.add_argument("--threads", type=_positive, help="inference threads (default: the runtime's choice)")
    p.add_argument("--backend", choices=BACKENDS, help="force a backend (default: by the model file; for a bundled "
                   "model, tflite picks its .tflite file)")
    p.add_argument("--precision", choices=("int8", "fp32"), help="precision of a bundled model (default: int8); "
                   "not for a model file")
    p.add_argument("--imgsz", type=_positive, help="override the model's input size")
    p.add_argument("--mean", type=_checked(check_mean), help="override the normalization mean, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", type=_checked(check_std), help="override the normalization std, e.g. 0.229,0.224,0.225")
    p.add_argument("--threshold", type=float, help="override the foreground probability threshold")
    p.add_argument("--min-region", type=_checked(check_min_region, 2, "AREA,RATIO"), metavar="AREA,RATIO",
                   help="override the small-region rule: drop regions under AREA of the model input or RATIO of "
                   "the largest region (0,0 keeps every region)")
    p.add_argument("--tta", choices=tuple(TTA), help="test-time augmentation: flip averages the image and its 3 "
                   "flips (4x the inference time)")
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
            skipped = sorted(p.name for p in path.iterdir() if p.is_file() and p not in set(found)
                             and not p.name.startswith("."))
            if skipped:  # a .gif, a .txt: said, not silently left out
                _say(f"note: {raw}: skipped {len(skipped)} file(s) that are not {'/'.join(IMAGE_SUFFIXES)} images"
                     f" (first: {skipped[0]})", sys.stderr)
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
        _say(("\r" if self.on and self.tty else "") + f"error: {msg}", sys.stderr)


class _Interrupted(BaseException):
    """SIGINT or SIGTERM (``args[0]``): a BaseException, so no ``except Exception`` on the way swallows it."""


class _Signals:
    """SIGINT and SIGTERM both end the batch like Ctrl-C: at once, except while an image's files are being written
    (``hold``), which finish first, so no temp file and no mask without its overlay is left. Handlers can only be
    set in the main thread; elsewhere nothing changes."""

    def __init__(self):
        self.pending, self.writing, self.saved = 0, False, {}

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            self.saved = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        self.writing = True  # from here a signal is only recorded
        for s, handler in self.saved.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)

    def _handle(self, signum: int, _frame) -> None:
        self.pending = self.pending or signum
        if not self.writing:
            raise _Interrupted(signum)

    @contextlib.contextmanager
    def hold(self):
        self.writing = True
        try:
            yield
        finally:
            self.writing = False

    def check(self) -> None:
        """End the batch here if a signal came while files were being written."""
        if self.pending:
            raise _Interrupted(self.pending)


def _open(args):
    from .segmenter import Segmenter

    kw = dict(threads=args.threads, imgsz=args.imgsz, mean=args.mean, std=args.std, threshold=args.threshold,
              min_region=args.min_region, tta=args.tta)
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


def _remove_stale_temps(out: Path, names: set[str]) -> int:
    """Remove the temp files a killed run left in ``out``: those of the files this run writes, and any other
    untouched for ``STALE_S`` (another run writing into the folder at this moment keeps its own). Returns the count."""
    removed = 0
    for path in out.iterdir() if out.is_dir() else ():
        match = TEMP_FILE.fullmatch(path.name)
        try:
            if match and path.is_file() and (match[1] in names or time.time() - path.stat().st_mtime > STALE_S):
                path.unlink()
                removed += 1
        except OSError:
            continue  # gone meanwhile, or not ours to remove: the run goes on
    return removed


def _segment(seg, path: Path, out: Path, stem: str, with_overlay: bool, signals: _Signals) -> None:
    """Write ``<stem>.png`` (and ``<stem>_overlay.png``): both or, on any failure, neither. Everything is computed
    before the first write, so running out of memory or a signal there leaves nothing; the writes finish under
    ``signals.hold``. The mask is written last: even after a kill -9, a mask means its overlay is there."""
    image = load_image(path)
    mask = seg.predict(image)
    outputs = [(out / f"{stem}_overlay.png", overlay(image, mask), 1)] if with_overlay else []  # photos: zlib 1
    outputs.append((out / f"{stem}.png", mask, 6))
    del image  # not needed while encoding
    written: list[Path] = []
    with signals.hold():
        try:
            for target, array, level in outputs:
                save_png(target, array, compress_level=level)
                written.append(target)
        except BaseException:
            for target in written:
                target.unlink(missing_ok=True)
            raise


class _StreamStatus:
    """The live line of a stream: frames, end-to-end FPS, decode / inference / encode ms per frame, dropped frames;
    in place on a terminal, every 5 s otherwise, never with -q."""

    def __init__(self, stem: str, quiet: bool):
        self.stem, self.quiet, self.tty, self.last = stem, quiet, sys.stderr.isatty(), 0.0

    def line(self, r: dict) -> str:
        return (f"{self.stem}: {r['frames']} frames, {r['fps']:.1f} fps (decode {r['decode_ms']:.1f}, inference "
                f"{r['infer_ms']:.1f}, encode {r['encode_ms']:.1f} ms per frame), {r['dropped']} dropped")

    def update(self, r: dict) -> None:
        now = time.monotonic()
        if self.quiet or now - self.last < (0.25 if self.tty else 5.0):
            return
        self.last = now
        print(("\r\033[K" if self.tty else "") + self.line(r), end="" if self.tty else "\n", file=sys.stderr,
              flush=True)

    def done(self) -> None:
        if self.tty and not self.quiet and self.last:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


def _window(show: bool):
    """cv2 when --show can open a window here, else None with a one-line note."""
    if not show:
        return None
    import os

    from .video import opencv

    cv2 = opencv()
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        _say("note: --show ignored: no display (DISPLAY is not set)", sys.stderr)
        return None
    try:
        cv2.namedWindow("simpleunet", cv2.WINDOW_NORMAL)
    except cv2.error:
        _say("note: --show ignored: this OpenCV has no window support (opencv-python-headless); pip install "
             "opencv-python for windows", sys.stderr)
        return None
    return cv2


def _stream(seg, source: str, args: argparse.Namespace, signals: _Signals) -> dict:
    """Segment every frame of one stream into ``<stem>_mask.mkv`` (+ ``<stem>_overlay.mp4``) at the source's frame
    rate. A signal ends it at a frame boundary and the videos are finished, so both play."""
    from .video import MASK_VIDEO, OVERLAY_VIDEO, FrameSource, VideoOut

    src = FrameSource(source)
    stem = stream_name(source)
    status, window = _StreamStatus(stem, args.quiet), _window(args.show)
    outs: list[tuple[VideoOut, bool]] = []
    report = {"source": source, "frames": 0, "fps_in": src.fps, "fps": 0.0, "decode_ms": 0.0, "infer_ms": 0.0,
              "encode_ms": 0.0, "dropped": 0, "outputs": [], "interrupted": None}
    infer_s, t0 = 0.0, time.perf_counter()

    def tally() -> None:
        n = max(report["frames"], 1)
        report.update(fps=report["frames"] / max(time.perf_counter() - t0, 1e-9), dropped=src.dropped,
                      decode_ms=1000 * src.decode_s / n, infer_ms=1000 * infer_s / n,
                      encode_ms=1000 * sum(o.encode_s for o, _ in outs) / n)

    try:
        for frame in src:
            t = time.perf_counter()
            mask = seg.predict(frame)
            infer_s += time.perf_counter() - t
            if not outs:
                args.out.mkdir(parents=True, exist_ok=True)
                size = frame.shape[:2]
                outs.append((VideoOut(args.out / f"{stem}_mask{MASK_VIDEO[0]}", src.fps, size, MASK_VIDEO), False))
                if args.overlay:
                    outs.append((VideoOut(args.out / f"{stem}_overlay{OVERLAY_VIDEO[0]}", src.fps, size,
                                          OVERLAY_VIDEO), True))
            blended = overlay(frame, mask) if args.overlay or window else None
            with signals.hold():  # a frame goes into every video or none
                for out, is_overlay in outs:
                    out.write(blended if is_overlay else mask)
            report["frames"] += 1
            if window is not None:
                window.imshow("simpleunet", window.cvtColor(blended, window.COLOR_RGB2BGR))
                if window.waitKey(1) & 0xFF == ord("q"):
                    break
            tally()
            status.update(report)
            signals.check()
    except _Interrupted:
        report["interrupted"] = signal.Signals(signals.pending).name
    finally:
        src.close()
        status.done()
        for out, _ in outs:
            kept = out.close()
            if kept:
                report["outputs"].append(str(kept))
        if window is not None:
            window.destroyAllWindows()
    tally()
    if not report["frames"] and not report["interrupted"]:
        raise SimpleUNetError(f"{source}: no frame could be decoded (an empty or unsupported video)")
    return report


@console_script
def infer_main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with _Signals() as signals:
        try:
            return _infer(args, signals)
        except _Interrupted as exc:  # before the first image (while loading the model)
            _say(f"interrupted by {signal.Signals(exc.args[0]).name}: nothing written", sys.stderr)
            return 128 + exc.args[0]


def _infer(args: argparse.Namespace, signals: _Signals) -> int:
    t0 = time.perf_counter()
    _check_out(args.out)  # up to _names, a SimpleUNetError ends the run (console_script: one error line, exit 2)
    seg = _open(args)
    load_s = time.perf_counter() - t0
    streams = [s for s in args.inputs if is_stream(s) and not Path(s).is_dir()]
    files, bad = _collect([s for s in args.inputs if s not in streams]) if len(streams) < len(args.inputs) \
        else ([], [])
    tell = sys.stderr if args.json else sys.stdout  # with --json, stdout is the report alone
    names = _names(files, args.out, args.overlay)
    for path, stem in zip(files, names):
        if stem != path.stem:  # a shared stem: say where this input's mask went
            _say(f"note: {path} -> {args.out / stem}.png ({path.stem}.png is taken by an earlier input)", sys.stderr)
    stale = _remove_stale_temps(args.out, {f"{n}{s}.png" for n in names for s in ("", "_overlay")})
    if stale:
        _say(f"note: removed {stale} temp file(s) an interrupted run left in {args.out}", sys.stderr)
    progress = _Progress(len(files), args.quiet)
    for raw, msg in bad:
        progress.error(f"{raw}: {msg}")
    failed, broken, done, t1 = len(bad), 0, 0, time.perf_counter()
    results: list[dict] = [{"input": raw, "error": msg} for raw, msg in bad]
    try:
        for path, stem in zip(files, names):
            try:
                _segment(seg, path, args.out, stem, args.overlay, signals)
                results.append({"input": str(path), "mask": str(args.out / f"{stem}.png")})
            except SimpleUNetError as exc:
                failed += 1
                progress.error(str(exc) if str(path) in str(exc) else f"{path}: {exc}")  # name the file once
                results.append({"input": str(path), "error": str(exc)})
            except MemoryError:
                failed, broken = failed + 1, broken + 1
                progress.error(f"{path}: not enough memory to segment this image; downscale it or free memory")
            except OSError as exc:
                failed, broken = failed + 1, broken + 1
                progress.error(f"{path}: cannot write output: {exc.strerror or exc}")
            done += 1
            progress.update(done)
            signals.check()
    except _Interrupted:
        pass  # signals.pending says which
    total = len(files) + len(bad)
    ok = len(bad) + done - failed
    run_s = time.perf_counter() - t1
    if total or not streams:
        per = f", {1000 * run_s / done:.1f} ms/image" if ok else ""
        left = f", {len(files) - done} not processed" if len(files) > done else ""
        stopped = f"; interrupted by {signal.Signals(signals.pending).name}{left}" if signals.pending else ""
        _say(f"segmented {ok}/{total} images in {run_s:.2f} s{per} (model load {load_s:.2f} s) with "
             f"{seg.path.name} [{seg.backend}] -> " + (str(args.out) if ok else "nothing written")
             + (f"; {failed} failed" if failed else "") + stopped, tell)
    stream_reports: list[dict] = []
    for source in streams if not signals.pending else ():
        try:
            r = _stream(seg, source, args, signals)
        except SimpleUNetError as exc:
            failed += 1
            progress.error(str(exc))
            stream_reports.append({"source": source, "error": str(exc)})
            continue
        stream_reports.append(r)
        _say(_StreamStatus(stream_name(source), False).line(r) + f" at {r['fps_in']:g} fps in -> "
             + (", ".join(r["outputs"]) or "nothing written")
             + (f"; interrupted by {r['interrupted']}" if r["interrupted"] else ""), tell)
        if signals.pending:
            break
    if args.json:
        print(json.dumps({"model": seg.path.name, "backend": seg.backend, "images": results,
                          "streams": stream_reports}, indent=2), flush=True)
    if signals.pending:
        return 128 + signals.pending
    if broken:  # the machine failed (memory, disk), not the input: that decides the code of a mixed batch
        return EXIT_FAILURE
    return EXIT_USAGE if failed or not (total or streams) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(infer_main())
