"""The bundled sample: 16 real Kvasir-SEG validation pairs (resized), so the bench and demos need no data.

See README.md here for the source and terms; ``runtime/tools/make_sample.py`` regenerates it.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import SimpleUNetError

#: The dataset the bundled sample (and the exporter's bundled calibration images) come from.
SAMPLE_DATASET = "kvasir-seg"


def sample_dir() -> Path:
    """Folder holding ``images/`` (JPEG) and ``masks/`` (PNG, 0/255) with matching stems."""
    return Path(__file__).resolve().parent


def sample_pairs() -> list[tuple[Path, Path]]:
    """(image, mask) paths of the bundled sample, sorted by id."""
    root = sample_dir()
    images = sorted((root / "images").glob("*.jpg"))
    if not images:
        raise SimpleUNetError(f"the bundled sample is missing from {root}; reinstall simpleunet-runtime")
    pairs = [(im, root / "masks" / f"{im.stem}.png") for im in images]
    missing = [m.name for _, m in pairs if not m.is_file()]
    if missing:
        raise SimpleUNetError(f"the bundled sample lacks mask {missing[0]}; reinstall simpleunet-runtime")
    return pairs
