"""Shared fixtures: the real datasets in ../shared/datasets (read-only) and a tiny real-image folder."""
from __future__ import annotations

import os
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
