"""benchmarks/bench_recipe.py's bookkeeping: a change to MAY's defaults reaches TrainConfig (a
field or a hyp key), is part of the run's key, and names its row of the table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_recipe.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_recipe", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_changes_split_into_fields_and_hyp(bench):
    from mlca.engine.train import TrainConfig

    changes = bench.parse_changes(["optimizer=sgd", "lr0=0.01", "mosaic=0", "autoanchor=false", "dfl=0"])
    assert changes == {"optimizer": "sgd", "lr0": 0.01, "autoanchor": False, "hyp": {"mosaic": 0, "dfl": 0}}
    cfg = TrainConfig(**changes)
    assert (cfg.optimizer, cfg.lr0, cfg.autoanchor) == ("sgd", 0.01, False)
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench.parse_changes(["mosaic"])
    with pytest.raises(ValueError, match="mosiac"):
        TrainConfig(**bench.parse_changes(["mosiac=0"]))  # a misspelt key is an error, not ignored


def test_batch_norm_changes_reach_the_built_model(bench, monkeypatch):
    import mlca.models.layers as layers
    from mlca import build_may

    changes = bench.parse_changes(["bn_momentum=0.1", "bn_eps=1e-5", "lr0=0.002"])
    assert changes == {"lr0": 0.002, "hyp": {}, "bn": {"BN_MOMENTUM": 0.1, "BN_EPS": 1e-5}}
    for name, value in changes["bn"].items():
        monkeypatch.setattr(layers, name, value)  # what the run's process does before training
    bns = [m for m in build_may(attention="mlca", num_classes=3).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.1 and m.eps == 1e-5 for m in bns)


def test_a_change_names_its_run_and_its_row(bench):
    row = {"params": 3.1e6, "map50": 0.25, "map": 0.11, "own_map50": 0.25, "own_map": 0.11, "wall_s": 50.0, "cpu_s": 90.0}
    plain = bench.run_key("embedded", "short", "may-yolov5", 0, "mlca")
    changed = bench.run_key("embedded", "short", "may-yolov5", 0, "mlca", ("mosaic=0",))
    assert changed == plain + "|mosaic=0"
    table = bench.table({plain: row, changed: {**row, "map": 0.09}})
    assert "| may-yolov5 (mlca) | 1 |" in table and "| may-yolov5 (mlca, mosaic=0) | 1 |" in table
    assert "0.090" in table
