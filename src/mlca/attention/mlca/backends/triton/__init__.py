"""MLCA's fused GPU kernels (backend "triton"): CUDA float32/float16/bfloat16 tensors, NCHW,
channels_last or any strides; CPU tensors only through Triton's interpreter
(``TRITON_INTERPRET=1``, for tests).

Files: ``kernels.py`` (the Triton kernels), ``launch.py`` (tiles, grids, the forward and
backward passes), ``settings.py`` (the tuning switches as one ``TritonSettings`` object). This
module is the backend protocol (``unsupported``, ``forward``, ``backward``) with the default
settings, and ``mlca_triton``, the differentiable function with settings of the caller's
choice (what the benchmarks and kernel tests call).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional, Tuple

from torch import Tensor

from ...function import mlca_function
from . import launch as _launch
from .kernels import HAS_TRITON
from .launch import check, triton_available
from .settings import DEFAULT_SETTINGS, TritonSettings

__all__ = [
    "NAME", "ONCE_DIFFERENTIABLE", "HAS_TRITON", "TritonSettings", "DEFAULT_SETTINGS",
    "triton_available", "unsupported", "forward", "backward", "mlca_triton",
]

NAME = "triton"
# The kernels' outputs carry no autograd graph: a double backward must raise, not read zeros.
ONCE_DIFFERENTIABLE = True


def unsupported(x: Tensor, eager: bool = True) -> Optional[str]:
    """Why "auto" may not take the Triton kernels here (Triton missing, or neither CUDA nor the
    interpreter), or None. Device and dtype are the dispatch table's business; a forced
    "triton" backend is not asked, its kernels' own checks (``launch.check``) raise."""
    if not HAS_TRITON:
        return "Triton is not installed (it ships with the CUDA builds of torch)"
    if not triton_available():
        return "no CUDA device, and TRITON_INTERPRET is not set"
    return None


def forward(x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int,
            local_weight: float) -> Tuple[Tensor, Tensor]:
    """x (B, C, H, W) -> (out (B, C, H, W), local (B, C, L, L) float32), default settings."""
    return _launch.forward(x, w_global, w_local, local_size, local_weight)


def backward(g: Tensor, x: Tensor, saved: Tensor, w_global: Tensor, w_local: Tensor,
             local_size: int, local_weight: float,
             needs: Tuple[bool, bool, bool] = (True, True, True),
             ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of x, w_global, w_local (None where ``needs`` says so), default settings."""
    return _launch.backward(g, x, saved, w_global, w_local, local_weight, needs)


@dataclass(frozen=True)
class _Configured:
    """The Triton backend with explicit settings and block sizes (same protocol as the module)."""

    settings: TritonSettings
    blocks: Optional[Tuple[int, int]]
    NAME: str = NAME
    ONCE_DIFFERENTIABLE: bool = ONCE_DIFFERENTIABLE

    def unsupported(self, x: Tensor, eager: bool = True) -> Optional[str]:
        return unsupported(x, eager)

    def forward(self, x, w_global, w_local, local_size, local_weight):
        """As the module's ``forward``: x (B, C, H, W) -> (out, local (B, C, L, L))."""
        return _launch.forward(x, w_global, w_local, local_size, local_weight, self.settings,
                               self.blocks)

    def backward(self, g, x, saved, w_global, w_local, local_size, local_weight,
                 needs=(True, True, True)):
        """As the module's ``backward``: grads of x, w_global, w_local."""
        return _launch.backward(g, x, saved, w_global, w_local, local_weight, needs,
                                self.settings, self.blocks)


def mlca_triton(x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float,
                *, block_sizes: tuple[int, int] | None = None,
                settings: TritonSettings | None = None) -> Tensor:
    """MLCA of ``x`` with the fused Triton kernels; differentiable in x and both weights.

    Args:
        x: (B, C, H, W) float32/float16/bfloat16, NCHW or channels_last (any strides work).
        w_global: (1, 1, k) weight of the conv1d over the channel means (``MLCA.conv``).
        w_local: (1, 1, k) weight of the conv1d over the local bins (``MLCA.conv_local``).
        local_size: L, the side of the local pooling grid.
        local_weight: the weight of the local branch in the mix.
        block_sizes: (BLOCK_C, BLOCK_S) override for tests and tuning; None picks by layout.
        settings: kernel variants and tiles (``TritonSettings``); None: ``DEFAULT_SETTINGS``.

    Returns:
        (B, C, H, W) ``x * att``, same dtype and memory format as ``x``.
    """
    check(x, w_global, w_local, local_size)
    if x.numel() == 0:
        return x * 1.0
    if settings is None and block_sizes is None:
        backend = sys.modules[__name__]  # this module: the backend MLCA(backend="triton") runs
    else:
        backend = _Configured(settings or DEFAULT_SETTINGS, block_sizes)
    return mlca_function(x, w_global, w_local, local_size, float(local_weight), backend)
