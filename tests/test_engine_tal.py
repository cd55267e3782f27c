"""Task-aligned assignment: hand-computed cases, and a float64 loop reference on random inputs."""

from __future__ import annotations

import math

import pytest
import torch

from mlca.engine.tal import pairwise_iou, task_aligned_assign

# six anchor points on a 10 px grid: p0 p1 p2 in the top row, p3 p4 p5 below
POINTS = torch.tensor([[5, 5], [15, 5], [25, 5], [5, 15], [15, 15], [25, 15]], dtype=torch.float64)
# ground truth A (class 0) holds p0 p1 p3 p4; B (class 1) holds p1 p2 p4 p5; the third row is padding
GT_BOXES = torch.tensor([[[0, 0, 20, 20], [10, 0, 30, 20], [0, 0, 30, 20]]], dtype=torch.float64)
GT_LABELS = torch.tensor([[0, 1, 0]])
GT_VALID = torch.tensor([[True, True, False]])
# predicted boxes, chosen for round IoUs: with A / with B
PRED = torch.tensor([[[0, 0, 20, 20],     # p0: 1    / -
                      [0, 0, 20, 10],     # p1: 1/2  / 1/5
                      [10, 0, 30, 20],    # p2: -    / 1
                      [0, 10, 20, 20],    # p3: 1/2  / -
                      [10, 0, 30, 20],    # p4: 1/3  / 1
                      [20, 0, 30, 20]]],  # p5: -    / 1/2
                    dtype=torch.float64)
# predicted probabilities of class 0 and class 1 (squares: alpha = 0.5 gives round roots)
SCORES = torch.tensor([[[0.64, 0.10], [0.81, 0.25], [0.10, 0.36],
                        [0.04, 0.10], [0.25, 0.49], [0.10, 0.16]]], dtype=torch.float64)


def test_pairwise_iou_of_the_hand_made_boxes():
    iou = pairwise_iou(GT_BOXES[:, :2], PRED)[0]
    expected_a = [1, 1 / 2, 1 / 3, 1 / 2, 1 / 3, 0]
    expected_b = [1 / 3, 1 / 5, 1, 1 / 5, 1, 1 / 2]
    torch.testing.assert_close(iou, torch.tensor([expected_a, expected_b], dtype=torch.float64))


def test_topk_metric_ranking_conflict_by_iou_and_normalised_targets():
    # alpha 0.5, beta 2. Metrics (sqrt(s) * IoU^2), over the points inside each box:
    #   A: p0 0.8*1 = 0.8, p1 0.9/4 = 0.225, p3 0.2/4 = 0.05, p4 0.5/9 = 0.0556 -> top 3: p0 p1 p4
    #   B: p1 0.5/25 = 0.02, p2 0.6*1 = 0.6, p4 0.7*1 = 0.7, p5 0.4/4 = 0.1    -> top 3: p4 p2 p5
    # p4 is claimed by both: IoU 1/3 with A, 1 with B -> B. p3 (A's 4th) stays background.
    # targets: A: max IoU 1 / max metric 0.8: p0 1.0, p1 0.225 / 0.8;
    #          B: max IoU 1 / max metric 0.7: p2 0.6 / 0.7, p4 1.0, p5 0.1 / 0.7
    a = task_aligned_assign(SCORES, PRED, POINTS, GT_LABELS, GT_BOXES, GT_VALID, topk=3, alpha=0.5, beta=2.0)
    assert a.fg[0].tolist() == [True, True, True, False, True, True]
    assert a.gt_index[0][a.fg[0]].tolist() == [0, 0, 1, 1, 1]
    assert a.labels[0][a.fg[0]].tolist() == [0, 0, 1, 1, 1]
    torch.testing.assert_close(a.boxes[0, 4], GT_BOXES[0, 1])
    expected = torch.zeros(6, 2, dtype=torch.float64)
    expected[0, 0], expected[1, 0] = 1.0, 0.225 / 0.8
    expected[2, 1], expected[4, 1], expected[5, 1] = 0.6 / 0.7, 1.0, 0.1 / 0.7
    torch.testing.assert_close(a.scores[0], expected)


def test_every_inside_point_is_a_positive_when_fewer_than_topk_and_conflicts_go_to_higher_iou():
    # topk 10 > 4 candidates each: p1 is in A (IoU 1/2) and B (IoU 1/5) -> A; p4 -> B (1 vs 1/3)
    a = task_aligned_assign(SCORES, PRED, POINTS, GT_LABELS, GT_BOXES, GT_VALID, topk=10, alpha=0.5, beta=2.0)
    assert a.fg[0].all()
    assert a.gt_index[0].tolist() == [0, 0, 1, 0, 1, 1]
    # A's positives p0 p1 p3: metrics 0.8, 0.225, 0.05 over max 0.8, times max IoU 1
    torch.testing.assert_close(a.scores[0, 3], torch.tensor([0.05 / 0.8, 0.0], dtype=torch.float64))


