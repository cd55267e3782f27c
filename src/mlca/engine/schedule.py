"""Optimizer parameter groups and the warmup + cosine learning-rate schedule.

Weight decay is applied to conv/linear weights only: decaying batch-norm scales and biases
pulls them towards zero, which for BN means towards dead channels, and brings nothing as
regularisation (they do not set the function's capacity the way weights do).

The schedule is a pure function of the global iteration, so resuming a run needs nothing but
the iteration count to land on the same learning rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["param_groups", "build_optimizer", "warmup_bias_lr_for", "WarmupCosine"]

# group order matters: WarmupCosine treats the group at BIAS_GROUP specially during warmup
DECAY_GROUP, NO_DECAY_GROUP, BIAS_GROUP = 0, 1, 2


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Three groups: weights with decay, normalisation weights without, biases without.

    Every trainable parameter lands in exactly one group.
    """
    decay, no_decay, bias = [], [], []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if name == "bias":
                bias.append(p)
            elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) or p.ndim <= 1:
                no_decay.append(p)  # norm scales and any other 1-d gain (e.g. attention mixing weights)
            else:
                decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        {"params": bias, "weight_decay": 0.0},
    ]


def _fused_ok(groups: list[dict]) -> bool:
    """Whether every parameter can take the fused (single-kernel) optimizer step: floating
    point, on the CPU or CUDA."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over :func:`param_groups`. ``momentum`` is beta1 for AdamW.

    Where the parameters allow it, the fused implementation: the same update rule as the
    per-tensor loop, in one kernel over all tensors (a MobileNet has ~200 small ones, and on the
    CPU the loop cost ~8 ms per AdamW step against ~2 ms fused).
    """
    groups = param_groups(model, weight_decay)
    fused = {"fused": True} if _fused_ok(groups) else {}
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True, **fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999), **fused)
    raise ValueError(f"unknown optimizer {name!r}; choose 'sgd' or 'adamw'")


# Where the bias learning rate starts its warmup, per optimizer, when not set explicitly.
# SGD: YOLOv5's absolute 0.1 (10x its lr0 0.01): an SGD step is lr x gradient, and the small
# gradients of the detect biases need the boost to move in the first iterations.
# AdamW: an Adam step is about lr whatever the gradient's size, so 0.1 would move *every* bias
# (BN shifts included) by up to 0.1 per step, 25x lr0 0.004, for the whole warmup (thousands of
# iterations on a VOC-sized set). The detect biases start at their objectness/class priors
# (``Detect.init_biases``), so nothing needs the boost: the biases warm up from 0 with the weights.
# Measured on the embedded set (docs/training.md): no worse than 0.1, while starting at lr0 diverged.
_WARMUP_BIAS_SGD = 0.1
_WARMUP_BIAS_ADAMW_X_LR0 = 0.0


def warmup_bias_lr_for(optimizer: str, lr0: float) -> float:
    """The default start of the bias warmup for ``optimizer`` ("sgd" or "adamw") at base rate ``lr0``:
    0.1 for SGD (YOLOv5's), 0 for AdamW (the biases warm up with the weights)."""
    name = optimizer.lower()
    if name == "sgd":
        return _WARMUP_BIAS_SGD
    if name == "adamw":
        return _WARMUP_BIAS_ADAMW_X_LR0 * lr0
    raise ValueError(f"unknown optimizer {optimizer!r}; choose 'sgd' or 'adamw'")


@dataclass(frozen=True)
class WarmupCosine:
    """Learning rate and momentum as a function of the global iteration.

    * Cosine from ``lr0`` at iteration 0 down to ``lr0 * lrf`` at ``total_iters``.
    * During the first ``warmup_iters`` the weights ramp linearly from 0 to the cosine value
      (large early steps on a random init blow up BN statistics), while biases ramp from
      ``warmup_bias_lr`` (YOLOv5's trick for SGD, 0.1: the detect biases hold the objectness
      prior and must move fast at the start, when nothing else is learnt yet; see
      :func:`warmup_bias_lr_for` for the per-optimizer default); momentum ramps from
      ``warmup_momentum`` to ``momentum``.
    """

    lr0: float
    lrf: float
    total_iters: int
    warmup_iters: int
    momentum: float
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1

    def cosine(self, it: int) -> float:
        t = min(max(it, 0), self.total_iters) / max(self.total_iters, 1)
        return self.lr0 * (self.lrf + (1.0 - self.lrf) * 0.5 * (1.0 + math.cos(math.pi * t)))

    def lrs(self, it: int) -> list[float]:
        """Learning rates for the three groups of :func:`param_groups` at iteration ``it``."""
        base = self.cosine(it)
        if it >= self.warmup_iters:
            return [base, base, base]
        xp = [0, self.warmup_iters]
        w = float(np.interp(it, xp, [0.0, base]))
        b = float(np.interp(it, xp, [self.warmup_bias_lr, base]))
        return [w, w, b]

    def momentum_at(self, it: int) -> float:
        if it >= self.warmup_iters:
            return self.momentum
        return float(np.interp(it, [0, self.warmup_iters], [self.warmup_momentum, self.momentum]))

    def apply(self, optimizer: torch.optim.Optimizer, it: int) -> None:
        """Set every group's lr (and SGD momentum / Adam beta1) for iteration ``it``."""
        lrs, m = self.lrs(it), self.momentum_at(it)
        for i, g in enumerate(optimizer.param_groups):
            g["lr"] = lrs[min(i, BIAS_GROUP)]
            if "momentum" in g:
                g["momentum"] = m
            elif "betas" in g:
                g["betas"] = (m, g["betas"][1])
