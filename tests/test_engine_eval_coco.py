"""COCO evaluation against pycocotools on files written by hand, and `mlca val --save-json` results
that pycocotools loads.

The ground truth and the results are JSON files typed in here (not made by mlca): image ids that
do not start at 1, category ids with gaps (COCO's 1..90 for 80 classes), a crowd region, an
annotation whose ``area`` (a segmentation's) differs from its box, an image without objects, a
category without ground truth. pycocotools' own COCOeval reads the files; mlca reads the same
ground truth through its COCO reader and must give the same 12 numbers.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlca.data.coco import coco_category_ids
from mlca.data.config import load_dataset_config
from mlca.data.records import read_records
from mlca.engine.metrics import ImageDets, ImageGT, coco_map

GT = {
    "images": [
        {"id": 101, "file_name": "p101.png", "width": 640, "height": 480},
        {"id": 205, "file_name": "p205.png", "width": 500, "height": 375},
        {"id": 333, "file_name": "p333.png", "width": 300, "height": 200},
        {"id": 999, "file_name": "p999.png", "width": 200, "height": 200},  # no objects
    ],
    "annotations": [
        {"id": 5001, "image_id": 101, "category_id": 1, "bbox": [10.5, 20.25, 100.0, 200.0], "area": 15000.5, "iscrowd": 0},
        # box 40 x 30 = 1200 px (COCO "medium"), but its mask covers 900 px ("small")
        {"id": 5002, "image_id": 101, "category_id": 3, "bbox": [300.0, 300.0, 40.0, 30.0], "area": 900.0, "iscrowd": 0},
        {"id": 5003, "image_id": 101, "category_id": 18, "bbox": [400.0, 50.0, 150.0, 120.0], "area": 14000.0, "iscrowd": 0},
        {"id": 7, "image_id": 205, "category_id": 1, "bbox": [50.0, 50.0, 60.0, 120.0], "area": 5000.0, "iscrowd": 0},
        {"id": 8, "image_id": 205, "category_id": 1, "bbox": [200.0, 100.0, 250.0, 200.0], "area": 30000.0, "iscrowd": 1},
        {"id": 9, "image_id": 205, "category_id": 3, "bbox": [20.0, 250.0, 20.0, 20.0], "area": 400.0, "iscrowd": 0},
        {"id": 10, "image_id": 333, "category_id": 18, "bbox": [10.0, 10.0, 280.0, 180.0], "area": 40000.0, "iscrowd": 0},
        {"id": 11, "image_id": 333, "category_id": 3, "bbox": [150.33, 20.67, 30.25, 25.5], "area": 700.0, "iscrowd": 0},
    ],
    "categories": [
        {"id": 18, "name": "dog", "supercategory": "animal"},
        {"id": 1, "name": "person", "supercategory": "person"},
        {"id": 3, "name": "car", "supercategory": "vehicle"},
        {"id": 90, "name": "toothbrush", "supercategory": "indoor"},  # no ground truth
    ],
}  # fmt: skip

RESULTS = [
    {"image_id": 101, "category_id": 1, "bbox": [12.0, 22.0, 98.0, 195.0], "score": 0.95},
    {"image_id": 101, "category_id": 1, "bbox": [15.0, 30.0, 90.0, 150.0], "score": 0.60},  # duplicate
    {"image_id": 101, "category_id": 3, "bbox": [302.0, 301.0, 38.0, 29.0], "score": 0.80},
    {"image_id": 101, "category_id": 18, "bbox": [410.0, 60.0, 100.0, 100.0], "score": 0.70},  # IoU 0.56
    {"image_id": 101, "category_id": 18, "bbox": [420.0, 70.0, 20.0, 20.0], "score": 0.30},
    {"image_id": 205, "category_id": 1, "bbox": [52.0, 55.0, 55.0, 110.0], "score": 0.90},
    {"image_id": 205, "category_id": 1, "bbox": [210.0, 110.0, 50.0, 60.0], "score": 0.97},  # in the crowd, ranked first
    {"image_id": 205, "category_id": 1, "bbox": [300.0, 150.0, 100.0, 100.0], "score": 0.40},  # in the crowd
    {"image_id": 205, "category_id": 3, "bbox": [21.0, 251.0, 19.0, 18.0], "score": 0.50},
    {"image_id": 205, "category_id": 3, "bbox": [100.0, 300.0, 30.0, 30.0], "score": 0.65},
    {"image_id": 333, "category_id": 18, "bbox": [12.0, 12.0, 270.0, 175.0], "score": 0.88},
    {"image_id": 333, "category_id": 3, "bbox": [149.1, 21.2, 31.0, 24.3], "score": 0.45},
    {"image_id": 333, "category_id": 90, "bbox": [50.0, 50.0, 10.0, 10.0], "score": 0.90},
    {"image_id": 999, "category_id": 1, "bbox": [10.0, 10.0, 50.0, 50.0], "score": 0.70},
    {"image_id": 999, "category_id": 3, "bbox": [100.0, 100.0, 20.0, 20.0], "score": 0.20},
]  # fmt: skip


def write_set(root: Path, gt: dict) -> Path:
    """The images (blank PNGs of the right sizes), the annotation file and a dataset YAML."""
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    for im in gt["images"]:
        path = root / "val2017" / im["file_name"]
        if not path.exists():
            Image.fromarray(np.zeros((im["height"], im["width"], 3), np.uint8)).save(path)
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(gt))
    yaml = root / "coco.yaml"
    yaml.write_text("format: coco\npath: .\ntrain: annotations/instances_val2017.json\n"
                    "val: {annotations: annotations/instances_val2017.json, images: val2017}\n")  # fmt: skip
    return yaml


def pycocotools_stats(gt_file: Path, results_file: Path) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(str(results_file)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def mlca_stats(yaml: Path, results: list[dict]) -> np.ndarray:
    """mlca's numbers: ground truth through the COCO reader, the results file mapped to class indices."""
    cfg = load_dataset_config(yaml)
    records = read_records(cfg, "val")
    cat_ids = coco_category_ids(cfg, "val")
    per_image = defaultdict(list)
    for r in results:
        per_image[r["image_id"]].append(r)
    gts, dets = [], []
    for rec in records:
        gts.append(ImageGT(rec.boxes, rec.labels, rec.width, rec.height, rec.ignore, rec.area))
        rs = per_image[rec.image_id]
        xywh = np.array([r["bbox"] for r in rs], np.float64).reshape(-1, 4)
        dets.append(ImageDets(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                              np.array([r["score"] for r in rs]),
                              np.array([cat_ids.index(r["category_id"]) for r in rs], np.int64)))  # fmt: skip
    res = coco_map(gts, dets, cfg.names, image_ids=[r.image_id for r in records], category_ids=cat_ids)
    return np.asarray(res.stats)


