"""Plain building blocks shared by MAY's backbone and neck (YOLOv5 v6 style).

Batch norm uses YOLOv5's ``eps=1e-3, momentum=0.03``: the official MAY inherits them from
YOLOv5's ``initialize_weights``, and the slower running-stat update matters for the small
batches a CPU trains with.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BN_EPS", "BN_MOMENTUM", "make_divisible", "batch_norm", "ConvBNAct", "Bottleneck", "C3"]

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def make_divisible(value: float, divisor: int = 8) -> int:
    """Smallest multiple of ``divisor`` that is >= ``value`` (YOLOv5's channel rounding)."""
    return max(divisor, int(math.ceil(value / divisor) * divisor))


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ConvBNAct(nn.Module):
    """``act(bn(conv(x)))`` with 'same' padding; YOLOv5's ``Conv`` (SiLU by default).

    Args:
        c_in, c_out: channels.
        kernel, stride, groups: of the convolution (padding is ``kernel // 2``).
        act: an activation module, or None for no activation.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: nn.Module | None = None,
    ):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = batch_norm(c_out)
        self.act = nn.SiLU() if act is None else act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, c_in, H, W) -> (B, c_out, ceil(H / stride), ceil(W / stride))."""
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 then 3x3 ConvBNAct, with a residual add when ``shortcut`` and shapes allow."""

    def __init__(self, c_in: int, c_out: int, shortcut: bool = True, expansion: float = 0.5):
        super().__init__()
        hidden = int(c_out * expansion)
        self.cv1 = ConvBNAct(c_in, hidden, 1)
        self.cv2 = ConvBNAct(hidden, c_out, 3)
        self.add = shortcut and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, c_in, H, W) -> (B, c_out, H, W)."""
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """YOLOv5's CSP bottleneck with three convolutions.

    Half the hidden channels go through ``n`` bottlenecks, half skip them; both are
    concatenated and mixed by a 1x1 convolution.
    """

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True, expansion: float = 0.5):
        super().__init__()
        hidden = int(c_out * expansion)
        self.cv1 = ConvBNAct(c_in, hidden, 1)
        self.cv2 = ConvBNAct(c_in, hidden, 1)
        self.cv3 = ConvBNAct(2 * hidden, c_out, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, expansion=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, c_in, H, W) -> (B, c_out, H, W)."""
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))
