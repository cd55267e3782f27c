"""The ``none`` attention: the identity, the baseline every comparison needs."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_attention


@register_attention("none")
class NoAttention(nn.Module):
    """Identity. ``y = x``; no parameters, no FLOPs."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W), the same tensor."""
        return x
