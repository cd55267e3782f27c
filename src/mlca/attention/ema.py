"""EMA (Ouyang et al., "Efficient Multi-Scale Attention Module with Cross-Spatial Learning",
ICASSP 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._precision import autocast_off, gate_dtype
from .registry import register_attention

__all__ = ["EMA"]


@register_attention("ema")
class EMA(nn.Module):
    """Efficient Multi-scale Attention (Ouyang et al., ICASSP 2023), groups G (8 by default).

    Channels split into G groups of ``c = C / G``; in each group ``g`` (c, H, W), with shared
    weights across groups: a 1x1 branch ``x1 = GN(g * sigmoid(W1 [pool_w g; pool_h g])_h *
    sigmoid(...)_w)`` (GN with one channel per group, affine) and a 3x3 branch ``x2 = conv3x3(g)``;
    cross-spatial learning ``w = softmax(avgpool x1)^T x2 + softmax(avgpool x2)^T x1`` (1, H, W),
    and ``y = g * sigmoid(w)``.

    C must be divisible by ``groups``; otherwise the constructor raises and names C and the
    largest groups that would fit (the official code silently breaks in the reshape).

    Shapes: (B, C, H, W) -> (B, C, H, W), any B >= 0, H, W >= 1. Everything but the final product
    runs in float32 under autocast (softmax and the group norm need it, and the 3x3 conv feeds
    the softmax). ONNX: exports (dynamo exporter, opset 18) with dynamic H, W.

    Args:
        channels: C.
        groups: G ("factor" in the official code; 8 in the paper's experiments).
    """

    def __init__(self, channels: int, groups: int = 8):
        super().__init__()
        if groups < 1 or channels % groups:
            fit = max(d for d in range(1, max(1, min(groups, channels)) + 1) if channels % d == 0)
            raise ValueError(
                f"EMA needs channels divisible by groups: got channels={channels}, groups={groups}; "
                f"use groups={fit} for {channels} channels"
            )
        c = channels // groups
        self.channels = channels
        self.groups = groups
        self.conv1x1 = nn.Conv2d(c, c, 1)
        self.conv3x3 = nn.Conv2d(c, c, 3, padding=1)
        self.gn = nn.GroupNorm(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W); per group the gate is (1, H, W)."""
        b, _, h, w = x.shape
        groups = self.groups
        # the group width from the constructor, not from x.shape: a symbolic C // G trips
        # torch.compile(dynamic=True) ("cannot determine truth value of Relational")
        cg = self.channels // groups
        gx = x.reshape(b * groups, cg, h, w)  # (B*G, c, H, W)
        with autocast_off(x):
            dtype = gate_dtype(x, self)
            xf = x.to(dtype)
            g = xf.reshape(b * groups, cg, h, w)
            # both strips side by side along one axis, (B*G, c, H + W); the shared 1x1 conv on them
            # is a matrix product (no transposes: they trip inductor's stride ordering under
            # torch.compile(dynamic=True))
            strips = torch.cat([g.mean(dim=3), g.mean(dim=2)], dim=2)
            hw = torch.matmul(self.conv1x1.weight.view(cg, cg), strips) + self.conv1x1.bias.view(cg, 1)
            a_h, a_w = hw[:, :, :h].unsqueeze(3), hw[:, :, h:].unsqueeze(2)  # (B*G, c, H, 1), (B*G, c, 1, W)
            x1 = self.gn(g * torch.sigmoid(a_h) * torch.sigmoid(a_w))  # (B*G, c, H, W)
            # the shared 3x3 conv of every group as one grouped conv on x (weights repeated G
            # times): the same numbers as conv3x3 on the (B*G, c, H, W) view, which inductor
            # fails to compile with dynamic sizes
            x2 = F.conv2d(
                xf, self.conv3x3.weight.repeat(groups, 1, 1, 1), self.conv3x3.bias.repeat(groups),
                padding=1, groups=groups,
            ).reshape(b * groups, cg, h, w)
            s1 = torch.softmax(x1.mean(dim=(2, 3)), dim=-1).unsqueeze(1)  # (B*G, 1, c)
            s2 = torch.softmax(x2.mean(dim=(2, 3)), dim=-1).unsqueeze(1)  # (B*G, 1, c)
            wgt = torch.bmm(s1, x2.flatten(2)) + torch.bmm(s2, x1.flatten(2))  # (B*G, 1, H*W)
            gate = torch.sigmoid(wgt).view(b * groups, 1, h, w)
        out = (gx * gate.to(x.dtype)).reshape(b, self.channels, h, w)
        # the grouping reshape copies a channels_last x into NCHW; give back the layout we got
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return out
