"""Loss of the anchor-free decoupled head: BCE classification + CIoU + distribution focal loss.

Assignment is task-aligned (:mod:`mlca.engine.tal`). With ``T`` the sum of all target scores
(at least 1), per batch:

- class: BCE of every prediction's class logits against the assignment's target scores
  (soft, IoU-like, for positives; 0 elsewhere), summed and divided by ``T``;
- box: ``1 - CIoU`` of each positive's decoded box with its target box, weighted by the
  positive's target score, summed and divided by ``T``;
- DFL (Generalized Focal Loss, Li et al. 2020): each side's distance ``y`` (in strides) to the
  target box, between bins ``i = floor(y)`` and ``i + 1``, is learnt as the two-bin
  distribution ``(i + 1 - y, y - i)``: ``-((i + 1 - y) log S_i + (y - i) log S_{i+1})`` with
  ``S`` the softmax over the bins, averaged over the four sides and weighted like the box term.

The total is ``(box_af * box + cls_af * cls + dfl * dfl) * B`` (the batch-size convention of
:class:`~mlca.engine.loss.YoloLoss`), with the gains of :class:`~mlca.engine.loss.LossGains`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlca.engine.loss import LossGains, bbox_ciou
from mlca.engine.tal import task_aligned_assign
from mlca.engine.unwrap import unwrap

__all__ = ["AnchorFreeLoss", "dfl_loss", "dfl_targets", "targets_to_padded"]


def dfl_targets(y: Tensor, reg_max: int) -> Tensor:
    """(...,) distances in [0, reg_max - 1] -> (..., reg_max) two-hot distributions whose expected
    bin index is ``y``: weight ``i + 1 - y`` on bin ``i = floor(y)`` and ``y - i`` on ``i + 1``."""
    y = y.clamp(0, reg_max - 1 - 1e-4)
    left = y.floor()
    w_right = y - left
    out = torch.zeros(*y.shape, reg_max, dtype=y.dtype, device=y.device)
    out.scatter_(-1, left.long().unsqueeze(-1), (1 - w_right).unsqueeze(-1))
    out.scatter_add_(-1, (left.long() + 1).unsqueeze(-1), w_right.unsqueeze(-1))
    return out


def dfl_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Distribution focal loss: logits (M, 4, reg_max), target distances y (M, 4) in bins -> (M,)
    the mean over the four sides of the cross-entropy with the two-hot target of ``y``."""
    reg_max = logits.shape[-1]
    target = dfl_targets(y, reg_max)
    return -(target * F.log_softmax(logits, -1)).sum(-1).mean(-1)


