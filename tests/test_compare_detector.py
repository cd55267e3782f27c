"""``mlca compare --detector``: the same experiment with ultralytics detectors.

Fast tests check the configuration (what is refused before any training, what a run's identity
records) and the column names read from either trainer's results.csv; one end-to-end test
trains YOLO11n with and without MLCA through ultralytics on a tiny slice of the embedded set
and checks every output file, then that a second call trains nothing.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from mlca.compare.columns import map_columns, normalise
from mlca.compare.config import CompareConfig


def test_may_runs_keep_their_identity():
    """A MAY run records no detector, so runs finished before detectors were a choice are reused."""
    s = CompareConfig(attentions=["none", "mlca"]).run_settings("mlca")
    assert "detector" not in s and "where" not in s and "head" not in s


def test_an_ultralytics_run_records_detector_and_placement(tmp_path):
    s = CompareConfig(attentions=["none", "mlca"], detector="yolo11n", where="neck").run_settings("mlca")
    assert s["detector"] == "yolo11n" and s["where"] == "neck"
    model = tmp_path / "my-yolo.yaml"
    model.write_text("nc: 80\n")
    s1 = CompareConfig(attentions=["none"], detector=str(model)).run_settings("none")
    model.write_text("nc: 81\n")
    s2 = CompareConfig(attentions=["none"], detector=str(model)).run_settings("none")
    assert s1["detector_sha256"] != s2["detector_sha256"]  # an edited YAML is another experiment


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(detector="resnet50"), "ultralytics model name"),
        (dict(detector="/no/such/model.yaml"), "no such model YAML"),
        (dict(detector="yolo11n", where="head"), "--where"),
        (dict(detector="yolo11n", cam=True), "--cam"),
        (dict(detector="yolov8n", head="yolov8"), "--head"),
        (dict(detector="yolo11n", width=0.5), "--width"),
    ],
)
def test_impossible_settings_fail_before_training(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompareConfig(attentions=["none", "mlca"], **kwargs)


def test_the_map_columns_of_either_trainer_are_found():
    assert map_columns(["epoch", "box_loss", "map50", "map", "fitness"]) == ("map50", "map")
    ultra = ["epoch", "train/box_loss", "metrics/precision(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)", "val/box_loss"]
    assert map_columns(ultra) == ("metrics/mAP50(B)", "metrics/mAP50-95(B)")
    assert map_columns(["metrics/mAP_0.5", "metrics/mAP_0.5:0.95"]) == ("metrics/mAP_0.5", "metrics/mAP_0.5:0.95")
    assert map_columns(["epoch", "loss"]) == (None, None)
    assert normalise(" metrics/mAP50-95(B) ") == "map50-95"


@pytest.mark.slow
def test_compare_yolo11n_end_to_end_then_reuses_its_runs(tmp_path, capsys, monkeypatch):
    pytest.importorskip("_ultralytics_env")  # offline settings in a temporary folder; skips without ultralytics
    from mlca.cli import main
    from mlca.ultralytics.offline import OFFLINE_ENV

    for key, value in OFFLINE_ENV.items():  # what offline() sets, undone after the test
        monkeypatch.setenv(key, value)

    out = tmp_path / "cmp"
    args = ["compare", "--detector", "yolo11n", "--attentions", "none,mlca", "--seeds", "1", "--epochs", "1",
            "--img-size", "64", "--batch-size", "8", "--max-train-images", "16", "--max-val-images", "8",
            "--latency-rounds", "2", "--out", str(out)]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)  # ultralytics' CPU training sets torch to cpu_count - 1 threads
    for name in ("results.csv", "runs.csv", "results.md", "mAP-vs-latency.png", "mAP-vs-params.png", "curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = {r["attention"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert set(rows) == {"none", "mlca"}
    for r in rows.values():
        assert int(r["params"]) > 2_000_000 and float(r["gflops"]) > 0 and float(r["latency_cpu_ms"]) > 0
        assert math.isfinite(float(r["map50_mean"])) and math.isfinite(float(r["map_mean"]))
    assert int(rows["mlca"]["params"]) > int(rows["none"]["params"])  # the inserted layers' 1-D kernels
    runs = list(csv.DictReader(open(out / "runs.csv")))
    assert sorted(r["attention"] for r in runs) == ["mlca", "none"] and all(r["epochs"] == "1" for r in runs)
    for att in ("none", "mlca"):
        run = out / "runs" / f"{att}-seed0"
        assert (run / "weights" / "last.pt").is_file() and (run / "results.csv").is_file()
        done = json.loads((run / "compare_done.json").read_text())
        assert done["settings"]["detector"] == "yolo11n"
    assert "detector=yolo11n" in (out / "results.md").read_text()
    # the data went to ultralytics as a YOLO export of just the asked-for slice
    (data_dir,) = (out / "data").iterdir()
    assert len(list((data_dir / "images" / "train").iterdir())) == 16
    assert len(list((data_dir / "images" / "val").iterdir())) == 8

    capsys.readouterr()
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    assert "0 run(s) trained, 2 reused" in capsys.readouterr().out


def test_the_offline_environment_set_before_import_is_the_one_offline_sets():
    pytest.importorskip("_ultralytics_env")
    from mlca.extras import ULTRALYTICS_OFFLINE_ENV
    from mlca.ultralytics.offline import OFFLINE_ENV

    assert ULTRALYTICS_OFFLINE_ENV == OFFLINE_ENV
