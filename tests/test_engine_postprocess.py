"""non_max_suppression and scale_boxes against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlca.engine.postprocess import non_max_suppression, scale_boxes


def random_pred(rng: np.random.Generator, b: int, n: int, nc: int, size: float = 100.0) -> torch.Tensor:
    cxcy = rng.uniform(0, size, (b, n, 2))
    wh = rng.uniform(2, size / 3, (b, n, 2))
    probs = rng.uniform(0, 1, (b, n, 1 + nc))
    return torch.from_numpy(np.concatenate([cxcy, wh, probs], -1)).float()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def reference_nms(x: np.ndarray, conf: float, iou: float, max_det: int, multi_label: bool) -> np.ndarray:
    """Greedy NMS per class from its definition, float64, one image: rows [x1 y1 x2 y2 score cls]."""
    cand = []
    for row in x.astype(np.float64):
        box = [row[0] - row[2] / 2, row[1] - row[3] / 2, row[0] + row[2] / 2, row[1] + row[3] / 2]
        scores = row[5:] * row[4]
        classes = np.nonzero(scores > conf)[0] if multi_label else [int(np.argmax(scores))]
        cand += [box + [scores[c], c] for c in classes if row[4] > conf and scores[c] > conf]
    cand.sort(key=lambda r: -r[4])
    kept: list[list[float]] = []
    for c in cand:
        if all(k[5] != c[5] or _iou(np.array(k), np.array(c)) <= iou for k in kept):
            kept.append(c)
    return np.array(kept[:max_det]).reshape(-1, 6)


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 3),
    n=st.integers(0, 60),
    nc=st.integers(1, 4),
    conf=st.sampled_from([0.001, 0.25, 0.6]),
    iou=st.sampled_from([0.3, 0.6]),
    max_det=st.sampled_from([5, 300]),
    multi_label=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_nms_equals_greedy_reference(b, n, nc, conf, iou, max_det, multi_label, seed):
    pred = random_pred(np.random.default_rng(seed), b, n, nc)
    out = non_max_suppression(pred, conf, iou, max_det=max_det, multi_label=multi_label)
    assert len(out) == b
    for det, x in zip(out, pred.numpy()):
        ref = reference_nms(x, conf, iou, max_det, multi_label)
        assert det.shape == (len(ref), 6)
        np.testing.assert_allclose(det.double().numpy(), ref, rtol=1e-5, atol=1e-4)


def test_scores_are_obj_times_class_and_sorted():
    pred = torch.tensor([[[50, 50, 10, 10, 0.5, 0.2, 0.9], [10, 10, 4, 4, 0.9, 0.7, 0.1]]])
    (det,) = non_max_suppression(pred, conf_thres=0.1)
    torch.testing.assert_close(det[:, 4], torch.tensor([0.63, 0.45]))
    torch.testing.assert_close(det[:, 5], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(det[1, :4], torch.tensor([45.0, 45, 55, 55]))


def test_nms_is_class_aware_unless_agnostic():
    same_box_two_classes = torch.tensor([[[50, 50, 10, 10, 1.0, 0.9, 0.0], [50, 50, 10, 10, 1.0, 0.0, 0.8]]])
    assert len(non_max_suppression(same_box_two_classes, 0.1, 0.5)[0]) == 2
    assert len(non_max_suppression(same_box_two_classes, 0.1, 0.5, agnostic=True)[0]) == 1


def test_multi_label_gives_one_row_per_class_above_threshold():
    pred = torch.tensor([[[50, 50, 10, 10, 1.0, 0.9, 0.5, 0.05]]])
    assert non_max_suppression(pred, 0.1)[0][:, 5].tolist() == [0.0]
    assert non_max_suppression(pred, 0.1, multi_label=True)[0][:, 5].tolist() == [0.0, 1.0]
    assert non_max_suppression(pred, 0.1, multi_label=True, classes=[1])[0][:, 5].tolist() == [1.0]


def test_empty_inputs_give_empty_rows():
    out = non_max_suppression(torch.zeros(2, 0, 8))
    assert [o.shape for o in out] == [(0, 6), (0, 6)]
    out = non_max_suppression(torch.zeros(1, 10, 8))  # nothing above the threshold
    assert out[0].shape == (0, 6)


def test_bad_shape_is_named():
    with pytest.raises(ValueError, match=r"\(B, N, 5 \+ nc\)"):
        non_max_suppression(torch.zeros(10, 8))


@settings(max_examples=30, deadline=None)
@given(
    h=st.integers(8, 900),
    w=st.integers(8, 900),
    size=st.sampled_from([64, 320, 416]),
    seed=st.integers(0, 2**31 - 1),
)
def test_scale_boxes_inverts_the_letterbox(h, w, size, seed):
    rng = np.random.default_rng(seed)
    ratio = min(size / h, size / w)
    pad = ((size - round(w * ratio)) / 2, (size - round(h * ratio)) / 2)
    xy = rng.uniform(0, [w, h], (5, 2))
    boxes = np.concatenate([xy, np.minimum(xy + rng.uniform(0, [w, h], (5, 2)), [w, h])], 1)
    letterboxed = boxes * ratio + np.array([pad[0], pad[1], pad[0], pad[1]])
    meta = {"ratio": ratio, "pad": pad, "orig_size": (h, w)}
    back = scale_boxes(torch.from_numpy(letterboxed), meta)
    np.testing.assert_allclose(back.numpy(), boxes, rtol=1e-9, atol=1e-9)


def test_scale_boxes_clips_and_keeps_extra_columns():
    meta = {"ratio": 0.5, "pad": (0.0, 10.0), "orig_size": (40, 60)}
    det = torch.tensor([[-5.0, 0.0, 50.0, 15.0, 0.9, 2.0]])
    out = scale_boxes(det, meta)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 60.0, 10.0, 0.9, 2.0]]))
    assert det[0, 0] == -5.0  # input untouched
    with pytest.raises(KeyError, match="orig_size"):
        scale_boxes(det, {"ratio": 1.0, "pad": (0, 0)})


def test_max_nms_keeps_only_the_best_candidates():
    # 50 disjoint boxes on a row, scores increasing to the right
    n = 50
    cx = torch.arange(n, dtype=torch.float32) * 10 + 5
    rows = torch.stack([cx, torch.full((n,), 5.0), torch.full((n,), 8.0), torch.full((n,), 8.0),
                        torch.linspace(0.1, 1.0, n), torch.ones(n)], 1)
    (det,) = non_max_suppression(rows.unsqueeze(0), 0.01, 0.5, max_nms=5)
    torch.testing.assert_close(det[:, 0] + 4, cx[-5:].flip(0))
    assert len(non_max_suppression(rows.unsqueeze(0), 0.01, 0.5)[0]) == n
