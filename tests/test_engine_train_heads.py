"""``mlca train --head yolov8``: the trainer builds the head, picks its loss, records it in the
checkpoint, and ``mlca val``'s loader rebuilds it."""

from __future__ import annotations

import yaml

from mlca.cli import main
from mlca.engine.checkpoint import load_checkpoint, load_model
from mlca.models.head_decoupled import DecoupledDetect

from test_engine_train import write_tiny_yolo


def test_cli_trains_the_yolov8_head_and_the_checkpoint_rebuilds_it(tmp_path, capsys):
    data = write_tiny_yolo(tmp_path / "data")
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--head", "yolov8", "--attention", "eca", "--width", "0.25",
               "--epochs", "1", "--img-size", "64", "--batch-size", "4", "--workers", "0", "--out", str(out)])
    assert rc == 0
    log = capsys.readouterr().out
    assert "(yolov8 head)" in log and " dfl " in log  # the loss's own term names in the epoch line
    ckpt = load_checkpoint(out / "weights" / "last.pt")
    assert ckpt["model_config"]["head"] == "yolov8" and ckpt["train_config"]["head"] == "yolov8"
    args = yaml.safe_load((out / "args.yaml").read_text())
    assert args["head"] == "yolov8" and args["anchors"] is None  # anchor-free: nothing to refit
    model = load_model(out / "weights" / "best.pt")
    assert isinstance(model.detect, DecoupledDetect) and model.names == ["red", "green", "blue"]
