"""The plain, differentiable formulation of MLCA: what TorchScript, tracing, export (ONNX,
``torch.export``) and torch.func transforms (vmap, grad, jvp) run, and what the fused kernels
are checked against.

The seed's five steps, with ``ls = local_size``:

1. ``local = adaptive_avg_pool2d(x, ls)``                               (B, C, ls, ls)
2-4. the global vector, the two 1-D convolutions, the sigmoids and the mix (``mix.mlca_mix``)
5. ``att = adaptive_avg_pool2d(mix, (H, W))`` -- "unpooling" by adaptive pooling, itself a fixed
   averaging map -- and ``y = x * att``.

Adaptive pooling is never called: steps 1 and 5 are plain reshapes and a mean when H and W are
multiples of ``local_size`` (``_mlca_blocks``), the exact banded gathers of ``pooling.py``
otherwise (``_mlca_gathers``), or, for export only and by request, products with averaging
matrices (``_mlca_dense``). The formulation has no Python branches on symbolic sizes, so one
exported graph holds for every size.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from .mix import mlca_mix
from .pooling import adaptive_mean, matrix_grow, matrix_shrink, pool_matrix

__all__ = [
    "mlca_plain", "mlca_plain_dense", "export_formulation", "get_export_formulation",
    "EXPORT_FORMULATIONS", "compute_dtype",
]


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the attention weights are computed in: float64 for float64 inputs, float32
    otherwise (float16/bfloat16 pooled sums and sigmoids lose too many digits)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _static_blocks(h: int, w: int, local_size: int) -> bool:
    """True when H and W are concrete multiples of local_size in a graph that may specialise on
    them: not symbolic sizes (dynamic export) and not ``jit.trace`` (which would bake the branch
    into a graph later run at other sizes)."""
    if torch.jit.is_tracing():
        return False
    if not (isinstance(h, int) and isinstance(w, int)):
        return False  # torch.SymInt: a dynamic dimension of torch.export / the ONNX exporter
    return h % local_size == 0 and w % local_size == 0


def _mlca_blocks(
    x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float
) -> Tensor:
    """MLCA for H and W multiples of local_size: x (B, C, H, W) -> (B, C, H, W).

    Each bin is a (H/ls) x (W/ls) block: pooling is a mean over the two block axes of a
    (B, C, ls, kh, ls, kw) view. Exported graphs (ONNX) unpool with a nearest-neighbour resize
    by the integer factors kh, kw (exact: output pixel i reads i // kh) and run the 1-D convs as
    ``Conv`` nodes, the fewest and fastest onnxruntime nodes measured; a scripted module
    broadcasts the (B, C, ls, 1, ls, 1) map instead (no resize index arithmetic in float) and
    keeps the shifted-sum convs (oneDNN's single-channel conv is slow on long sequences).
    """
    b, c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    ls = local_size
    kh, kw = h // ls, w // ls
    local = x.to(w_global.dtype).reshape(b, c, ls, kh, ls, kw).mean(dim=[3, 5])
    scripted = torch.jit.is_scripting()
    mix = mlca_mix(local, w_global, w_local, local_weight, scripted)[0].to(x.dtype)
    if scripted:
        out = x.reshape(b, c, ls, kh, ls, kw) * mix.reshape(b, c, ls, 1, ls, 1)
        return out.reshape(b, c, h, w)
    return x * F.interpolate(mix, size=[h, w], mode="nearest")


def _mlca_gathers(
    x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float
) -> Tensor:
    """MLCA at any size with the exact banded gathers: x (B, C, H, W) -> (B, C, H, W).

    The weights are in the compute dtype already.
    """
    h, w = x.shape[2], x.shape[3]
    xc = x.to(w_global.dtype)
    # H first: gathering whole rows is the cheap direction; W then runs on the (ls x W) result.
    local = adaptive_mean(adaptive_mean(xc, 2, local_size), 3, local_size)
    mix = mlca_mix(local, w_global, w_local, local_weight, True)[0]
    att = adaptive_mean(adaptive_mean(mix, 3, w), 2, h)
    return x * att.to(x.dtype)


def _mlca_dense(
    x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float
) -> Tensor:
    """MLCA at any size with averaging matrices: x (B, C, H, W) -> (B, C, H, W).

    Pooling is ``Ph @ x @ Pw.T`` and unpooling ``Uh @ mix @ Uw.T`` with the matrices of
    ``pool_matrix`` built from the (symbolic) sizes, as GEMMs (``matrix_shrink`` /
    ``matrix_grow``, which the eager kernels use off the CPU). The weights are in the compute
    dtype already.
    """
    h, w = x.shape[2], x.shape[3]
    cdt = w_global.dtype
    ls = local_size
    ph, pw = pool_matrix(h, ls, x.device, cdt), pool_matrix(w, ls, x.device, cdt)
    uh, uw = pool_matrix(ls, h, x.device, cdt), pool_matrix(ls, w, x.device, cdt)
    local = matrix_shrink(x.to(cdt), ph, pw)
    mix = mlca_mix(local, w_global, w_local, local_weight, True)[0]
    return x * matrix_grow(mix, uh, uw).to(x.dtype)


def mlca_plain(
    x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float
) -> Tensor:
    """The differentiable formulation for TorchScript, tracing and export (ONNX, torch.export).

    x: (B, C, H, W); w_global, w_local: (1, 1, k) conv weights -> (B, C, H, W) in x's dtype.

    When H and W are multiples of ``local_size`` (the 320/640-px YOLO maps), pooling is a
    reshape and a mean over each bin and unpooling a nearest resize by the bin size (exported
    graphs) or a broadcast over the bins (scripted modules) (``_mlca_blocks``); otherwise the
    exact banded gathers of ``pooling.py`` (``_mlca_gathers``). Both give the seed's values,
    non-finite ones included. The choice is made in Python on concrete sizes (a static export,
    a scripted module at run time); symbolic sizes (a dynamic export) and ``jit.trace`` (which
    would bake the branch into a graph later run at other sizes) always get the gathers. (A run-time ``torch.cond`` between
    the two exports to an ONNX ``If``, but torch.export then asserts the block reshape's
    divisibility for the whole graph: measured with torch 2.14, not used.)
    """
    h, w = x.shape[2], x.shape[3]
    cdt = compute_dtype(x)
    wg, wl = w_global.to(cdt), w_local.to(cdt)
    if _static_blocks(h, w, local_size):
        return _mlca_blocks(x, wg, wl, local_size, local_weight)
    return _mlca_gathers(x, wg, wl, local_size, local_weight)


def mlca_plain_dense(
    x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float
) -> Tensor:
    """``mlca_plain`` with averaging matrices instead of gathers at sizes that are not
    multiples of local_size (export only): x (B, C, H, W) -> (B, C, H, W).

    Equal to ``mlca_plain`` for finite x; at those sizes a NaN/Inf in x spreads over its whole
    H x W plane (``0 * nan``), see ``export_formulation``.
    """
    if _static_blocks(x.shape[2], x.shape[3], local_size):
        return mlca_plain(x, w_global, w_local, local_size, local_weight)  # the block formulation
    cdt = compute_dtype(x)
    return _mlca_dense(x, w_global.to(cdt), w_local.to(cdt), local_size, local_weight)


EXPORT_FORMULATIONS = ("exact", "dense")
_export_formulation = "exact"


@contextlib.contextmanager
def export_formulation(name: str):
    """How MLCA layers are written into graphs exported inside the ``with`` block, where a
    feature map's size is symbolic (dynamic export), not a multiple of local_size, or traced
    (``jit.trace`` and the TorchScript-based ONNX exporter, which ultralytics' ``export`` uses:
    a trace may run at other sizes). Concrete multiples outside a trace always get the block
    formulation (``_mlca_blocks``, exact and fast).

    ``"exact"`` (default): banded gathers (``mlca_plain``), the seed's function for every input,
    non-finite values included. ``"dense"``: products with averaging matrices
    (``mlca_plain_dense``) -- MAY-MLCA 1.1-1.8x MAY-ECA in onnxruntime instead of 1.5-2.2x
    (dynamic export, 320/640 px), the same values for finite inputs, but a NaN/Inf in a channel
    of x makes that channel's whole output plane (and the channels its 1-D convolutions reach)
    non-finite, where the seed keeps it in the bins that hold it. Used by
    ``export_onnx(..., mlca="dense")``.
    """
    global _export_formulation
    if name not in EXPORT_FORMULATIONS:
        raise ValueError(f"MLCA export formulation must be one of {EXPORT_FORMULATIONS}, got {name!r}")
    previous, _export_formulation = _export_formulation, name
    try:
        yield
    finally:
        _export_formulation = previous


def get_export_formulation() -> str:
    """The formulation ``export_formulation`` set for the current block ("exact" outside one)."""
    return _export_formulation


def export_plain(
    x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float
) -> Tensor:
    """The formulation an exporter records: ``mlca_plain`` or, inside
    ``export_formulation("dense")``, ``mlca_plain_dense``. x: (B, C, H, W) -> (B, C, H, W)."""
    plain = mlca_plain_dense if _export_formulation == "dense" else mlca_plain
    return plain(x, w_global, w_local, local_size, local_weight)
