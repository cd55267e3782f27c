"""MLCA: Mixed Local Channel Attention (Wan et al., Eng. Appl. of AI 123, 106442, 2023).

The module: parameters (the seed's ``conv`` and ``conv_local``), argument checks, and a
forward that hands the call to what the dispatch table (``dispatch.py``) names: the plain
formulation (``reference.py``) when scripting, tracing, exporting or under torch.func
transforms; else a backend (``backends/``: "torch", "c", "triton"), through the one
autograd Function (``function.py``) in eager mode or the one custom op (``op.py``) under
torch.compile.

Backends: ``backend="auto" | "torch" | "c" | "triton"`` per module, or globally with
``set_default_backend(...)`` / the ``MLCA_BACKEND`` environment variable. "c" is the fused CPU
kernels of the C extension built at install time (float32/float64 CPU tensors, NCHW or
channels_last), "triton" the fused GPU kernels, "torch" the PyTorch kernels; "auto" takes Triton
for CUDA float tensors, C for the CPU tensors it covers, PyTorch for everything else.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import Tensor, nn

from ..registry import register_attention
from .backends import get_backend
from .dispatch import BACKENDS, get_default_backend, select
from .function import mlca_function
from .reference import export_plain, mlca_plain

__all__ = ["MLCA", "eca_kernel_size"]


def eca_kernel_size(in_size: int, gamma: float = 2, b: float = 1) -> int:
    """The ECA rule the seed uses: ``t = int(|log2(C) + b| / gamma)``, made odd upwards."""
    t = int(abs(math.log(in_size, 2) + b) / gamma)
    return t if t % 2 else t + 1


def _as_int(value: object, name: str) -> int:
    """``value`` as an int >= 1 (numpy integers welcome), else a ValueError naming ``name``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"MLCA {name} must be an int >= 1, got {value!r}") from None
    if value < 1:
        raise ValueError(f"MLCA {name} must be an int >= 1, got {value!r}")
    return value


@register_attention("mlca")
class MLCA(nn.Module):
    """Mixed Local Channel Attention, the same function and parameters as the paper's code.

    Args:
        in_size: channel count; it only sets the ECA kernel size, any channel count is accepted
            at run time (as in the seed).
        local_size: side of the local pooling grid (ls x ls bins).
        gamma, b: ECA kernel-size rule, ``k = odd(int(|log2(in_size) + b| / gamma))``.
        local_weight: weight of the local attention against the global one, in [0, 1].
        backend: ``"auto"`` (Triton for CUDA float tensors when available, the C kernels for
            float32/float64 CPU tensors, NCHW or channels_last, when built, else PyTorch),
            ``"torch"``, ``"c"`` or ``"triton"``; ``"auto"`` defers to ``set_default_backend`` /
            ``$MLCA_BACKEND``. A forced backend that cannot take the input raises.

    Parameters are ``conv.weight`` and ``conv_local.weight`` (1, 1, k), as in the seed, so
    state_dicts load both ways with ``strict=True``.
    """

    def __init__(
        self,
        in_size: int,
        local_size: int = 5,
        gamma: float = 2,
        b: float = 1,
        local_weight: float = 0.5,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        in_size = _as_int(in_size, "in_size (channel count)")
        local_size = _as_int(local_size, "local_size")
        if not (0.0 <= float(local_weight) <= 1.0):
            raise ValueError(f"MLCA local_weight must be in [0, 1], got {local_weight!r}")
        if backend not in BACKENDS:
            raise ValueError(f"MLCA backend must be one of {BACKENDS}, got {backend!r}")
        if gamma == 0:
            raise ValueError("MLCA gamma must be non-zero (it divides in the ECA kernel rule)")
        self.local_size = local_size
        self.gamma = gamma
        self.b = b
        self.local_weight = float(local_weight)
        self.backend = backend
        k = eca_kernel_size(in_size, gamma, b)
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.conv_local = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

    def extra_repr(self) -> str:
        return (
            f"local_size={self.local_size}, kernel_size={self.conv.kernel_size[0]}, "
            f"local_weight={self.local_weight}, backend={self.backend!r}"
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W), B >= 0, C >= 1, H, W >= 1 -> (B, C, H, W), x's dtype and layout."""
        if x.dim() != 4:
            raise ValueError(
                "MLCA expects a 4-D input (B, C, H, W), got shape " + str(list(x.shape))
            )
        if x.shape[1] < 1 or x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(
                "MLCA needs C, H and W >= 1, got shape " + str(list(x.shape))
            )
        if torch.jit.is_scripting():
            return mlca_plain(
                x, self.conv.weight, self.conv_local.weight, self.local_size, self.local_weight
            )
        return self._forward_eager(x)

    @torch.jit.unused
    def _forward_eager(self, x: Tensor) -> Tensor:
        # Attention weights in float32 even under autocast (output in x's dtype): the small-map
        # math must not be recast to float16/bfloat16 by autocast's op lists (mv, conv, ...).
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self._dispatch(x)
        return self._dispatch(x)

    @torch.jit.unused
    def _dispatch(self, x: Tensor) -> Tensor:
        wg, wl = self.conv.weight, self.conv_local.weight
        forced = self.backend if self.backend != "auto" else get_default_backend()
        mode, runs = select(x, wg, wl, forced)
        if runs == "reference":
            if mode == "export":
                return export_plain(x, wg, wl, self.local_size, self.local_weight)
            return mlca_plain(x, wg, wl, self.local_size, self.local_weight)
        if mode == "compile":
            from .op import mlca_op  # registers the custom ops: import cost only compile pays

            return mlca_op(x, wg, wl, self.local_size, self.local_weight, runs)
        return mlca_function(x, wg, wl, self.local_size, self.local_weight, get_backend(runs))
