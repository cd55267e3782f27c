"""A data YAML's relative ``path:`` is found where YOLOv5 and ultralytics find it, and a root
that is not found is reported with every reading that was tried."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlca.data.config import load_dataset_config, resolve_root, ultralytics_datasets_dir
from mlca.data.errors import DataError
from mlca.data.records import read_records


@pytest.fixture(autouse=True)
def no_ultralytics_settings(tmp_path, monkeypatch):
    """This machine's own ultralytics settings (if any) must not leak into the tests."""
    empty = tmp_path / "no-ultralytics-config"
    empty.mkdir()
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(empty))


def dataset(root: Path, n: int = 2) -> Path:
    """A tiny YOLO dataset: root/images/train2017/*.png and its labels."""
    rng = np.random.default_rng()
    for i in range(n):
        img = root / "images" / "train2017" / f"{i}.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(img)
        lbl = root / "labels" / "train2017" / f"{i}.txt"
        lbl.parent.mkdir(parents=True, exist_ok=True)
        lbl.write_text("0 0.5 0.5 0.5 0.5\n")
    return root


YOLOV5_YAML = "path: ../datasets/coco128\ntrain: images/train2017\nval: images/train2017\nnames: {0: person}\n"


def test_yolov5_layout_is_found_from_the_folder_yolov5_runs_in(tmp_path, monkeypatch):
    # yolov5/data/coco128.yaml says ../datasets/coco128: datasets/ beside the yolov5 clone
    yaml = tmp_path / "yolov5" / "data" / "coco128.yaml"
    yaml.parent.mkdir(parents=True)
    yaml.write_text(YOLOV5_YAML)
    root = dataset(tmp_path / "datasets" / "coco128")
    monkeypatch.chdir(tmp_path / "yolov5")
    cfg = load_dataset_config(yaml)
    assert cfg.root.resolve() == root.resolve()
    hows = [how for _, how in cfg.root_tried]
    assert hows == ["relative to the YAML file's folder", "relative to the current directory"]
    assert len(read_records(cfg, "train")) == 2


def test_ultralytics_datasets_dir_setting_is_the_last_reading(tmp_path, monkeypatch):
    settings = tmp_path / "ucfg"
    settings.mkdir()
    (settings / "settings.json").write_text(json.dumps({"datasets_dir": str(tmp_path / "dsets"), "sync": False}))
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(settings))
    assert ultralytics_datasets_dir() == tmp_path / "dsets"
    root = dataset(tmp_path / "dsets" / "coco8")
    yaml = tmp_path / "proj" / "coco8.yaml"
    yaml.parent.mkdir()
    yaml.write_text(YOLOV5_YAML.replace("../datasets/coco128", "coco8"))
    monkeypatch.chdir(tmp_path / "proj")
    cfg = load_dataset_config(yaml)
    assert cfg.root == root
    assert cfg.root_tried[-1] == (root, "relative to ultralytics' datasets_dir setting")


def test_older_ultralytics_settings_yaml_is_read_too(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path))
    (tmp_path / "settings.yaml").write_text(f"datasets_dir: {tmp_path / 'old'}\nsync: false\n")
    assert ultralytics_datasets_dir() == tmp_path / "old"
    (tmp_path / "settings.yaml").write_text("[not, a, mapping")
    assert ultralytics_datasets_dir() is None


def test_when_both_readings_exist_the_yaml_folder_wins(tmp_path, monkeypatch):
    yaml = tmp_path / "cfg" / "d.yaml"
    yaml.parent.mkdir()
    yaml.write_text(YOLOV5_YAML.replace("../datasets/coco128", "sets/a"))
    near = dataset(tmp_path / "cfg" / "sets" / "a")
    dataset(tmp_path / "run" / "sets" / "a", n=3)
    monkeypatch.chdir(tmp_path / "run")
    cfg = load_dataset_config(yaml)
    assert cfg.root.resolve() == near.resolve()
    assert [p.exists() for p, _ in cfg.root_tried] == [True, True]  # `mlca check` shows both
    assert len(read_records(cfg, "train")) == 2


def test_when_no_reading_exists_the_error_lists_every_path_tried(tmp_path, monkeypatch):
    settings = tmp_path / "ucfg"
    settings.mkdir()
    (settings / "settings.json").write_text(json.dumps({"datasets_dir": str(tmp_path / "u" / "dsets")}))
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(settings))
    yaml = tmp_path / "yolov5" / "data" / "coco128.yaml"
    yaml.parent.mkdir(parents=True)
    yaml.write_text(YOLOV5_YAML)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_dataset_config(yaml)  # loading needs no data (names come from the YAML)
    with pytest.raises(DataError, match="dataset root not found") as e:
        read_records(cfg, "train")
    msg = str(e.value)
    assert e.value.file == yaml
    for where, how in [
        (tmp_path / "yolov5" / "data" / "../datasets/coco128", "the YAML file's folder"),
        (tmp_path / "elsewhere" / "../datasets/coco128", "the current directory"),
        (tmp_path / "u" / "dsets" / "../datasets/coco128", "ultralytics' datasets_dir setting"),
    ]:
        assert f"{where} (relative to {how})" in msg


def test_resolve_root_rules(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert resolve_root(None, a, cwd=b) == (a, ())  # absent: the YAML's folder
    assert resolve_root("", None, cwd=b) == (b, ())  # absent in a shipped config: the cwd
    assert resolve_root(str(tmp_path / "x"), a, cwd=b) == (tmp_path / "x", ())  # absolute, even if missing
    monkeypatch.setenv("MLCA_TEST_DATA", str(tmp_path))
    assert resolve_root("$MLCA_TEST_DATA/x", a, cwd=b)[0] == tmp_path / "x"
    root, tried = resolve_root("../a", a, cwd=a)  # the same folder read twice is tried once
    assert root == a / "../a" and tried == ((a / "../a", "relative to the YAML file's folder"),)
    root, tried = resolve_root("only-in-b", a, cwd=b, datasets_dir=tmp_path)
    assert root == a / "only-in-b" and len(tried) == 3  # none exists: the first reading


def test_old_style_parent_split_entry_is_read_without_its_dotdot(tmp_path):
    root = dataset(tmp_path / "ds")
    (root / "data.yaml").write_text("train: ../images/train2017\nval: images/train2017\nnames: [person]\n")
    assert len(read_records(root / "data.yaml", "train")) == 2


def test_coco_names_from_a_missing_root_say_where_they_were_looked_for(tmp_path, monkeypatch):
    yaml = tmp_path / "cfg" / "c.yaml"
    yaml.parent.mkdir()
    yaml.write_text("format: coco\npath: ../coco\ntrain: annotations/instances_train2017.json\nval: x.json\n")
    monkeypatch.chdir(tmp_path / "cfg")
    with pytest.raises(DataError, match="dataset root not found; tried") as e:
        load_dataset_config(yaml)  # no names in the YAML: they must come from the (missing) data
    assert str(tmp_path / "cfg" / "../coco") in str(e.value) and e.value.file == yaml
