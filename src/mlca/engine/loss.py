"""YOLOv5-style detection loss: CIoU box, BCE objectness (target = IoU), BCE class.

Targets are matched to anchors by width/height ratio (a target goes to every anchor whose
ratio to it is below ``anchor_t`` on both sides), and to three cells per level: the cell
holding its centre and the two neighbours nearest to the centre (the "0.5 offset" trick),
which triples the positives and lets a cell predict centres in ``(-0.5, 1.5)``. With the
``assign_tal`` setting the positives come from the task-aligned assignment instead (the rest
of the loss unchanged), so that what the assignment alone buys can be measured.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert, distance_box_iou_loss

from mlca.engine.unwrap import unwrap

@dataclass(frozen=True)
class LossGains:
    """The loss's settings: YOLOv5 hyp.scratch-low values, the reference for training from scratch
    that holds up on small datasets. The gains are rescaled in ``YoloLoss.__init__`` (see there).
    The ``*_af``, ``dfl`` and ``tal_*`` keys belong to the anchor-free head's loss, whose values
    are the ones YOLOv8's head is usually trained with.
    """

    box: float = 0.05  # box loss gain
    obj: float = 1.0  # objectness loss gain
    cls: float = 0.5  # class loss gain
    anchor_t: float = 4.0  # a target matches an anchor if max(w/wa, wa/w, h/ha, ha/h) < anchor_t
    label_smoothing: float = 0.0  # epsilon of label smoothing on the class BCE targets
    cls_pw: float = 1.0  # positive weight of the class BCE
    obj_pw: float = 1.0  # positive weight of the objectness BCE
    # the anchor-free head's loss (mlca.engine.loss_af): its terms are normalised by the sum of
    # the target scores, not averaged over positives, hence gains of another scale than box/cls
    box_af: float = 7.5  # CIoU gain
    cls_af: float = 0.5  # classification BCE gain
    dfl: float = 1.5  # distribution focal loss gain
    tal_topk: float = 10  # task-aligned assignment: positives per box at most
    tal_alpha: float = 0.5  # exponent of the class score in the alignment metric
    tal_beta: float = 6.0  # exponent of the IoU in the alignment metric
    # the anchor-based head's assignment: 0 = YOLOv5's ratio matching (the paper's), 1 = the
    # task-aligned assignment (tal_* settings) over every (level, anchor, cell), everything else
    # of YOLOv5's loss unchanged: the assignment alone, to measure what it buys
    assign_tal: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(f"loss gain {f.name!r} must be a number, got {v!r}")
            object.__setattr__(self, f.name, float(v))
        if self.anchor_t <= 1.0:
            raise ValueError(f"loss gain 'anchor_t' must be > 1 (a ratio), got {self.anchor_t}")
        if self.tal_topk < 1 or self.tal_topk != int(self.tal_topk):
            raise ValueError(f"loss gain 'tal_topk' must be a whole number >= 1, got {self.tal_topk}")
        if self.assign_tal not in (0.0, 1.0):
            raise ValueError(f"loss gain 'assign_tal' must be 0 (YOLOv5's ratio matching) or 1 (task-aligned), "
                             f"got {self.assign_tal}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"loss gain 'label_smoothing' must be in [0, 1), got {self.label_smoothing}")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, hyp: Mapping[str, Any] | None) -> LossGains:
        """The defaults updated with ``hyp``'s loss keys; other keys (augmentation, ``img_size``) are ignored."""
        return cls(**{k: v for k, v in (hyp or {}).items() if k in cls.keys()})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


# Objectness weight per level (P3, P4, P5): small-stride maps have many more negative cells.
BALANCE = (4.0, 1.0, 0.4)

# Subtracted from the centre (times 0.5) to reach: its own cell, then the left, upper, right and
# lower neighbour.
_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)


def _grid_anchors(model: nn.Module) -> Tensor:
    """Anchors of ``model`` in grid units of each level: (nl, na, 2)."""
    anchors = model.detect.anchors.detach().float()
    stride = torch.as_tensor(model.stride, dtype=torch.float32, device=anchors.device)
    return anchors / stride.view(-1, 1, 1)


