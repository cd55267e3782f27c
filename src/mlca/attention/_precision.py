"""Where an attention gate is computed: in float32 (the parameters' dtype), even under autocast.

Gates are tiny tensors (B, C, 1, 1), (B, 1, H, W)... whose sigmoid/softmax saturate and whose
pooled statistics lose digits in float16, so every module of the zoo computes them with autocast
turned off, in the dtype of its own parameters (float32 for a float32 model, float64 for a float64
one), and only casts the finished gate to the input's dtype for the final multiply. The big
(B, C, H, W) products stay in the input's dtype, so autocast still saves the memory traffic.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["gate_dtype", "autocast_off"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def gate_dtype(x: torch.Tensor, module: nn.Module) -> torch.dtype:
    """The dtype a module computes its gate in.

    The dtype of the module's first floating parameter; for parameter-free modules the input's
    dtype, promoted to float32 when it is float16/bfloat16.
    """
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


def autocast_off(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context that disables autocast on ``x``'s device type (a no-op where autocast is off).

    torch.export / the dynamo ONNX exporter trace through it (checked in the ONNX tests).
    """
    return torch.autocast(device_type=x.device.type, enabled=False)
