"""Dataset config YAML: YOLOv5 data YAMLs as-is, formats, names, and located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlca.data.config import VOC_NAMES, DatasetConfig, load_dataset_config
from mlca.data.errors import DataError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_yolov5_data_yaml_loads_as_is(tmp_path):
    # the shape of ultralytics' coco128.yaml: path relative, names as a dict, extra keys
    text = (
        "path: ../datasets/coco128\ntrain: images/train2017\nval: images/train2017\ntest:\n"
        "names:\n  0: person\n  1: bicycle\ndownload: https://x/y.zip\n"
    )
    y = write(tmp_path / "coco128.yaml", text)
    cfg = load_dataset_config(y)
    assert cfg.format == "yolo" and cfg.name == "coco128"
    assert cfg.names == ["person", "bicycle"] and cfg.nc == 2
    assert cfg.root == (tmp_path / "../datasets/coco128")  # relative to the YAML file
    assert cfg.train == "images/train2017" and cfg.test is None
    with pytest.raises(DataError, match="no 'test' split"):
        cfg.split("test")


def test_absolute_path_names_list_and_options(tmp_path):
    y = write(tmp_path / "d.yaml", f"name: mine\nformat: VOC\npath: {tmp_path}/x\ntrain: a\nval: b\n"
              "keep_difficult: true\nnames: [a, b]\nnc: 2\n")  # fmt: skip
    cfg = load_dataset_config(y)
    assert (cfg.name, cfg.format, cfg.root, cfg.names) == ("mine", "voc", tmp_path / "x", ["a", "b"])
    assert cfg.options == {"keep_difficult": True} and cfg.source == y
    assert load_dataset_config(cfg) is cfg


def test_voc_defaults_to_the_20_voc_classes_and_shipped_config_by_name(tmp_path, monkeypatch):
    cfg = load_dataset_config(write(tmp_path / "v.yaml", "format: voc\ntrain: a\nval: b\n"))
    assert cfg.names == VOC_NAMES and len(VOC_NAMES) == 20
    monkeypatch.chdir(tmp_path)
    shipped = load_dataset_config("voc")
    assert shipped.format == "voc" and shipped.names == VOC_NAMES
    assert shipped.root == tmp_path / "VOCdevkit"  # shipped configs resolve against the cwd
    assert shipped.train == ["VOC2007/trainval", "VOC2012/trainval"] and shipped.val == "VOC2007/test"


@pytest.mark.parametrize(
    "text, match, line",
    [
        ("train: a\nval: b\nnames: [a, b\n", "invalid YAML", 4),
        ("train: a\nval: b\nnames:\n  - a\n - b\n", "invalid YAML", 5),
        ("- a\n- b\n", "must be a mapping", None),
        ("val: b\nnames: [a]\n", "missing 'train'", None),
        ("train: a\nnames: [a]\n", "missing 'val'", None),
        ("train: a\nval: b\n", "missing 'names'", None),
        ("format: tfrecord\ntrain: a\nval: b\nnames: [a]\n", "unknown dataset format 'tfrecord'", None),
        ("train: a\nval: b\nnames: [a, a]\n", "duplicate class names", None),
        ("train: a\nval: b\nnames: {0: a, 2: b}\n", "dict keys must be 0..1", None),
        ("train: a\nval: b\nnames: [a, b]\nnc: 3\n", "'nc' is 3", None),
        ("train: a\nval: b\nnames: []\n", "'names' is empty", None),
    ],
)
def test_bad_config_names_the_file(tmp_path, text, match, line):
    y = write(tmp_path / "bad.yaml", text)
    with pytest.raises(DataError, match=match) as e:
        load_dataset_config(y)
    assert e.value.file == y and e.value.line == line


def test_missing_config_says_what_it_expected(tmp_path):
    with pytest.raises(DataError, match="dataset config not found") as e:
        load_dataset_config(tmp_path / "nope.yaml")
    assert e.value.file == tmp_path / "nope.yaml"


def test_dataclass_rejects_unknown_format_and_bad_split_names():
    with pytest.raises(DataError, match="unknown dataset format"):
        DatasetConfig("x", "csv", Path("."), "a", "b", ["a"])
    cfg = DatasetConfig("x", "yolo", Path("."), "a", "b", ["a"])
    with pytest.raises(ValueError, match="split must be"):
        cfg.split("training")
