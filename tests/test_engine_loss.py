"""YoloLoss: target assignment, loss values and gradients against float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mlca.engine.loss import BALANCE, LossGains, YoloLoss, bbox_ciou

ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
STRIDES = (8, 16, 32)


class FakeDetector(nn.Module):
    """Only what YoloLoss reads from MAY: detect.anchors (pixels), stride, num_classes."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.detect = nn.Module()
        self.detect.register_buffer("anchors", torch.tensor(ANCHORS, dtype=torch.float32).view(3, 3, 2))
        self.register_buffer("stride", torch.tensor(STRIDES, dtype=torch.float32))


def raw_outputs(batch: int, size: int, nc: int, gen: torch.Generator | None = None) -> list[torch.Tensor]:
    return [torch.randn(batch, 3, size // s, size // s, 5 + nc, generator=gen) for s in STRIDES]


def reference_assignment(targets: np.ndarray, size: int, anchor_t: float = 4.0) -> list[tuple]:
    """(level, img, anchor, gj, gi, cls) of every positive, from the rule written out:
    anchors whose w and h ratios are both within anchor_t; the centre cell plus the nearer
    horizontal and the nearer vertical neighbour when those exist."""
    out = []
    for level, s in enumerate(STRIDES):
        n = size // s
        for img, cls, cx, cy, w, h in targets.astype(np.float64):
            gx, gy, gw, gh = cx * n, cy * n, w * n, h * n
            for a in range(3):
                aw, ah = ANCHORS[level][2 * a] / s, ANCHORS[level][2 * a + 1] / s
                if max(gw / aw, aw / gw, gh / ah, ah / gh) >= anchor_t:
                    continue
                gi, gj = int(math.floor(gx)), int(math.floor(gy))
                cells = [(gj, gi)]
                fx, fy = gx - gi, gy - gj
                if fx < 0.5 and gi - 1 >= 0:
                    cells.append((gj, gi - 1))
                if fx > 0.5 and gi + 1 <= n - 1:
                    cells.append((gj, gi + 1))
                if fy < 0.5 and gj - 1 >= 0:
                    cells.append((gj - 1, gi))
                if fy > 0.5 and gj + 1 <= n - 1:
                    cells.append((gj + 1, gi))
                for cj, ci in cells:
                    out.append((level, int(img), a, cj, ci, int(cls)))
    return out


def assignment_of(loss: YoloLoss, raw, targets, tal: bool = False) -> list[tuple]:
    """(level, img, anchor, gj, gi, cls) of every positive of YOLOv5's (or the task-aligned) assignment."""
    tcls, _, indices = (loss.build_targets_tal if tal else loss.build_targets)(raw, targets)
    rows = []
    for level, ((b, a, gj, gi), c) in enumerate(zip(indices, tcls)):
        rows += [(level, *map(int, r)) for r in zip(b, a, gj, gi, c)]
    return rows


def test_single_target_lands_in_the_hand_computed_cells_and_anchors():
    # 256 px image, box centred at (99, 150) px, 41 x 30 px.
    size = 256
    targets = torch.tensor([[0, 1, 99 / size, 150 / size, 41 / size, 30 / size]])
    loss = YoloLoss(FakeDetector(num_classes=3))
    got = sorted(assignment_of(loss, raw_outputs(1, size, 3), targets))
    expected = []
    # P3: grid centre (12.375, 18.75): own cell, left neighbour, lower neighbour;
    # anchor 0 (10x13) is 4.1x too narrow, anchors 1 and 2 match.
    for a in (1, 2):
        expected += [(0, 0, a, 18, 12, 1), (0, 0, a, 18, 11, 1), (0, 0, a, 19, 12, 1)]
    # P4: centre (6.1875, 9.375): own, left, upper; all three anchors within 4x.
    for a in (0, 1, 2):
        expected += [(1, 0, a, 9, 6, 1), (1, 0, a, 9, 5, 1), (1, 0, a, 8, 6, 1)]
    # P5: centre (3.09375, 4.6875): own, left, lower; only anchor 0 (116x90) within 4x.
    expected += [(2, 0, 0, 4, 3, 1), (2, 0, 0, 4, 2, 1), (2, 0, 0, 5, 3, 1)]
    assert got == sorted(expected)


def test_regression_box_targets_are_relative_to_the_assigned_cell():
    size = 256
    targets = torch.tensor([[0, 0, 99 / size, 150 / size, 41 / size, 30 / size]])
    loss = YoloLoss(FakeDetector(num_classes=1))
    _, tbox, indices = loss.build_targets(raw_outputs(1, size, 1), targets)
    for level, s in enumerate(STRIDES):
        _, _, gj, gi = indices[level]
        centre = torch.tensor([99 / s, 150 / s])
        torch.testing.assert_close(tbox[level][:, :2], centre - torch.stack((gi, gj), 1).float())
        torch.testing.assert_close(tbox[level][:, 2:], torch.tensor([41 / s, 30 / s]).expand(len(gi), 2))
        # the cell predicts xy in (-0.5, 1.5), so every target must be reachable
        assert ((tbox[level][:, :2] > -0.5) & (tbox[level][:, :2] < 1.5)).all()


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 12),
    batch=st.integers(1, 3),
    size=st.sampled_from([64, 128, 160]),
    seed=st.integers(0, 2**31 - 1),
)
def test_assignment_matches_the_written_rule(n, batch, size, seed):
    rng = np.random.default_rng(seed)
    wh = rng.uniform(0.01, 0.9, size=(n, 2))
    cxy = rng.uniform(wh / 2, 1 - wh / 2)
    targets = np.concatenate([rng.integers(0, batch, (n, 1)), rng.integers(0, 4, (n, 1)), cxy, wh], 1)
    targets = torch.from_numpy(targets).float()
    loss = YoloLoss(FakeDetector(num_classes=4))
    got = assignment_of(loss, raw_outputs(batch, size, 4), targets)
    assert sorted(got) == sorted(reference_assignment(targets.numpy(), size))


