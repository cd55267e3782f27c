"""Parameter count and FLOPs of a model, the numbers the paper's tables report."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["model_info"]


def model_info(model: nn.Module, img_size: int | tuple[int, int] = 640) -> dict[str, float]:
    """``{"params": int, "gflops": float}`` for one (1, 3, H, W) image.

    FLOPs come from ``torch.utils.flop_counter``, which counts a multiply-add as 2 FLOPs
    (so they compare directly with YOLOv5's "GFLOPs", 2 x the MACs from thop) and counts
    only convolutions, matmuls and similar; element-wise ops (BN, activations, the
    attention's pooling and gating) are not counted, as in thop.
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    params = sum(p.numel() for p in model.parameters())
    probe = copy.deepcopy(model).eval()
    p = next(model.parameters(), None)
    x = torch.zeros(1, 3, h, w, device=p.device if p is not None else "cpu", dtype=p.dtype if p is not None else None)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        probe(x)
    return {"params": int(params), "gflops": counter.get_total_flops() / 1e9}
