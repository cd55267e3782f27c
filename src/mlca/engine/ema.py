"""Exponential moving average of model weights (the weights we validate and ship).

Detectors trained from scratch on small data oscillate from batch to batch; averaging the
weights over the last few hundred steps gives a model that is consistently better than the
last raw step. The decay ramps up, ``d = decay * (1 - exp(-updates / tau))``, so early on the
average follows the fast-changing model (otherwise it would be dominated by the random init).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from mlca.engine.unwrap import unwrap

__all__ = ["ModelEMA", "unwrap"]  # unwrap re-exported: it was defined here first


class ModelEMA:
    """EMA of all floating-point entries of a model's state_dict (weights and BN statistics).

    Args:
        model: the model being trained (DDP / compile wrappers are unwrapped).
        decay: the asymptotic decay.
        tau: ramp length in updates; ``decay(updates) = decay * (1 - exp(-updates / tau))``.
        updates: number of updates already done (for resume).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if tau <= 0:
            raise ValueError(f"EMA tau must be > 0, got {tau}")
        self.ema = copy.deepcopy(unwrap(model)).eval()
        self.decay_max = float(decay)
        self.tau = float(tau)
        self.updates = int(updates)
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def decay(self, updates: int | None = None) -> float:
        """The decay used for update number ``updates`` (default: the current count)."""
        u = self.updates if updates is None else updates
        return self.decay_max * (1.0 - math.exp(-u / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``ema = d * ema + (1 - d) * model`` for every floating-point state entry."""
        self.updates += 1
        d = self.decay()
        msd = unwrap(model).state_dict()
        floats, targets = [], []
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                floats.append(v)
                targets.append(msd[k].detach())
            else:  # integer buffers (BN num_batches_tracked) follow the model
                v.copy_(msd[k])
        # one multi-tensor kernel for the ~400 entries of a MobileNet instead of two ops per entry
        torch._foreach_lerp_(floats, targets, 1.0 - d)

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict, updates: int) -> None:
        self.ema.load_state_dict(state, strict=True)
        self.updates = int(updates)
