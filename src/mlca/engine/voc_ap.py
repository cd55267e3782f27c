"""Pascal VOC devkit AP: the 11-point AP of VOC2007 and the all-point AP of VOC2010-2012.

Written from the devkit's definition (``VOCevaldet.m`` and ``VOCap.m``), per class:

1. The class's detections of all images are sorted by decreasing score (a stable sort, as
   MATLAB's ``sort``: equal scores keep their image order).
2. Each detection, in that order, is compared with every ground-truth box of its class in its
   image, difficult ones included, and takes the one of highest IoU (the first on a tie).
   IoU >= 0.5 with a *difficult* box: the detection is ignored (neither TP nor FP, and the box
   is never used up, so any number of detections may land on it). IoU >= 0.5 with a box not
   yet detected: a TP, and the box is used up. Otherwise (the best box already taken, or IoU
   below 0.5) an FP. A detection does not fall back to its second-best box.
3. recall = TP / npos (npos: the class's non-difficult boxes), precision = TP / (TP + FP),
   both cumulative along the sorted list.
4. VOC2007: AP = mean over t = 0, 0.1, ..., 1 of the highest precision at recall >= t (0 when
   recall never reaches t). The thresholds are exact tenths: ``recall >= k / 10`` is tested
   as ``10 * TP >= k * npos`` in integers, so a recall of exactly 0.3 reaches t = 0.3 (the
   common Python port's ``np.arange(0, 1.1, 0.1)`` makes that threshold 0.30000000000000004,
   and likewise 0.6 and 0.7, and misses it).
   VOC2010+: AP = area under the precision envelope (precision made non-increasing from the
   right) as a step function of recall, from recall 0 to 1.

Coordinates: the devkit's boxes are 1-based inclusive pixel indices and its areas and
intersections add 1 (``x2 - x1 + 1``). mlca's boxes are continuous, and the VOC reader maps
``[xmin, ymin, xmax, ymax]`` to ``[xmin - 1, ymin - 1, xmax, ymax]``, so ``x2 - x1`` here *is*
the devkit's ``xmax - xmin + 1``: plain continuous IoU on mlca's boxes equals the devkit's
+1 IoU on the XML's numbers. A detection in devkit format is ``[x1 + 1, y1 + 1, x2, y2]``.

Ignored ground truth from other formats (COCO ``iscrowd``) is treated as difficult here.
A class without non-difficult ground truth has AP NaN and does not enter the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from mlca.engine.metrics import ImageDets, ImageGT, MapResult, check_inputs

__all__ = ["voc_ap", "voc_class_pr", "voc_map"]


def voc_ap(tp: np.ndarray, fp: np.ndarray, npos: int, use_07_metric: bool) -> float:
    """AP of one class from per-detection TP/FP flags in score order.

    Args:
        tp, fp: ``(d,)`` 0/1 per detection, sorted by decreasing score (an ignored detection
            has both 0).
        npos: the class's non-difficult ground-truth boxes (> 0).
        use_07_metric: VOC2007's 11-point AP, else the all-point AP of VOC2010+.
    """
    if npos <= 0:
        raise ValueError(f"npos must be positive, got {npos}")
    tp = np.cumsum(np.asarray(tp, np.int64))
    fp = np.cumsum(np.asarray(fp, np.int64))
    recall = tp / npos
    # 0/0 (only ignored detections so far) gives precision 0; it sits at recall 0, where a
    # larger precision always follows or the AP is 0, so the envelope does not change
    precision = tp / np.maximum(tp + fp, 1)
    if use_07_metric:
        ap = 0.0
        for k in range(11):
            reached = 10 * tp >= k * npos
            ap += float(precision[reached].max()) if reached.any() else 0.0
        return ap / 11
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def voc_class_pr(
    gts: Sequence[ImageGT], dets: Sequence[ImageDets], cls: int, iou_thres: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The devkit's matching for one class: ``(scores, tp, fp, npos)``, detections in score order."""
    scores, image_of, row_of = [], [], []
    ious: list[np.ndarray] = []
    ignored: list[np.ndarray] = []
    npos = 0
    for i, (g, d) in enumerate(zip(gts, dets)):
        gmask = g.labels == cls
        gboxes, gign = g.boxes[gmask], g.ignore[gmask]
        npos += int((~gign).sum())
        dlabels = np.asarray(d.labels).reshape(-1)
        dmask = dlabels == cls
        dboxes = np.asarray(d.boxes, np.float64).reshape(-1, 4)[dmask]
        dscores = np.asarray(d.scores, np.float64).reshape(-1)[dmask]
        if len(dboxes) and len(gboxes):
            ious.append(box_iou(torch.from_numpy(dboxes), torch.from_numpy(gboxes)).numpy())
        else:
            ious.append(np.zeros((len(dboxes), len(gboxes))))
        ignored.append(gign)
        scores.append(dscores)
        image_of.append(np.full(len(dboxes), i))
        row_of.append(np.arange(len(dboxes)))
    scores_a = np.concatenate(scores) if scores else np.zeros(0)
    image_a = np.concatenate(image_of) if image_of else np.zeros(0, np.int64)
    row_a = np.concatenate(row_of) if row_of else np.zeros(0, np.int64)
    order = np.argsort(-scores_a, kind="stable")
    tp = np.zeros(len(order), np.int64)
    fp = np.zeros(len(order), np.int64)
    used = [np.zeros(iou.shape[1], bool) for iou in ious]
    for k, j in enumerate(order):
        img, row = image_a[j], row_a[j]
        iou = ious[img][row]
        if not iou.size:
            fp[k] = 1
            continue
        best = int(np.argmax(iou))  # the first box of highest IoU, as the devkit's strict ">"
        if iou[best] >= iou_thres:
            if ignored[img][best]:
                continue  # difficult: neither TP nor FP
            if not used[img][best]:
                tp[k] = 1
                used[img][best] = True
            else:
                fp[k] = 1
        else:
            fp[k] = 1
    return scores_a[order], tp, fp, npos


def voc_map(
    gts: Sequence[ImageGT],
    dets: Sequence[ImageDets],
    names: Sequence[str],
    use_07_metric: bool = True,
    iou_thres: float = 0.5,
) -> MapResult:
    """VOC devkit mAP@``iou_thres`` of ``dets`` against ``gts`` (same image order).

    ``use_07_metric``: the VOC2007 11-point AP (the number VOC2007-test papers report),
    else the all-point AP of VOC2010-2012. Returns a :class:`MapResult` with ``map50`` the
    mean AP over classes with ground truth and per class ``ap50`` (``map``/``ap``: NaN).
    """
    nc = len(names)
    n_gt = check_inputs(gts, dets, nc)
    per_class = {name: {"ap50": math.nan, "ap": math.nan, "n_gt": int(n)} for name, n in zip(names, n_gt)}
    aps = []
    for c, name in enumerate(names):
        if not n_gt[c]:
            continue
        _, tp, fp, npos = voc_class_pr(gts, dets, c, iou_thres)
        per_class[name]["ap50"] = voc_ap(tp, fp, npos, use_07_metric)
        aps.append(per_class[name]["ap50"])
    return MapResult(float(np.mean(aps)) if aps else 0.0, math.nan, per_class, int(n_gt.sum()))