class YoloLoss:
    """YOLOv5-6.x loss for MAY's raw outputs.

    Args:
        model: the detector (or a DDP wrapper around it); read for ``detect.anchors`` (pixels,
            ``(nl, na, 2)``), ``stride`` (``(nl,)``) and ``num_classes``. Anchors are read at every
            call, so anchors refitted after construction (autoanchor) are used.
        gains: a :class:`LossGains`, or a mapping of overrides of its defaults (keys that are
            not loss settings are ignored, so a whole hyperparameter dict may be passed; its
            ``img_size`` key is read when ``img_size`` is not given). The gains are scaled as in
            YOLOv5 so one set of hyperparameters works across class counts, level counts and
            image sizes: ``box *= 3/nl``, ``cls *= nc/80 * 3/nl``, ``obj *= (img_size/640)^2 * 3/nl``.
        img_size: the training image size (default 640, YOLOv5's reference size).

    ``__call__(raw, targets)``:
        raw: list of ``nl`` tensors ``(B, na, h_i, w_i, 5 + nc)`` of logits (``model.train()`` output).
        targets: ``(N, 6)`` rows ``[img_idx, cls, cx, cy, w, h]``, box normalised to the input image.
        Returns ``(loss, items)``: ``loss`` a scalar equal to ``(box + obj + cls) * B`` (YOLOv5
        convention, so the gradient scales with batch size) and ``items`` the detached ``(3,)``
        ``[box, obj, cls]`` per-image losses for logging.
    """

    def __init__(
        self, model: nn.Module, gains: LossGains | Mapping[str, Any] | None = None, img_size: int | None = None
    ) -> None:
        if not isinstance(gains, LossGains):
            if img_size is None and gains is not None and "img_size" in gains:
                img_size = int(gains["img_size"])
            gains = LossGains.from_mapping(gains)
        self.gains = gains
        self.img_size = 640 if img_size is None else int(img_size)
        self.model = unwrap(model)
        self.nc = int(self.model.num_classes)
        anchors = self.model.detect.anchors
        self.nl, self.na = int(anchors.shape[0]), int(anchors.shape[1])
        if not 1 <= self.nl <= 5:
            raise ValueError(f"YoloLoss supports 1 to 5 detection levels, the model has {self.nl}")
        # YOLOv5's balance for other level counts (P3-P7)
        self.balance = BALANCE if self.nl == 3 else (4.0, 1.0, 0.25, 0.06, 0.02)[: self.nl]
        scale = 3.0 / self.nl
        self.box_gain = gains.box * scale
        self.cls_gain = gains.cls * self.nc / 80.0 * scale
        self.obj_gain = gains.obj * (self.img_size / 640.0) ** 2 * scale
        self.anchor_t = gains.anchor_t
        eps = gains.label_smoothing
        # label smoothing as in YOLOv5 (BCE targets 1 - eps/2 and eps/2)
        self.cls_pos, self.cls_neg = 1.0 - 0.5 * eps, 0.5 * eps

    def __call__(self, raw: list[Tensor], targets: Tensor) -> tuple[Tensor, Tensor]:
        """raw: nl x (B, na, h, w, 5+nc) logits; targets: (N, 6). Returns (scalar, (3,))."""
        if len(raw) != self.nl:
            raise ValueError(f"YoloLoss expects {self.nl} output levels, got {len(raw)}")
        for i, p in enumerate(raw):
            if p.dim() != 5 or p.shape[1] != self.na or p.shape[-1] != 5 + self.nc:
                raise ValueError(
                    f"raw output {i} has shape {tuple(p.shape)}; expected (B, {self.na}, h, w, {5 + self.nc})"
                )
        if targets.dim() != 2 or targets.shape[1] != 6:
            raise ValueError(f"targets must be (N, 6) [img, cls, cx, cy, w, h], got {tuple(targets.shape)}")
        if len(targets):
            cls, img = targets[:, 1], targets[:, 0]
            if cls.min() < 0 or cls.max() >= self.nc:
                raise ValueError(f"target classes must be in [0, {self.nc}), got {cls.min():g}..{cls.max():g}")
            if img.min() < 0 or img.max() >= raw[0].shape[0]:
                raise ValueError(f"target image indices must be in [0, {raw[0].shape[0]}), got up to {img.max():g}")
        device = raw[0].device
        targets = targets.to(device=device, dtype=torch.float32)
        # the loss is computed in float32 even under autocast: BCE and CIoU are unstable in fp16
        raw = [p.float() for p in raw]
        anchors = _grid_anchors(self.model).to(device)
        assign = self.build_targets_tal if self.gains.assign_tal else self.build_targets
        tcls, tbox, indices = assign(raw, targets)

        pos_weight_cls = torch.tensor([self.gains.cls_pw], device=device)
        pos_weight_obj = torch.tensor([self.gains.obj_pw], device=device)
        lbox = torch.zeros((), device=device)
        lobj = torch.zeros((), device=device)
        lcls = torch.zeros((), device=device)
        for i, p in enumerate(raw):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(p.shape[:4], device=device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = p[b, a, gj, gi].split((2, 2, 1, self.nc), dim=1)
                # the same decoding as the model's eval path, in grid units relative to the cell
                pxy, pwh = _decode(pxy, pwh, anchors[i][a])
                ciou = bbox_ciou(_cxcywh_to_xyxy(pxy, pwh), _cxcywh_to_xyxy(*tbox[i].split(2, 1)))
                lbox = lbox + (1.0 - ciou).mean()
                # objectness learns to predict the box quality, not just presence
                tobj[b, a, gj, gi] = ciou.detach().clamp(min=0)
                if self.nc > 1:  # with one class, objectness already is the class score
                    t = torch.full_like(pcls, self.cls_neg)
                    t[torch.arange(n, device=device), tcls[i]] = self.cls_pos
                    lcls = lcls + nn.functional.binary_cross_entropy_with_logits(pcls, t, pos_weight=pos_weight_cls)
            lobj = lobj + self.balance[i] * nn.functional.binary_cross_entropy_with_logits(
                p[..., 4], tobj, pos_weight=pos_weight_obj
            )
        lbox = lbox * self.box_gain
        lobj = lobj * self.obj_gain
        lcls = lcls * self.cls_gain
        bs = raw[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.stack((lbox, lobj, lcls)).detach()

    @torch.no_grad()
    def build_targets(
        self, raw: list[Tensor], targets: Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[tuple[Tensor, Tensor, Tensor, Tensor]]]:
        """Assign targets to (level, anchor, cell).

        Args:
            raw: nl x (B, na, h, w, 5+nc) (only the grid sizes are read).
            targets: (N, 6) [img, cls, cx, cy, w, h] normalised.
        Returns per level ``i``:
            ``tcls[i]`` (M,) class, ``tbox[i]`` (M, 4) ``[x, y, w, h]`` in grid units with x, y
            relative to the assigned cell's corner, ``indices[i]`` = (img, anchor, gj, gi), each (M,).
        """
        device = targets.device
        anchors = _grid_anchors(self.model).to(device)
        nt = targets.shape[0]
        # one copy of every target per anchor, with the anchor index appended: (na, nt, 7)
        ai = torch.arange(self.na, device=device, dtype=torch.float32).view(self.na, 1).expand(self.na, nt)
        t_all = torch.cat((targets.unsqueeze(0).expand(self.na, nt, 6), ai.unsqueeze(-1)), dim=2)
        offsets_table = _OFFSETS.to(device) * 0.5
        tcls, tbox, indices = [], [], []
        for i, p in enumerate(raw):
            h, w = p.shape[2], p.shape[3]
            gain = torch.tensor([1, 1, w, h, w, h, 1], device=device, dtype=torch.float32)
            t = t_all * gain  # boxes in grid units of this level
            if nt:
                r = t[..., 4:6] / anchors[i].unsqueeze(1)
                match = torch.max(r, 1.0 / r).max(dim=2).values < self.anchor_t  # (na, nt)
                t = t[match]
                gxy = t[:, 2:4]
                gxy_inv = gain[[2, 3]] - gxy
                # a neighbour is used when the centre lies in the half of the cell facing it,
                # and the neighbour exists (the "> 1" keeps it inside the grid)
                left, up = ((gxy % 1 < 0.5) & (gxy > 1)).T
                right, down = ((gxy_inv % 1 < 0.5) & (gxy_inv > 1)).T
                use = torch.stack((torch.ones_like(left), left, up, right, down))  # (5, M)
                t = t.unsqueeze(0).expand(5, -1, -1)[use]
                offsets = (torch.zeros_like(gxy).unsqueeze(0) + offsets_table.unsqueeze(1))[use]
            else:
                t = t_all[0]
                offsets = torch.zeros((0, 2), device=device)
            b, c = t[:, 0].long(), t[:, 1].long()
            gxy, gwh, a = t[:, 2:4], t[:, 4:6], t[:, 6].long()
            gij = (gxy - offsets).long()
            gi = gij[:, 0].clamp(0, w - 1)
            gj = gij[:, 1].clamp(0, h - 1)
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - torch.stack((gi, gj), 1), gwh), 1))
            tcls.append(c)
        return tcls, tbox, indices


    @torch.no_grad()
    def build_targets_tal(
        self, raw: list[Tensor], targets: Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[tuple[Tensor, Tensor, Tensor, Tensor]]]:
        """:func:`~mlca.engine.tal.task_aligned_assign` over every (level, anchor, cell) prediction,
        returned as :meth:`build_targets` returns its assignment.

        Each prediction is decoded as the model decodes it (pixels of the input), its point is its
        cell's centre, its class scores are ``sigmoid(obj) * sigmoid(cls)`` (``sigmoid(obj)`` alone
        with one class, where objectness is the class score). A positive's box target is its
        assigned box in the level's grid units, x, y relative to the cell's corner, as in
        :meth:`build_targets`; a cell reaches centres in (-0.5, 1.5) only, so the IoU term of the
        metric favours the cells near a box's centre.
        """
        from mlca.engine.loss_af import targets_to_padded
        from mlca.engine.tal import task_aligned_assign

        device = raw[0].device
        anchors = _grid_anchors(self.model).to(device)
        strides = [float(s) for s in self.model.stride]
        bs = raw[0].shape[0]
        boxes, scores, points, sizes = [], [], [], []
        for i, p in enumerate(raw):
            h, w, s = p.shape[2], p.shape[3], strides[i]
            gy, gx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
            cell = torch.stack((gx, gy), -1).to(p.dtype)  # (h, w, 2)
            oxy, wh = _decode(p[..., :2], p[..., 2:4], anchors[i].view(1, self.na, 1, 1, 2))  # (B, na, h, w, 2)
            boxes.append(_cxcywh_to_xyxy((oxy + cell) * s, wh * s).flatten(1, 3))
            obj = p[..., 4:5].sigmoid()
            scores.append((obj * p[..., 5:].sigmoid() if self.nc > 1 else obj).flatten(1, 3))
            points.append(((cell + 0.5) * s).expand(self.na, h, w, 2).reshape(-1, 2))
            sizes.append((h, w))
        scale = torch.tensor([sizes[0][1] * strides[0], sizes[0][0] * strides[0]] * 2, device=device,
                             dtype=raw[0].dtype)
        labels, gt_boxes, valid = targets_to_padded(targets.to(raw[0].dtype), bs, scale)
        a = task_aligned_assign(torch.cat(scores, 1), torch.cat(boxes, 1), torch.cat(points, 0), labels,
                                gt_boxes, valid, topk=int(self.gains.tal_topk), alpha=self.gains.tal_alpha,
                                beta=self.gains.tal_beta)
        tcls, tbox, indices = [], [], []
        start = 0
        for (h, w), s in zip(sizes, strides):
            n = self.na * h * w
            b, k = a.fg[:, start : start + n].nonzero(as_tuple=True)
            anchor, gj, gi = k // (h * w), (k % (h * w)) // w, k % w
            g = box_convert(a.boxes[b, start + k] / s, "xyxy", "cxcywh")  # (M, 4) in grid units
            g[:, :2] -= torch.stack((gi, gj), 1).to(g.dtype)
            tbox.append(g.float())
            tcls.append(a.labels[b, start + k])
            indices.append((b, anchor, gj, gi))
            start += n
        return tcls, tbox, indices


