"""YOLOv5's anchor-based Detect layer: a 1x1 conv per level, raw logits in training,
decoded boxes in pixels at inference.

Decode (YOLOv5 v6), per level ``i`` with stride ``s`` and anchor ``a`` in pixels::

    xy = (2 * sigmoid(t_xy) - 0.5 + grid) * s
    wh = (2 * sigmoid(t_wh)) ** 2 * a
    obj, cls = sigmoid(t_obj), sigmoid(t_cls)

The grid is built from the feature map's own shape, so tracing, ``torch.export`` / ONNX
with dynamic height and width, and ``torch.compile`` see shape arithmetic, not constants.
Only plain eager calls cache it (per level, keyed by size, dtype and device).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["DEFAULT_ANCHORS", "Detect", "is_tracing"]

# YOLOv5 default anchors in pixels, (w, h) pairs per level P3/8, P4/16, P5/32
DEFAULT_ANCHORS: tuple[tuple[float, ...], ...] = (
    (10, 13, 16, 30, 33, 23),
    (30, 61, 62, 45, 59, 119),
    (116, 90, 156, 198, 373, 326),
)


def is_tracing() -> bool:
    """True under torch.jit tracing/scripting, torch.compile/export and ONNX export."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    if torch.compiler.is_compiling():
        return True
    return bool(torch.onnx.is_in_onnx_export())


class Detect(nn.Module):
    """Detection head.

    Args:
        num_classes: number of classes ``nc``.
        in_channels: channels of the three neck outputs.
        anchors: ``(nl, na, 2)`` anchor sizes in pixels (nested sequence or tensor), or a list of
            flat ``[w0, h0, w1, h1, ...]`` rows as in YOLOv5 YAML files.
        strides: stride of each level.

    Attributes:
        anchors: buffer ``(nl, na, 2)`` in pixels; autoanchor may overwrite it in place.
        stride: buffer ``(nl,)``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: Sequence[int],
        anchors: Sequence | torch.Tensor = DEFAULT_ANCHORS,
        strides: Sequence[int] = (8, 16, 32),
    ):
        super().__init__()
        a = torch.as_tensor(anchors, dtype=torch.float32)
        nl = len(strides)
        if a.numel() % (nl * 2) or a.shape[0] != nl:
            raise ValueError(
                f"anchors must be (nl={nl}, na, 2) pixels or nl rows of w,h pairs; got shape {tuple(a.shape)}"
            )
        a = a.reshape(nl, -1, 2)
        if len(in_channels) != nl:
            raise ValueError(f"Detect: {len(in_channels)} input levels for {nl} strides")
        self.nc = int(num_classes)
        self.no = self.nc + 5
        self.nl = nl
        self.na = a.shape[1]
        self.strides: tuple[int, ...] = tuple(int(s) for s in strides)
        self.register_buffer("anchors", a)
        self.register_buffer("stride", torch.tensor(self.strides, dtype=torch.float32))
        self.m = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in in_channels)
        self._grids: dict[int, tuple[tuple, torch.Tensor]] = {}
        self.init_biases()

    @torch.no_grad()
    def init_biases(self, image_size: int = 640) -> None:
        """YOLOv5 priors: about 8 objects per 640x640 image, class probability 0.6 / (nc - 0.99).

        ``sigmoid(b_obj) ~ 8 / (640 / s) ** 2`` so the first losses are not swamped by the
        many empty cells; box biases keep PyTorch's default initialisation.
        """
        for conv, s in zip(self.m, self.strides):
            b = conv.bias.view(self.na, self.no)
            b[:, 4] = math.log(8 / (image_size / s) ** 2)
            b[:, 5:] = math.log(0.6 / (self.nc - 0.99))

    def _grid(self, i: int, ny: int, nx: int, ref: torch.Tensor) -> torch.Tensor:
        """(1, 1, ny, nx, 2) cell offsets (x, y) in ``ref``'s dtype and device."""
        # inference-mode tensors must not leak into autograd code, so the mode is part of the key
        key = (ny, nx, ref.dtype, ref.device, torch.is_inference_mode_enabled())
        if not is_tracing():
            cached = self._grids.get(i)
            if cached is not None and cached[0] == key:
                return cached[1]
        ys = torch.arange(ny, device=ref.device, dtype=ref.dtype)
        xs = torch.arange(nx, device=ref.device, dtype=ref.dtype)
        yv, xv = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack((xv, yv), -1).view(1, 1, ny, nx, 2)
        if not is_tracing():
            self._grids[i] = (key, grid)
        return grid

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor] | torch.Tensor:
        """feats: nl tensors (B, c_i, h_i, w_i).

        Returns:
            training: list of nl raw tensors (B, na, h_i, w_i, 5 + nc);
            eval: (B, N, 5 + nc), N = sum(na * h_i * w_i), columns [cx, cy, w, h] in input
            pixels, objectness probability, nc class probabilities.
        """
        raw: list[torch.Tensor] = []
        for i, conv in enumerate(self.m):
            p = conv(feats[i])
            b, _, ny, nx = p.shape
            raw.append(p.view(b, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        if self.training:
            return raw
        return torch.cat([self._decode(i, p) for i, p in enumerate(raw)], 1)

    def _decode(self, i: int, p: torch.Tensor) -> torch.Tensor:
        """p: (B, na, ny, nx, no) logits -> (B, na * ny * nx, no) decoded."""
        b, _, ny, nx, _ = p.shape
        y = p.sigmoid()
        grid = self._grid(i, ny, nx, y)
        anchor = self.anchors[i].to(y.dtype).view(1, self.na, 1, 1, 2)
        xy = (y[..., :2] * 2 - 0.5 + grid) * self.strides[i]
        wh = (y[..., 2:4] * 2) ** 2 * anchor
        return torch.cat((xy, wh, y[..., 4:]), -1).view(b, -1, self.no)
