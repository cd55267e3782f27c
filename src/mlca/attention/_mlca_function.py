"""MLCA as one ``torch.autograd.Function`` with a hand-written, recomputing backward (eager mode).

Why: autograd over the plain formulation keeps the H x W attention map (and the gathers that
build it) alive until backward and then runs several full-size passes to differentiate through
them. Here the forward keeps only x (which any ``x * att`` must keep) and tensors of size
(B, C, ls, ls); the backward rebuilds ``att`` on the fly.

Gradient, with ``P`` the pooling to ls x ls, ``U`` the adaptive "unpooling" back to H x W,
``mix = f(P x)`` the small attention map and ``y = x * U(mix)``::

    dL/dmix   = U^T (g * x)                     (B, C, ls, ls)
    dL/dlocal = f'(dL/dmix)                      sigmoid/conv1d chain, written out below
    dL/dx     = g * U(mix) + P^T (dL/dlocal)     one fused pass

When H and W are multiples of ls, ``P`` is a block mean and ``U`` a block repeat, so every big
step is a single broadcast over a (B, C, ls, kh, ls, kw) view of x -- any memory layout
(channels_last included) splits into such a view without copying. Otherwise the exact banded
gathers of ``_pooling.py`` are used.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv1d_weight

from ._pooling import adaptive_mean, adaptive_mean_adjoint, cached_bins

__all__ = ["mlca_function"]


def _blocks(t: Tensor, ls: int) -> Tensor:
    """(B, C, H, W) with H, W multiples of ls -> the view (B, C, ls, H/ls, ls, W/ls)."""
    return t.unflatten(3, (ls, t.shape[3] // ls)).unflatten(2, (ls, t.shape[2] // ls))


def _spread(small: Tensor) -> Tensor:
    """(B, C, ls, ls) -> broadcastable (B, C, ls, 1, ls, 1) against ``_blocks``."""
    return small[:, :, :, None, :, None]


def _mix(local: Tensor, wg: Tensor, wl: Tensor, lw: float):
    from .mlca import mlca_mix  # late import: mlca.py imports this module lazily too

    return mlca_mix(local, wg, wl, lw)


def _mix_backward(
    g_mix: Tensor, s_global: Tensor, s_local: Tensor, gvec: Tensor, seq: Tensor,
    wg: Tensor, wl: Tensor, lw: float, need_w: Tuple[bool, bool],
) -> Tuple[Tensor, Tensor | None, Tensor | None]:
    """Backward of ``mlca_mix``: (B, C, ls, ls) grad of mix -> grads of local, w_global, w_local."""
    b, c, ls = g_mix.shape[0], g_mix.shape[1], g_mix.shape[2]
    pad = (wg.shape[-1] - 1) // 2
    # mix = s_global * (1 - lw) + s_local * lw, s_global broadcast over the ls*ls bins.
    g_sl = (g_mix * lw).reshape(b, c, ls * ls).transpose(1, 2).reshape(b, 1, ls * ls * c)
    g_yl = g_sl * s_local * (1.0 - s_local)
    g_yg = (g_mix.sum(dim=(2, 3)) * (1.0 - lw)).reshape(b, 1, c) * s_global * (1.0 - s_global)
    # conv1d with stride 1 and padding p: its input-gradient is the transposed conv.
    g_seq = F.conv_transpose1d(g_yl, wl, padding=pad)
    g_gvec = F.conv_transpose1d(g_yg, wg, padding=pad)
    g_wg = conv1d_weight(gvec, wg.shape, g_yg, padding=pad) if need_w[0] else None
    g_wl = conv1d_weight(seq, wl.shape, g_yl, padding=pad) if need_w[1] else None
    g_local = g_seq.reshape(b, ls * ls, c).transpose(1, 2).reshape(b, c, ls, ls)
    g_local = g_local + g_gvec.reshape(b, c, 1, 1) / (ls * ls)  # gvec = mean of the ls*ls bins
    return g_local, g_wg, g_wl


class _MLCAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w_global: Tensor, w_local: Tensor, ls: int, lw: float) -> Tensor:
        h, w = x.shape[2], x.shape[3]
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        wg, wl = w_global.to(cdt), w_local.to(cdt)
        divisible = h % ls == 0 and w % ls == 0
        if divisible:
            x6 = _blocks(x, ls)
            local = x6.sum(dim=(3, 5), dtype=cdt) / ((h // ls) * (w // ls))
        else:
            xc = x.to(cdt)
            local = adaptive_mean(adaptive_mean(xc, 2, ls, cached_bins(h, ls, x.device)), 3, ls,
                                  cached_bins(w, ls, x.device))
        mix, s_global, s_local, gvec, seq = _mix(local, wg, wl, lw)
        mixx = mix.to(x.dtype)
        out = torch.empty_like(x)  # keeps x's memory format (channels_last in -> out)
        if divisible:
            torch.mul(x6, _spread(mixx), out=_blocks(out, ls))
        else:
            att = adaptive_mean(adaptive_mean(mixx, 3, w, cached_bins(ls, w, x.device)), 2, h,
                                cached_bins(ls, h, x.device))
            torch.mul(x, att, out=out)
        ctx.save_for_backward(x, mix, s_global, s_local, gvec, seq, wg, wl, w_global, w_local)
        ctx.ls, ctx.lw, ctx.divisible = ls, lw, divisible
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        x, mix, s_global, s_local, gvec, seq, wg, wl, w_global, w_local = ctx.saved_tensors
        ls, lw, divisible = ctx.ls, ctx.lw, ctx.divisible
        need_x, need_wg, need_wl = ctx.needs_input_grad[:3]
        h, w = x.shape[2], x.shape[3]
        cdt = mix.dtype
        dev = x.device
        mixx = mix.to(x.dtype)

        # dL/dmix = U^T (g * x)
        if divisible:
            g6, x6 = _blocks(g, ls), _blocks(x, ls)
            g_mix = (g6 * x6).sum(dim=(3, 5), dtype=cdt)
        else:
            gx = (g * x).to(cdt)
            g_mix = adaptive_mean_adjoint(
                gx, 2, ls, cached_bins(h, ls, dev), cached_bins(ls, h, dev)[2])
            g_mix = adaptive_mean_adjoint(
                g_mix, 3, ls, cached_bins(w, ls, dev), cached_bins(ls, w, dev)[2])

        g_local, g_wg, g_wl = _mix_backward(
            g_mix, s_global, s_local, gvec, seq, wg, wl, lw, (need_wg, need_wl))

        grad_x = None
        if need_x:
            grad_x = torch.empty_like(x)
            if divisible:
                # g * U(mix) + P^T(dlocal) in one broadcast pass; P^T spreads dlocal / bin size.
                g_pool = (g_local / ((h // ls) * (w // ls))).to(x.dtype)
                torch.addcmul(_spread(g_pool), g6, _spread(mixx), out=_blocks(grad_x, ls))
            else:
                att = adaptive_mean(adaptive_mean(mixx, 3, w, cached_bins(ls, w, dev)), 2, h,
                                    cached_bins(ls, h, dev))
                g_pool = adaptive_mean_adjoint(
                    g_local, 3, w, cached_bins(ls, w, dev), cached_bins(w, ls, dev)[2])
                g_pool = adaptive_mean_adjoint(
                    g_pool, 2, h, cached_bins(ls, h, dev), cached_bins(h, ls, dev)[2])
                torch.addcmul(g_pool.to(x.dtype), g, att, out=grad_x)
        if g_wg is not None:
            g_wg = g_wg.to(w_global.dtype)
        if g_wl is not None:
            g_wl = g_wl.to(w_local.dtype)
        return grad_x, g_wg, g_wl, None, None


def mlca_function(
    x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float
) -> Tensor:
    """MLCA forward with the recomputing backward. x: (B, C, H, W) -> (B, C, H, W)."""
    return _MLCAFunction.apply(x, w_global, w_local, local_size, local_weight)