def _ref_ciou(b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """CIoU from its definition (Zheng et al., AAAI 2020), float64, xyxy boxes."""
    iw = np.clip(np.minimum(b1[:, 2], b2[:, 2]) - np.maximum(b1[:, 0], b2[:, 0]), 0, None)
    ih = np.clip(np.minimum(b1[:, 3], b2[:, 3]) - np.maximum(b1[:, 1], b2[:, 1]), 0, None)
    w1, h1 = b1[:, 2] - b1[:, 0], b1[:, 3] - b1[:, 1]
    w2, h2 = b2[:, 2] - b2[:, 0], b2[:, 3] - b2[:, 1]
    inter = iw * ih
    iou = inter / (w1 * h1 + w2 * h2 - inter)
    cw = np.maximum(b1[:, 2], b2[:, 2]) - np.minimum(b1[:, 0], b2[:, 0])
    ch = np.maximum(b1[:, 3], b2[:, 3]) - np.minimum(b1[:, 1], b2[:, 1])
    rho2 = ((b1[:, 0] + b1[:, 2]) - (b2[:, 0] + b2[:, 2])) ** 2 / 4 + ((b1[:, 1] + b1[:, 3]) - (b2[:, 1] + b2[:, 3])) ** 2 / 4
    v = 4 / math.pi**2 * (np.arctan(w2 / h2) - np.arctan(w1 / h1)) ** 2
    alpha = v / (1 - iou + v)
    return iou - rho2 / (cw**2 + ch**2) - alpha * v


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 10, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(0.1, 5, (n, 2))], 1)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 50), seed=st.integers(0, 2**31 - 1))
def test_ciou_equals_the_float64_definition(n, seed):
    rng = np.random.default_rng(seed)
    b1, b2 = _random_boxes(rng, n), _random_boxes(rng, n)
    got = bbox_ciou(torch.from_numpy(b1).float(), torch.from_numpy(b2).float()).double().numpy()
    np.testing.assert_allclose(got, _ref_ciou(b1, b2), atol=2e-5)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _bce(logit, target):
    return np.maximum(logit, 0) - logit * target + np.log1p(np.exp(-np.abs(logit)))


