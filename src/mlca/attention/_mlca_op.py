"""MLCA as a ``torch.library`` custom op, so that ``torch.compile`` runs the fast eager kernels
(Triton on CUDA, C or PyTorch on the CPU).

Why: dynamo would trace *into* the autograd.Function and guard on its size branches (one graph
per branch, long compiles), and inductor turns the branch-free formulation's gathers into slow
indirect loads. A custom op is opaque to the compiler: one graph for all sizes (the fake kernel
only states output shapes), no graph break, and inside it the same code as eager mode.
Exporters never see it (they use ``mlca_plain``).

(No ``from __future__ import annotations`` here: custom_op reads the real annotations.)
"""

from typing import Tuple

import torch
from torch import Tensor

from ._mlca_function import mlca_backward_core, mlca_forward_core

__all__ = ["mlca_op"]


@torch.library.custom_op("mlca::mlca_fwd", mutates_args=())
def _mlca_fwd(
    x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float,
    native: bool = False, triton: bool = False,
) -> Tuple[Tensor, Tensor]:
    if triton:
        from .mlca_triton import triton_forward_core

        out, local = triton_forward_core(x, w_global, w_local, local_size, local_weight)
    else:
        out, local = mlca_forward_core(x, w_global, w_local, local_size, local_weight, native)
    return out, local


@_mlca_fwd.register_fake
def _mlca_fwd_fake(x, w_global, w_local, local_size, local_weight, native=False, triton=False):
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    local = x.new_empty((x.shape[0], x.shape[1], local_size, local_size), dtype=cdt)
    return torch.empty_like(x), local


@torch.library.custom_op("mlca::mlca_bwd", mutates_args=())
def _mlca_bwd(
    g: Tensor, x: Tensor, local: Tensor, w_global: Tensor, w_local: Tensor, local_size: int,
    local_weight: float, native: bool = False, triton: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    if triton:
        from .mlca_triton import triton_backward_core

        gx, gwg, gwl = triton_backward_core(g, x, local, w_global, w_local, local_weight)
    else:
        gx, gwg, gwl = mlca_backward_core(g, x, local, w_global, w_local, local_size,
                                          local_weight, native=native)
    return gx, gwg, gwl


@_mlca_bwd.register_fake
def _mlca_bwd_fake(g, x, local, w_global, w_local, local_size, local_weight, native=False,
                   triton=False):
    return torch.empty_like(x), torch.empty_like(w_global), torch.empty_like(w_local)


def _setup_context(ctx, inputs, output) -> None:
    x, w_global, w_local, local_size, local_weight, native, triton = inputs
    ctx.save_for_backward(x, output[1], w_global, w_local)
    ctx.local_size, ctx.local_weight = local_size, local_weight
    ctx.native, ctx.triton = native, triton


def _backward(ctx, g_out, g_local):
    x, local, w_global, w_local = ctx.saved_tensors
    gx, gwg, gwl = _mlca_bwd(g_out, x, local, w_global, w_local, ctx.local_size,
                             ctx.local_weight, ctx.native, ctx.triton)
    return gx, gwg, gwl, None, None, None, None


_mlca_fwd.register_autograd(_backward, setup_context=_setup_context)


def mlca_op(
    x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float,
    native: bool = False, triton: bool = False,
) -> Tensor:
    """MLCA through the custom op (``native``: the C kernels; ``triton``: the Triton kernels of
    ``mlca_triton``, CUDA float32/float16/bfloat16). x: (B, C, H, W) -> (B, C, H, W)."""
    return _mlca_fwd(x, w_global, w_local, local_size, local_weight, native, triton)[0]
