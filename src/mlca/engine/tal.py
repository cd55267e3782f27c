"""Task-aligned label assignment (TOOD, Feng et al. 2021) for anchor-free heads.

For every ground-truth box ``g`` and prediction (anchor point) ``a``:

1. ``a`` is a candidate of ``g`` only if its point lies inside ``g``;
2. the alignment metric ``t = s ** alpha * u ** beta``, with ``s`` the predicted probability of
   ``g``'s class at ``a`` and ``u`` the IoU of ``a``'s predicted box with ``g``, ranks the
   candidates, and the ``topk`` highest become positives of ``g`` (all of them when fewer lie
   inside ``g``);
3. a prediction that is a positive of several boxes keeps the one it overlaps most (IoU);
4. the classification target of a positive is its normalised metric,
   ``t * max_u(g) / max_t(g)`` over ``g``'s positives, at ``g``'s class (0 elsewhere), so the
   best-aligned prediction of each box is trained towards the box's best IoU, and the class
   score learns to rank boxes by quality (no objectness branch is needed).

The metric uses the predictions, so the assignment follows the model as it learns; it is
computed without gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Assignment", "pairwise_iou", "task_aligned_assign"]

EPS = 1e-9


@dataclass
class Assignment:
    """Per prediction: ``fg`` (B, N) bool, ``gt_index`` (B, N) long (index into the image's boxes,
    0 where not ``fg``), ``labels`` (B, N) long, ``boxes`` (B, N, 4) xyxy, ``scores`` (B, N, nc)."""

    fg: Tensor
    gt_index: Tensor
    labels: Tensor
    boxes: Tensor
    scores: Tensor


def pairwise_iou(gt: Tensor, pred: Tensor) -> Tensor:
    """gt (B, M, 4) and pred (B, N, 4) xyxy -> (B, M, N) IoU of every box with every prediction."""
    g, p = gt.unsqueeze(2), pred.unsqueeze(1)
    wh = (torch.minimum(g[..., 2:], p[..., 2:]) - torch.maximum(g[..., :2], p[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_g = (g[..., 2] - g[..., 0]).clamp(min=0) * (g[..., 3] - g[..., 1]).clamp(min=0)
    area_p = (p[..., 2] - p[..., 0]).clamp(min=0) * (p[..., 3] - p[..., 1]).clamp(min=0)
    return inter / (area_g + area_p - inter + EPS)


@torch.no_grad()
def task_aligned_assign(
    scores: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    gt_labels: Tensor,
    gt_boxes: Tensor,
    gt_valid: Tensor,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
) -> Assignment:
    """Assign ground-truth boxes to predictions (see the module docstring).

    Args:
        scores: (B, N, nc) predicted class probabilities (after the sigmoid).
        pred_boxes: (B, N, 4) predicted boxes, xyxy, in the units of ``gt_boxes``.
        points: (N, 2) anchor points, same units.
        gt_labels: (B, M) long classes; gt_boxes: (B, M, 4) xyxy; gt_valid: (B, M) bool (images
            hold different numbers of boxes: the rows past an image's count are padding).
        topk: positives per box at most; alpha, beta: exponents of the alignment metric.

    Returns:
        An :class:`Assignment` (no prediction is ``fg`` for an image without boxes).
    """
    b, n, nc = scores.shape
    m = gt_boxes.shape[1]
    device = scores.device
    if m == 0:
        return Assignment(torch.zeros(b, n, dtype=torch.bool, device=device),
                          torch.zeros(b, n, dtype=torch.long, device=device),
                          torch.zeros(b, n, dtype=torch.long, device=device),
                          torch.zeros(b, n, 4, dtype=pred_boxes.dtype, device=device),
                          torch.zeros_like(scores))
    # 1. candidates: the point lies strictly inside the box (and the box is not padding)
    x, y = points[:, 0].view(1, 1, n), points[:, 1].view(1, 1, n)
    gx1, gy1, gx2, gy2 = (gt_boxes[..., k].unsqueeze(-1) for k in range(4))
    inside = (x > gx1) & (x < gx2) & (y > gy1) & (y < gy2) & gt_valid.unsqueeze(-1)  # (B, M, N)
    # 2. alignment metric t = s^alpha * u^beta, over the candidates only
    iou = pairwise_iou(gt_boxes, pred_boxes) * inside  # (B, M, N)
    cls_idx = gt_labels.clamp(0, nc - 1).unsqueeze(-1).expand(b, m, n)
    s = scores.transpose(1, 2).gather(1, cls_idx)  # (B, M, N): p(class of g) at each prediction
    metric = s.pow(alpha) * iou.pow(beta) * inside
    k = min(int(topk), n)
    # ties broken towards candidates: non-candidates rank below every candidate
    rank_key = torch.where(inside, metric, torch.full_like(metric, -1.0))
    top = rank_key.topk(k, dim=-1).indices  # (B, M, k)
    pos = torch.zeros_like(inside).scatter_(-1, top, True) & inside  # (B, M, N)
    # 3. a prediction claimed by several boxes keeps the box it overlaps most
    iou_pos = torch.where(pos, iou, torch.full_like(iou, -1.0))
    best = iou_pos.argmax(1)  # (B, N)
    fg = pos.any(1)
    pos = pos & (torch.arange(m, device=device).view(1, m, 1) == best.unsqueeze(1))
    # 4. targets, with the metric normalised per box to the box's best IoU
    metric = metric * pos
    iou_p = iou * pos
    max_metric = metric.amax(-1, keepdim=True)
    max_iou = iou_p.amax(-1, keepdim=True)
    norm = (metric * max_iou / (max_metric + EPS)).amax(1)  # (B, N): one box per prediction at most
    gt_index = torch.where(fg, best, torch.zeros_like(best))
    labels = gt_labels.gather(1, gt_index).clamp(0, nc - 1)
    boxes = gt_boxes.gather(1, gt_index.unsqueeze(-1).expand(b, n, 4))
    target_scores = torch.zeros_like(scores)
    target_scores.scatter_(-1, labels.unsqueeze(-1), (norm * fg).unsqueeze(-1).to(scores.dtype))
    return Assignment(fg, gt_index, labels, boxes, target_scores)