def reference_loss(raw, targets, nc, size, hyp):
    """The YOLOv5 loss written out in float64 with loops, from the reference assignment.
    Needs at most one target per image, so no two positives share a cell."""
    raw = [p.double().numpy() for p in raw]
    pos = reference_assignment(targets.numpy(), size, hyp["anchor_t"])
    tgt = {int(t[0]): t.numpy().astype(np.float64) for t in targets}
    box_l, obj_l, cls_l = 0.0, 0.0, 0.0
    for level, (p, s) in enumerate(zip(raw, STRIDES)):
        n = size // s
        tobj = np.zeros(p.shape[:4])
        here = [q for q in pos if q[0] == level]
        cious, cls_terms = [], []
        for _, b, a, gj, gi, c in here:
            t = tgt[b]
            aw, ah = ANCHORS[level][2 * a] / s, ANCHORS[level][2 * a + 1] / s
            out = p[b, a, gj, gi]
            px = _sigmoid(out[0]) * 2 - 0.5 + gi
            py = _sigmoid(out[1]) * 2 - 0.5 + gj
            pw = (2 * _sigmoid(out[2])) ** 2 * aw
            ph = (2 * _sigmoid(out[3])) ** 2 * ah
            tx, ty, tw, th = t[2] * n, t[3] * n, t[4] * n, t[5] * n
            ciou = _ref_ciou(
                np.array([[px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2]]),
                np.array([[tx - tw / 2, ty - th / 2, tx + tw / 2, ty + th / 2]]),
            )[0]
            cious.append(ciou)
            tobj[b, a, gj, gi] = max(ciou, 0.0)
            onehot = np.full(nc, hyp["label_smoothing"] / 2)
            onehot[c] = 1 - hyp["label_smoothing"] / 2
            cls_terms.append(_bce(out[5:], onehot))
        if here:
            box_l += np.mean(1 - np.array(cious))
            if nc > 1:
                cls_l += np.mean(np.stack(cls_terms))
        obj_l += BALANCE[level] * np.mean(_bce(p[..., 4], tobj))
    box_l *= hyp["box"]
    cls_l *= hyp["cls"] * nc / 80
    obj_l *= hyp["obj"] * (hyp["img_size"] / 640) ** 2
    return (box_l + obj_l + cls_l) * raw[0].shape[0], np.array([box_l, obj_l, cls_l])


@pytest.mark.parametrize("nc", [1, 5])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_equals_float64_reference(nc, smoothing):
    gen = torch.Generator().manual_seed(nc * 10 + int(smoothing * 10))
    size, batch = 128, 4
    raw = raw_outputs(batch, size, nc, gen)
    wh = torch.rand(batch, 2, generator=gen) * 0.5 + 0.05
    cxy = wh / 2 + torch.rand(batch, 2, generator=gen) * (1 - wh)
    cls = torch.randint(0, nc, (batch, 1), generator=gen).float()
    targets = torch.cat([torch.arange(batch).float().unsqueeze(1), cls, cxy, wh], 1)
    hyp = {**LossGains().to_dict(), "label_smoothing": smoothing, "img_size": size}
    total, items = YoloLoss(FakeDetector(nc), hyp)(raw, targets)
    ref_total, ref_items = reference_loss(raw, targets, nc, size, hyp)
    np.testing.assert_allclose(items.numpy(), ref_items, rtol=1e-4, atol=1e-7)
    assert total.item() == pytest.approx(ref_total, rel=1e-4)
    if nc == 1:
        assert items[2] == 0  # one class: objectness is the class score


