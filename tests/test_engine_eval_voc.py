"""VOC devkit AP (11-point VOC2007, all-point VOC2010+) against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlca.engine.metrics import ImageDets, ImageGT, coco_map
from mlca.engine.voc_ap import voc_ap, voc_class_pr, voc_map


def gt(boxes, labels=None, ignore=None, size=(100, 100)):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = np.zeros(len(boxes), int) if labels is None else labels
    return ImageGT(boxes, labels, *size, ignore=ignore)


def det(boxes, scores, labels=None):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return ImageDets(boxes, np.asarray(scores, float), np.zeros(len(boxes), int) if labels is None else labels)


def test_difficult_duplicate_and_miss_by_hand():
    # image 0: A, B, C to find (C is missed) and one difficult box D
    A, B, C, D = [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [70, 0, 90, 20]
    g = [gt([A, B, C, D], ignore=[False, False, False, True])]
    #           d1 on A  d2 on D   d3 again A   d4 on B   d5 on nothing
    d = [det([A, [71, 1, 90, 20], [0, 0, 10, 9], B, [30, 60, 40, 70]], [0.9, 0.8, 0.7, 0.6, 0.5])]
    scores, tp, fp, npos = voc_class_pr(g, d, 0)
    assert npos == 3 and scores.tolist() == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert tp.tolist() == [1, 0, 0, 1, 0] and fp.tolist() == [0, 0, 1, 0, 1]  # d2: neither
    # recall 1/3 1/3 1/3 2/3 2/3, precision 1 1 1/2 2/3 1/2
    # 11-point: t = 0, .1, .2, .3 -> 1; t = .4, .5, .6 -> 2/3; t >= .7 -> 0
    assert voc_ap(tp, fp, npos, True) == pytest.approx((4 * 1 + 3 * 2 / 3) / 11, abs=1e-12)
    # all-point: envelope 1 on (0, 1/3], 2/3 on (1/3, 2/3], 0 on (2/3, 1]
    assert voc_ap(tp, fp, npos, False) == pytest.approx(1 / 3 + 1 / 3 * 2 / 3, abs=1e-12)
    assert voc_map(g, d, ["x"], use_07_metric=True).map50 == pytest.approx(6 / 11, abs=1e-12)
    assert voc_map(g, d, ["x"], use_07_metric=False).map50 == pytest.approx(5 / 9, abs=1e-12)


def test_a_difficult_box_absorbs_any_number_of_detections_and_its_miss_is_free():
    D = [10, 10, 50, 50]
    g = [gt([[60, 60, 90, 90], D], ignore=[False, True])]
    d = [det([[60, 60, 90, 90], D, D, [12, 12, 50, 50]], [0.5, 0.9, 0.8, 0.7])]
    _, tp, fp, npos = voc_class_pr(g, d, 0)
    assert npos == 1 and tp.tolist() == [0, 0, 0, 1] and fp.tolist() == [0, 0, 0, 0]
    assert voc_map(g, d, ["x"]).map50 == pytest.approx(1.0)
    # missing the difficult box costs nothing either
    assert voc_map(g, [det([[60, 60, 90, 90]], [0.3])], ["x"]).map50 == pytest.approx(1.0)


def test_best_iou_box_already_taken_is_a_false_positive_with_no_fallback():
    A, B = [0, 0, 10, 10], [4, 0, 14, 10]
    g = [gt([A, B])]
    # the second detection has IoU 90/110 with A (taken) and 70/130 > 0.5 with B: the devkit
    # still calls it an FP, while COCO's matching gives it B
    d = [det([A, [1, 0, 11, 10]], [0.9, 0.8])]
    _, tp, fp, _ = voc_class_pr(g, d, 0)
    assert tp.tolist() == [1, 0] and fp.tolist() == [0, 1]
    assert voc_map(g, d, ["x"], use_07_metric=True).map50 == pytest.approx(6 / 11)  # t = 0 .. 0.5 -> 1
    assert voc_map(g, d, ["x"], use_07_metric=False).map50 == pytest.approx(0.5)
    assert coco_map(g, d, ["x"]).map50 == pytest.approx(1.0)


def test_the_devkit_prefers_a_difficult_box_of_higher_iou_over_a_free_one():
    A, D = [0, 0, 10, 10], [2, 0, 12, 10]
    g = [gt([A, D], ignore=[False, True])]
    d = [det([[2, 0, 11, 10]], [0.9])]  # IoU 80/110 with A, 90/100 with D: D wins, the detection is ignored
    _, tp, fp, npos = voc_class_pr(g, d, 0)
    assert (tp.tolist(), fp.tolist(), npos) == ([0], [0], 1)
    assert voc_map(g, d, ["x"]).map50 == 0.0


def test_11_point_thresholds_are_exact_tenths():
    # npos 10: three hits (recall exactly 0.3 at precision 1), three misses, one more hit.
    tp = np.array([1, 1, 1, 0, 0, 0, 1])
    fp = 1 - tp
    # t = 0, .1, .2, .3 -> 1 (recall 3/10 reaches 0.3); t = .4 -> 4/7; t >= .5 -> 0
    assert voc_ap(tp, fp, 10, True) == pytest.approx((4 + 4 / 7) / 11, abs=1e-12)
    # np.arange(0, 1.1, 0.1)[3] is 0.30000000000000004 > 3 / 10: the float port would give (3 + 8/7) / 11
    assert np.arange(0, 1.1, 0.1)[3] > 3 / 10
    # all-point: 0.3 * 1 + 0.1 * 4/7
    assert voc_ap(tp, fp, 10, False) == pytest.approx(0.3 + 0.1 * 4 / 7, abs=1e-12)


def test_iou_exactly_half_is_a_hit_in_the_devkits_plus_one_convention():
    # VOC XML <xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>10</ymax> reads as [0, 0, 10, 10];
    # the devkit's area is (10 - 1 + 1) * (10 - 1 + 1) = 100. A detection covering rows 1..5
    # (devkit [1, 1, 10, 5], area 10 * 5 = 50, intersection 50) has devkit IoU exactly 0.5:
    # a hit, as ov >= 0.5. Without the +1 the same numbers give 36 / 81 < 0.5, a miss.
    devkit_iou = (10 - 1 + 1) * (5 - 1 + 1) / ((10 - 1 + 1) * (10 - 1 + 1))
    assert devkit_iou == 0.5 and (10 - 1) * (5 - 1) / ((10 - 1) * (10 - 1)) < 0.5
    g = [gt([[0, 0, 10, 10]])]
    d = [det([[0, 0, 10, 5]], [0.9])]  # the devkit's [1, 1, 10, 5] in mlca's continuous coordinates
    assert voc_map(g, d, ["x"]).map50 == 1.0
    assert voc_map(g, [det([[0, 0, 10, 4.9]], [0.9])], ["x"]).map50 == 0.0


def test_score_ties_keep_image_order_and_classes_are_separate():
    A = [0, 0, 10, 10]
    g = [gt([A]), gt([A])]
    # equal scores: the stable order is image 0 then image 1
    d = [det([A, [50, 50, 60, 60]], [0.5, 0.5]), det([A], [0.5])]
    scores, tp, fp, _ = voc_class_pr(g, d, 0)
    assert tp.tolist() == [1, 0, 1] and fp.tolist() == [0, 1, 0]
    # two classes: one perfect, one all wrong; a third without ground truth is NaN and left out
    g = [gt([A, [20, 20, 40, 40]], labels=np.array([0, 1]))]
    d = [det([A, [60, 60, 80, 80]], [0.9, 0.8], labels=np.array([0, 1]))]
    res = voc_map(g, d, ["a", "b", "c"])
    assert res.per_class["a"]["ap50"] == 1.0 and res.per_class["b"]["ap50"] == 0.0
    assert math.isnan(res.per_class["c"]["ap50"]) and res.per_class["c"]["n_gt"] == 0
    assert res.map50 == 0.5 and math.isnan(res.map) and res.n_gt == 2


def test_no_detections_and_no_ground_truth():
    g = [gt([[0, 0, 10, 10]]), gt(np.zeros((0, 4)))]
    d = [det(np.zeros((0, 4)), []), det([[0, 0, 5, 5]], [0.3])]
    assert voc_map(g, d, ["x"]).map50 == 0.0
    empty = [gt(np.zeros((0, 4))), gt(np.zeros((0, 4)))]
    assert voc_map(empty, d, ["x"]).map50 == 0.0
    with pytest.raises(ValueError, match="npos"):
        voc_ap(np.zeros(1), np.ones(1), 0, True)


def test_random_sets_match_a_transcription_of_the_devkit():
    rng = np.random.default_rng()
    gts, dets = [], []
    for _ in range(6):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 60, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], 1)
        ign = rng.random(n) < 0.3
        gts.append(gt(boxes, labels=rng.integers(0, 2, n), ignore=ign))
        m = int(rng.integers(0, 8))
        src = boxes[rng.integers(0, max(n, 1), m)] if n else rng.uniform(0, 60, (m, 4))
        db = src + rng.normal(0, 3, (m, 4))
        db[:, 2:] = np.maximum(db[:, 2:], db[:, :2] + 1)
        dets.append(det(db, rng.random(m), rng.integers(0, 2, m)))
    for use07 in (True, False):
        got = voc_map(gts, dets, ["a", "b"], use_07_metric=use07)
        for c, name in enumerate(["a", "b"]):
            want = _devkit_reference(gts, dets, c, use07)
            if math.isnan(want):
                assert math.isnan(got.per_class[name]["ap50"])
            else:
                assert got.per_class[name]["ap50"] == pytest.approx(want, abs=1e-12)


def _devkit_reference(gts, dets, c, use07):
    """A line-by-line float64 transcription of VOCevaldet.m / VOCap.m on the 1-based boxes
    ``[x1 + 1, y1 + 1, x2, y2]`` with the devkit's +1 areas (tenths as exact fractions)."""
    items = [(s, i, b) for i, d in enumerate(dets) for b, s, lab in zip(d.boxes, d.scores, d.labels) if lab == c]
    items.sort(key=lambda t: -t[0])  # Python's sort is stable
    gt_boxes = [[(b[0] + 1, b[1] + 1, b[2], b[3]) for b, lab in zip(g.boxes, g.labels) if lab == c] for g in gts]
    diff = [[bool(x) for x, lab in zip(g.ignore, g.labels) if lab == c] for g in gts]
    detected = [[False] * len(b) for b in gt_boxes]
    npos = sum(not x for dd in diff for x in dd)
    if npos == 0:
        return math.nan
    tp, fp = [], []
    for _, i, b in items:
        bb = (b[0] + 1, b[1] + 1, b[2], b[3])
        ovmax, jmax = -math.inf, -1
        for j, g in enumerate(gt_boxes[i]):
            iw = min(bb[2], g[2]) - max(bb[0], g[0]) + 1
            ih = min(bb[3], g[3]) - max(bb[1], g[1]) + 1
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - iw * ih
                if iw * ih / ua > ovmax:
                    ovmax, jmax = iw * ih / ua, j
        t = f = 0
        if ovmax >= 0.5:
            if not diff[i][jmax]:
                if not detected[i][jmax]:
                    t, detected[i][jmax] = 1, True
                else:
                    f = 1
        else:
            f = 1
        tp.append(t)
        fp.append(f)
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    rec = [x / npos for x in ctp]
    prec = [x / max(x + y, 1) for x, y in zip(ctp, cfp)]
    if use07:
        ap = 0.0
        for k in range(11):
            ps = [p for p, x in zip(prec, ctp) if x * 10 >= k * npos]
            ap += max(ps) if ps else 0.0
        return ap / 11
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def test_through_the_voc_reader_difficult_and_plus_one(tmp_path):
    """VOC XML -> records -> devkit AP: a detection on the difficult box is ignored, and one with
    devkit IoU exactly 0.5 (computed by hand from the XML's 1-based numbers) is a hit."""
    from PIL import Image

    from mlca.data.config import load_dataset_config
    from mlca.data.records import read_records

    d = tmp_path / "ann"
    d.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(d / "a.jpg")
    (d / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>40</width><height>40</height></size>"
        "<object><name>x</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax>"
        "<ymax>10</ymax></bndbox></object><object><name>x</name><difficult>1</difficult><bndbox><xmin>21</xmin>"
        "<ymin>21</ymin><xmax>40</xmax><ymax>40</ymax></bndbox></object></annotation>"
    )
    (tmp_path / "voc.yaml").write_text("format: voc\npath: .\ntrain: ann\nval: ann\nnames: [x]\n")
    (rec,) = read_records(load_dataset_config(tmp_path / "voc.yaml"), "val")
    g = [ImageGT(rec.boxes, rec.labels, rec.width, rec.height, rec.ignore)]
    # devkit boxes [1, 1, 10, 5] (IoU (10 * 5) / (10 * 10) = 0.5) and [22, 22, 40, 40] (on the difficult
    # box), written in mlca's continuous coordinates [x1 - 1, y1 - 1, x2, y2]; the difficult one first
    d = [det([[21, 21, 40, 40], [0, 0, 10, 5]], [0.9, 0.8])]
    _, tp, fp, npos = voc_class_pr(g, d, 0)
    assert (tp.tolist(), fp.tolist(), npos) == ([0, 1], [0, 0], 1)
    assert voc_map(g, d, ["x"]).map50 == 1.0
