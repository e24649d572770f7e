"""The shipped zoo (train/zoo/<name>/): every checkpoint loads, and simpleunet-eval reproduces its published score."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from simpleunet.train.cli import eval_main
from simpleunet.train.checkpoint import load_model
from simpleunet.train.model import count_parameters
from simpleunet.train.zoo import ZOO, readme_table

SHIPPED = sorted(p for p in ZOO.iterdir() if (p / "config.json").is_file()) if ZOO.is_dir() else []


def test_the_default_model_ships():
    assert "simpleunet16-kvasir" in {p.name for p in SHIPPED}


def test_readme_table_matches_the_shipped_metrics():
    """The README's results table is exactly what the shipped metrics.json files say (python -m simpleunet.train.zoo
    --table regenerates it)."""
    readme = (ZOO.parents[1] / "README.md").read_text()
    assert readme_table() in readme, "README results table is stale: paste `python -m simpleunet.train.zoo --table`"


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_checkpoint_is_complete(folder: Path):
    model, meta = load_model(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert count_parameters(model) == metrics["parameters"]
    card = (folder / "MODEL_CARD.md").read_text()
    assert f"{metrics['test']['mDice']:.4f}" in card and "not for diagnostic use" in card
    assert (folder / "curve.png").stat().st_size > 1000


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_eval_reproduces_the_published_score(folder: Path, tmp_path: Path, datasets: Path):
    """The zoo issue's acceptance: simpleunet-eval on a shipped checkpoint gives its table's number to ±0.002."""
    meta = json.loads((folder / "config.json").read_text())
    if not (datasets / meta["dataset"] / "images").is_dir():
        pytest.skip(f"dataset {meta['dataset']} not in {datasets}")
    out = tmp_path / "eval.json"
    assert eval_main([str(folder), "--split", "test", "--json", str(out)]) == 0
    measured = json.loads(out.read_text())
    published = json.loads((folder / "metrics.json").read_text())["test"]
    assert measured["mDice"] == pytest.approx(published["mDice"], abs=0.002)
    assert measured["mIoU"] == pytest.approx(published["mIoU"], abs=0.002)