def test_zero_targets_give_only_objectness_loss():
    size, batch = 64, 2
    raw = raw_outputs(batch, size, 3)
    total, items = YoloLoss(FakeDetector(3), {"img_size": size})(raw, torch.zeros((0, 6)))
    assert items[0] == 0 and items[2] == 0
    expected = sum(b * np.mean(_bce(p[..., 4].double().numpy(), 0.0)) for b, p in zip(BALANCE, raw))
    expected *= (size / 640) ** 2 * batch
    assert total.item() == pytest.approx(expected, rel=1e-5)


def _logit(p):
    return torch.log(p / (1 - p))


def test_perfect_predictions_give_zero_box_and_class_loss():
    size, nc = 128, 3
    targets = torch.tensor([[0, 2, 0.41, 0.63, 0.22, 0.3]])
    model = FakeDetector(nc)
    loss = YoloLoss(model, {"img_size": size})
    raw = raw_outputs(1, size, nc)
    tcls, tbox, indices = loss.build_targets(raw, targets)
    for level, p in enumerate(raw):
        b, a, gj, gi = indices[level]
        anchors = model.detect.anchors[level][a] / STRIDES[level]
        # invert the decoding: xy = 2 sigmoid - 0.5, wh = (2 sigmoid)^2 anchor
        p[b, a, gj, gi, 0:2] = _logit((tbox[level][:, :2] + 0.5) / 2)
        p[b, a, gj, gi, 2:4] = _logit(torch.sqrt(tbox[level][:, 2:] / anchors) / 2)
        p[b, a, gj, gi, 5:] = -30.0
        p[b, a, gj, gi, 5 + tcls[level]] = 30.0
    _, items = loss(raw, targets)
    assert items[0].item() < 1e-5
    assert items[2].item() < 1e-5
    assert items[1].item() > 0


def test_gradients_are_finite_and_reach_every_level():
    gen = torch.Generator().manual_seed(0)
    size, nc = 96, 4
    raw = [p.requires_grad_() for p in raw_outputs(2, size, nc, gen)]
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 3, 0.2, 0.7, 0.05, 0.08], [1, 0, 0.8, 0.2, 0.9, 0.6]])
    total, items = YoloLoss(FakeDetector(nc), {"img_size": size})(raw, targets)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(items).all()
    for p in raw:
        assert torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0


def test_anchors_changed_after_construction_are_used():
    model = FakeDetector(2)
    loss = YoloLoss(model)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.9, 0.9]])
    raw = raw_outputs(1, 64, 2)
    before = len(assignment_of(loss, raw, targets))
    model.detect.anchors.mul_(0.01)  # tiny anchors: nothing matches a large box any more
    assert before > 0 and len(assignment_of(loss, raw, targets)) == 0


def test_bad_shapes_are_named():
    loss = YoloLoss(FakeDetector(2))
    raw = raw_outputs(1, 64, 2)
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        loss(raw, torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"target classes must be in \[0, 2\)"):
        loss(raw, torch.tensor([[0, 2, 0.5, 0.5, 0.1, 0.1]]))
    with pytest.raises(ValueError, match="image indices"):
        loss(raw, torch.tensor([[1, 0, 0.5, 0.5, 0.1, 0.1]]))
    with pytest.raises(ValueError, match="expected"):
        loss([torch.zeros(1, 3, 8, 8, 9)] + raw[1:], torch.zeros(0, 6))


def test_loss_on_real_may_outputs_backpropagates_to_every_trainable_parameter():
    from mlca.models.may import build_may

    torch.manual_seed(0)
    model = build_may(num_classes=3, width=0.25).train()
    raw = model(torch.rand(2, 3, 64, 64))
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.4, 0.3], [1, 2, 0.3, 0.6, 0.1, 0.2], [1, 1, 0.7, 0.3, 0.6, 0.5]])
    total, items = YoloLoss(model, {"img_size": 64})(raw, targets)
    total.backward()
    assert torch.isfinite(total) and (items > 0).all()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the detect layer's biases start at YOLOv5's priors, so the first objectness loss is small
    assert items[1] < 1.0


