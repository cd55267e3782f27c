"""Parameters and FLOPs of a model at one image size (torch.utils.flop_counter)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "gflops"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN statistics and anchors excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def gflops(model: nn.Module, img_size: int) -> float:
    """GFLOPs of one eval-mode forward at batch 1, ``img_size`` × ``img_size``.

    FLOPs as torch.utils.flop_counter counts them: 2 per multiply-add of convolutions and
    matrix products (the convention of the paper's "GFLOPs", YOLOv5's thop × 2); elementwise
    ops, pooling and activations are not counted.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, img_size, img_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 1e9
