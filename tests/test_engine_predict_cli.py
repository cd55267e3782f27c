"""`mlca val` and `mlca predict` end to end on a tiny YOLO-format dataset and a saved checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mlca.cli import main

NAMES = ["disc", "block"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A 3-image YOLO dataset and an untrained 2-class MAY checkpoint that records its training run."""
    from mlca.engine.checkpoint import save_checkpoint
    from mlca.models.may import build_may

    root = tmp_path_factory.mktemp("ds")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(3):
            w, h = int(rng.integers(50, 90)), int(rng.integers(50, 90))
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.4 0.3\n0 0.25 0.3 0.2 0.2\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {NAMES}\n")
    torch.manual_seed(0)
    model = build_may(num_classes=2)
    weights = root / "w.pt"
    save_checkpoint(weights, {"model_config": dict(model.config), "model": model.state_dict(), "ema": None,
                              "names": NAMES, "train_config": {"data": str(data), "img_size": 64}})
    return root, data, weights


def test_val_prints_map_and_table_and_saves_json(workspace, capsys, tmp_path):
    root, data, weights = workspace
    out, results = tmp_path / "m.json", tmp_path / "r.json"
    assert main(["val", "--weights", str(weights), "--device", "cpu", "--save-metrics", str(out),
                 "--save-json", str(results)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "mAP50" in text and "disc" in text and "block" in text and "64 px" in text  # training size reused
    saved = json.loads(out.read_text())
    assert 0.0 <= saved["map"] <= saved["map50"] <= 1.0
    assert saved["n_images"] == 3 and saved["n_gt"] == 6 and len(saved["coco_stats"]) == 12
    assert set(saved["per_class"]) == set(NAMES)
    assert isinstance(json.loads(results.read_text()), list)
    gt = json.loads((tmp_path / "r_gt.json").read_text())
    assert [c["name"] for c in gt["categories"]] == NAMES and len(gt["images"]) == 3


def test_val_errors_are_one_clear_line(workspace, capsys, tmp_path):
    _, data, weights = workspace
    assert main(["val", "--weights", str(tmp_path / "none.pt"), "--data", str(data)]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    other = tmp_path / "three.yaml"
    other.write_text(data.read_text().replace(str(NAMES), "[a, b, c]"))
    assert main(["val", "--weights", str(weights), "--data", str(other), "--device", "cpu"]) == 1
    assert "predicts 2 classes" in capsys.readouterr().err


def test_predict_writes_drawn_images(workspace, capsys, tmp_path):
    root, _, weights = workspace
    out = tmp_path / "pred"
    code = main(["predict", "--weights", str(weights), "--source", str(root / "images" / "val"),
                 "--out", str(out), "--conf", "0.0001", "--device", "cpu"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png", "2.png"]
    assert "3 images" in capsys.readouterr().out
    assert main(["predict", "--weights", str(weights), "--source", str(tmp_path / "nothing")]) == 1
    assert "source not found" in capsys.readouterr().err
