"""The dataset folder conventions shared by the runtime's bench and the toolkit's training data: images/ + masks/
with matching file stems (a mask's stem may end in ``_mask`` or ``_segmentation``) and split files under splits/."""
from __future__ import annotations

import re
from pathlib import Path

from .errors import SimpleUNetError

_MASK_SUFFIX = re.compile(r"(_mask|_segmentation|_Segmentation)$")
#: Split names per preset: the name a user types -> the files looked for under splits/ (Kvasir-SEG's official
#: train_880/val_120, then the generic train/test). No "val" alias: Kvasir-SEG's val_120 is its test split, so
#: ``val`` means splits/val.txt only.
SPLIT_ALIASES = {"train": ("train_880.txt", "train.txt"), "test": ("val_120.txt", "test.txt")}


class DataError(SimpleUNetError):
    """A dataset folder is missing, empty or inconsistent."""


def image_stem(mask: Path) -> str:
    """The stem of the image a mask file belongs to (``a_mask.png`` -> ``a``)."""
    return _MASK_SUFFIX.sub("", mask.stem)


def masks_by_stem(files: list[Path]) -> dict[str, Path]:
    """Image stem -> mask file for a masks/ folder's files. Sorted order, the first file wins: ``a.png`` before
    ``a_mask.png``, so training, eval, export checks and the bench pair the same mask with an image."""
    out: dict[str, Path] = {}
    for m in sorted(files):
        out.setdefault(image_stem(m), m)
    return out


def split_file(root: Path, split: str) -> Path:
    """The file of a split: a path to a text file, or a name under ``root/splits/`` (``train``, ``test``, ``val``
    or a file stem)."""
    root = Path(root)
    candidates = [Path(split)] if Path(split).suffix == ".txt" else []
    candidates += [root / "splits" / name for name in SPLIT_ALIASES.get(split, ())] + [root / "splits" / f"{split}.txt"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        have = sorted(p.stem for p in (root / "splits").glob("*.txt")) if (root / "splits").is_dir() else []
        raise DataError(f"split {split!r} not found for {root} (looked for {', '.join(str(c) for c in candidates)}); "
                        + (f"its splits are {', '.join(have)} (or use train / test)"
                           if have else "it has no splits/ folder"))
    return path


def read_split(root: Path, split: str) -> list[str]:
    """The ids of a split (one per line of its ``split_file``)."""
    path = split_file(root, split)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
