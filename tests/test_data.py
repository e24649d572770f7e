"""Dataset layouts (each built as a small fixture from real images), decoding rules and bad-input errors."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simpleunet.export.images import calibration_set
from simpleunet.train.data import (DataError, InMemorySegmentation, area_bins, augment, carve_validation, discover,
                                   load_arrays, select_split)


def _real_pairs(kvasir: Path, n: int = 3):
    ids = (kvasir / "splits" / "train_880.txt").read_text().split()[:n]
    return [(kvasir / "images" / f"{i}.jpg", kvasir / "masks" / f"{i}.jpg") for i in ids]


def test_shared_kvasir_and_busi_splits(kvasir, busi):
    k = discover(kvasir)
    assert len(k) == 1000
    assert len(select_split(k, kvasir, "train")) == 880 and len(select_split(k, kvasir, "test")) == 120
    b = discover(busi)
    assert len(select_split(b, busi, "train")) == 624 and len(select_split(b, busi, "test")) == 156


def test_kvasir_zip_layout(kvasir, tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / "Kvasir-SEG" / sub).mkdir(parents=True)
    for img, mask in _real_pairs(kvasir):
        shutil.copy(img, tmp_path / "Kvasir-SEG" / "images")
        shutil.copy(mask, tmp_path / "Kvasir-SEG" / "masks")
    samples = discover(tmp_path)
    assert len(samples) == 3
    images, masks = load_arrays(samples, 64, cache=False)
    assert images.shape == (3, 64, 64, 3) and masks.dtype == bool and 0 < masks.mean() < 1


def test_busi_original_layout_merges_masks(busi, tmp_path):
    folder = tmp_path / "Dataset_BUSI_with_GT" / "benign"
    folder.mkdir(parents=True)
    src = busi / "images" / "benign_001.png"
    shutil.copy(src, folder / "benign (1).png")
    h, w = np.asarray(Image.open(src)).shape[:2]
    a, b = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    a[: h // 4, : w // 4] = 255
    b[-h // 4:, -w // 4:] = 255
    Image.fromarray(a).save(folder / "benign (1)_mask.png")
    Image.fromarray(b).save(folder / "benign (1)_mask_1.png")
    (s,) = discover(tmp_path)
    assert s.id == "benign_001" and len(s.masks) == 2
    _, masks = load_arrays([s], 64, cache=False)
    assert masks[0, :8, :8].all() and masks[0, -8:, -8:].all() and not masks[0, 28:36, 28:36].any()
    with pytest.warns(UserWarning, match="only 1 calibration"):  # named like training and the checks name it
        assert calibration_set(tmp_path, 64).names == ["benign_001"]
    (folder / "benign (1)_mask.png").unlink()
    (folder / "benign (1)_mask_1.png").unlink()
    with pytest.raises(DataError, match="no mask"):  # a broken dataset says what is wrong, not "no images"
        calibration_set(tmp_path, 64)


def test_isic_layout_rgba_and_grey(kvasir, tmp_path):
    (tmp_path / "ISIC2018_Task1-2_Training_Input").mkdir()
    (tmp_path / "ISIC2018_Task1_Training_GroundTruth").mkdir()
    for k, (img, mask) in enumerate(_real_pairs(kvasir, 2)):
        sid = f"ISIC_{k:07d}"
        im = Image.open(img)
        converted = im.convert("RGBA") if k == 0 else im.convert("L")
        converted.save(tmp_path / "ISIC2018_Task1-2_Training_Input" / f"{sid}.png")
        Image.open(mask).convert("L").save(tmp_path / "ISIC2018_Task1_Training_GroundTruth" / f"{sid}_segmentation.png")
    samples = discover(tmp_path)
    assert [s.id for s in samples] == ["ISIC_0000000", "ISIC_0000001"]
    images, _ = load_arrays(samples, 32, cache=False)
    assert images.shape == (2, 32, 32, 3)


def test_folder_with_custom_split_file(kvasir, tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for img, mask in _real_pairs(kvasir):
        shutil.copy(img, tmp_path / "images")
        shutil.copy(mask, tmp_path / "masks" / (mask.stem + "_mask.png"))
    split = tmp_path / "mine.txt"
    split.write_text(_real_pairs(kvasir)[1][0].stem + "\n")
    assert [s.id for s in select_split(discover(tmp_path), tmp_path, str(split))] == [_real_pairs(kvasir)[1][0].stem]


def test_bad_inputs_name_the_file(kvasir, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "nope")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no images found"):
        discover(tmp_path)
    (img, _), = _real_pairs(kvasir, 1)
    shutil.copy(img, tmp_path / "images")
    with pytest.raises(DataError, match=f"no mask .* for image {img.name}"):
        discover(tmp_path)
    (tmp_path / "masks" / f"{img.stem}.png").write_bytes(b"not an image")
    with pytest.raises(Exception, match=f"{img.stem}.png is not a readable image"):
        load_arrays(discover(tmp_path), 32, cache=False)
    with pytest.raises(DataError, match="split 'nosuch' not found"):
        select_split(discover(tmp_path), tmp_path, "nosuch")


@pytest.mark.parametrize("strength", ["strong", "heavy"])
def test_augment_keeps_masks_binary_and_aligned(strength):
    x = torch.zeros(8, 3, 32, 32)
    x[:, :, 8:16, 8:16] = 1.0
    y = x[:, :1].clone()
    xa, ya = augment(x, y, torch.Generator().manual_seed(0), strength)
    assert set(ya.unique().tolist()) <= {0.0, 1.0}
    # the bright square and the mask moved together
    assert ((xa.mean(1, keepdim=True) > 0.5) == (ya > 0.5)).float().mean() > 0.95


@pytest.mark.parametrize("strength", ["light", "strong", "heavy"])
def test_batches_resident_on_a_device_are_the_batches_a_cpu_run_draws(strength):
    # On a GPU the arrays live on the device and are cut and augmented there; the random draws stay on the CPU
    # generator in the same order, so a run moved to a GPU sees the same images (here both on the CPU).
    rng = np.random.default_rng(0)
    images, masks = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), rng.random((10, 32, 32)) > 0.6
    host = InMemorySegmentation(images, masks, [0.5] * 3, [0.25] * 3)
    resident = InMemorySegmentation(images, masks, [0.5] * 3, [0.25] * 3, resident=True)
    a = list(host.batches(4, epoch=2, seed=3, augment_with=strength))
    b = list(resident.batches(4, epoch=2, seed=3, augment_with=strength))
    assert len(a) == len(b) == 2
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_carved_validation_is_disjoint_and_seeded():
    tr, va = carve_validation(100, 0.1, 0)
    assert len(va) == 10 and not set(tr) & set(va)
    assert (carve_validation(100, 0.1, 0)[1] == va).all()


def test_a_carve_out_by_lesion_area_takes_each_size_bins_share():
    """The random carve-out of Kvasir-SEG seed 0 drew no small polyp; drawn per bin it must hold its share."""
    shares = np.r_[np.zeros(20), np.full(65, 0.01), np.full(300, 0.05), np.full(495, 0.2)]  # 880 masks
    masks = np.zeros((len(shares), 20, 20), np.uint8)
    for m, s in zip(masks, shares):
        m.flat[: int(round(s * m.size))] = 1
    bins = area_bins(masks)
    assert np.bincount(bins).tolist() == [20, 65, 300, 0, 495]  # 0.2 of 400 px = 80 px: the 12-25 % bin
    tr, va = carve_validation(len(masks), 0.1, 0, bins)
    assert len(va) == 88 and len(tr) == 792 and not set(tr) & set(va)
    assert np.bincount(bins[va], minlength=5).tolist() == [2, 7, 30, 0, 49]  # 2.0, 6.5, 30.0, 49.5 by remainders
    assert (carve_validation(len(masks), 0.1, 0, bins)[1] == va).all()
    assert not (carve_validation(len(masks), 0.1, 1, bins)[1] == va).all()


@pytest.mark.parametrize("n, world, batch", [(15, 2, 4), (13, 3, 4), (9, 2, 4), (5, 2, 4), (7, 4, 2)])
@pytest.mark.parametrize("drop_last", [True, False])
def test_every_ddp_rank_gets_the_same_number_of_batches(n, world, batch, drop_last):
    """An uneven split (e.g. 15 images, 2 ranks, batch 4) gave rank 0 one more step, hanging the all-reduce."""
    from simpleunet.train.data import InMemorySegmentation
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1).repeat(16, 1).repeat(16, 2).repeat(3, 3)
    data = InMemorySegmentation(images, np.zeros((n, 16, 16), bool), (0, 0, 0), (1, 1, 1))
    seen = [[round(float(v) * 255) for x, _ in data.batches(batch, epoch=1, seed=0, rank=r, world=world,
                                                             drop_last=drop_last) for v in x[:, 0, 0, 0]]
            for r in range(world)]
    counts = [len(list(data.batches(batch, epoch=1, seed=0, rank=r, world=world, drop_last=drop_last)))
              for r in range(world)]
    assert len(set(counts)) == 1 and counts[0] >= 1, counts
    assert len({i for s in seen for i in s}) == sum(map(len, seen))  # no image on two ranks
    alone = [round(float(v) * 255) for x, _ in data.batches(batch, epoch=0, seed=0, shuffle=False, drop_last=False)
             for v in x[:, 0, 0, 0]]
    assert alone == list(range(n))  # evaluation (one process) still sees every image exactly once


def test_mask_pairing_follows_the_runtime_rule(tmp_path):
    """Training pairs the mask the runtime's bench pairs: sorted, first wins (a.png before a_mask.png)."""
    from simpleunet_runtime.folders import masks_by_stem
    for name in ("images/a.jpg", "images/b.jpg", "masks/a_mask.png", "masks/a.png", "masks/b_segmentation.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    rule = masks_by_stem(list((tmp_path / "masks").iterdir()))
    assert {s.id: s.masks for s in discover(tmp_path)} == {"a": (rule["a"],), "b": (rule["b"],)}
    assert rule["a"].name == "a.png"


def test_val_is_not_kvasir_test_split(kvasir):
    """`--split val` used to read Kvasir-SEG's val_120, which is its test split: tuning "on val" tuned on test."""
    with pytest.raises(DataError, match="split .val. not found.*its splits are .*train_880, val_120"):
        select_split(discover(kvasir), kvasir, "val")
    assert len(select_split(discover(kvasir), kvasir, "val_120")) == 120  # the test split by its own name


def _isic_official(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, ids in (("Training", range(0, 6)), ("Validation", range(100, 102)), ("Test", range(200, 203))):
        for i in ids:
            for folder, suffix, arr in ((f"ISIC2018_Task1-2_{name}_Input", "", rng.integers(0, 255, (20, 24, 3))),
                                        (f"ISIC2018_Task1_{name}_GroundTruth", "_segmentation",
                                         np.full((20, 24), 255 * (i % 2)))):
                (root / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr.astype(np.uint8)).save(root / folder / f"ISIC_{i:07d}{suffix}.png")
    return root


def test_isic_official_folders_are_the_splits(tmp_path):
    """ISIC 2018's Training/Validation/Test folders were one pool: training (no splits/) also ate Validation + Test."""
    from simpleunet.train.data import OFFICIAL_TRAIN, training_samples
    root = _isic_official(tmp_path)
    samples = discover(root)
    ids = lambda split: [s.id for s in select_split(samples, root, split)]  # noqa: E731
    assert ids("train") == [f"ISIC_{i:07d}" for i in range(6)]
    assert ids("val") == ["ISIC_0000100", "ISIC_0000101"] and ids("test") == [f"ISIC_{i:07d}" for i in range(200, 203)]
    pool, used = training_samples(samples, root)
    assert [s.id for s in pool] == ids("train") and used == OFFICIAL_TRAIN
    assert len(select_split(samples, root, "all")) == 11
    with pytest.warns(UserWarning, match="only 6 calibration"):  # int8 calibration takes the same training images
        assert calibration_set(root, 16).names == ids("train")


def test_export_checks_an_isic_folder_on_its_official_test_images(tmp_path):
    """The exporter's checks follow the same split rule as training: ISIC's Test folders, not every image."""
    from simpleunet.export.images import verification_set
    val = verification_set(_isic_official(tmp_path), 16)
    assert val.names == [f"ISIC_{i:07d}" for i in range(200, 203)] and "official test" in val.source and val.held_out


def test_a_folder_without_splits_trains_on_all_images_and_says_so(kvasir, tmp_path):
    from simpleunet.train.data import ALL_IMAGES, training_samples
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for img, mask in _real_pairs(kvasir):
        shutil.copy(img, tmp_path / "images")
        shutil.copy(mask, tmp_path / "masks")
    pool, used = training_samples(discover(tmp_path), tmp_path)
    assert len(pool) == 3 and used == ALL_IMAGES
    pool, used = training_samples(discover(kvasir), kvasir)
    assert len(pool) == 880 and used == "train_880.txt"


def test_decode_cache_key_has_the_preprocessing_version(kvasir, tmp_path, monkeypatch):
    """The key hashed only imgsz and the files: a change to image.py's decoding kept serving the old arrays."""
    import simpleunet.train.data as data
    monkeypatch.setenv("SIMPLEUNET_CACHE", str(tmp_path))
    samples = [data.Sample(img.stem, img, (mask,)) for img, mask in _real_pairs(kvasir, 1)]
    load_arrays(samples, 32)
    monkeypatch.setattr(data, "PREPROCESS_VERSION", data.PREPROCESS_VERSION + 1)
    load_arrays(samples, 32)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_a_tiny_training_set_still_gets_a_validation_image():
    tr, va = carve_validation(4, 0.1, 0)
    assert len(va) == 1 and len(tr) == 3
