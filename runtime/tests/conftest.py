"""Runtime test fixtures: committed tiny model files (made by the toolkit's tests/make_runtime_fixtures.py) and
the bundled sample.

Nothing here imports torch, onnx or tensorflow: these tests also run in the slim venv
(runtime/tools/slim_venv_check.sh).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HAS_TFLITE = any(importlib.util.find_spec(m) is not None for m in ("ai_edge_litert", "tflite_runtime"))
needs_tflite = pytest.mark.skipif(not HAS_TFLITE, reason="no TFLite runtime installed (pip install .[tflite])")


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "reference.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def sample_images() -> list[np.ndarray]:
    from simpleunet_runtime.image import load_image
    from simpleunet_runtime.sample import sample_pairs

    return [load_image(p) for p, _ in sample_pairs()]


@pytest.fixture(scope="session")
def onnx_fp32():
    from simpleunet_runtime import Segmenter

    return Segmenter(FIXTURES / "tiny_fp32.onnx")

