"""COCO-style mAP (101-point interpolation) of detections, through faster-coco-eval.

The ground truth and the detections are plain per-image arrays in original-image pixels;
this module turns them into COCO dictionaries and reads mAP@0.5, mAP@0.5:0.95 and the
per-class AP out of COCOeval's precision array.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class ImageGT:
    """Ground truth of one image: ``boxes`` (n, 4) xyxy pixels, ``labels`` (n,) int, size."""

    boxes: np.ndarray
    labels: np.ndarray
    width: int
    height: int


@dataclass
class ImageDets:
    """Detections of one image: ``boxes`` (m, 4) xyxy pixels, ``scores`` (m,), ``labels`` (m,) int."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass
class MapResult:
    """mAP@0.5, mAP@0.5:0.95 and per-class ``{name: {ap50, ap, n_gt}}`` (AP is NaN without GT)."""

    map50: float
    map: float
    per_class: dict[str, dict[str, float]]
    n_gt: int


def coco_gt_dict(gts: Sequence[ImageGT], num_classes: int) -> dict:
    """COCO ground-truth dict: image ids 1..n, category ids ``label + 1``, ``area`` = box area."""
    images, anns = [], []
    for img_id, gt in enumerate(gts, start=1):
        images.append({"id": img_id, "width": int(gt.width), "height": int(gt.height)})
        for box, label in zip(np.asarray(gt.boxes, np.float64).reshape(-1, 4), np.asarray(gt.labels).reshape(-1)):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            anns.append({
                "id": len(anns) + 1,
                "image_id": img_id,
                "category_id": int(label) + 1,
                "bbox": [float(box[0]), float(box[1]), w, h],
                "area": w * h,
                "iscrowd": 0,
            })
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]
    return {"images": images, "annotations": anns, "categories": categories}


def coco_det_list(dets: Sequence[ImageDets]) -> list[dict]:
    """COCO results list for image ids 1..n (the order of ``dets``)."""
    out = []
    for img_id, d in enumerate(dets, start=1):
        boxes = np.asarray(d.boxes, np.float64).reshape(-1, 4)
        for box, score, label in zip(boxes, np.asarray(d.scores).reshape(-1), np.asarray(d.labels).reshape(-1)):
            out.append({
                "image_id": img_id,
                "category_id": int(label) + 1,
                "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                "score": float(score),
            })
    return out


def coco_map(
    gts: Sequence[ImageGT],
    dets: Sequence[ImageDets],
    names: Sequence[str],
    max_dets: int = 100,
) -> MapResult:
    """COCO bbox mAP of ``dets`` against ``gts`` (same image order), 101-point interpolation.

    ``max_dets`` is COCO's per-image detection limit (100 in the COCO protocol). mAP is the
    mean over classes that have ground truth; a class without ground truth gets AP NaN and
    does not count. No ground truth at all gives mAP 0.
    """
    if len(gts) != len(dets):
        raise ValueError(f"{len(gts)} ground-truth images but {len(dets)} detection images")
    from faster_coco_eval import COCO, COCOeval_faster

    nc = len(names)
    for i, g in enumerate(gts):
        labels = np.asarray(g.labels).reshape(-1)
        if labels.size and (labels.min() < 0 or labels.max() >= nc):
            raise ValueError(f"ground-truth image {i} has a label outside [0, {nc}): {labels.tolist()}")
    n_gt_per_class = np.bincount(
        np.concatenate([np.asarray(g.labels, np.int64).reshape(-1) for g in gts] or [np.zeros(0, np.int64)]),
        minlength=nc,
    )
    per_class = {name: {"ap50": math.nan, "ap": math.nan, "n_gt": int(n)} for name, n in zip(names, n_gt_per_class)}
    if n_gt_per_class.sum() == 0:
        return MapResult(0.0, 0.0, per_class, 0)

    # COCOeval prints its progress and summary tables; the caller reports the numbers instead
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(coco_gt_dict(gts, nc))
        coco_dt = coco_gt.loadRes(coco_det_list(dets))
        ev = COCOeval_faster(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [1, 10, int(max_dets)]
        ev.evaluate()
        ev.accumulate()
    # precision: (T iou thresholds, R=101 recall points, K classes, A area ranges, M max-dets);
    # -1 marks classes without ground truth
    precision = np.asarray(ev.eval["precision"])[:, :, :, 0, -1]
    cat_ids = list(ev.params.catIds)

    def mean_valid(p: np.ndarray) -> float:
        valid = p[p > -1]
        return float(valid.mean()) if valid.size else math.nan

    for c, name in enumerate(names):
        k = cat_ids.index(c + 1)
        if n_gt_per_class[c]:
            per_class[name]["ap50"] = mean_valid(precision[0, :, k])
            per_class[name]["ap"] = mean_valid(precision[:, :, k])
    map50, map_ = mean_valid(precision[0]), mean_valid(precision)
    return MapResult(0.0 if math.isnan(map50) else map50, 0.0 if math.isnan(map_) else map_, per_class, int(n_gt_per_class.sum()))


__all__ = ["ImageDets", "ImageGT", "MapResult", "coco_det_list", "coco_gt_dict", "coco_map"]
