"""`mlca data export --format yolo`: the embedded set as a YOLO dataset that reads back to the same records."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from mlca.data import embedded
from mlca.data.config import load_dataset_config
from mlca.data.records import Record, read_records
from mlca.data.yolo_export import export_yolo, yolo_lines


def test_the_export_of_the_embedded_set_reads_back_to_the_same_records(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCA_HOME", str(tmp_path / "home"))
    cfg = embedded.embedded_config(5, 3)
    out = tmp_path / "yolo"
    data_yaml = export_yolo(cfg, out)
    doc = yaml.safe_load(data_yaml.read_text())
    # what Ultralytics reads: an absolute path, split folders, names index -> name
    assert doc["path"] == str(out) and doc["train"] == "images/train" and doc["val"] == "images/val"
    assert doc["names"] == dict(enumerate(embedded.NAMES)) and doc["nc"] == 8
    for split, n in (("train", 5), ("val", 3)):
        assert len(list((out / "images" / split).iterdir())) == n == len(list((out / "labels" / split).iterdir()))
        want, got = read_records(cfg, split), read_records(load_dataset_config(data_yaml), split)
        assert len(want) == len(got) == n
        for a, b in zip(want, got):
            assert b.image == out / "images" / split / a.image.name and b.image.read_bytes() == a.image.read_bytes()
            assert (a.width, a.height) == (b.width, b.height) and a.labels.tolist() == b.labels.tolist()
            np.testing.assert_allclose(b.boxes, a.boxes, rtol=0, atol=1e-3)  # 6-decimal normalised coordinates
    assert not list(tmp_path.glob(".yolo.tmp-*"))


def test_label_lines_are_normalised_cxcywh_by_hand():
    r = Record("x.jpg", [[10, 20, 30, 60], [0, 0, 200, 100]], [3, 0], 200, 100)
    assert yolo_lines(r) == "3 0.100000 0.400000 0.100000 0.400000\n0 0.500000 0.500000 1.000000 1.000000\n"
    assert yolo_lines(Record("y.jpg", np.zeros((0, 4)), [], 5, 5)) == ""  # background image: empty file


def test_cli_export_refuses_a_non_empty_folder(tmp_path, monkeypatch, capsys):
    from mlca.cli import main

    monkeypatch.setenv("MLCA_HOME", str(tmp_path / "home"))
    src = embedded.ensure_embedded(2, 1) / "data.yaml"
    out = tmp_path / "out"
    assert main(["data", "export", str(src), "--format", "yolo", "--out", str(out), "--link"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "data.yaml")
    assert len(read_records(load_dataset_config(out / "data.yaml"), "train")) == 2
    assert main(["data", "export", str(src), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["data", "export", str(src), "--out", str(out), "--overwrite", "--splits", "val"]) == 0
    assert not (out / "images" / "train").exists() and len(list((out / "images" / "val").iterdir())) == 1
    with pytest.raises(SystemExit):
        main(["data", "export", str(src), "--format", "coco", "--out", str(out)])
