"""The MobileNetV3-small backbone of MAY, with a pluggable attention in place of SE.

The block table is the one of the official MAY (wandahangFY/MLCA,
``models/mobilenetv3-MLCA.yaml``), which is torchvision's ``mobilenet_v3_small`` table
with the last 1x1 conv dropped. The attention module sits exactly where MobileNetV3's
squeeze-excitation sits in that repository:

- block that expands (``expand != in``): 1x1 conv-BN-act, depthwise conv-BN,
  **attention**, act, 1x1 conv-BN;
- block that does not (only the first): depthwise conv-BN-act, **attention**, 1x1 conv-BN.

Any name in the attention registry works; blocks whose table entry says no attention get none.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from mlca.attention import create_attention

from .layers import ConvBNAct, batch_norm, make_divisible

__all__ = ["BlockSetting", "MAY_BLOCKS", "MAY_STEM", "InvertedResidual", "MobileNetV3Backbone"]


class BlockSetting(NamedTuple):
    """One inverted-residual block: ``[out, expand, kernel, stride, attention?, hswish?]``."""

    out: int
    expand: int
    kernel: int
    stride: int
    attention: bool
    hswish: bool


MAY_STEM = 16  # 3x3 stride-2 conv, h-swish
MAY_BLOCKS: tuple[BlockSetting, ...] = tuple(
    BlockSetting(o, e, k, s, bool(a), bool(h))
    for o, e, k, s, a, h in (
        (16, 16, 3, 2, 1, 0),    # P2/4
        (24, 72, 3, 2, 0, 0),    # P3/8
        (24, 88, 3, 1, 0, 0),    # P3/8  -> neck
        (40, 96, 5, 2, 1, 1),    # P4/16
        (40, 240, 5, 1, 1, 1),
        (40, 240, 5, 1, 1, 1),
        (48, 120, 5, 1, 1, 1),
        (48, 144, 5, 1, 1, 1),   # P4/16 -> neck
        (96, 288, 5, 2, 1, 1),   # P5/32
        (96, 576, 5, 1, 1, 1),
        (96, 576, 5, 1, 1, 1),   # P5/32 -> neck
    )
)


def _act(hswish: bool) -> nn.Module:
    return nn.Hardswish() if hswish else nn.ReLU()


class InvertedResidual(nn.Module):
    """MobileNetV3 block with ``attention`` on the expanded channels (see the module doc).

    Args:
        c_in: input channels.
        setting: the block's row of the table (``out``/``expand`` already width-scaled).
        attention: registered attention name, used only where ``setting.attention``.
        attention_kwargs: passed to ``create_attention``.
    """

    def __init__(self, c_in: int, setting: BlockSetting, attention: str = "mlca", **attention_kwargs):
        super().__init__()
        hidden, c_out, k, s = setting.expand, setting.out, setting.kernel, setting.stride
        if s not in (1, 2):
            raise ValueError(f"InvertedResidual: stride must be 1 or 2, got {s}")
        self.use_residual = s == 1 and c_in == c_out
        attn = create_attention(attention, hidden, **attention_kwargs) if setting.attention else nn.Identity()
        depthwise = nn.Conv2d(hidden, hidden, k, s, k // 2, groups=hidden, bias=False)
        layers: list[nn.Module]
        if hidden == c_in:
            layers = [depthwise, batch_norm(hidden), _act(setting.hswish), attn]
        else:
            layers = [
                nn.Conv2d(c_in, hidden, 1, bias=False), batch_norm(hidden), _act(setting.hswish),
                depthwise, batch_norm(hidden), attn, _act(setting.hswish),
            ]
        layers += [nn.Conv2d(hidden, c_out, 1, bias=False), batch_norm(c_out)]
        self.block = nn.Sequential(*layers)
        self.out_channels = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, c_in, H, W) -> (B, out, H / stride, W / stride)."""
        y = self.block(x)
        return x + y if self.use_residual else y


class MobileNetV3Backbone(nn.Module):
    """Stem + inverted-residual blocks; returns the last feature map of strides 8, 16, 32.

    Args:
        attention: registered attention name for the blocks marked in ``blocks``.
        width: channel multiplier, applied to every channel count (rounded up to a multiple of 8).
        stem: stem channels before scaling.
        blocks: the block table.
        attention_kwargs: passed to every attention module.
    """

    def __init__(
        self,
        attention: str = "mlca",
        width: float = 1.0,
        stem: int = MAY_STEM,
        blocks: Sequence[BlockSetting] = MAY_BLOCKS,
        **attention_kwargs,
    ):
        super().__init__()
        c = make_divisible(stem * width)
        self.stem = ConvBNAct(3, c, 3, 2, act=nn.Hardswish())
        stride = 2
        layers, taps, channels, strides = [], [], [], []
        for i, row in enumerate(blocks):
            row = BlockSetting(*row)
            scaled = row._replace(out=make_divisible(row.out * width), expand=make_divisible(row.expand * width))
            block = InvertedResidual(c, scaled, attention, **attention_kwargs)
            layers.append(block)
            c = block.out_channels
            stride *= row.stride
            # the neck takes the last block of each stride level 8, 16, 32
            nxt = BlockSetting(*blocks[i + 1]).stride if i + 1 < len(blocks) else 2
            if stride in (8, 16, 32) and nxt == 2:
                taps.append(i)
                channels.append(c)
                strides.append(stride)
        if strides != [8, 16, 32]:
            raise ValueError(f"backbone table must end one block at each of strides 8, 16, 32; got {strides}")
        self.blocks = nn.ModuleList(layers)
        self.taps = tuple(taps)
        self.out_channels: tuple[int, int, int] = tuple(channels)  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) -> (P3 (B, c3, H/8, W/8), P4 (B, c4, H/16, W/16), P5 (B, c5, H/32, W/32))."""
        x = self.stem(x)
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                feats.append(x)
        return feats[0], feats[1], feats[2]
