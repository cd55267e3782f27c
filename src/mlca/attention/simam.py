"""SimAM, the parameter-free attention (Yang et al., "SimAM: A Simple, Parameter-Free Attention
Module for Convolutional Neural Networks", ICML 2021)."""

from __future__ import annotations

import torch
from torch import nn

from ._precision import autocast_off, gate_dtype
from .registry import register_attention

__all__ = ["SimAM"]


@register_attention("simam")
class SimAM(nn.Module):
    """SimAM (Yang et al., ICML 2021): each neuron weighted by the inverse of its minimal energy.

    Per channel, with ``mu`` the spatial mean, ``d = (x - mu)^2`` and ``n = H*W - 1``:
    ``y = x * sigmoid(d / (4 * (sum_hw(d) / n + lambda)) + 0.5)``.
    For H*W = 1, n would be 0; we use ``n = max(H*W - 1, 1)`` (then d = 0 and the gate is
    sigmoid(0.5)), where the paper's code divides 0 by 0 and returns NaN.

    No parameters. Shapes: (B, C, H, W) -> (B, C, H, W), any B >= 0, H, W >= 1.
    The energy is computed in float32 for float16/bfloat16 inputs (sums of squares overflow
    float16). ONNX: exports with dynamic H, W, by the dynamo exporter (opset 18) and by the
    TorchScript-based one (``dynamo=False``, what ultralytics' ``export`` uses).

    Args:
        channels: C (unused: kept so every module takes the same first argument).
        e_lambda: the regulariser lambda of the energy (1e-4 in the paper).
    """

    def __init__(self, channels: int, e_lambda: float = 1e-4):
        super().__init__()
        self.channels = channels
        self.e_lambda = e_lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W); the gate has the same shape as x."""
        h, w = x.shape[-2:]
        if isinstance(h, torch.Tensor):
            # the TorchScript-based ONNX exporter traces sizes as 0-d tensors
            n = torch.clamp(h * w - 1, min=1)
        else:
            # sym_max, not max: a Python comparison would specialise an exported graph to one size
            n = torch.sym_max(h * w - 1, 1)
        with autocast_off(x):
            xf = x.to(gate_dtype(x, self))
            d = (xf - xf.mean(dim=(2, 3), keepdim=True)).square()
            g = torch.sigmoid(d / (4 * (d.sum(dim=(2, 3), keepdim=True) / n + self.e_lambda)) + 0.5)
        return x * g.to(x.dtype)