def variants() -> dict[str, dict]:
    """The hand-written set, and two changes that each move pycocotools' numbers."""
    no_crowd = copy.deepcopy(GT)
    no_crowd["annotations"] = [a for a in no_crowd["annotations"] if not a["iscrowd"]]
    box_area = copy.deepcopy(GT)
    for a in box_area["annotations"]:
        a["area"] = a["bbox"][2] * a["bbox"][3]
    return {"as written": GT, "crowd removed": no_crowd, "areas of the boxes": box_area}


def test_twelve_stats_equal_pycocotools_on_hand_written_files(tmp_path):
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(RESULTS))
    seen = {}
    for name, gt in variants().items():
        yaml = write_set(tmp_path, gt)
        want = pycocotools_stats(tmp_path / "annotations" / "instances_val2017.json", results_file)
        got = mlca_stats(yaml, RESULTS)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=name)
        seen[name] = want
    # the set is sensitive to what it tests: the crowd region and the annotation areas each change
    # pycocotools' numbers, so an mlca that dropped either would fail above
    assert not np.allclose(seen["as written"], seen["crowd removed"])
    assert not np.allclose(seen["as written"], seen["areas of the boxes"])
    assert 0 < seen["as written"][0] < seen["as written"][1] < 1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained 4-class MAY checkpoint (random detections are plenty for a results file)."""
    import torch

    from mlca.engine.checkpoint import save_checkpoint
    from mlca.models.may import build_may

    root = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    model = build_may(num_classes=4)
    weights = root / "w.pt"
    save_checkpoint(weights, {"model_config": dict(model.config), "model": model.state_dict(), "ema": None,
                              "names": ["person", "car", "dog", "toothbrush"], "train_config": {"img_size": 64}})
    return weights


def test_val_save_json_on_coco_data_is_a_results_file_of_the_original_ids(tmp_path, checkpoint, capsys):
    from pycocotools.coco import COCO

    from mlca.cli import main

    yaml = write_set(tmp_path, GT)
    out = tmp_path / "out" / "results.json"
    metrics = tmp_path / "out" / "metrics.json"
    code = main(["val", "--weights", str(checkpoint), "--data", str(yaml), "--device", "cpu", "--conf", "0.0001",
                 "--save-json", str(out), "--save-metrics", str(metrics)])
    assert code == 0
    text = capsys.readouterr().out
    assert "AP_small" in text and "mAP50-95" in text
    results = json.loads(out.read_text())
    assert isinstance(results, list) and results
    assert {r["image_id"] for r in results} <= {101, 205, 333, 999}
    assert {r["category_id"] for r in results} <= {1, 3, 18, 90}
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score"}
    assert not (tmp_path / "out" / "results_gt.json").exists()  # the COCO file itself is the ground truth
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "annotations" / "instances_val2017.json"))
        dt = gt.loadRes(str(out))
    assert len(dt.getAnnIds()) == len(results)
    # and mlca's stats equal pycocotools' on its own results file
    saved = json.loads(metrics.read_text())
    want = pycocotools_stats(tmp_path / "annotations" / "instances_val2017.json", out)
    np.testing.assert_allclose(list(saved["coco_stats"].values()), want, atol=1e-12)
    assert saved["metric"] == "coco" and saved["n_gt"] == 7  # the crowd region is not counted


def test_val_voc_metrics_and_save_json_with_ground_truth_for_voc_data(tmp_path, checkpoint, capsys):
    """VOC data: ``--metric voc07/voc12`` prints the devkit AP; ``--save-json`` writes results whose
    ground truth (real class names, difficult objects as crowd) is written beside them."""
    from pycocotools.coco import COCO

    from mlca.cli import main

    names = ["person", "car", "dog", "toothbrush"]
    d = tmp_path / "ann"
    d.mkdir()
    for k, (w, h) in enumerate([(80, 60), (50, 70)]):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(d / f"im{k}.jpg")
        (d / f"im{k}.xml").write_text(
            f"<annotation><filename>im{k}.jpg</filename><size><width>{w}</width><height>{h}</height></size>"
            "<object><name>dog</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>40</xmax>"
            "<ymax>40</ymax></bndbox></object><object><name>car</name><difficult>1</difficult><bndbox><xmin>20</xmin>"
            "<ymin>30</ymin><xmax>45</xmax><ymax>50</ymax></bndbox></object></annotation>"
        )
    yaml = tmp_path / "voc.yaml"
    yaml.write_text(f"format: voc\npath: .\ntrain: ann\nval: ann\nnames: {names}\n")
    for metric, title in (("voc07", "11-point"), ("voc12", "all-point")):
        out = tmp_path / f"{metric}.json"
        assert main(["val", "--weights", str(checkpoint), "--data", str(yaml), "--device", "cpu",
                     "--metric", metric, "--save-json", str(out)]) == 0  # fmt: skip
        text = capsys.readouterr().out
        assert title in text and "AP50-95" not in text and "mAP50 " in text
        gt_file = tmp_path / f"{metric}_gt.json"
        gt_json = json.loads(gt_file.read_text())
        assert [c["name"] for c in gt_json["categories"]] == names
        assert sorted(Path(im["file_name"]).name for im in gt_json["images"]) == ["im0.jpg", "im1.jpg"]
        assert sorted(a["iscrowd"] for a in gt_json["annotations"]) == [0, 0, 1, 1]
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(gt_file))
            gt.loadRes(str(out))
