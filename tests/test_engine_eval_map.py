"""coco_map (faster-coco-eval) equals pycocotools' COCOeval on random ground truth and detections."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlca.engine.metrics import ImageDets, ImageGT, coco_det_list, coco_gt_dict, coco_map


def random_set(rng: np.random.Generator, n_images: int, nc: int, max_gt: int = 6):
    """Random images with boxes, and detections that are jittered copies of some GT boxes
    (so the AP is neither 0 nor 1) plus random false positives."""
    gts, dets = [], []
    for _ in range(n_images):
        w, h = rng.integers(50, 400, 2)
        n = rng.integers(0, max_gt + 1)
        xy = rng.uniform(0, [w * 0.8, h * 0.8], (n, 2))
        wh = rng.uniform(2, [w * 0.5, h * 0.5], (n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1)
        labels = rng.integers(0, nc, n)
        gts.append(ImageGT(boxes, labels, int(w), int(h)))
        found = rng.random(n) < 0.7
        jitter = rng.normal(0, 0.08, (found.sum(), 4)) * np.tile(wh[found], 2)
        d_boxes = boxes[found] + jitter
        d_labels = np.where(rng.random(found.sum()) < 0.85, labels[found], rng.integers(0, nc, found.sum()))
        m = rng.integers(0, 4)
        fxy = rng.uniform(0, [w * 0.8, h * 0.8], (m, 2))
        f_boxes = np.concatenate([fxy, fxy + rng.uniform(2, [w * 0.3, h * 0.3], (m, 2))], 1)
        all_boxes = np.concatenate([d_boxes, f_boxes])
        all_boxes[:, 2:] = np.maximum(all_boxes[:, 2:], all_boxes[:, :2] + 0.5)  # keep x2 > x1
        dets.append(
            ImageDets(all_boxes, rng.random(len(all_boxes)), np.concatenate([d_labels, rng.integers(0, nc, m)]))
        )
    return gts, dets


def pycocotools_reference(gts, dets, nc):
    """mAP@0.5, mAP@0.5:0.95 and per-category AP straight from pycocotools' COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco_gt_dict(gts, nc)
        gt.createIndex()
        dt = gt.loadRes(coco_det_list(dets))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"][:, :, :, 0, -1]  # (T, R, K) at area 'all', maxDets 100
    per_cat = {}
    for k, cat in enumerate(ev.params.catIds):
        p = prec[:, :, k]
        if (p > -1).any():
            per_cat[cat - 1] = (p[0][p[0] > -1].mean(), p[p > -1].mean())
    return ev.stats[1], ev.stats[0], per_cat


@settings(max_examples=15, deadline=None)
@given(n_images=st.integers(1, 12), nc=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_map_equals_pycocotools(n_images, nc, seed):
    gts, dets = random_set(np.random.default_rng(seed), n_images, nc)
    if sum(len(g.labels) for g in gts) == 0 or sum(len(d.scores) for d in dets) == 0:
        return  # pycocotools cannot load an empty result list; covered by the tests below
    names = [f"c{i}" for i in range(nc)]
    got = coco_map(gts, dets, names)
    ref50, ref, per_cat = pycocotools_reference(gts, dets, nc)
    assert got.map50 == pytest.approx(ref50, abs=1e-9)
    assert got.map == pytest.approx(ref, abs=1e-9)
    for c, name in enumerate(names):
        if c in per_cat:
            assert got.per_class[name]["ap50"] == pytest.approx(per_cat[c][0], abs=1e-9)
            assert got.per_class[name]["ap"] == pytest.approx(per_cat[c][1], abs=1e-9)
        else:
            assert np.isnan(got.per_class[name]["ap"]) and got.per_class[name]["n_gt"] == 0


def test_map_is_strictly_between_0_and_1_on_a_mixed_set():
    gts, dets = random_set(np.random.default_rng(3), 20, 3)
    got = coco_map(gts, dets, ["a", "b", "c"])
    assert 0.05 < got.map < got.map50 < 0.99
    assert got.n_gt == sum(len(g.labels) for g in gts)
    assert sum(v["n_gt"] for v in got.per_class.values()) == got.n_gt


def test_perfect_detections_give_one():
    gts, _ = random_set(np.random.default_rng(1), 8, 3)
    dets = [ImageDets(g.boxes.copy(), np.linspace(0.9, 0.5, len(g.labels)), g.labels.copy()) for g in gts]
    got = coco_map(gts, dets, ["a", "b", "c"])
    assert got.map == pytest.approx(1.0) and got.map50 == pytest.approx(1.0)
    assert all(v["ap"] == pytest.approx(1.0) for v in got.per_class.values() if v["n_gt"])


def test_empty_detections_give_zero():
    gts, _ = random_set(np.random.default_rng(2), 5, 2)
    empty = [ImageDets(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)) for _ in gts]
    got = coco_map(gts, empty, ["a", "b"])
    assert got.map == 0.0 and got.map50 == 0.0


def test_wrong_class_gives_zero_and_no_gt_gives_zero():
    gt = [ImageGT(np.array([[10.0, 10, 50, 50]]), np.array([0]), 100, 100)]
    wrong = [ImageDets(np.array([[10.0, 10, 50, 50]]), np.array([0.9]), np.array([1]))]
    got = coco_map(gt, wrong, ["a", "b"])
    assert got.map50 == 0.0 and np.isnan(got.per_class["b"]["ap50"])
    none = [ImageGT(np.zeros((0, 4)), np.zeros(0, int), 100, 100)]
    assert coco_map(none, wrong, ["a", "b"]).map == 0.0


def test_label_outside_names_is_reported():
    gt = [ImageGT(np.array([[10.0, 10, 50, 50]]), np.array([3]), 100, 100)]
    with pytest.raises(ValueError, match=r"label outside \[0, 2\)"):
        coco_map(gt, [ImageDets(np.zeros((0, 4)), np.zeros(0), np.zeros(0))], ["a", "b"])
