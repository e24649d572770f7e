"""Shared fixtures: the real datasets in ../shared/datasets (read-only) and a tiny real-image folder."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("SIMPLEUNET_DATA", REPO.parent / "shared" / "datasets"))


@pytest.fixture(autouse=True, scope="session")
def _cache_outside_data(tmp_path_factory):
    """Caches go to a temp folder: CI mounts the data read-only."""
    os.environ.setdefault("SIMPLEUNET_CACHE", str(tmp_path_factory.mktemp("cache")))


def _dataset(name: str) -> Path:
    path = DATASETS / name
    if not (path / "images").is_dir():
        pytest.skip(f"real dataset {path} not available (set SIMPLEUNET_DATA)")
    return path


@pytest.fixture(scope="session")
def datasets() -> Path:
    return DATASETS


@pytest.fixture(scope="session")
def kvasir() -> Path:
    return _dataset("kvasir-seg")


@pytest.fixture(scope="session")
def busi() -> Path:
    return _dataset("busi")


@pytest.fixture(scope="session")
def tiny_data(kvasir, tmp_path_factory) -> Path:
    """16 real Kvasir-SEG training pairs in the plain images/ + masks/ layout (read-only for the tests)."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i in (kvasir / "splits" / "train_880.txt").read_text().split()[:16]:
        shutil.copy(kvasir / "images" / f"{i}.jpg", root / "images")
        shutil.copy(kvasir / "masks" / f"{i}.jpg", root / "masks")
    return root