def test_loss_geometry_agrees_with_may_decoding():
    """Logits that the loss scores as perfect decode, through MAY's own head, to the target boxes."""
    from mlca.engine.postprocess import non_max_suppression
    from mlca.models.may import build_may

    size, nc = 128, 3
    model = build_may(num_classes=nc, width=0.25).eval()
    targets = torch.tensor([[0, 2, 0.41, 0.63, 0.22, 0.3], [0, 0, 0.8, 0.2, 0.5, 0.35]])
    loss = YoloLoss(model, {"img_size": size})
    raw = [torch.full((1, 3, size // s, size // s, 5 + nc), -20.0) for s in STRIDES]
    tcls, tbox, indices = loss.build_targets(raw, targets)
    for level, p in enumerate(raw):
        b, a, gj, gi = indices[level]
        anchors = model.detect.anchors[level][a] / STRIDES[level]
        p[b, a, gj, gi, 0:2] = _logit((tbox[level][:, :2] + 0.5) / 2)
        p[b, a, gj, gi, 2:4] = _logit(torch.sqrt(tbox[level][:, 2:] / anchors) / 2)
        p[b, a, gj, gi, 4] = 20.0
        p[b, a, gj, gi, 5 + tcls[level]] = 20.0
    _, items = loss(raw, targets)
    assert items[0] < 1e-5
    decoded = torch.cat([model.detect._decode(i, p) for i, p in enumerate(raw)], 1)
    (det,) = non_max_suppression(decoded, conf_thres=0.5, iou_thres=0.5)
    expected = torch.tensor([[0.41 - 0.11, 0.63 - 0.15, 0.41 + 0.11, 0.63 + 0.15],
                             [0.8 - 0.25, 0.2 - 0.175, 0.8 + 0.25, 0.2 + 0.175]]) * size
    order = det[:, 5].argsort(descending=True)
    torch.testing.assert_close(det[order, :4], expected, rtol=0, atol=1e-3)
    assert det[order, 5].tolist() == [2.0, 0.0]


def test_ciou_gradient_is_finite_for_a_box_of_zero_height_or_width():
    """A predicted box whose height or width underflowed to 0 keeps finite gradients (a
    division without epsilon in the aspect term turns them into NaN)."""
    pred = torch.tensor([[1.0, 1.0, 3.0, 1.0], [2.0, 2.0, 2.0, 5.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    gt = torch.tensor([[1.0, 1.0, 3.0, 2.5], [1.5, 2.0, 3.0, 4.0], [0.5, 0.5, 2.0, 1.0]])
    c = bbox_ciou(pred, gt)
    c.sum().backward()
    assert torch.isfinite(c).all() and torch.isfinite(pred.grad).all()
    ref = _ref_ciou(np.array([[1, 1, 3, 1 + 1e-3]], float), gt[:1].double().numpy())  # the limit h -> 0
    assert abs(float(c[0]) - float(ref[0])) < 1e-3


def _logit_of(p: float) -> float:
    return math.log(p / (1 - p))


def test_task_aligned_assignment_picks_the_prediction_that_fits_and_keeps_yolov5_targets():
    """assign_tal=1 with topk 1: of all (level, anchor, cell) predictions, the one whose decoded
    box equals the ground truth and whose scores are high is the positive; its box target is the
    box in its level's grid units relative to its cell, as build_targets gives it."""
    size, nc = 128, 3
    gains = LossGains(assign_tal=1, tal_topk=1)
    loss = YoloLoss(FakeDetector(num_classes=nc), gains)
    raw = [torch.full((1, 3, size // s, size // s, 5 + nc), -6.0) for s in STRIDES]  # weak everywhere
    # P4 (stride 16), anchor 1 (62 x 45 px), cell (gj, gi) = (3, 2): centre offset 0.5 + 0.25 in x
    # (sigmoid * 2 - 0.5 = 0.75 -> sigmoid = 0.625), 0.5 in y (sigmoid 0.5); size factor
    # (2 sigmoid)^2 = 1 -> sigmoid 0.5: the box is the anchor itself, centred at (44, 56) px
    p = raw[1][0, 1, 3, 2]
    p[0], p[1], p[2], p[3] = _logit_of(0.625), 0.0, 0.0, 0.0
    p[4], p[5 + 2] = _logit_of(0.9), _logit_of(0.9)
    targets = torch.tensor([[0, 2, 44 / size, 56 / size, 62 / size, 45 / size]])
    got = assignment_of(loss, raw, targets, tal=True)
    assert got == [(1, 0, 1, 3, 2, 2)]
    _, tbox, _ = loss.build_targets_tal(raw, targets)
    torch.testing.assert_close(tbox[1], torch.tensor([[44 / 16 - 2, 56 / 16 - 3, 62 / 16, 45 / 16]]))
    assert len(tbox[0]) == len(tbox[2]) == 0


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 6), batch=st.integers(1, 2), seed=st.integers(0, 2**31 - 1))
def test_task_aligned_positives_obey_the_rule(n, batch, seed):
    """Every positive's cell centre lies inside its box, its class is its box's, no box has more
    than topk positives, and its box target decodes back to the box (float64 check)."""
    size, nc, topk = 128, 4, 3
    gen = torch.Generator().manual_seed(seed)
    loss = YoloLoss(FakeDetector(num_classes=nc), LossGains(assign_tal=1, tal_topk=topk))
    raw = raw_outputs(batch, size, nc, gen)
    img = torch.randint(0, batch, (n, 1), generator=gen).float()
    cls = torch.randint(0, nc, (n, 1), generator=gen).float()
    wh = torch.rand(n, 2, generator=gen) * 0.4 + 0.05
    cxy = wh / 2 + torch.rand(n, 2, generator=gen) * (1 - wh)
    targets = torch.cat((img, cls, cxy, wh), 1)
    tcls, tbox, indices = loss.build_targets_tal(raw, targets)
    per_box: dict[int, int] = {}
    for level, s in enumerate(STRIDES):
        b, a, gj, gi = indices[level]
        for k in range(len(b)):
            box = tbox[level][k].double()
            cx, cy = (box[0] + gi[k]) * s, (box[1] + gj[k]) * s
            w, h = box[2] * s, box[3] * s
            # the box this target came from: same image, class and geometry
            cand = [j for j in range(n) if int(targets[j, 0]) == int(b[k]) and int(targets[j, 1]) == int(tcls[level][k])
                    and abs(targets[j, 2].double() * size - cx) < 1e-3 and abs(targets[j, 3].double() * size - cy) < 1e-3
                    and abs(targets[j, 4].double() * size - w) < 1e-3 and abs(targets[j, 5].double() * size - h) < 1e-3]
            assert cand, (level, k)
            px, py = (gi[k].double() + 0.5) * s, (gj[k].double() + 0.5) * s
            assert cx - w / 2 < px < cx + w / 2 and cy - h / 2 < py < cy + h / 2
            per_box[cand[0]] = per_box.get(cand[0], 0) + 1
    assert all(v <= topk for v in per_box.values())
    if n:  # the loss runs on this assignment and gives finite values
        value, items = loss(raw, targets)
        assert torch.isfinite(value) and torch.isfinite(items).all()


def test_assign_tal_must_be_zero_or_one():
    with pytest.raises(ValueError, match="assign_tal"):
        LossGains(assign_tal=0.5)