def targets_to_padded(targets: Tensor, batch: int, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(T, 6) rows ``[img, cls, cx, cy, w, h]`` (normalised) -> per image, padded to the largest count:
    labels (B, M) long, boxes (B, M, 4) xyxy in pixels (``scale`` = ``[W, H, W, H]``), valid (B, M) bool."""
    img = targets[:, 0].long()
    counts = torch.bincount(img, minlength=batch) if len(targets) else torch.zeros(batch, dtype=torch.long)
    m = int(counts.max()) if len(targets) else 0
    labels = torch.zeros(batch, m, dtype=torch.long, device=targets.device)
    boxes = torch.zeros(batch, m, 4, dtype=targets.dtype, device=targets.device)
    valid = torch.zeros(batch, m, dtype=torch.bool, device=targets.device)
    if m:
        order = torch.argsort(img, stable=True)
        img, t = img[order], targets[order]
        start = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(t), device=targets.device) - start.to(targets.device)[img]
        xy, wh = t[:, 2:4], t[:, 4:6]
        labels[img, slot] = t[:, 1].long()
        boxes[img, slot] = torch.cat((xy - wh / 2, xy + wh / 2), 1) * scale
        valid[img, slot] = True
    return labels, boxes, valid


class AnchorFreeLoss:
    """Loss for :class:`~mlca.models.head_decoupled.DecoupledDetect`'s raw outputs.

    Args:
        model: the detector (or a wrapper); read for ``detect.reg_max``, ``detect.strides``, ``num_classes``.
        gains: a :class:`~mlca.engine.loss.LossGains` or a mapping of overrides; this loss reads
            ``box_af``, ``cls_af``, ``dfl``, ``tal_topk``, ``tal_alpha``, ``tal_beta``.
        img_size: accepted for the same interface as :class:`~mlca.engine.loss.YoloLoss` (unused:
            the terms are normalised by the target scores, not by the number of cells).

    ``__call__(raw, targets)``:
        raw: nl tensors (B, 4 * reg_max + nc, h_i, w_i) (``model.train()`` output).
        targets: (T, 6) ``[img, cls, cx, cy, w, h]``, box normalised to the input image.
        Returns ``(loss, items)``: the scalar (see the module docstring) and the detached (3,)
        ``[box, dfl, cls]`` terms after their gains.
    """

    item_names = ("box", "dfl", "cls")

    def __init__(self, model: nn.Module, gains: LossGains | Mapping[str, Any] | None = None,
                 img_size: int | None = None) -> None:
        self.gains = gains if isinstance(gains, LossGains) else LossGains.from_mapping(gains)
        self.model = unwrap(model)
        self.nc = int(self.model.num_classes)
        det = self.model.detect
        self.reg_max, self.strides = int(det.reg_max), tuple(int(s) for s in det.strides)

    def __call__(self, raw: list[Tensor], targets: Tensor) -> tuple[Tensor, Tensor]:
        """raw: nl x (B, 4R + nc, h, w); targets: (T, 6). Returns (scalar, (3,))."""
        no = 4 * self.reg_max + self.nc
        if len(raw) != len(self.strides):
            raise ValueError(f"AnchorFreeLoss expects {len(self.strides)} output levels, got {len(raw)}")
        for i, p in enumerate(raw):
            if p.dim() != 4 or p.shape[1] != no:
                raise ValueError(f"raw output {i} has shape {tuple(p.shape)}; expected (B, {no}, h, w)")
        if targets.dim() != 2 or targets.shape[1] != 6:
            raise ValueError(f"targets must be (N, 6) [img, cls, cx, cy, w, h], got {tuple(targets.shape)}")
        bs = raw[0].shape[0]
        if len(targets):
            cls, img = targets[:, 1], targets[:, 0]
            if cls.min() < 0 or cls.max() >= self.nc:
                raise ValueError(f"target classes must be in [0, {self.nc}), got {cls.min():g}..{cls.max():g}")
            if img.min() < 0 or img.max() >= bs:
                raise ValueError(f"target image indices must be in [0, {bs}), got up to {img.max():g}")
        # float32 at least, even under autocast (BCE and CIoU are unstable in fp16); float64 stays
        dtype = raw[0].dtype if raw[0].dtype == torch.float64 else torch.float32
        raw = [p.to(dtype) for p in raw]
        return self.from_assignment(raw, self.assign(raw, targets))

    def _flat(self, raw: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> x (B, N, 4R + nc), predicted boxes (B, N, 4) xyxy in strides, points (N, 2) in strides, stride (N, 1)."""
        from mlca.models.head_decoupled import anchor_points, distances_to_boxes, expected_distance

        shapes = [(p.shape[2], p.shape[3]) for p in raw]
        x = torch.cat([p.flatten(2) for p in raw], 2).transpose(1, 2)
        points, stride = anchor_points(shapes, self.strides, x)
        pts_s = points / stride  # each prediction in units of its own stride
        pred = distances_to_boxes(pts_s, expected_distance(x[..., : 4 * self.reg_max], self.reg_max))
        return x, pred, pts_s, stride

    @torch.no_grad()
    def assign(self, raw: list[Tensor], targets: Tensor):
        """The task-aligned :class:`~mlca.engine.tal.Assignment` of ``targets`` to ``raw``'s predictions."""
        x, pred, pts_s, stride = self._flat(raw)
        h, w = raw[0].shape[2] * self.strides[0], raw[0].shape[3] * self.strides[0]
        scale = torch.tensor([w, h, w, h], dtype=x.dtype, device=x.device)
        labels, gt_boxes, valid = targets_to_padded(targets.to(device=x.device, dtype=x.dtype), x.shape[0], scale)
        return task_aligned_assign(x[..., 4 * self.reg_max:].sigmoid(), pred * stride, pts_s * stride,
                                   labels, gt_boxes, valid, topk=int(self.gains.tal_topk),
                                   alpha=self.gains.tal_alpha, beta=self.gains.tal_beta)

    def from_assignment(self, raw: list[Tensor], a) -> tuple[Tensor, Tensor]:
        """The loss of ``raw`` for a given assignment ``a``: ``(scalar, (3,) [box, dfl, cls])``."""
        x, pred_boxes, pts_s, stride = self._flat(raw)
        bs = x.shape[0]
        box_logits, cls_logits = x[..., : 4 * self.reg_max], x[..., 4 * self.reg_max:]
        tss = a.scores.sum().clamp(min=1)
        lcls = F.binary_cross_entropy_with_logits(cls_logits, a.scores, reduction="sum") / tss
        fg = a.fg
        if fg.any():
            weight = a.scores.sum(-1)[fg]  # (P,)
            s = stride.expand(bs, -1, -1)[fg]  # (P, 1)
            t_boxes = a.boxes[fg] / s
            ciou = bbox_ciou(pred_boxes[fg], t_boxes)
            lbox = (weight * (1 - ciou)).sum() / tss
            pt = pts_s.expand(bs, -1, -1)[fg]
            t_ltrb = torch.cat((pt - t_boxes[:, :2], t_boxes[:, 2:] - pt), 1)
            ldfl = (weight * dfl_loss(box_logits[fg].unflatten(-1, (4, self.reg_max)), t_ltrb)).sum() / tss
        else:
            lbox = ldfl = box_logits.sum() * 0
        lbox, lcls, ldfl = lbox * self.gains.box_af, lcls * self.gains.cls_af, ldfl * self.gains.dfl
        return (lbox + lcls + ldfl) * bs, torch.stack((lbox, ldfl, lcls)).detach()
