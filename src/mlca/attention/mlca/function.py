"""MLCA as one ``torch.autograd.Function`` for every backend (eager mode).

The forward runs the backend's ``forward`` and keeps x, the weights and the one small tensor
the backend saves (the (B, C, ls, ls) bin means); the backward hands them to the backend's
``backward``, which rebuilds the H x W attention instead of reading a stored one. Backends
whose backward cannot itself be differentiated (``ONCE_DIFFERENTIABLE``) get
``once_differentiable``'s treatment: a double backward raises instead of reading zeros.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .backends import Backend, get_backend

__all__ = ["mlca_function"]


def _grads(ctx, g: Tensor):
    x, saved, w_global, w_local = ctx.saved_tensors
    grads = ctx.backend.backward(g, x, saved, w_global, w_local, ctx.ls, ctx.lw,
                                 tuple(ctx.needs_input_grad[:3]))
    return (*grads, None, None, None)


_grads_once = once_differentiable(_grads)


class _MLCAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w_global: Tensor, w_local: Tensor, ls: int, lw: float,
                backend: Backend) -> Tensor:
        out, saved = backend.forward(x, w_global, w_local, ls, lw)
        ctx.save_for_backward(x, saved, w_global, w_local)
        ctx.ls, ctx.lw, ctx.backend = ls, lw, backend
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        if ctx.backend.ONCE_DIFFERENTIABLE:
            return _grads_once(ctx, g)
        return _grads(ctx, g)


def mlca_function(
    x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float,
    backend: Union[str, Backend] = "torch",
) -> Tensor:
    """MLCA forward with the backend's recomputing backward. x: (B, C, H, W) -> (B, C, H, W).

    ``backend``: a name of ``backends.BACKEND_NAMES`` or a backend object; the caller has checked
    that it takes x. Without anything to differentiate (no grad mode, or no input that requires
    grad) the backend's forward runs alone: no autograd node, nothing kept.
    """
    if isinstance(backend, str):
        backend = get_backend(backend)
    if not (torch.is_grad_enabled() and (x.requires_grad or w_global.requires_grad
                                         or w_local.requires_grad)):
        return backend.forward(x, w_global, w_local, local_size, local_weight)[0]
    return _MLCAFunction.apply(x, w_global, w_local, local_size, local_weight, backend)
