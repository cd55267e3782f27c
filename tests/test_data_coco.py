"""COCO JSON reader: category mapping, crowd boxes, bad annotations located in the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlca.data.coco import coco_category_ids
from mlca.data.config import load_dataset_config
from mlca.data.errors import DataError
from mlca.data.records import read_records, scan_records


def write_png(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def coco_set(root: Path, annotations: list[dict], categories=None, names: str = "") -> Path:
    write_png(root / "train2017" / "a.png", 100, 50)
    write_png(root / "train2017" / "b.png", 40, 40)
    data = {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 100, "height": 50},
            {"id": 3, "file_name": "b.png", "width": 40, "height": 40},
        ],
        "annotations": annotations,
        # deliberately not sorted by id, with gaps, as in COCO (ids 1..90 for 80 classes)
        "categories": categories or [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
    }
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data, indent=1))
    yaml = root / "coco.yaml"
    yaml.write_text(
        f"format: coco\npath: .\ntrain: annotations/instances_train2017.json\n"
        f"val: {{annotations: annotations/instances_train2017.json, images: train2017}}\n{names}"
    )
    return yaml


def ann(i, image_id, cat, bbox, **kw):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, **kw}


def test_category_ids_map_to_sorted_contiguous_indices(tmp_path):
    yaml = coco_set(tmp_path, [ann(1, 7, 18, [10, 5, 20, 10]), ann(2, 7, 1, [0, 0, 100, 50]),
                               ann(3, 3, 3, [1.5, 2.5, 3, 4]), ann(4, 3, 1, [0, 0, 5, 5], iscrowd=1)])  # fmt: skip
    cfg = load_dataset_config(yaml)
    assert cfg.names == ["person", "car", "dog"]  # by increasing category id 1, 3, 18
    for split in ("train", "val"):
        a, b = read_records(cfg, split)
        assert (a.image.name, b.image.name) == ("a.png", "b.png")
        np.testing.assert_allclose(a.boxes, [[10, 5, 30, 15], [0, 0, 100, 50]])
        assert a.labels.tolist() == [2, 0]
        # the crowd box stays, marked ignore (left out of training, ignored at evaluation)
        np.testing.assert_allclose(b.boxes, [[1.5, 2.5, 4.5, 6.5], [0, 0, 5, 5]])
        assert b.labels.tolist() == [1, 0] and b.ignore.tolist() == [False, True]
        assert not a.ignore.any() and (a.image_id, b.image_id) == (7, 3)
        assert b.train_objects[1].tolist() == [1]
    assert coco_category_ids(cfg, "val") == [1, 3, 18]


def test_annotation_area_is_kept_for_the_area_ranges(tmp_path):
    yaml = coco_set(tmp_path, [ann(1, 7, 18, [10, 5, 20, 10], area=123.5), ann(2, 7, 1, [0, 0, 10, 10])])
    a, b = read_records(load_dataset_config(yaml), "train")
    np.testing.assert_array_equal(a.area, [123.5, np.nan])
    assert len(b.area) == 0
    coco_set(tmp_path, [ann(1, 7, 18, [10, 5, 20, 10], area="big")])
    with pytest.raises(DataError, match="area must be a number") as e:
        read_records(load_dataset_config(yaml), "train")
    assert e.value.where == "annotations[0] (id 1)"


def test_category_ids_of_names_missing_from_the_file_are_an_error(tmp_path):
    yaml = coco_set(tmp_path, [], names="names: [person, car, dog, unicorn]\n")
    with pytest.raises(DataError, match="unicorn"):
        coco_category_ids(load_dataset_config(yaml), "train")


def test_config_names_select_categories_by_name(tmp_path):
    yaml = coco_set(tmp_path, [ann(1, 7, 18, [10, 5, 20, 10])], names="names: [dog, person, car]\n")
    (a, _) = read_records(load_dataset_config(yaml), "train")
    assert a.labels.tolist() == [0]


@pytest.mark.parametrize(
    "bad, reason",
    [
        (ann(9, 3, 18, [10, 10, 5, 5]), "not in the config"),
        (ann(9, 3, 99, [10, 10, 5, 5]), "category 99 not in the config"),
        (ann(9, 3, 1, [10, 10, "w", 5]), "bbox must be 4 numbers"),
        (ann(9, 3, 1, [10, 10, 5]), "bbox must be 4 numbers"),
    ],
)
def test_bad_annotation_names_file_and_index(tmp_path, bad, reason):
    names = "names: [person, car]\n" if reason == "not in the config" else ""
    yaml = coco_set(tmp_path, [ann(1, 7, 1, [0, 0, 10, 10]), bad], names=names)
    cfg = load_dataset_config(yaml)
    with pytest.raises(DataError) as e:
        read_records(cfg, "train")
    assert e.value.file == tmp_path / "annotations" / "instances_train2017.json"
    assert e.value.where == "annotations[1] (id 9)" and reason in str(e.value)
    report = scan_records(cfg, "train", skip_bad=True)
    assert [r.image.name for r in report.records] == ["a.png"] and len(report.bad) == 1


def test_clipping_unknown_image_malformed_json_and_missing_image(tmp_path):
    yaml = coco_set(tmp_path, [ann(1, 7, 1, [90, 40, 20, 20])])
    assert scan_records(load_dataset_config(yaml), "train").clipped == 1

    coco_set(tmp_path, [ann(1, 8, 1, [0, 0, 1, 1])])
    with pytest.raises(DataError, match="refers to no image"):
        read_records(load_dataset_config(yaml), "train")

    (tmp_path / "train2017" / "b.png").unlink()
    coco_set(tmp_path, [])
    (tmp_path / "train2017" / "b.png").unlink()
    with pytest.raises(DataError, match="image file not found") as e:
        read_records(load_dataset_config(yaml), "train")
    assert e.value.file.name == "b.png"

    js = tmp_path / "annotations" / "instances_train2017.json"
    js.write_text('{"images": [],\n "annotations": [}\n')
    with pytest.raises(DataError, match="malformed JSON") as e:
        load_dataset_config(yaml)
    assert e.value.file == js and e.value.line == 2
