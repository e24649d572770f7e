"""Video files, cameras and network streams in; mask and overlay videos out. OpenCV does the decoding and encoding
(``pip install "simpleunet-runtime[video]"``: opencv-python-headless), so the core stays numpy + onnxruntime.

A mask video is written losslessly (FFV1 in Matroska): its decoded frames are exactly the masks. An overlay video
is for eyes (MPEG-4 Part 2 in .mp4). Both are written under a temp name and renamed when closed, and closing after
Ctrl-C finishes the container, so what is left is a playable video of the frames done so far.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import SimpleUNetError
from .image import umask

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
EXTRA_HINT = 'pip install "simpleunet-runtime[video]"'
#: (suffix, fourcc) of the two kinds of output video.
MASK_VIDEO, OVERLAY_VIDEO = (".mkv", "FFV1"), (".mp4", "mp4v")
#: The frame rate written when a source does not report one (many webcams and streams).
FALLBACK_FPS = 30.0


def is_stream(source: str) -> bool:
    """Whether a ``simpleunet-infer`` input is a video, a camera index or a stream URL rather than an image."""
    s = str(source)
    camera = s.isdigit() and not Path(s).exists()  # an image file that happens to be named "0" stays an image
    return camera or s.lower().startswith(STREAM_SCHEMES) or Path(s).suffix.lower() in VIDEO_SUFFIXES


def opencv() -> Any:
    try:
        import cv2
    except ImportError:
        raise SimpleUNetError(f"video, camera and stream input need OpenCV, which is not installed: {EXTRA_HINT}") \
            from None
    return cv2


def stream_name(source: str) -> str:
    """The output stem of a source: a file's stem, ``camera0`` or ``stream``."""
    s = str(source)
    if s.isdigit():
        return f"camera{s}"
    if s.lower().startswith(STREAM_SCHEMES):
        return "stream"
    return Path(s).stem


class FrameSource:
    """The RGB frames of a video file, a camera or a stream. A file is read frame by frame, none dropped; a live
    source (camera, URL) is read by a thread that keeps only the newest frame, so a slow model sees the present and
    ``dropped`` counts the frames it never saw. ``decode_s``: seconds spent decoding (files)."""

    def __init__(self, source: str):
        cv2 = opencv()
        self.source, self.live = str(source), str(source).isdigit() or str(source).lower().startswith(STREAM_SCHEMES)
        if not self.live and not Path(self.source).is_file():
            raise SimpleUNetError(f"video {self.source} does not exist")
        self._cap = cv2.VideoCapture(int(self.source) if self.source.isdigit() else self.source)
        if not self._cap.isOpened():
            what = "camera" if self.source.isdigit() else "stream" if self.live else "video file"
            raise SimpleUNetError(f"cannot open {what} {self.source}: OpenCV could not read it (check the "
                                  f"{'device index' if self.source.isdigit() else 'path or URL'} and its codec)")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and 0 < fps <= 1000 else FALLBACK_FPS
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 and not self.live else None
        self.decode_s, self.dropped = 0.0, 0
        self._cv2 = cv2
        self._latest: np.ndarray | None = None
        self._fresh = threading.Condition()
        self._ended = False

    def _read(self) -> np.ndarray | None:
        t = time.perf_counter()
        ok, frame = self._cap.read()
        self.decode_s += time.perf_counter() - t
        return self._cv2.cvtColor(frame, self._cv2.COLOR_BGR2RGB) if ok else None

    def _pump(self) -> None:
        while not self._ended:
            frame = self._read()
            with self._fresh:
                if frame is None:
                    self._ended = True
                elif self._latest is not None:
                    self.dropped += 1
                self._latest = frame if frame is not None else self._latest
                self._fresh.notify()

    def __iter__(self) -> Iterator[np.ndarray]:
        if not self.live:
            while (frame := self._read()) is not None:
                yield frame
            return
        threading.Thread(target=self._pump, daemon=True, name="simpleunet-video").start()
        while True:
            with self._fresh:
                while self._latest is None and not self._ended:
                    self._fresh.wait()
                frame, self._latest = self._latest, None
            if frame is None:
                return
            yield frame

    def close(self) -> None:
        self._ended = True
        self._cap.release()


class VideoOut:
    """One output video, written to a temp file beside ``path`` and renamed over it by ``close()``."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int], kind: tuple[str, str] = MASK_VIDEO):
        cv2 = opencv()
        self.path, self._cv2 = Path(path), cv2
        # the container is chosen by the suffix, so the temp name keeps it
        self._tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.partial{self.path.suffix}")
        h, w = size
        self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*kind[1]), fps, (w, h), True)
        if not self._writer.isOpened():
            self._tmp.unlink(missing_ok=True)
            raise SimpleUNetError(f"cannot write {self.path}: this OpenCV build has no {kind[1]} encoder "
                                  f"({EXTRA_HINT} gives one that has)")
        self.frames, self.encode_s = 0, 0.0

    def write(self, frame: np.ndarray) -> None:
        """An HxW (mask) or HxWx3 RGB frame."""
        t = time.perf_counter()
        bgr = self._cv2.cvtColor(frame, self._cv2.COLOR_GRAY2BGR if frame.ndim == 2 else self._cv2.COLOR_RGB2BGR)
        self._writer.write(bgr)
        self.frames += 1
        self.encode_s += time.perf_counter() - t

    def close(self, keep: bool = True) -> Path | None:
        """Finish the container; keep it (renamed to ``path``) when it has frames and ``keep``, else remove it."""
        self._writer.release()
        if keep and self.frames:
            os.chmod(self._tmp, 0o666 & ~umask())
            os.replace(self._tmp, self.path)
            return self.path
        self._tmp.unlink(missing_ok=True)
        return None


def read_frames(path: str | os.PathLike) -> list[np.ndarray]:
    """Every frame of a video file as RGB arrays (tests and scripts that check an output video)."""
    source = FrameSource(str(path))
    try:
        return list(source)
    finally:
        source.close()
