"""Squeeze-and-Excitation, in its two common variants.

* ``se`` — as in MobileNetV3 (Howard et al., "Searching for MobileNetV3", ICCV 2019) and as
  ``torchvision.ops.SqueezeExcitation`` used there: reduction 4 with the squeeze width made
  divisible by 8, ReLU, hard-sigmoid gate.
* ``se-resnet`` — the original (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018):
  reduction 16, ReLU, sigmoid gate.

Papers that "compare with SE" rarely say which one they used; the two differ in width and gate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._precision import autocast_off, gate_dtype
from .registry import register_attention

__all__ = ["SqueezeExcite", "SqueezeExciteResNet", "make_divisible"]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never going below 90 % of ``v``.

    The rule of torchvision's (and TF MobileNet's) ``_make_divisible``, so that ``se`` has the
    same squeeze width as ``torchvision.ops.SqueezeExcitation`` in MobileNetV3.
    """
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # rounding down must not remove more than 10 %
        new_v += divisor
    return new_v


@register_attention("se")
class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation, MobileNetV3 flavour (Howard et al. 2019; Hu et al. 2018).

    ``y = x * gate(W2 act(W1 avgpool(x) + b1) + b2)`` with ``W1: C -> r``, ``W2: r -> C``,
    ``r = make_divisible(int(C * rd_ratio), rd_divisor)``; defaults: r = C/4 rounded to a multiple
    of 8, ReLU, hard-sigmoid ``relu6(z + 3) / 6`` — the same as ``torchvision.ops.SqueezeExcitation``
    in ``mobilenet_v3_*`` (parameter names ``fc1``/``fc2`` match, so its state_dict loads).

    Shapes: (B, C, H, W) -> (B, C, H, W), any B >= 0, H, W >= 1. Gate in float32 under autocast.
    ONNX: exports (dynamo exporter, opset 18) with dynamic H, W.

    Args:
        channels: C.
        rd_ratio: squeeze ratio r / C before rounding.
        rd_divisor: r is rounded to a multiple of this (1 = no rounding, min 1).
        rd_channels: explicit r, overrides rd_ratio/rd_divisor.
        act_layer: activation class between the two 1x1 convs.
        gate_layer: gate activation class.
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 0.25,
        rd_divisor: int = 8,
        rd_channels: int | None = None,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Hardsigmoid,
    ):
        super().__init__()
        if channels < 1:
            raise ValueError(f"{type(self).__name__} needs channels >= 1, got {channels}")
        if rd_channels is None:
            rd_channels = make_divisible(int(channels * rd_ratio), rd_divisor)
        if rd_channels < 1:
            raise ValueError(f"squeeze width must be >= 1, got rd_channels={rd_channels}")
        self.channels = channels
        self.rd_channels = rd_channels
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W); the gate is (B, C, 1, 1)."""
        b, c = x.shape[:2]
        with autocast_off(x):
            s = torch.mean(x, dim=(2, 3), dtype=gate_dtype(x, self))  # (B, C)
            # 1x1 convs on a 1x1 map are matrix products; F.linear, not the conv kernels, because
            # a conv here makes inductor (torch.compile, dynamic shapes, CPU) bake the strides of
            # the first input size into the backward graph
            z = self.act(F.linear(s, self.fc1.weight.flatten(1), self.fc1.bias))
            g = self.gate(F.linear(z, self.fc2.weight.flatten(1), self.fc2.bias))  # (B, C)
        return x * g.view(b, c, 1, 1).to(x.dtype)


@register_attention("se-resnet")
class SqueezeExciteResNet(SqueezeExcite):
    """Squeeze-and-Excitation as in SENet (Hu et al., CVPR 2018): reduction 16, ReLU, sigmoid.

    ``y = x * sigmoid(W2 relu(W1 avgpool(x) + b1) + b2)``, ``W1: C -> max(1, C // 16)``.

    Shapes: (B, C, H, W) -> (B, C, H, W), any B >= 0, H, W >= 1. Gate in float32 under autocast.
    ONNX: exports (dynamo exporter, opset 18) with dynamic H, W.
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1.0 / 16,
        rd_divisor: int = 1,
        rd_channels: int | None = None,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ):
        super().__init__(channels, rd_ratio, rd_divisor, rd_channels, act_layer, gate_layer)
