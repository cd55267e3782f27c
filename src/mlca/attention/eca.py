"""Efficient Channel Attention (Wang et al., "ECA-Net: Efficient Channel Attention for Deep
Convolutional Neural Networks", CVPR 2020)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._precision import autocast_off, gate_dtype
from .registry import register_attention

__all__ = ["ECA", "eca_kernel_size"]


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """ECA's adaptive kernel size: ``t = int(|log2(C) + b| / gamma)``, ``k = t`` if odd else ``t + 1``.

    Written exactly as the MLCA seed writes it (``math.log(C, 2)``), so ``eca`` and ``mlca`` pick the
    same k for the same C (C=16 -> 3, 64 -> 3, 256 -> 5, 512 -> 5, 1024 -> 5).
    """
    if channels < 1:
        raise ValueError(f"ECA needs channels >= 1, got {channels}")
    t = int(abs(math.log(channels, 2) + b) / gamma)
    return t if t % 2 else t + 1


@register_attention("eca")
class ECA(nn.Module):
    """Efficient Channel Attention (Wang et al., CVPR 2020).

    ``y = x * sigmoid(conv1d_k(avgpool(x)))``: a 1-D convolution across the channel axis of the
    pooled vector (no bias, zero padding), k from :func:`eca_kernel_size` unless given.

    Shapes: (B, C, H, W) -> (B, C, H, W), any B >= 0, H, W >= 1. Gate in float32 under autocast.
    ONNX: exports (dynamo exporter, opset 18) with dynamic H, W.

    Args:
        channels: C.
        kernel_size: k (odd); ``None`` picks it from C with gamma and b.
        gamma, b: constants of the kernel-size rule.
    """

    def __init__(self, channels: int, kernel_size: int | None = None, gamma: float = 2, b: float = 1):
        super().__init__()
        k = eca_kernel_size(channels, gamma, b) if kernel_size is None else kernel_size
        if k < 1 or k % 2 == 0:
            raise ValueError(f"ECA kernel_size must be odd and >= 1, got {k}")
        self.channels = channels
        self.kernel_size = k
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W); the gate is (B, C, 1, 1)."""
        b, c = x.shape[:2]
        k = self.kernel_size
        with autocast_off(x):
            s = torch.mean(x, dim=(2, 3), dtype=gate_dtype(x, self))  # (B, C)
            # the 1-D conv as k shifted, weighted copies of the zero-padded vector (k <= ~9): the
            # same numbers as self.conv, without the conv kernel that makes inductor
            # (torch.compile, dynamic shapes, CPU) bake the first input's strides into backward
            sp = F.pad(s, ((k - 1) // 2, (k - 1) // 2))  # (B, C + k - 1)
            w = self.conv.weight.view(k)
            z = sp[:, 0:c] * w[0]
            for j in range(1, k):
                z = z + sp[:, j : j + c] * w[j]
            g = torch.sigmoid(z)  # (B, C)
        return x * g.view(b, c, 1, 1).to(x.dtype)
