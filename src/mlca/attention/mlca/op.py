"""MLCA as a ``torch.library`` custom op parametrised by backend name, so that
``torch.compile`` runs the fast eager kernels (Triton on CUDA, C or PyTorch on the CPU).

Why: dynamo would trace *into* the autograd.Function and guard on its size branches (one graph
per branch, long compiles), and inductor turns the branch-free formulation's gathers into slow
indirect loads. A custom op is opaque to the compiler: one graph for all sizes (the fake kernel
only states output shapes), no graph break, and inside it the same backend code as eager mode.
Exporters never see it (they record the plain formulation, ``reference.py``).

Ops: ``mlca::mlca_fwd(x, w_global, w_local, local_size, local_weight, backend) -> (out, saved)``
and ``mlca::mlca_bwd(g, x, saved, w_global, w_local, local_size, local_weight, backend) ->
(grad_x, grad_w_global, grad_w_local)``, ``backend`` one of ``backends.BACKEND_NAMES``.

(No ``from __future__ import annotations`` here: custom_op reads the real annotations.)
"""

from typing import Tuple

import torch
from torch import Tensor

from .backends import get_backend

__all__ = ["mlca_op"]


@torch.library.custom_op("mlca::mlca_fwd", mutates_args=())
def _mlca_fwd(
    x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float,
    backend: str = "torch",
) -> Tuple[Tensor, Tensor]:
    out, saved = get_backend(backend).forward(x, w_global, w_local, local_size, local_weight)
    return out, saved


@_mlca_fwd.register_fake
def _mlca_fwd_fake(x, w_global, w_local, local_size, local_weight, backend="torch"):
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    saved_format = getattr(get_backend(backend), "saved_format", None)
    fmt = saved_format(x) if saved_format is not None else torch.contiguous_format
    saved = torch.empty((x.shape[0], x.shape[1], local_size, local_size), dtype=cdt, device=x.device,
                        memory_format=fmt)
    return torch.empty_like(x), saved


@torch.library.custom_op("mlca::mlca_bwd", mutates_args=())
def _mlca_bwd(
    g: Tensor, x: Tensor, saved: Tensor, w_global: Tensor, w_local: Tensor, local_size: int,
    local_weight: float, backend: str = "torch",
) -> Tuple[Tensor, Tensor, Tensor]:
    gx, gwg, gwl = get_backend(backend).backward(g, x, saved, w_global, w_local, local_size,
                                                 local_weight)
    return gx, gwg, gwl


@_mlca_bwd.register_fake
def _mlca_bwd_fake(g, x, saved, w_global, w_local, local_size, local_weight, backend="torch"):
    return torch.empty_like(x), torch.empty_like(w_global), torch.empty_like(w_local)


def _setup_context(ctx, inputs, output) -> None:
    x, w_global, w_local, local_size, local_weight, backend = inputs
    ctx.save_for_backward(x, output[1], w_global, w_local)
    ctx.local_size, ctx.local_weight, ctx.backend = local_size, local_weight, backend


def _backward(ctx, g_out, g_saved):
    x, saved, w_global, w_local = ctx.saved_tensors
    gx, gwg, gwl = _mlca_bwd(g_out, x, saved, w_global, w_local, ctx.local_size,
                             ctx.local_weight, ctx.backend)
    return gx, gwg, gwl, None, None, None


_mlca_fwd.register_autograd(_backward, setup_context=_setup_context)


def mlca_op(
    x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float,
    backend: str = "torch",
) -> Tensor:
    """MLCA through the custom op with the named backend (the caller has checked that it takes
    x). x: (B, C, H, W) -> (B, C, H, W)."""
    return _mlca_fwd(x, w_global, w_local, local_size, local_weight, backend)[0]
