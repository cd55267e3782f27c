"""Anchor-free decoupled detection head: separate box and class branches per level, boxes as
distributions over distances (Generalized Focal Loss, Li et al. 2020).

Every cell of every level is one prediction, its *anchor point* the cell centre
``((x + 0.5) * s, (y + 0.5) * s)``. The box branch gives, for each of the four distances from
the point to the box's left, top, right and bottom side, ``reg_max`` logits over the bins
``0, 1, ..., reg_max - 1`` (in units of the level's stride); the distance is the expected
value of the softmax over the bins. The class branch gives ``nc`` logits (no objectness: the
class score is trained to be the box quality, see :mod:`mlca.engine.tal`).

At inference the output has the layout of the anchor-based head, ``(B, N, 5 + nc)`` with
columns ``[cx, cy, w, h]`` in input pixels, an objectness column that is always 1, and the
class probabilities, so NMS, evaluation, export and the ONNX runtime read both heads the same
way (score = obj * p_cls = p_cls).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .layers import ConvBNAct

__all__ = ["DecoupledDetect", "REG_MAX", "anchor_points", "distances_to_boxes", "expected_distance"]

REG_MAX = 16  # bins per side: distances up to 15 strides (120 px at P3, 480 px at P5)


def expected_distance(logits: Tensor, reg_max: int) -> Tensor:
    """(..., 4 * reg_max) logits -> (..., 4) expected bin index per side (left, top, right, bottom)."""
    p = logits.unflatten(-1, (4, reg_max)).softmax(-1)
    bins = torch.arange(reg_max, dtype=p.dtype, device=p.device)
    return (p * bins).sum(-1)


def distances_to_boxes(points: Tensor, ltrb: Tensor) -> Tensor:
    """points (..., 2) and distances (..., 4) ``[l, t, r, b]`` in the same units -> (..., 4) xyxy."""
    return torch.cat((points - ltrb[..., :2], points + ltrb[..., 2:]), -1)


def anchor_points(shapes: Sequence[tuple[int, int]], strides: Sequence[int], ref: Tensor) -> tuple[Tensor, Tensor]:
    """Cell centres of every level, concatenated level by level in row-major order.

    Returns ``(points (N, 2) in input pixels, stride (N, 1))`` in ``ref``'s dtype and device.
    """
    pts, strs = [], []
    for (ny, nx), s in zip(shapes, strides):
        ys = (torch.arange(ny, device=ref.device, dtype=ref.dtype) + 0.5) * s
        xs = (torch.arange(nx, device=ref.device, dtype=ref.dtype) + 0.5) * s
        yv, xv = torch.meshgrid(ys, xs, indexing="ij")
        pts.append(torch.stack((xv, yv), -1).reshape(-1, 2))
        strs.append(torch.full((ny * nx, 1), float(s), device=ref.device, dtype=ref.dtype))
    return torch.cat(pts), torch.cat(strs)


class _Branch(nn.Sequential):
    """Two 3x3 conv-BN-SiLU layers and a 1x1 prediction conv: (B, c, h, w) -> (B, out, h, w)."""

    def __init__(self, c: int, hidden: int, out: int):
        super().__init__(ConvBNAct(c, hidden, 3), ConvBNAct(hidden, hidden, 3), nn.Conv2d(hidden, out, 1))


class DecoupledDetect(nn.Module):
    """Anchor-free decoupled head.

    Args:
        num_classes: number of classes ``nc``.
        in_channels: channels of the three neck outputs.
        strides: stride of each level.
        reg_max: bins per box side.

    Attributes:
        nc, nl, reg_max, no (= 5 + nc, the inference row width), stride buffer ``(nl,)``,
        box (per-level box branches), cls (per-level class branches).
    """

    def __init__(self, num_classes: int, in_channels: Sequence[int], strides: Sequence[int] = (8, 16, 32),
                 reg_max: int = REG_MAX):
        super().__init__()
        if len(in_channels) != len(strides):
            raise ValueError(f"DecoupledDetect: {len(in_channels)} input levels for {len(strides)} strides")
        if int(reg_max) < 2:
            raise ValueError(f"DecoupledDetect: reg_max must be >= 2, got {reg_max}")
        self.nc = int(num_classes)
        self.nl = len(strides)
        self.reg_max = int(reg_max)
        self.no = self.nc + 5
        self.strides: tuple[int, ...] = tuple(int(s) for s in strides)
        self.register_buffer("stride", torch.tensor(self.strides, dtype=torch.float32))
        # light branches: a quarter of the level's channels, at least enough for the 4 x reg_max logits
        self.box = nn.ModuleList(_Branch(c, max(16, c // 4, 4 * self.reg_max), 4 * self.reg_max) for c in in_channels)
        self.cls = nn.ModuleList(_Branch(c, max(16, c // 4, min(self.nc, 128)), self.nc) for c in in_channels)
        self.init_biases()

    @torch.no_grad()
    def init_biases(self, image_size: int = 640) -> None:
        """Class prior of a few objects per image (focal loss's prior: the first class losses are
        not swamped by the many empty cells); equal box logits, a uniform distribution over the bins."""
        for box, cls, s in zip(self.box, self.cls, self.strides):
            box[-1].bias.fill_(1.0)
            cls[-1].bias.fill_(math.log(5 / self.nc / (image_size / s) ** 2))

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor] | Tensor:
        """feats: nl tensors (B, c_i, h_i, w_i).

        Returns:
            training: list of nl raw tensors (B, 4 * reg_max + nc, h_i, w_i) (box logits, then
            class logits);
            eval: (B, N, 5 + nc), N = sum(h_i * w_i), columns [cx, cy, w, h] in input pixels,
            objectness (always 1), nc class probabilities.
        """
        raw = [torch.cat((self.box[i](f), self.cls[i](f)), 1) for i, f in enumerate(feats)]
        if self.training:
            return raw
        return self.decode(raw)

    def decode(self, raw: Sequence[Tensor]) -> Tensor:
        """nl x (B, 4 * reg_max + nc, h, w) logits -> (B, N, 5 + nc) (see :meth:`forward`)."""
        shapes = [(p.shape[2], p.shape[3]) for p in raw]
        x = torch.cat([p.flatten(2) for p in raw], 2).transpose(1, 2)  # (B, N, 4R + nc)
        points, stride = anchor_points(shapes, self.strides, x)
        ltrb = expected_distance(x[..., : 4 * self.reg_max], self.reg_max) * stride
        xyxy = distances_to_boxes(points, ltrb)
        cxcy, wh = (xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]
        cls = x[..., 4 * self.reg_max:].sigmoid()
        return torch.cat((cxcy, wh, torch.ones_like(cls[..., :1]), cls), -1)

    def extra_repr(self) -> str:
        return f"nc={self.nc}, reg_max={self.reg_max}, strides={self.strides}"
