"""COCO-style mAP (101-point interpolation) of detections, through faster-coco-eval.

The ground truth and the detections are plain per-image arrays in original-image pixels;
this module turns them into COCO dictionaries (with the dataset's own image and category ids
when it has them) and reads mAP@0.5, mAP@0.5:0.95, COCO's 12 summary numbers and the
per-class AP out of COCOeval.

Ignored ground truth (``ImageGT.ignore``: VOC ``difficult``, COCO ``iscrowd``) is passed to
COCOeval as ``iscrowd=1``, the only ignore state COCOeval has. COCOeval matches a detection
to a crowd box by intersection over the *detection's* area, lets any number of detections
match it, and drops those detections from the count: neither a hit nor a false positive,
and an unmatched crowd box is no miss. For COCO data this is the official protocol. For VOC
``difficult`` boxes it is what pycocotools gives on a COCO JSON that marks them
``iscrowd=1`` (the ground-truth file ``mlca val --save-json`` writes); it is a little more
lenient than the VOC devkit's own rule (plain IoU >= 0.5 with the difficult box), which
:mod:`mlca.engine.voc_ap` implements for ``--metric voc07|voc12``.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# the names of COCOeval's 12 summary numbers, in the order of ``COCOeval.stats``
COCO_STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip


@dataclass
class ImageGT:
    """Ground truth of one image.

    ``boxes`` (n, 4) xyxy pixels, ``labels`` (n,) int, the image size; ``ignore`` (n,) bool marks
    objects that evaluation ignores (default none); ``area`` (n,) the annotation's own area for
    COCO's area ranges (NaN or absent: the box area).
    """

    boxes: np.ndarray
    labels: np.ndarray
    width: int
    height: int
    ignore: np.ndarray | None = None
    area: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        n = len(self.boxes)
        self.ignore = np.zeros(n, bool) if self.ignore is None else np.asarray(self.ignore, bool).reshape(-1)
        self.area = np.full(n, np.nan) if self.area is None else np.asarray(self.area, np.float64).reshape(-1)
        if not len(self.labels) == len(self.ignore) == len(self.area) == n:
            raise ValueError(f"ImageGT: {n} boxes but {len(self.labels)} labels, {len(self.ignore)} ignore "
                             f"flags and {len(self.area)} areas")  # fmt: skip


@dataclass
class ImageDets:
    """Detections of one image: ``boxes`` (m, 4) xyxy pixels, ``scores`` (m,), ``labels`` (m,) int."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass
class MapResult:
    """What an evaluation protocol measured.

    ``map50`` and ``map`` (mAP@0.5 and @0.5:0.95; ``map`` is NaN for the VOC protocols, which
    have one IoU threshold), per-class ``{name: {ap50, ap, n_gt}}`` (AP NaN without ground
    truth), ``n_gt`` (non-ignored ground-truth boxes), ``stats`` (COCO's 12 summary numbers,
    see :data:`COCO_STAT_NAMES`; -1 where COCOeval has nothing to average; empty for VOC).
    """

    map50: float
    map: float
    per_class: dict[str, dict[str, float]]
    n_gt: int
    stats: list[float] = field(default_factory=list)


def _ids(n: int, ids: Sequence[Any] | None, what: str) -> list[Any]:
    if ids is None:
        return list(range(1, n + 1))
    ids = [i.item() if isinstance(i, np.generic) else i for i in ids]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} {what} ids for {n} {what}s")
    if len(set(ids)) != n:
        raise ValueError(f"{what} ids are not unique")
    return ids


def coco_gt_dict(
    gts: Sequence[ImageGT],
    names: int | Sequence[str],
    image_ids: Sequence[Any] | None = None,
    category_ids: Sequence[int] | None = None,
    file_names: Sequence[str] | None = None,
) -> dict:
    """COCO ground-truth dict of ``gts``.

    Args:
        names: the class names (or their number; names are then ``"0"``, ``"1"``, ...).
        image_ids: one id per image (default 1..n); ``category_ids``: one per class (default
            ``label + 1``); ``file_names``: written into ``images`` when given.

    Ignored objects get ``iscrowd: 1``; ``area`` is the given area, else the box area.
    """
    names = [str(c) for c in range(names)] if isinstance(names, int) else [str(n) for n in names]
    image_ids = _ids(len(gts), image_ids, "image")
    cat_ids = _ids(len(names), category_ids, "category")
    images, anns = [], []
    for k, (img_id, gt) in enumerate(zip(image_ids, gts)):
        entry = {"id": img_id, "width": int(gt.width), "height": int(gt.height)}
        if file_names is not None:
            entry["file_name"] = str(file_names[k])
        images.append(entry)
        for box, label, ign, area in zip(gt.boxes, gt.labels, gt.ignore, gt.area):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            anns.append({
                "id": len(anns) + 1,  # COCOeval reads id 0 as "unmatched": ids start at 1
                "image_id": img_id,
                "category_id": cat_ids[int(label)],
                "bbox": [float(box[0]), float(box[1]), w, h],
                "area": w * h if math.isnan(area) else float(area),
                "iscrowd": int(bool(ign)),
            })
    categories = [{"id": c, "name": n} for c, n in zip(cat_ids, names)]
    return {"images": images, "annotations": anns, "categories": categories}


