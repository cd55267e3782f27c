"""YOLOv5 v6 PAN neck of MAY: top-down then bottom-up fusion of P3, P4, P5 with C3 blocks.

Layer for layer the head section of the official ``mobilenetv3-MLCA.yaml``: lateral 1x1
convs (256 on P5, 128 after the first fusion), nearest 2x upsampling, concatenation with
the backbone features, C3 blocks without shortcut, and 3x3 stride-2 convs on the way back
down, giving 128 / 256 / 512 channels at strides 8 / 16 / 32 for width 1.0.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import C3, ConvBNAct, make_divisible

__all__ = ["MAY_NECK", "PAN"]

# (lateral P5, lateral P4, output P3, output P4, output P5) channels at width 1.0
MAY_NECK: tuple[int, int, int, int, int] = (256, 128, 128, 256, 512)


class PAN(nn.Module):
    """Path-aggregation neck.

    Args:
        in_channels: channels of (P3, P4, P5) from the backbone.
        channels: the five channel counts of ``MAY_NECK`` before width scaling.
        width: channel multiplier (rounded up to a multiple of 8).
        depth: bottlenecks per C3.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: Sequence[int] = MAY_NECK,
        width: float = 1.0,
        depth: int = 1,
    ):
        super().__init__()
        c3, c4, c5 = in_channels
        lat5, lat4, o3, o4, o5 = (make_divisible(c * width) for c in channels)
        self.lateral5 = ConvBNAct(c5, lat5, 1)                        # official layer 12
        self.td4 = C3(lat5 + c4, lat5, depth, shortcut=False)          # 15
        self.lateral4 = ConvBNAct(lat5, lat4, 1)                       # 16
        self.out3 = C3(lat4 + c3, o3, depth, shortcut=False)           # 19 -> P3 out
        self.down3 = ConvBNAct(o3, o3, 3, 2)                           # 20
        self.out4 = C3(o3 + lat4, o4, depth, shortcut=False)           # 22 -> P4 out
        self.down4 = ConvBNAct(o4, o4, 3, 2)                           # 23
        self.out5 = C3(o4 + lat5, o5, depth, shortcut=False)           # 25 -> P5 out
        self.out_channels: tuple[int, int, int] = (o3, o4, o5)

    def forward(
        self, p3: torch.Tensor, p4: torch.Tensor, p5: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """p3 (B, c3, H/8, W/8), p4 (B, c4, H/16, W/16), p5 (B, c5, H/32, W/32)
        -> (B, o3, H/8, W/8), (B, o4, H/16, W/16), (B, o5, H/32, W/32)."""
        l5 = self.lateral5(p5)
        t4 = self.td4(torch.cat((F.interpolate(l5, scale_factor=2.0, mode="nearest"), p4), 1))
        l4 = self.lateral4(t4)
        n3 = self.out3(torch.cat((F.interpolate(l4, scale_factor=2.0, mode="nearest"), p3), 1))
        n4 = self.out4(torch.cat((self.down3(n3), l4), 1))
        n5 = self.out5(torch.cat((self.down4(n4), l5), 1))
        return n3, n4, n5