def test_padding_rows_and_images_without_boxes_assign_nothing():
    scores = SCORES.expand(2, -1, -1).clone()
    pred = PRED.expand(2, -1, -1).clone()
    gt_valid = torch.tensor([[False, False, False], [True, False, False]])
    a = task_aligned_assign(scores, pred, POINTS, GT_LABELS.expand(2, -1), GT_BOXES.expand(2, -1, -1), gt_valid)
    assert not a.fg[0].any() and a.scores[0].abs().sum() == 0
    assert a.fg[1].tolist() == [True, True, False, True, True, False]  # only A, whose 4 points are inside
    none = task_aligned_assign(scores, pred, POINTS, torch.zeros(2, 0, dtype=torch.long),
                               torch.zeros(2, 0, 4, dtype=torch.float64), torch.zeros(2, 0, dtype=torch.bool))
    assert not none.fg.any() and none.scores.shape == scores.shape


def _reference(scores, pred, points, labels, boxes, valid, topk, alpha, beta):
    """Loops over images, boxes and points, in float64, straight from the definition."""
    b, n, nc = scores.shape
    fg = torch.zeros(b, n, dtype=torch.bool)
    gt_index = torch.zeros(b, n, dtype=torch.long)
    target = torch.zeros(b, n, nc, dtype=torch.float64)

    def iou(g, p):
        iw = max(0.0, min(g[2], p[2]) - max(g[0], p[0]))
        ih = max(0.0, min(g[3], p[3]) - max(g[1], p[1]))
        inter = iw * ih
        union = (g[2] - g[0]) * (g[3] - g[1]) + (p[2] - p[0]) * (p[3] - p[1]) - inter
        return inter / union

    for i in range(b):
        claims: dict[int, list[tuple[float, int, float]]] = {}  # point -> [(iou, box, metric)]
        for j in range(boxes.shape[1]):
            if not valid[i, j]:
                continue
            g = boxes[i, j].tolist()
            cands = []
            for a in range(n):
                x, y = points[a].tolist()
                if g[0] < x < g[2] and g[1] < y < g[3]:
                    u = iou(g, pred[i, a].tolist())
                    t = float(scores[i, a, labels[i, j]]) ** alpha * u ** beta
                    cands.append((t, a, u))
            for t, a, u in sorted(cands, reverse=True)[:topk]:
                claims.setdefault(a, []).append((u, j, t))
        owner = {a: max(c)[1:] for a, c in claims.items()}  # highest IoU wins
        for j in range(boxes.shape[1]):
            mine = [(a, t) for a, (jj, t) in owner.items() if jj == j]
            if not mine:
                continue
            max_t = max(t for _, t in mine)
            max_u = max(iou(boxes[i, j].tolist(), pred[i, a].tolist()) for a, _ in mine)
            for a, t in mine:
                fg[i, a], gt_index[i, a] = True, j
                target[i, a, labels[i, j]] = t * max_u / (max_t + 1e-9)
    return fg, gt_index, target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_loop_reference_on_random_scenes(seed):
    g = torch.Generator().manual_seed(seed)
    b, nc, m, side = 2, 3, 4, 8
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    points = (torch.stack((xs, ys), -1).reshape(-1, 2).double() + 0.5) * 8  # 64 points on a 64 px image
    n = len(points)
    xy1 = torch.rand(b, m, 2, generator=g, dtype=torch.float64) * 40
    boxes = torch.cat((xy1, xy1 + 8 + torch.rand(b, m, 2, generator=g, dtype=torch.float64) * 30), -1)
    labels = torch.randint(0, nc, (b, m), generator=g)
    valid = torch.rand(b, m, generator=g) > 0.2
    centre = points.unsqueeze(0) + torch.randn(b, n, 2, generator=g, dtype=torch.float64) * 3
    half = 4 + torch.rand(b, n, 2, generator=g, dtype=torch.float64) * 16
    pred = torch.cat((centre - half, centre + half), -1)
    scores = torch.rand(b, n, nc, generator=g, dtype=torch.float64)
    for topk, alpha, beta in [(10, 0.5, 6.0), (3, 1.0, 2.0)]:
        a = task_aligned_assign(scores, pred, points, labels, boxes, valid, topk=topk, alpha=alpha, beta=beta)
        fg, gt_index, target = _reference(scores, pred, points, labels, boxes, valid, topk, alpha, beta)
        assert fg.any()
        assert a.fg.tolist() == fg.tolist()
        assert a.gt_index[fg].tolist() == gt_index[fg].tolist()
        torch.testing.assert_close(a.scores, target, rtol=1e-9, atol=1e-12)
        assert not math.isnan(float(a.scores.sum()))
