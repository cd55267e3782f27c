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


def test_learning_curves_put_each_epoch_at_its_end(bench, tmp_path):
    """Epoch ends count back from when training returned; the mlca and ultralytics result files
    give the same curve for the same run."""
    assert bench._epoch_ends(100.0, [30.0, 20.0, 10.0]) == [70.0, 90.0, 100.0]
    mlca_csv = tmp_path / "mlca.csv"
    mlca_csv.write_text("epoch,box_loss,obj_loss,cls_loss,lr,map50,map,fitness,time_s\n"
                        "1,0.1,0.02,0.05,0.002,0.01,0.004,0.005,12.5\n"
                        "2,0.1,0.02,0.05,0.002,nan,nan,nan,7.5\n"  # an epoch without validation
                        "3,0.1,0.02,0.05,0.002,0.2,0.09,0.1,10\n")
    assert bench.may_curve(mlca_csv, 40.0) == [[22.5, 0.01, 0.004], [40.0, 0.2, 0.09]]
    ul_csv = tmp_path / "ul.csv"
    ul_csv.write_text("                  epoch,   time,  metrics/mAP50(B),  metrics/mAP50-95(B)\n"
                      "1,12.5,0.01,0.004\n2,20,0.05,0.02\n3,30,0.2,0.09\n")
    assert bench.ultralytics_curve(ul_csv, 40.0) == [[22.5, 0.01, 0.004], [30.0, 0.05, 0.02], [40.0, 0.2, 0.09]]
    curve = [[20.0, 0.01, 0.004], [30.0, 0.05, 0.02], [40.0, 0.2, 0.09]]
    assert bench.time_to_reach(curve, 0.02) == 30.0
    assert bench.time_to_reach(curve, 0.021) == 40.0
    assert bench.time_to_reach(curve, 0.5) is None


def test_the_table_says_when_may_reaches_yolo11n(bench):
    base = {"params": 3.1e6, "map50": 0.25, "own_map50": 0.25, "wall_s": 50.0, "cpu_s": 90.0}
    may = {**base, "map": 0.11, "own_map": 0.11, "curve": [[20.0, 0.1, 0.03], [31.0, 0.2, 0.05], [45.0, 0.25, 0.11]]}
    yolo = {**base, "map": 0.04, "own_map": 0.04, "train_wall_s": 58.0, "curve": [[58.0, 0.08, 0.04]]}
    slow = {**may, "curve": [[20.0, 0.1, 0.01], [45.0, 0.25, 0.03]]}
    key = bench.run_key
    table = bench.table({key("embedded", "short", "may-yolov5", 0, "mlca"): may,
                         key("embedded", "short", "may-yolov8", 0, "mlca"): slow,
                         key("embedded", "short", "yolo11n", 0, "mlca"): yolo})
    assert "| may-yolov5 (mlca) | 1 |" in table and table.split("may-yolov5 (mlca)")[1].split("\n")[0].endswith("| 31 s |")
    assert table.split("may-yolov8 (mlca)")[1].split("\n")[0].endswith("| not reached |")
    assert "| 58 s (its training) |" in table
    # no YOLO11n run of that set and budget: nothing to reach
    alone = bench.table({key("embedded", "long", "may-yolov5", 0, "mlca"): may})
    assert alone.split("may-yolov5 (mlca)")[1].split("\n")[0].endswith("| - |")
