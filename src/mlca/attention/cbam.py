"""CBAM (Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018)."""

from __future__ import annotations

import torch
from torch import nn

from ._precision import autocast_off, gate_dtype
from .registry import register_attention

__all__ = ["CBAM"]


@register_attention("cbam")
class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018): channel, then spatial.

    ``x' = x * sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))`` with a shared MLP ``C -> C/r -> C``
    (ReLU, biases), then ``y = x' * sigmoid(conv_kxk([mean_c(x'); max_c(x')]))``.

    The authors' code puts a BatchNorm after the 7x7 conv; at inference it folds into the conv's
    scale and bias, and in training it fails on a single value (batch 1 at 1x1), so the conv here
    has a bias and no norm — the paper's formula.

    Shapes: (B, C, H, W) -> (B, C, H, W), any B >= 0, H, W >= 1 (the conv zero-pads, so maps
    smaller than k work). Gates in float32 under autocast.
    ONNX: exports (dynamo exporter, opset 18) with dynamic H, W.

    Args:
        channels: C.
        reduction: r; the hidden width is ``max(1, C // r)``.
        kernel_size: odd k of the spatial conv.
        act_layer: activation class of the MLP.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        kernel_size: int = 7,
        act_layer: type[nn.Module] = nn.ReLU,
    ):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"CBAM kernel_size must be odd and >= 1, got {kernel_size}")
        hidden = max(1, channels // reduction)
        self.channels = channels
        self.fc1 = nn.Linear(channels, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, channels)
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W); gates (B, C, 1, 1) then (B, 1, H, W)."""
        b, c = x.shape[:2]
        dtype = gate_dtype(x, self)
        with autocast_off(x):
            avg = torch.mean(x, dim=(2, 3), dtype=dtype)  # (B, C)
            mx = torch.amax(x, dim=(2, 3)).to(dtype)  # max is exact in any dtype
            gc = torch.sigmoid(self.fc2(self.act(self.fc1(avg))) + self.fc2(self.act(self.fc1(mx))))
        x = x * gc.view(b, c, 1, 1).to(x.dtype)
        with autocast_off(x):
            stats = torch.cat(
                [torch.mean(x, dim=1, keepdim=True, dtype=dtype), torch.amax(x, dim=1, keepdim=True).to(dtype)],
                dim=1,
            )  # (B, 2, H, W)
            gs = torch.sigmoid(self.spatial(stats))  # (B, 1, H, W)
        return x * gs.to(x.dtype)
