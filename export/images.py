"""Real images for calibration and for the checks, preprocessed exactly as at inference.

Every image goes through ``simpleunet_runtime.image`` (load_image -> resize_image -> normalize): the same code
the runtime runs, so int8 ranges are calibrated on the pixels the deployed model will see.
Calibration default: the bundled Kvasir-SEG TRAIN sample in ``calibration/``. Checks default: the runtime's
bundled Kvasir-SEG val_120 sample (held out from training, calibration and threshold tuning), with masks. A model
trained on another dataset (BUSI) is calibrated on that dataset's train split and checked on its test split when
the dataset is found (``own_dataset``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simpleunet_runtime.errors import SimpleUNetError
from simpleunet_runtime.image import list_images, load_image, resize_image
from simpleunet_runtime.sample import SAMPLE_DATASET

CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"
#: Below this many calibration images the activation ranges get noisy: warn (zero is an error).
MIN_CALIBRATION = 16


@dataclass
class ImageSet:
    """uint8 NHWC images at the model's input size, optional bool masks, where they came from."""

    images: np.ndarray
    masks: np.ndarray | None
    names: list[str]
    source: str
    held_out: bool = True
    dataset: str = ""  # short name of the data (the folder's name; SAMPLE_DATASET for the bundled samples)


def _pick(items: list, count: int | None) -> list:
    """``count`` items at even steps through the sorted list (deterministic, covers the whole folder)."""
    if count is None or count >= len(items):
        return items
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def own_dataset(name: str) -> Path | None:
    """The local copy of dataset ``name`` ($SIMPLEUNET_DATA or ../shared/datasets), if there is one."""
    from simpleunet.train.data import dataset_root

    try:
        return dataset_root(name, None)
    except SimpleUNetError:
        return None


def _split_images(folder: Path, split: str) -> list[Path] | None:
    """The images of a split of an images/ + masks/ + splits/ dataset folder, or None if it has no such split."""
    from simpleunet_runtime.folders import read_split

    if not (folder / "splits").is_dir() or not (folder / "images").is_dir():
        return None
    try:
        ids = set(read_split(folder, split))
    except SimpleUNetError:
        return None
    return [p for p in list_images(folder / "images") if p.stem in ids]


def calibration_set(folder: str | Path | None, imgsz: int, count: int | None = None) -> ImageSet:
    """Calibration images from ``folder``: a folder of images, or a dataset folder's training images (its train
    split, or ISIC 2018's official Training folders); default: the bundled sample.
    Errors on a missing, empty or unreadable folder; warns below ``MIN_CALIBRATION`` images."""
    folder = Path(folder) if folder is not None else CALIBRATION_DIR
    if count is not None and count < 1:
        raise SimpleUNetError(f"--calib-size must be at least 1, got {count}")
    if not folder.is_dir():
        raise SimpleUNetError(f"calibration folder {folder} does not exist or is not a folder")
    try:
        paths = _split_images(folder, "train")
        source = f"{folder} (train split)" if paths else str(folder)
        paths = paths or list_images(folder)
        if not paths and (folder / "images").is_dir():
            paths = list_images(folder / "images")
        named = [(p.stem, p) for p in paths or []]
        if not named:  # another layout training reads (BUSI's original folders, ISIC 2018): what it trains on
            named, source = _training_images(folder)
    except OSError as exc:
        raise SimpleUNetError(f"cannot read calibration folder {folder}: {exc.strerror or exc}") from None
    if not named:
        raise SimpleUNetError(f"calibration folder {folder} holds no images (.jpg/.png/...); int8 calibration "
                              "needs real images like the ones the model will see")
    named = _pick(named, count)
    if len(named) < MIN_CALIBRATION:
        warnings.warn(f"only {len(named)} calibration image(s) in {folder}: int8 ranges may be poor; "
                      f"use at least {MIN_CALIBRATION}", stacklevel=2)
    images = np.stack([resize_image(load_image(p), imgsz) for _, p in named])
    return ImageSet(images, None, [name for name, _ in named], source,
                    dataset=SAMPLE_DATASET if folder == CALIBRATION_DIR else folder.resolve().name)


def _training_images(folder: Path) -> tuple[list[tuple[str, Path]], str]:
    """((sample id, image path) pairs, source) of the images a run on dataset ``folder`` trains on, named by the
    ids training and the checks use; none if ``folder`` is no dataset layout (a broken dataset is an error)."""
    from simpleunet.train.data import detect_layout, discover, training_samples

    try:
        detect_layout(folder)
    except SimpleUNetError:
        return [], str(folder)
    samples, used = training_samples(discover(folder), folder)
    return [(s.id, s.image) for s in samples], f"{folder} ({used})"


def _samples_in(folder: Path) -> tuple[list, str, bool]:
    """(samples, source, held_out) of a dataset folder: its test split if splits/ (or the layout's official
    folders) has one, else every image (held_out False when splits/ exists without a test split: the other
    images were trained on)."""
    from simpleunet.train.data import discover, select_split
    from simpleunet_runtime.folders import read_split

    samples = discover(folder)
    if not (folder / "splits").is_dir():
        if any(s.split for s in samples):  # a layout with official folders (ISIC 2018): its Test folder
            return select_split(samples, folder, "test"), f"{folder} (official test folders)", True
        return samples, str(folder), True
    try:
        read_split(folder, "test")
    except SimpleUNetError:
        return samples, f"{folder} (all images, training ones included: splits/ names no test set)", False
    return select_split(samples, folder, "test"), f"{folder} (test split)", True


def verification_set(folder: str | Path | None, imgsz: int, count: int | None = None) -> ImageSet:
    """Held-out images with masks for the checks: ``folder`` (any layout training reads, its test split if it
    has splits/) or the runtime's bundled Kvasir-SEG val sample. Masks are decoded by training's own
    ``load_arrays`` (a sample's masks OR-merged, as in training and eval)."""
    from simpleunet.train.data import Sample, load_arrays

    if count is not None and count < 1:
        raise SimpleUNetError(f"--val-size must be at least 1, got {count}")
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise SimpleUNetError(f"verification folder {folder} does not exist")
        samples, source, held_out = _samples_in(folder)
        dataset = folder.resolve().name
    else:
        from simpleunet_runtime.sample import sample_dir, sample_pairs

        samples = [Sample(img.stem, img, (mask,)) for img, mask in sample_pairs()]
        source, held_out = f"{sample_dir()} (bundled Kvasir-SEG val_120 sample)", True
        dataset = SAMPLE_DATASET
    samples = _pick(samples, count)
    images, masks = load_arrays(samples, imgsz, cache=False)
    return ImageSet(images, masks, [s.id for s in samples], source, held_out, dataset)