def coco_det_list(
    dets: Sequence[ImageDets],
    image_ids: Sequence[Any] | None = None,
    category_ids: Sequence[int] | None = None,
) -> list[dict]:
    """COCO results list ``[{image_id, category_id, bbox [x, y, w, h], score}]`` of ``dets``.

    ``image_ids``: one per image of ``dets`` (default 1..n, their order); ``category_ids``:
    one per class index (default ``label + 1``).
    """
    image_ids = _ids(len(dets), image_ids, "image")
    out = []
    # whole arrays to Python floats at once: validation at conf 0.001 lists ~10^5 boxes per epoch
    for img_id, d in zip(image_ids, dets):
        boxes = np.asarray(d.boxes, np.float64).reshape(-1, 4)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
        labels = np.asarray(d.labels).reshape(-1).astype(np.int64).tolist()
        cats = [c + 1 for c in labels] if category_ids is None else [int(category_ids[c]) for c in labels]
        scores = np.asarray(d.scores, np.float64).reshape(-1).tolist()
        out += [{"image_id": img_id, "category_id": c, "bbox": b, "score": sc} for b, sc, c in zip(xywh, scores, cats)]
    return out


def check_inputs(gts: Sequence[ImageGT], dets: Sequence[ImageDets], nc: int) -> np.ndarray:
    """Validate labels; return the number of non-ignored ground-truth boxes per class, ``(nc,)``."""
    if len(gts) != len(dets):
        raise ValueError(f"{len(gts)} ground-truth images but {len(dets)} detection images")
    counts = np.zeros(nc, np.int64)
    for i, (g, d) in enumerate(zip(gts, dets)):
        for what, labels in (("ground-truth", g.labels), ("detection", np.asarray(d.labels).reshape(-1))):
            if labels.size and (labels.min() < 0 or labels.max() >= nc):
                raise ValueError(f"{what} image {i} has a label outside [0, {nc}): {labels.tolist()}")
        counts += np.bincount(g.labels[~g.ignore], minlength=nc)
    return counts


def coco_map(
    gts: Sequence[ImageGT],
    dets: Sequence[ImageDets],
    names: Sequence[str],
    max_dets: int = 100,
    image_ids: Sequence[Any] | None = None,
    category_ids: Sequence[int] | None = None,
) -> MapResult:
    """COCO bbox mAP of ``dets`` against ``gts`` (same image order), 101-point interpolation.

    ``max_dets`` is COCO's per-image detection limit (100 in the COCO protocol). mAP is the
    mean over classes that have (non-ignored) ground truth; a class without gets AP NaN and
    does not count. No ground truth at all gives mAP 0. ``image_ids`` / ``category_ids``
    (the dataset's own, see :func:`coco_gt_dict`) do not change the numbers.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    nc = len(names)
    n_gt_per_class = check_inputs(gts, dets, nc)
    per_class = {name: {"ap50": math.nan, "ap": math.nan, "n_gt": int(n)} for name, n in zip(names, n_gt_per_class)}
    if n_gt_per_class.sum() == 0:
        return MapResult(0.0, 0.0, per_class, 0, [-1.0] * 12)

    cat_ids = _ids(nc, category_ids, "category")
    # COCOeval prints its progress and summary tables; the caller reports the numbers instead
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(coco_gt_dict(gts, names, image_ids, cat_ids))
        coco_dt = coco_gt.loadRes(coco_det_list(dets, image_ids, cat_ids))
        ev = COCOeval_faster(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [1, 10, int(max_dets)]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # precision: (T iou thresholds, R=101 recall points, K classes, A area ranges, M max-dets);
    # -1 marks classes without ground truth
    precision = np.asarray(ev.eval["precision"])[:, :, :, 0, -1]
    ev_cats = list(ev.params.catIds)

    def mean_valid(p: np.ndarray) -> float:
        valid = p[p > -1]
        return float(valid.mean()) if valid.size else math.nan

    for c, name in enumerate(names):
        k = ev_cats.index(cat_ids[c])
        if n_gt_per_class[c]:
            per_class[name]["ap50"] = mean_valid(precision[0, :, k])
            per_class[name]["ap"] = mean_valid(precision[:, :, k])
    map50, map_ = mean_valid(precision[0]), mean_valid(precision)
    return MapResult(
        0.0 if math.isnan(map50) else map50, 0.0 if math.isnan(map_) else map_, per_class,
        int(n_gt_per_class.sum()), [float(x) for x in np.asarray(ev.stats)[:12]],
    )  # fmt: skip


__all__ = ["COCO_STAT_NAMES", "ImageDets", "ImageGT", "MapResult", "check_inputs", "coco_det_list", "coco_gt_dict",
           "coco_map"]  # fmt: skip
