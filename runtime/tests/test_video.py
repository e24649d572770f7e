"""Video, camera and stream input: a clip encoded here from the bundled sample frames (no video is committed) goes
through the CLI and the API, and every mask equals the per-image path's."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from simpleunet_runtime import Segmenter, SimpleUNetError
from simpleunet_runtime.cli import infer_main
from simpleunet_runtime.image import load_image, resize_image
from simpleunet_runtime.sample import sample_pairs

FPS, SIZE = 12.0, (120, 160)


def _clip(path: Path, repeat: int = 1) -> list[np.ndarray]:
    """A lossless clip of the sample images at SIZE; returns its frames."""
    from simpleunet_runtime.video import VideoOut

    frames = [resize_image(load_image(i), SIZE) for i, _ in sample_pairs()] * repeat
    out = VideoOut(path, FPS, SIZE)
    for f in frames:
        out.write(f)
    out.close()
    return frames


@pytest.fixture(scope="module")
def seg() -> Segmenter:
    return Segmenter.pretrained("simpleunet16-kvasir", threads=1)


def test_stream_masks_equal_per_image_masks_for_a_file_and_a_camera(tmp_path, seg):
    pytest.importorskip("cv2")
    from simpleunet_runtime.video import FrameSource

    frames = _clip(tmp_path / "clip.mkv")
    source = FrameSource(str(tmp_path / "clip.mkv"))
    assert (source.fps, source.frame_count, source.live) == (FPS, len(frames), False)
    decoded = list(source)
    assert len(decoded) == len(frames) and all(np.array_equal(a, b) for a, b in zip(decoded, frames))
    masks = list(seg.stream(iter(decoded)))
    assert all(np.array_equal(m, seg.predict(f)) for m, f in zip(masks, frames))

    def camera():  # a camera is any frame generator
        yield from frames[:3]

    assert [m.shape for m in seg.stream(camera())] == [SIZE] * 3


def test_cli_writes_mask_and_overlay_videos_with_the_source_rate(tmp_path, seg, capsys):
    pytest.importorskip("cv2")
    from simpleunet_runtime.video import FrameSource, read_frames

    frames = _clip(tmp_path / "clip.mkv")
    rc = infer_main([str(tmp_path / "clip.mkv"), "--out", str(tmp_path / "out"), "--overlay", "--threads", "1",
                     "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["streams"][0]["frames"] == len(frames) and report["streams"][0]["dropped"] == 0
    masks = read_frames(tmp_path / "out" / "clip_mask.mkv")
    assert len(masks) == len(frames) and FrameSource(str(tmp_path / "out" / "clip_mask.mkv")).fps == FPS
    for got, frame in zip(masks, frames):
        assert np.array_equal(got[..., 0], seg.predict(frame))
    overlay = FrameSource(str(tmp_path / "out" / "clip_overlay.mp4"))
    assert (overlay.frame_count, overlay.fps) == (len(frames), FPS)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip_mask.mkv", "clip_overlay.mp4"]


def test_ctrl_c_leaves_a_playable_video_of_the_frames_done(tmp_path):
    pytest.importorskip("cv2")
    from simpleunet_runtime.video import read_frames

    frames = _clip(tmp_path / "long.mkv", repeat=40)
    exe = Path(sys.executable).with_name("simpleunet-infer")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "simpleunet_runtime.cli"]
    proc = subprocess.Popen(cmd + [str(tmp_path / "long.mkv"), "--out", str(tmp_path / "out"), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any((tmp_path / "out").glob(".long_mask.*.partial.mkv")):
        time.sleep(0.05)
    time.sleep(0.5)  # some frames in
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    done = read_frames(tmp_path / "out" / "long_mask.mkv")
    assert 0 < len(done) < len(frames)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["long_mask.mkv"]  # no temp file left
    assert f"long: {len(done)} frames" in out and "interrupted by SIGINT" in out


def test_bad_sources_are_one_line_errors(tmp_path, capsys):
    pytest.importorskip("cv2")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    from simpleunet_runtime.video import VideoOut

    VideoOut(tmp_path / "empty.mkv", FPS, SIZE).close()  # no frame: nothing kept
    (tmp_path / "empty.mkv").write_bytes(b"\x1a\x45\xdf\xa3")  # a Matroska header and nothing else
    for source in (str(tmp_path / "missing.mp4"), str(tmp_path / "broken.mp4"), str(tmp_path / "empty.mkv")):
        assert infer_main([source, "--out", str(tmp_path / "out"), "-q"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_without_opencv_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now fails
    from simpleunet_runtime import video

    with pytest.raises(SimpleUNetError, match=r"simpleunet-runtime\[video\]"):
        video.opencv()
    assert infer_main([str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "out")]) == 2
    assert "simpleunet-runtime[video]" in capsys.readouterr().err
