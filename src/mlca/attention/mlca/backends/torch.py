"""The PyTorch kernels of MLCA (backend "torch"): every device and dtype, a hand-written,
recomputing backward.

Why: autograd over the plain formulation keeps the H x W attention map (and the gathers that
build it) alive until backward and then runs several full-size passes to differentiate through
them. Here the forward keeps only x (which any ``x * att`` must keep) and tensors of size
(B, C, ls, ls); the backward rebuilds ``att`` on the fly.

Gradient, with ``P`` the pooling to ls x ls, ``U`` the adaptive "unpooling" back to H x W,
``mix = f(P x)`` the small attention map and ``y = x * U(mix)``::

    dL/dmix   = U^T (g * x)                     (B, C, ls, ls)
    dL/dlocal = f'(dL/dmix)                      sigmoid/conv1d chain (``mix.mix_backward``)
    dL/dx     = g * U(mix) + P^T (dL/dlocal)     one fused pass

When H and W are multiples of ls, ``P`` is a block mean and ``U`` a block repeat, so every big
step is one reduction or one broadcast over a "bin rows" view of x (``_Rows``: NCHW and
channels_last both split into such a view without copying, and the output keeps x's memory
format). Otherwise ``P`` and ``U`` are products with tiny dense averaging matrices
(``_Dense``); if a product comes out non-finite (a NaN/Inf in x or g spreads over its plane
through ``0 * nan``) the step is redone with the exact banded gathers of ``pooling.py``, which
keep non-finite values in the bins that hold them, as adaptive pooling does.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..mix import mix_backward, mix_eager
from ..pooling import (
    adaptive_mean, adaptive_mean_adjoint, bag_grow, bag_shrink, cached_bags, cached_bins,
    cached_full, cached_pool_matrix, matrix_grow, matrix_shrink,
)

__all__ = ["NAME", "ONCE_DIFFERENTIABLE", "unsupported", "forward", "backward"]

NAME = "torch"
ONCE_DIFFERENTIABLE = False


def unsupported(x: Tensor, eager: bool = True) -> Optional[str]:
    """None: the PyTorch kernels take every input MLCA accepts."""
    return None


class _Rows:
    """Views of (B, C, H, W) tensors, H and W multiples of ls, as (N, ls, kh, R) "bin rows".

    NCHW: N = B*C, R = W (one image row per channel); channels_last: N = B, R = W*C (an image
    row of all channels). Either way the kh rows of a bin row are contiguous runs of length R,
    so pooling is a sum over dim 2 with a long contiguous inner loop, and scaling is a broadcast
    of a (N, ls, 1, R) map -- the small map repeated along W only. kw = W / ls.
    """

    def __init__(self, x: Tensor, ls: int) -> None:
        b, c, h, w = x.shape
        self.channels_last = x.dim() == 4 and c > 1 and x.is_contiguous(
            memory_format=torch.channels_last) and not x.is_contiguous()
        self.b, self.c, self.h, self.w, self.ls = b, c, h, w, ls
        self.kh, self.kw = h // ls, w // ls
        self.n, self.d = (b, c) if self.channels_last else (b * c, 1)
        self.r = w * self.d

    def like(self, t: Tensor) -> Tensor:
        """t in the same memory format as the frame (copies only if it is not)."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return t.contiguous(memory_format=fmt)

    def rows(self, t: Tensor) -> Tensor:
        """(B, C, H, W) in the frame's format -> view (N, ls, kh, R)."""
        if self.channels_last:
            t = t.permute(0, 2, 3, 1)
        return t.reshape(self.n, self.ls, self.kh, self.r)

    def pool_rows(self, rows: Tensor, dtype: torch.dtype, scale: float = 1.0) -> Tensor:
        """(N, ls, kh, R) -> bin sums times ``scale`` (B, C, ls, ls) in ``dtype``.

        Sums over kh first. The reduction kernel is slow when it reduces a middle dimension;
        for float32 on the CPU, ``F.embedding_bag`` (fbgemm's fused row sums) adds each run of
        kh rows 2-5x faster (bag i = rows i*kh .. i*kh+kh-1 of the (N*H, R) matrix view; sums,
        no products, so NaN/Inf stay in their bin). Otherwise, for short bins (kh <= 4) in the
        compute dtype, a chain of kh - 1 adds of row views is 1.5-3x faster than the reduction;
        fp16/bf16 rows go through the reduction, which accumulates in ``dtype``.
        """
        n_rows = self.n * self.ls * self.kh
        if rows.dtype == dtype == torch.float32 and rows.device.type == "cpu" and n_rows < 2**31:
            idx, offsets = cached_bags(n_rows, self.kh, rows.device)
            # the ATen op, not F.embedding_bag: its Python checks and offsets cost more than the
            # sums on small maps; mode 0 = sum
            s = torch.embedding_bag(rows.reshape(n_rows, self.r), idx, offsets, False, 0, False,
                                    None, False)[0]
            s = s.view(self.n, self.ls, self.r)
        elif rows.dtype == dtype and self.kh <= 4:
            s = rows[:, :, 0]
            for i in range(1, self.kh):
                s = s + rows[:, :, i]
        else:
            s = rows.sum(dim=2, dtype=dtype)
        if self.channels_last:
            s = s.reshape(self.n, self.ls, self.ls, self.kw, self.d).sum(dim=3)
            if scale != 1.0:
                s = s * scale
            return s.permute(0, 3, 1, 2)  # (B, ls, ls, C) -> (B, C, ls, ls)
        # NCHW: the kw columns of a bin are contiguous; a matrix-vector product with a constant
        # vector sums these short runs 3-4x faster than a reduction kernel, applies ``scale``
        # on the way, and keeps NaN/Inf in their bin.
        s = torch.mv(s.reshape(-1, self.kw), cached_full(self.kw, scale, s.device, s.dtype))
        return s.reshape(self.b, self.c, self.ls, self.ls)

    def spread(self, small: Tensor) -> Tensor:
        """(B, C, ls, ls) -> (N, ls, 1, R): each bin value repeated over its kw columns."""
        if self.channels_last:
            s = small.permute(0, 2, 3, 1)  # (B, ls, ls, C)
        else:
            s = small.reshape(self.n, self.ls, self.ls, 1)
        s = s.unsqueeze(3).expand(self.n, self.ls, self.ls, self.kw, self.d)
        return s.reshape(self.n, self.ls, 1, self.r)


