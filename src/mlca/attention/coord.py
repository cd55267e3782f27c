"""Coordinate Attention (Hou et al., "Coordinate Attention for Efficient Mobile Network
Design", CVPR 2021)."""

from __future__ import annotations

import torch
from torch import nn

from ._precision import autocast_off, gate_dtype
from .registry import register_attention

__all__ = ["CoordAttention"]


@register_attention("ca")
class CoordAttention(nn.Module):
    """Coordinate Attention (Hou et al., CVPR 2021): channel gates that keep one spatial axis.

    ``z = hswish(BN(W1 [mean_w(x); mean_h(x)]))`` (the H and W strips, concatenated along the
    length, one shared 1x1 conv ``C -> mip``, ``mip = max(min_mid, C // reduction)``), split back
    into ``z_h (B, mip, H, 1)``, ``z_w (B, mip, 1, W)``;
    ``y = x * sigmoid(W_h z_h) * sigmoid(W_w z_w)``.

    Shapes: (B, C, H, W) -> (B, C, H, W), any B >= 0, H, W >= 1 (the BatchNorm sees B x (H + W)
    values per channel, so even B = 1 at 1x1 trains). Gates in float32 under autocast.
    ONNX: exports (dynamo exporter, opset 18) with dynamic H, W.

    Args:
        channels: C.
        reduction: C / mip before the floor of min_mid (32 in the paper).
        min_mid: smallest mip (8 in the paper).
        act_layer: activation class after the BN (h-swish in the paper).
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 32,
        min_mid: int = 8,
        act_layer: type[nn.Module] = nn.Hardswish,
    ):
        super().__init__()
        mip = max(min_mid, channels // reduction)
        self.channels = channels
        self.mip = mip
        self.conv1 = nn.Conv2d(channels, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = act_layer()
        self.conv_h = nn.Conv2d(mip, channels, 1)
        self.conv_w = nn.Conv2d(mip, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W); gates (B, C, H, 1) and (B, C, 1, W)."""
        h = x.shape[2]
        dtype = gate_dtype(x, self)
        with autocast_off(x):
            x_h = torch.mean(x, dim=3, keepdim=True, dtype=dtype)  # (B, C, H, 1)
            x_w = torch.mean(x, dim=2, keepdim=True, dtype=dtype).transpose(2, 3)  # (B, C, W, 1)
            z = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))  # (B, mip, H + W, 1)
            z_h, z_w = z[:, :, :h], z[:, :, h:]
            a_h = torch.sigmoid(self.conv_h(z_h))  # (B, C, H, 1)
            a_w = torch.sigmoid(self.conv_w(z_w)).transpose(2, 3)  # (B, C, 1, W)
        return x * a_h.to(x.dtype) * a_w.to(x.dtype)