def bbox_ciou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU (Zheng et al. 2020) of paired boxes: (M, 4), (M, 4) xyxy -> (M,).

    ``IoU - rho^2 / c^2 - alpha * v``, with ``v = 4 / pi^2 (atan(w_gt / h_gt) - atan(w / h))^2``
    and ``alpha = v / (1 - IoU + v)`` treated as a constant in backward, as the paper
    prescribes. The distance part is torchvision's DIoU; the aspect term is computed here with
    ``eps`` in both divisions, because torchvision's CIoU divides by the heights as they are: a
    predicted box whose height has underflowed to 0 (the sigmoid of a very negative logit)
    then gives a NaN gradient, which poisons every weight at the next step.
    """
    diou = 1.0 - distance_box_iou_loss(boxes1, boxes2, eps=eps)
    w1, h1 = boxes1[:, 2] - boxes1[:, 0], boxes1[:, 3] - boxes1[:, 1]
    w2, h2 = boxes2[:, 2] - boxes2[:, 0], boxes2[:, 3] - boxes2[:, 1]
    v = (4 / torch.pi**2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    with torch.no_grad():
        lt = torch.maximum(boxes1[:, :2], boxes2[:, :2])
        rb = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
        inter = (rb - lt).clamp(min=0).prod(1)
        iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


def _decode(txy: Tensor, twh: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
    """YOLOv5's box decoding of logits, in grid units (the model's eval path, before the cell
    offset and the stride): centre offsets in (-0.5, 1.5) from the cell's corner, sizes in
    (0, 4) anchors. ``txy``, ``twh`` (..., 2); ``anchors`` broadcastable to them."""
    return txy.sigmoid() * 2 - 0.5, (twh.sigmoid() * 2) ** 2 * anchors


def _cxcywh_to_xyxy(xy: Tensor, wh: Tensor) -> Tensor:
    """(..., 2), (..., 2) -> (..., 4) corners."""
    return torch.cat((xy - wh / 2, xy + wh / 2), dim=-1)


__all__ = ["BALANCE", "LossGains", "YoloLoss", "bbox_ciou"]