class _Dense:
    """P and U as dense averaging matrices, for H or W not a multiple of ls (eager only).

    ``pool``: (B, C, H, W) -> (B, C, ls, ls) = Ph x Pw^T; ``unpool``: (B, C, ls, ls) -> (B, C, H, W)
    = Uh m Uw^T; the adjoints use the transposes. All products run in ``dtype``. On the CPU the
    H direction runs as weighted row sums (``bag_shrink`` / ``bag_grow``: one fused pass over
    the big side, 2-3x faster than a GEMM whose other side is ls wide), elsewhere as GEMMs.
    """

    def __init__(self, h: int, w: int, ls: int, device: torch.device, dtype: torch.dtype,
                 planes: int) -> None:
        self.ph = cached_pool_matrix(h, ls, device, dtype)  # (ls, H)
        self.pw = cached_pool_matrix(w, ls, device, dtype)  # (ls, W)
        self.uh = cached_pool_matrix(ls, h, device, dtype)  # (H, ls)
        self.uw = cached_pool_matrix(ls, w, device, dtype)  # (W, ls)
        self.bags = device.type == "cpu" and 0 < planes and planes * max(h, ls) < 2**31
        self.key = (h, ls, str(device), dtype)

    def pool(self, t: Tensor) -> Tensor:
        if self.bags:
            return bag_shrink(t, self.ph, self.pw, ("P",) + self.key)
        return matrix_shrink(t, self.ph, self.pw)

    def pool_adjoint(self, t: Tensor) -> Tensor:
        if self.bags:
            return bag_grow(t, self.ph.t(), self.pw.t(), ("PT",) + self.key)
        return matrix_grow(t, self.ph.t(), self.pw.t())

    def unpool(self, t: Tensor) -> Tensor:
        if self.bags:
            return bag_grow(t, self.uh, self.uw, ("U",) + self.key)
        return matrix_grow(t, self.uh, self.uw)

    def unpool_adjoint(self, t: Tensor) -> Tensor:
        if self.bags:
            return bag_shrink(t, self.uh.t(), self.uw.t(), ("UT",) + self.key)
        return matrix_shrink(t, self.uh.t(), self.uw.t())


def _all_finite(t: Tensor) -> bool:
    """True when every element is finite; may say False for finite values whose sum overflows
    (callers then take the exact gather path, which is right for any input). One reduction
    instead of isfinite's five elementwise passes."""
    return math.isfinite(float(t.sum()))


def forward(
    x: Tensor, w_global: Tensor, w_local: Tensor, ls: int, lw: float
) -> Tuple[Tensor, Tensor]:
    """Forward without autograd: x (B, C, H, W) -> (out (B, C, H, W), local (B, C, ls, ls)).

    ``local`` (the pooled map, float32/float64, contiguous) is all the backward needs besides x.
    """
    h, w = x.shape[2], x.shape[3]
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    wg, wl = w_global.to(cdt), w_local.to(cdt)
    frame = _Rows(x, ls) if h % ls == 0 and w % ls == 0 else None
    if frame is not None:
        x = frame.like(x)
        local = frame.pool_rows(frame.rows(x), cdt, 1.0 / (frame.kh * frame.kw))
        dense = None
    else:
        dense = _Dense(h, w, ls, x.device, cdt, x.shape[0] * x.shape[1])
        local = dense.pool(x.to(cdt)).contiguous()  # saved for backward: a plain (B, C, ls, ls)
        if not _all_finite(local):
            dense = None
            local = adaptive_mean(adaptive_mean(x.to(cdt), 2, ls, cached_bins(h, ls, x.device)),
                                  3, ls, cached_bins(w, ls, x.device))
    mix = mix_eager(local, wg, wl, lw)[0]
    mixx = mix.to(x.dtype)
    out = torch.empty_like(x)  # keeps x's memory format (channels_last in -> out)
    if frame is not None:
        torch.mul(frame.rows(x), frame.spread(mixx), out=frame.rows(out))
    elif dense is not None and _all_finite(mix):
        torch.mul(x, dense.unpool(mix).to(x.dtype), out=out)
    else:
        att = adaptive_mean(adaptive_mean(mixx, 3, w, cached_bins(ls, w, x.device)), 2, h,
                            cached_bins(ls, h, x.device))
        torch.mul(x, att, out=out)
    # contiguous whatever x's layout (the pooling of a channels_last x keeps it): the format the
    # compiler's fake kernel states
    return out, local.contiguous()


def backward(
    g: Tensor, x: Tensor, local: Tensor, w_global: Tensor, w_local: Tensor, ls: int, lw: float,
    needs: Tuple[bool, bool, bool] = (True, True, True),
) -> Tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Backward without autograd: grads of x, w_global, w_local (None where not needed).

    Recomputes the small map from ``local`` and the H x W attention on the fly.
    """
    need_x, need_wg, need_wl = needs
    h, w = x.shape[2], x.shape[3]
    cdt = local.dtype
    dev = x.device
    wg, wl = w_global.to(cdt), w_local.to(cdt)
    mix, s_global, s_local, gvec, seq = mix_eager(local, wg, wl, lw)
    mixx = mix.to(x.dtype)
    frame = _Rows(x, ls) if h % ls == 0 and w % ls == 0 else None

    # dL/dmix = U^T (g * x). On the block path g * x is written into grad_x's buffer (x's
    # size, allocated once here and overwritten by the final result below): no second
    # full-size temporary, so one allocation (and its first-touch page faults) fewer.
    grad_x = None
    if frame is not None:
        x, g = frame.like(x), frame.like(g)
        g_rows = frame.rows(g)
        grad_x = torch.empty_like(x)
        gx_rows = torch.mul(g_rows, frame.rows(x), out=frame.rows(grad_x))
        g_mix = frame.pool_rows(gx_rows, cdt)
        dense = None
    else:
        if cdt == x.dtype:
            grad_x = torch.empty_like(x)
            gx = torch.mul(g, x, out=grad_x)
        else:
            gx = (g * x).to(cdt)
        dense = _Dense(h, w, ls, dev, cdt, x.shape[0] * x.shape[1]) if _all_finite(local) else None
        g_mix = dense.unpool_adjoint(gx) if dense is not None else None
        if g_mix is not None and not _all_finite(g_mix):
            dense, g_mix = None, None
    if frame is None and g_mix is None:
        g_mix = adaptive_mean_adjoint(
            gx, 2, ls, cached_bins(h, ls, dev), cached_bins(ls, h, dev)[2])
        g_mix = adaptive_mean_adjoint(
            g_mix, 3, ls, cached_bins(w, ls, dev), cached_bins(ls, w, dev)[2])

    g_local, g_wg, g_wl = mix_backward(
        g_mix, s_global, s_local, gvec, seq, wg, wl, lw, (need_wg, need_wl))

    if not need_x:
        grad_x = None
    else:
        if grad_x is None:
            grad_x = torch.empty_like(x)
        if frame is not None:
            # g * U(mix) + P^T(dlocal) in one broadcast pass; P^T spreads dlocal / bin size.
            g_pool = (g_local / (frame.kh * frame.kw)).to(x.dtype)
            torch.addcmul(frame.spread(g_pool), g_rows, frame.spread(mixx),
                          out=frame.rows(grad_x))
        elif dense is not None and _all_finite(g_local) and _all_finite(mix):
            torch.addcmul(dense.pool_adjoint(g_local).to(x.dtype), g,
                          dense.unpool(mix).to(x.dtype), out=grad_x)
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
    return grad_x, g_wg, g_wl
