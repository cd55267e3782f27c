"""Fused Triton path for the MLCA layer: few passes over ``x``, deterministic, exact.

MLCA (``mlca.attention.mlca``) is, for ``x`` of shape ``(B, C, H, W)`` and ``L = local_size``::

    local = adaptive_avg_pool2d(x, L)                     # (B, C, L, L)   "pool"
    att_s = middle(local)                                 # (B, C, L, L)   conv1d, sigmoid, mix
    out   = x * adaptive_avg_pool2d(att_s, (H, W))        # (B, C, H, W)   "scale"

The stock-op composition materialises the ``(B, C, H, W)`` attention map and, in backward,
the adaptive-pooling adjoints. Here the big tensors are touched only by two kernels.

The kernels used by default are the "rows" variants, ``_triton_bin_reduce_rows`` and
``_triton_scale_rows``, which work on 2-D (channel, column) tiles: on an H100 they were 2.4x
(NCHW) and 14x (channels_last) faster for the reduction and 1.4x for the NCHW scale than the
flat-pixel kernels below (the same for the channels_last scale). ``ALGO = "flat"`` keeps those
for comparison. Both compute the same thing in the same way:

* ``_triton_bin_reduce``: one program per (sample, block of channels, bin row ``i``) walks
  the rows of that bin row once and reduces them to the ``L`` bins of the row. Mode 0 gives
  the bin means of ``x`` (forward pool); mode 1 gives ``U_h^T (g * x) U_w`` where ``U`` is the
  ``L -> H`` upsampling (averaging) matrix, i.e. dLoss/d``att_s`` (backward).
* ``_triton_scale``: one program per (sample, block of channels, block of pixels) rebuilds
  the attention of each pixel on the fly from the tiny ``att_s`` (average of the <= 2x2
  source bins that cover it) and writes ``v * att`` (forward: ``v = x``), optionally plus the
  gathered pooling adjoint (backward: ``grad_x = g * att + P^T dlocal``).

Both rely on one index identity: with adaptive pooling, pixel row ``h`` lies in bin row
``i`` iff ``floor(i*H/L) <= h < ceil((i+1)*H/L)`` iff ``floor(h*L/H) <= i < ceil((h+1)*L/H)``;
so the rows a pooling bin covers are exactly the rows whose upsampled value reads that bin,
and one row walk serves both the pool and the adjoint of the upsampling.

Bytes moved (``|x|`` = size of x): forward reads ``x`` twice and writes ``out`` once (3|x|);
backward reads ``g`` and ``x`` once (reduction) then reads ``g`` and writes ``grad_x``
(4|x|). Every output element is owned by one program, reductions run in a fixed order and
no atomics are used, so results are bit-identical across runs and
``torch.use_deterministic_algorithms(True)`` is honoured. Everything accumulates in float32.

The ``(B, C, L, L)`` middle (two conv1d, sigmoid, mix) is a few bytes but, as PyTorch ops, ~12
launches forward and ~30 backward, which dominated the time at YOLO shapes on an H100
(docs/triton.md). It is fused: ``_triton_middle`` computes it in one launch per direction.
Each program owns a block of channels and all their bins, and reads the neighbours its conv
taps need straight from the L2-resident means; the backward recomputes the sigmoids, writes
per-program partial sums of the weight gradients (added on the host in a fixed order) and takes
dLoss/dlocal back through both convs, already divided by the bin sizes for the scale kernel,
recomputing the neighbours' conv gradients instead of waiting for the programs that own them.
Forward: 3 launches; backward: 3 (``FUSED_MIDDLE = False`` keeps the PyTorch middle, with its
backward by autograd on a recomputed copy, for comparison).

Kernels run compiled on CUDA tensors, and on CPU tensors through Triton's interpreter when
``TRITON_INTERPRET=1`` is set (read at call time, so tests can scope it with
``monkeypatch.setenv``); the interpreter is for testing only (thousands of times slower).
"""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

try:  # Triton ships with the CUDA builds of torch; the CPU builds have none.
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    _HAS_TRITON = False

__all__ = ["triton_available", "mlca_triton", "triton_forward_core", "triton_backward_core"]

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def triton_available() -> bool:
    """Whether :func:`mlca_triton` can run here: Triton importable and (CUDA or the interpreter)."""
    return _HAS_TRITON and (torch.cuda.is_available() or _interpret_requested())


# --------------------------------------------------------------------------------------------
# Kernels. Written as plain functions and wrapped on first use (see ``_kernel``): the choice
# between the compiler and the interpreter is then made per call, not frozen at import time.
# For that to hold they call only Triton *builtins*: ``tl.zeros``/``tl.sum`` are themselves
# @jit functions whose kind (compiled or interpreted) Triton fixes when it is imported, so
# they are spelled ``tl.full`` and ``tl.reduce(..., tl.standard._sum_combine)`` (the very
# combine function ``tl.sum`` uses; the interpreter recognises it and sums with numpy).
# --------------------------------------------------------------------------------------------


def _triton_bin_reduce(
    a_ptr, b_ptr, out_ptr,
    C, H, W, L, n_cblk,
    sa_b, sa_c, sa_h, sa_w,
    sb_b, sb_c, sb_h, sb_w,
    MODE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, LP: tl.constexpr,
    A_DENSE: tl.constexpr, B_DENSE: tl.constexpr,
):
    """out[b, c, i, j] for one (b, channel block, bin row i), all j; out is (B, C, L, L) f32.

    MODE 0: mean of a over bin (i, j)            (adaptive_avg_pool2d(a, L)).
    MODE 1: sum_{h,w} a*b * U[h, i] * U[w, j]     (adjoint of the L -> (H, W) upsampling).
    *_DENSE: rows of that tensor are contiguous (stride_w 1, stride_h W, e.g. NCHW), so a bin
    row is one contiguous run and the address is affine in s (vectorised loads).
    """
    pid = tl.program_id(0)
    i = pid % L
    rest = pid // L
    cb = rest % n_cblk
    bi = (rest // n_cblk).to(tl.int64)  # int64 base offsets: large batches overflow int32

    # Rows of bin row i; by the identity in the module docstring these are also the rows
    # whose upsampled value reads source row i, so MODE 1 walks the same span.
    hs = (i * H) // L
    he = ((i + 1) * H + L - 1) // L
    n = (he - hs) * W

    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    j = tl.arange(0, LP)
    a_base = a_ptr + bi * sa_b + offs_c[:, None] * sa_c
    b_base = b_ptr + bi * sb_b + offs_c[:, None] * sb_c

    acc = tl.full((BLOCK_C, LP), 0.0, tl.float32)
    for s0 in range(0, n, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask_s = s < n
        h = hs + s // W
        w = s % W
        m2 = mask_c[:, None] & mask_s[None, :]
        if A_DENSE:
            a_sp = hs * W + s
        else:
            a_sp = h * sa_h + w * sa_w
        v = tl.load(a_base + a_sp[None, :], mask=m2).to(tl.float32)
        # Column w lies in bin column j iff q0 <= j < q1 (same identity as for rows).
        q0 = (w * L) // W
        q1 = ((w + 1) * L + W - 1) // W
        in_bin = (j[None, :] >= q0[:, None]) & (j[None, :] < q1[:, None])  # (BLOCK_S, LP)
        if MODE == 1:
            if B_DENSE:
                b_sp = hs * W + s
            else:
                b_sp = h * sb_h + w * sb_w
            g = tl.load(b_base + b_sp[None, :], mask=m2).to(tl.float32)
            r0 = (h * L) // H
            r1 = ((h + 1) * L + H - 1) // H
            # U[h, i] * U[w, j] = 1 / (#source rows of h * #source cols of w) on the support.
            inv = 1.0 / ((r1 - r0) * (q1 - q0)).to(tl.float32)
            v = v * g * inv[None, :]
        v = tl.where(m2, v, 0.0)  # masked lanes are undefined on GPU
        # Select, not multiply by a 0/1 weight: 0 * inf = nan would leak a non-finite value
        # into bins that do not contain it.
        acc += tl.reduce(tl.where(in_bin[None, :, :], v[:, :, None], 0.0), 1, tl.standard._sum_combine)

    if MODE == 0:
        ws = (j * W) // L
        we = ((j + 1) * W + L - 1) // L
        cnt = ((he - hs) * (we - ws)).to(tl.float32)
        acc = acc / tl.where(j < L, cnt, 1.0)[None, :]

    out_off = ((bi * C + offs_c[:, None]) * L + i) * L + j[None, :]
    tl.store(out_ptr + out_off, acc, mask=mask_c[:, None] & (j[None, :] < L))


def _triton_scale(
    v_ptr, small_ptr, add_ptr, out_ptr,
    C, H, W, L, n_cblk, n_sblk,
    sv_b, sv_c, sv_h, sv_w,
    so_b, so_c, so_h, so_w,
    sm_b, sm_c, sm_r, sm_q,
    HAS_ADD: tl.constexpr, SPAN_H: tl.constexpr, SPAN_W: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, V_DENSE: tl.constexpr, O_DENSE: tl.constexpr,
):
    """out = v * upsample(small) [+ gather(add)] for one (b, channel block, pixel block).

    small, add: (B, C, L, L) f32, both with strides sm_* (channel-minor for channels_last v,
    so that the gathers of neighbouring channels are coalesced). upsample(small)[h, w] is the mean of small over
    source rows [floor(h*L/H), ceil((h+1)*L/H)) x source cols (same in w): at most
    SPAN_H x SPAN_W bins, 2 x 2 whenever H, W >= L. gather(add)[h, w] is the plain sum of add
    over the same bins (pooling adjoint, add pre-divided by the bin sizes on the host).
    *_DENSE: that tensor's planes are contiguous, so the address is s itself (vectorised).
    """
    pid = tl.program_id(0)
    sb = pid % n_sblk
    rest = pid // n_sblk
    cb = rest % n_cblk
    bi = (rest // n_cblk).to(tl.int64)

    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    s = sb * BLOCK_S + tl.arange(0, BLOCK_S)
    mask_s = s < H * W
    h = s // W
    w = s % W
    m2 = mask_c[:, None] & mask_s[None, :]

    r0 = (h * L) // H
    r1 = ((h + 1) * L + H - 1) // H
    q0 = (w * L) // W
    q1 = ((w + 1) * L + W - 1) // W
    small_base = bi * sm_b + offs_c[:, None] * sm_c

    att = tl.full((BLOCK_C, BLOCK_S), 0.0, tl.float32)
    extra = tl.full((BLOCK_C, BLOCK_S), 0.0, tl.float32)
    for dr in tl.static_range(SPAN_H):
        for dq in tl.static_range(SPAN_W):
            r = r0 + dr
            q = q0 + dq
            mb = m2 & ((r < r1) & (q < q1))[None, :]
            idx = small_base + (r * sm_r + q * sm_q)[None, :]
            att += tl.where(mb, tl.load(small_ptr + idx, mask=mb), 0.0)
            if HAS_ADD:
                extra += tl.where(mb, tl.load(add_ptr + idx, mask=mb), 0.0)
    att = att / ((r1 - r0) * (q1 - q0)).to(tl.float32)[None, :]

    if V_DENSE:
        v_sp = s
    else:
        v_sp = h * sv_h + w * sv_w
    v = tl.load(v_ptr + bi * sv_b + offs_c[:, None] * sv_c + v_sp[None, :], mask=m2)
    res = v.to(tl.float32) * att
    if HAS_ADD:
        res = res + extra
    if O_DENSE:
        o_sp = s
    else:
        o_sp = h * so_h + w * so_w
    out_ptrs = out_ptr + bi * so_b + offs_c[:, None] * so_c + o_sp[None, :]
    tl.store(out_ptrs, res.to(out_ptr.dtype.element_ty), mask=m2)


def _triton_bin_reduce_rows(
    a_ptr, b_ptr, out_ptr,
    C, H, W, L, n_cblk,
    sa_b, sa_c, sa_h, sa_w,
    sb_b, sb_c, sb_h, sb_w,
    MODE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, LP: tl.constexpr,
):
    """Same result as ``_triton_bin_reduce``, walking the bin row as 2-D (channel, column) tiles.

    For each chunk of BLOCK_W columns the pixel rows are summed elementwise into a register
    tile (no cross-thread work inside the row loop); the tile is reduced to the LP bins once
    per chunk. Addresses are ``h * s_h + w * s_w``: Triton specialises a stride of 1, so NCHW
    rows load as wide vectors and channels_last tiles coalesce along channels.
    """
    pid = tl.program_id(0)
    i = pid % L
    rest = pid // L
    cb = rest % n_cblk
    bi = (rest // n_cblk).to(tl.int64)

    hs = (i * H) // L
    he = ((i + 1) * H + L - 1) // L
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    j = tl.arange(0, LP)
    a_base = a_ptr + bi * sa_b + offs_c[:, None].to(tl.int64) * sa_c
    b_base = b_ptr + bi * sb_b + offs_c[:, None].to(tl.int64) * sb_c

    acc = tl.full((BLOCK_C, LP), 0.0, tl.float32)
    for w0 in range(0, W, BLOCK_W):
        w = w0 + tl.arange(0, BLOCK_W)
        mask_w = w < W
        m2 = mask_c[:, None] & mask_w[None, :]
        a_w = a_base + (w * sa_w)[None, :]
        b_w = b_base + (w * sb_w)[None, :]
        rows = tl.full((BLOCK_C, BLOCK_W), 0.0, tl.float32)
        for h in range(hs, he):
            v = tl.load(a_w + h * sa_h, mask=m2, other=0.0).to(tl.float32)
            if MODE == 1:
                g = tl.load(b_w + h * sb_h, mask=m2, other=0.0).to(tl.float32)
                # U[h, i] = 1 / (number of source rows that row h averages).
                nr = ((h + 1) * L + H - 1) // H - (h * L) // H
                v = v * g * (1.0 / nr.to(tl.float32))
            rows += v
        q0 = (w * L) // W
        q1 = ((w + 1) * L + W - 1) // W
        if MODE == 1:
            rows = rows * (1.0 / (q1 - q0).to(tl.float32))[None, :]
        # Select, not multiply by a 0/1 weight: 0 * inf = nan would leak into other bins.
        in_bin = (j[None, :] >= q0[:, None]) & (j[None, :] < q1[:, None]) & mask_w[:, None]
        acc += tl.reduce(tl.where(in_bin[None, :, :], rows[:, :, None], 0.0), 1,
                         tl.standard._sum_combine)

    if MODE == 0:
        ws = (j * W) // L
        we = ((j + 1) * W + L - 1) // L
        cnt = ((he - hs) * (we - ws)).to(tl.float32)
        acc = acc / tl.where(j < L, cnt, 1.0)[None, :]

    out_off = ((bi * C + offs_c[:, None]) * L + i) * L + j[None, :]
    tl.store(out_ptr + out_off, acc, mask=mask_c[:, None] & (j[None, :] < L))


def _triton_scale_rows(
    v_ptr, small_ptr, add_ptr, out_ptr,
    C, H, W, L, n_cblk, n_hblk, n_wblk,
    sv_b, sv_c, sv_h, sv_w,
    so_b, so_c, so_h, so_w,
    sm_b, sm_c, sm_r, sm_q,
    HAS_ADD: tl.constexpr, SPAN_H: tl.constexpr, SPAN_W: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
):
    """Same result as ``_triton_scale`` on (channel, column) tiles, ROWS pixel rows per program.

    The column bins (q0, q1, their count) are computed once per program and the row bins once
    per row, instead of two integer divisions and four bin bounds per element.
    COLS: small and add are given already upsampled (resp. gathered) along W, shape
    (B, C, L, W) with strides sm_*; only the rows are combined here.
    """
    pid = tl.program_id(0)
    wb = pid % n_wblk
    rest = pid // n_wblk
    hb = rest % n_hblk
    rest = rest // n_hblk
    cb = rest % n_cblk
    bi = (rest // n_cblk).to(tl.int64)

    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    w = wb * BLOCK_W + tl.arange(0, BLOCK_W)
    mask_w = w < W
    q0 = (w * L) // W
    q1 = ((w + 1) * L + W - 1) // W
    inv_q = 1.0 / (q1 - q0).to(tl.float32)
    small_base = small_ptr + bi * sm_b + offs_c[:, None] * sm_c
    add_base = add_ptr + bi * sm_b + offs_c[:, None] * sm_c
    v_base = v_ptr + bi * sv_b + offs_c[:, None].to(tl.int64) * sv_c + (w * sv_w)[None, :]
    o_base = out_ptr + bi * so_b + offs_c[:, None].to(tl.int64) * so_c + (w * so_w)[None, :]

    for hh in range(ROWS):
        h = hb * ROWS + hh
        m2 = mask_c[:, None] & mask_w[None, :] & (h < H)
        r0 = (h * L) // H
        r1 = ((h + 1) * L + H - 1) // H
        att = tl.full((BLOCK_C, BLOCK_W), 0.0, tl.float32)
        extra = tl.full((BLOCK_C, BLOCK_W), 0.0, tl.float32)
        if COLS:
            # small/add are already upsampled along W: (B, C, L, W), contiguous along w, so
            # these loads are as wide as the load of v (one gather per element per bin is
            # what limited the NCHW kernel: the load units, not the memory).
            for dr in tl.static_range(SPAN_H):
                mb = m2 & (r0 + dr < r1)
                idx = (r0 + dr) * sm_r + (w * sm_q)[None, :]
                att += tl.load(small_base + idx, mask=mb, other=0.0)
                if HAS_ADD:
                    extra += tl.load(add_base + idx, mask=mb, other=0.0)
            att = att * (1.0 / (r1 - r0).to(tl.float32))
        else:
            for dr in tl.static_range(SPAN_H):
                for dq in tl.static_range(SPAN_W):
                    q = q0 + dq
                    mb = m2 & (r0 + dr < r1) & (q < q1)[None, :]
                    idx = (r0 + dr) * sm_r + (q * sm_q)[None, :]
                    att += tl.load(small_base + idx, mask=mb, other=0.0)
                    if HAS_ADD:
                        extra += tl.load(add_base + idx, mask=mb, other=0.0)
            att = att * (inv_q[None, :] / (r1 - r0).to(tl.float32))
        v = tl.load(v_base + h * sv_h, mask=m2, other=0.0)
        res = v.to(tl.float32) * att
        if HAS_ADD:
            res = res + extra
        tl.store(o_base + h * so_h, res.to(out_ptr.dtype.element_ty), mask=m2)


def _triton_middle(
    local_ptr, wg_ptr, wl_ptr, d_ptr, att_ptr, add_ptr, part_ptr,
    C, H, W, L, n_cblk, inv_ll, local_weight,
    so_b, so_c, so_r, so_q,
    MODE: tl.constexpr, GRAD_X: tl.constexpr, KG: tl.constexpr, KL: tl.constexpr,
    BLOCK_C: tl.constexpr, LLP: tl.constexpr,
):
    """The (B, C, L, L) middle for one (sample, block of channels), all L*L bins, one launch.

    local: (B, C, L, L) bin means, contiguous. With ``t = bin * C + c`` the bin-major,
    channel-minor sequence of the seed, ``glob[c]`` the mean of channel c's bins, zero padding,
    ``rl = (KL-1)/2``, ``rg = (KG-1)/2``::

        yl[t] = sum_d wl[d] * local[t + d - rl]
        yg[c] = sum_d wg[d] * glob[c + d - rg]
        att   = sigmoid(yg) * (1 - lw) + sigmoid(yl) * lw

    MODE 0 (forward): writes att (strides so_*: the layout the scale kernel reads).

    MODE 1 (backward; d = dLoss/d att, contiguous): with ``dyl``, ``dyg`` = dLoss/d yl, yg,
    writes this program's share of the weight gradients, ``sum dyg[c] * glob[c + d - rg]`` then
    ``sum dyl[t] * local[t + d - rl]``, to part_ptr[pid, :KG + KL] (summed over programs on the
    host, in a fixed order: no atomics), and when GRAD_X, what the scale kernel needs for dLoss/dx
    (strides so_*): att again (recomputed; the forward keeps nothing but the means) and ``add``,
    dLoss/d local through both convs (their adjoints: taps reversed) divided by the pooling-bin
    sizes::

        add[t] = (sum_d wl[d] * dyl[t - d + rl] + sum_d wg[d] * dyg[c - d + rg] / (L*L))
                 / (rows of t's bin * columns of t's bin)

    The neighbours' dyl and dyg belong to other programs: they are recomputed here from local and
    d (L2-resident, a few KiB per sample), so no program waits on another and the backward's
    middle is one launch.
    """
    pid = tl.program_id(0)
    cb = pid % n_cblk
    bi = (pid // n_cblk).to(tl.int64)
    LL = L * L
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = tl.arange(0, LLP)
    mask_c = c < C
    mask_p = p < LL
    m2 = mask_c[:, None] & mask_p[None, :]
    base = local_ptr + bi * C * LL
    t = p[None, :] * C + c[:, None]
    n_seq = LL * C

    yg = tl.full((BLOCK_C,), 0.0, tl.float32)
    for d in tl.static_range(KG):
        cc = c + (d - (KG - 1) // 2)
        ok = (cc >= 0) & (cc < C)
        v = tl.load(base + cc[:, None] * LL + p[None, :], mask=ok[:, None] & mask_p[None, :],
                    other=0.0)
        glob = tl.reduce(v, 1, tl.standard._sum_combine) * inv_ll
        yg += tl.load(wg_ptr + d).to(tl.float32) * glob
    yl = tl.full((BLOCK_C, LLP), 0.0, tl.float32)
    for d in tl.static_range(KL):
        tt = t + (d - (KL - 1) // 2)
        ok = m2 & (tt >= 0) & (tt < n_seq)
        tt = tl.where(ok, tt, 0)
        v = tl.load(base + (tt % C) * LL + tt // C, mask=ok, other=0.0)
        yl += tl.load(wl_ptr + d).to(tl.float32) * v
    sg = 1.0 / (1.0 + tl.exp(-yg))
    sl = 1.0 / (1.0 + tl.exp(-yl))

    r = p // L
    q = p % L
    small_off = bi * so_b + c[:, None] * so_c + (r * so_r + q * so_q)[None, :]
    if MODE == 0 or GRAD_X:
        att = sg[:, None] * (1.0 - local_weight) + sl * local_weight
        tl.store(att_ptr + small_off, att, mask=m2)
    if MODE == 1:
        d_base = d_ptr + bi * C * LL
        da = tl.load(d_base + c[:, None] * LL + p[None, :], mask=m2, other=0.0)
        dyl = tl.where(m2, da * local_weight * sl * (1.0 - sl), 0.0)
        dyg = tl.reduce(da, 1, tl.standard._sum_combine) * (1.0 - local_weight) * sg * (1.0 - sg)
        dyg = tl.where(mask_c, dyg, 0.0)
        part = part_ptr + pid * (KG + KL)
        for d in tl.static_range(KG):
            cc = c + (d - (KG - 1) // 2)
            ok = (cc >= 0) & (cc < C)
            v = tl.load(base + cc[:, None] * LL + p[None, :], mask=ok[:, None] & mask_p[None, :],
                        other=0.0)
            glob = tl.reduce(v, 1, tl.standard._sum_combine) * inv_ll
            s = tl.where(mask_c, dyg * glob, 0.0)
            tl.store(part + d, tl.reduce(s, 0, tl.standard._sum_combine))
        for d in tl.static_range(KL):
            tt = t + (d - (KL - 1) // 2)
            ok = m2 & (tt >= 0) & (tt < n_seq)
            tt = tl.where(ok, tt, 0)
            v = tl.load(base + (tt % C) * LL + tt // C, mask=ok, other=0.0)
            s = tl.reduce(tl.where(ok, dyl * v, 0.0), 1, tl.standard._sum_combine)
            tl.store(part + KG + d, tl.reduce(s, 0, tl.standard._sum_combine))

        if GRAD_X:
            # Global conv's adjoint: dyg of channel c - d + rg, recomputed when not our own.
            dg = tl.full((BLOCK_C,), 0.0, tl.float32)
            for d in tl.static_range(KG):
                if d == (KG - 1) // 2:
                    dyg_n = dyg
                else:
                    cn = c - (d - (KG - 1) // 2)
                    ok_n = (cn >= 0) & (cn < C)
                    yg_n = tl.full((BLOCK_C,), 0.0, tl.float32)
                    for e in tl.static_range(KG):
                        ce = cn + (e - (KG - 1) // 2)
                        ok = ok_n & (ce >= 0) & (ce < C)
                        v = tl.load(base + ce[:, None] * LL + p[None, :],
                                    mask=ok[:, None] & mask_p[None, :], other=0.0)
                        yg_n += tl.load(wg_ptr + e).to(tl.float32) * (
                            tl.reduce(v, 1, tl.standard._sum_combine) * inv_ll)
                    sg_n = 1.0 / (1.0 + tl.exp(-yg_n))
                    da_n = tl.load(d_base + cn[:, None] * LL + p[None, :],
                                   mask=ok_n[:, None] & mask_p[None, :], other=0.0)
                    # Zero outside 0 <= cn < C: da_n is.
                    dyg_n = (tl.reduce(da_n, 1, tl.standard._sum_combine) * (1.0 - local_weight)
                             * sg_n * (1.0 - sg_n))
                dg += tl.load(wg_ptr + d).to(tl.float32) * dyg_n
            # Local conv's adjoint: dyl at sequence position t - d + rl, recomputed likewise.
            acc = tl.full((BLOCK_C, LLP), 0.0, tl.float32)
            for d in tl.static_range(KL):
                if d == (KL - 1) // 2:
                    dyl_n = dyl
                else:
                    tn = t - (d - (KL - 1) // 2)
                    ok_n = m2 & (tn >= 0) & (tn < n_seq)
                    yl_n = tl.full((BLOCK_C, LLP), 0.0, tl.float32)
                    for e in tl.static_range(KL):
                        te = tn + (e - (KL - 1) // 2)
                        ok = ok_n & (te >= 0) & (te < n_seq)
                        te = tl.where(ok, te, 0)
                        yl_n += tl.load(wl_ptr + e).to(tl.float32) * tl.load(
                            base + (te % C) * LL + te // C, mask=ok, other=0.0)
                    sl_n = 1.0 / (1.0 + tl.exp(-yl_n))
                    tn = tl.where(ok_n, tn, 0)
                    da_n = tl.load(d_base + (tn % C) * LL + tn // C, mask=ok_n, other=0.0)
                    dyl_n = da_n * local_weight * sl_n * (1.0 - sl_n)
                acc += tl.load(wl_ptr + d).to(tl.float32) * dyl_n
            n_rows = ((r + 1) * H + L - 1) // L - (r * H) // L
            n_cols = ((q + 1) * W + L - 1) // L - (q * W) // L
            add = (acc + (dg * inv_ll)[:, None]) * (1.0 / (n_rows * n_cols).to(tl.float32))[None, :]
            tl.store(add_ptr + small_off, add, mask=m2)


_KERNEL_CACHE: dict[tuple[str, bool], Callable] = {}


def _kernel(fn: Callable, interpret: bool):
    """``fn`` wrapped for the compiler or for Triton's interpreter, cached."""
    key = (fn.__name__, interpret)
    if key not in _KERNEL_CACHE:
        if interpret:
            from triton.runtime.interpreter import InterpretedFunction

            _KERNEL_CACHE[key] = InterpretedFunction(fn)
        else:
            from triton.runtime.jit import JITFunction

            _KERNEL_CACHE[key] = JITFunction(fn)
    return _KERNEL_CACHE[key]


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _use_interpreter(x: Tensor) -> bool:
    if _interpret_requested():
        return True
    if x.is_cuda:
        return False
    raise RuntimeError(
        f"mlca_triton: got a {x.device.type} tensor; the Triton path runs CUDA tensors, and CPU "
        "tensors only under Triton's interpreter (set TRITON_INTERPRET=1; for testing, it is slow). "
        "Use the PyTorch path (MLCA(..., backend='torch')) on the CPU."
    )


# Host-side integer helpers. Not ``triton.cdiv`` / ``triton.next_power_of_2``: since Triton 3.x
# those are ``ConstexprFunction`` objects costing ~5 us a call on the host, and a forward+backward
# made 32 such calls (~170 us of the host time that limits the small YOLO maps).
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(n: int) -> int:
    """Smallest power of two >= n (0 for 0, as Triton's)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def _on_device_of(t: Tensor):
    """Triton launches on the *current* CUDA device: make it t's (a model on cuda:1 with cuda:0
    current would otherwise hand cuda:1 pointers to a cuda:0 launch)."""
    if t.is_cuda and t.get_device() != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def _is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1 and not x.is_contiguous()


def _small_format(t: Tensor) -> torch.memory_format:
    """Layout of the (B, C, L, L) maps the scale kernel reads for big tensor t: channel-minor
    when channels are t's contiguous axis, so neighbouring channels' gathers coalesce."""
    return torch.channels_last if _is_channels_last(t) else torch.contiguous_format


def _blocks(x: Tensor, for_reduce: bool, lp: int, override: tuple[int, int] | None) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_S): the contiguous axis of x gets the wide side of the tile."""
    if override is not None:
        return override
    C = x.shape[1]
    if _is_channels_last(x):
        bc, bs = min(64, _next_pow2(C)), 32
    else:
        bc, bs = min(8 if for_reduce else 4, _next_pow2(C)), 128 if for_reduce else 256
    if for_reduce:  # the (BLOCK_C, BLOCK_S, LP) broadcast must stay in registers
        while bc * bs * lp > 8192 and bs > 16:
            bs //= 2
    return bc, bs


def _dense_rows(t: Tensor) -> bool:
    """Each (b, c) plane is one contiguous run (stride_w 1, stride_h W): the NCHW fast path."""
    return t.stride(3) == 1 and t.stride(2) == t.shape[3]


@lru_cache(maxsize=256)
def _span(n_out: int, L: int) -> int:
    """Most source bins that one of n_out upsampled positions averages."""
    return max(((o + 1) * L + n_out - 1) // n_out - (o * L) // n_out for o in range(n_out))


def _bin_counts(n: int, L: int, device: torch.device) -> Tensor:
    """Sizes of the L adaptive-pooling bins over n positions, (L,) float32, made on ``device``
    (no host-to-device copy in the backward)."""
    i = torch.arange(L, device=device)
    return (((i + 1) * n + L - 1) // L - (i * n) // L).to(torch.float32)


# Tile shapes and warps of the row kernels, per kernel and layout of the big tensor.
# "reduce": (BLOCK_C, BLOCK_W, num_warps); "scale": (BLOCK_C, BLOCK_W, ROWS, num_warps).
# For NCHW, BLOCK_W shrinks to the next power of two of W and BLOCK_C grows to keep the tile.
# Values picked by ``benchmarks/bench_mlca_gpu.py --tune`` on an H100 (docs/triton.md).
TUNING: dict[str, tuple[int, ...]] = {
    "reduce_nchw": (4, 128, 4),
    "reduce_cl": (64, 16, 4),
    "scale_nchw": (4, 256, 8, 4),
    "scale_cl": (128, 16, 2, 8),
}
# "rows": the (channel, column)-tile kernels; "flat": the flat-pixel kernels. Kept switchable
# for the benchmark's comparison.
ALGO = "rows"
# The (B, C, L, L) middle as one Triton kernel (``_triton_middle``) per direction: forward 3
# launches in all, backward 3, instead of ~12 and ~30 PyTorch ops that left the GPU
# waiting on the host at the YOLO shapes (docs/triton.md). False: the PyTorch middle, for the
# benchmark's comparison.
FUSED_MIDDLE = True
# NCHW scale: upsample the small maps along W first (tiny (B, C, L, W) tensors), so that the
# kernel's attention loads are contiguous instead of one gather per element and bin. That bought
# 2% of copy bandwidth in the scale kernel alone at 32x256x160x160 on an H100, for ~5 more host
# ops per pass; off by default since the middle is fused (the host ops cost more than that).
NCHW_COLS = False
# NCHW: pick BLOCK_W to pad W least, widening BLOCK_C instead, so no lanes sit masked.
FIT_W = True


@lru_cache(maxsize=64)
def _col_index(W: int, L: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """For the upsampling L -> W: source bin of each (tap, w) (flat, (SPAN*W,)), whether that
    tap is used (SPAN, W), and 1 / number of source bins (W,)."""
    w = torch.arange(W)
    q0, q1 = (w * L) // W, ((w + 1) * L + W - 1) // W
    q = q0[None, :] + torch.arange(_span(W, L))[:, None]
    valid = q < q1[None, :]
    q = torch.where(valid, q, q0[None, :])
    return (q.reshape(-1).to(device), valid.to(device),
            (1.0 / (q1 - q0).to(torch.float32)).to(device))


def _cols(m: Tensor, W: int, mean: bool) -> Tensor:
    """(B, C, L, L) -> (B, C, L, W): mean (upsampling) or sum (pooling adjoint) over the source
    bins of each column. A select, not a 0/1 product, so a non-finite value stays in place."""
    B, C, L, _ = m.shape
    idx, valid, inv = _col_index(W, L, m.device)
    g = m.index_select(3, idx).view(B, C, L, valid.shape[0], W)
    out = torch.where(valid, g, 0.0).sum(3)
    return out * inv if mean else out


def _fit_width(W: int, widest: int) -> int:
    """The power of two in [widest / 8, widest] (and >= 16) whose multiple pads W least; ties go
    to the wider. W = 160: 32 (no padding), not 256 (96 idle lanes in every row)."""
    cands = [widest >> s for s in range(4) if (widest >> s) >= min(16, widest)]
    return min(cands, key=lambda c: (_cdiv(W, c) * c, -c))


def _row_tile(x: Tensor, key: str, lp: int) -> tuple[int, ...]:
    """Tile of the row kernels for x: (BLOCK_C, BLOCK_W, *rest of the TUNING entry)."""
    cl = _is_channels_last(x)
    cfg = TUNING[key + ("_cl" if cl else "_nchw")]
    return _row_tile_for(x.shape[1], x.shape[3], cl, key, lp, cfg, FIT_W)


@lru_cache(maxsize=1024)
def _row_tile_for(C: int, W: int, cl: bool, key: str, lp: int, cfg: tuple[int, ...],
                  fit_w: bool) -> tuple[int, ...]:
    """Cached: tile arithmetic is per call host time, which bounds the small maps on a GPU (the
    settings it reads are arguments, so a benchmark changing TUNING/FIT_W gets fresh tiles)."""
    if cl:
        bc = min(cfg[0], _next_pow2(C))
        bw = cfg[1]
    else:
        bw = min(cfg[1], _next_pow2(W))
        if fit_w:
            bw = _fit_width(W, bw)
        bc = min(max(1, cfg[0] * cfg[1] // bw), _next_pow2(C))
    if key == "reduce":  # the (BLOCK_C, BLOCK_W, LP) select must stay in registers
        while bc * bw * lp > 16384 and bc > 1:
            bc //= 2
    return (bc, bw, *cfg[2:])


def _bin_reduce(a: Tensor, b: Tensor | None, L: int, interpret: bool,
                blocks: tuple[int, int] | None) -> Tensor:
    """Mode 0 (b None): (B, C, L, L) bin means of a. Mode 1: U^T (a*b) U. float32."""
    B, C, H, W = a.shape
    out = torch.empty((B, C, L, L), device=a.device, dtype=torch.float32)
    lp = _next_pow2(L)
    other = a if b is None else b
    if ALGO == "rows":
        bc, bw, warps = _row_tile(a, "reduce", lp)
        if blocks is not None:
            bc, bw = blocks
        n_cblk = _cdiv(C, bc)
        _kernel(_triton_bin_reduce_rows, interpret)[(B * n_cblk * L,)](
            a, other, out, C, H, W, L, n_cblk, *a.stride(), *other.stride(),
            MODE=0 if b is None else 1, BLOCK_C=bc, BLOCK_W=bw, LP=lp, num_warps=warps,
        )
        return out
    bc, bs = _blocks(a, True, lp, blocks)
    n_cblk = _cdiv(C, bc)
    _kernel(_triton_bin_reduce, interpret)[(B * n_cblk * L,)](
        a, other, out, C, H, W, L, n_cblk,
        *a.stride(), *other.stride(),
        MODE=0 if b is None else 1, BLOCK_C=bc, BLOCK_S=bs, LP=lp,
        A_DENSE=_dense_rows(a), B_DENSE=_dense_rows(other),
    )
    return out


def _scale(v: Tensor, small: Tensor, add: Tensor | None, like: Tensor, interpret: bool,
           blocks: tuple[int, int] | None) -> Tensor:
    """v * upsample(small) (+ gather(add)), written in the dtype and memory format of ``like``."""
    B, C, H, W = v.shape
    L = small.shape[-1]
    fmt = _small_format(v)
    small = small.contiguous(memory_format=fmt)
    add = None if add is None else add.contiguous(memory_format=fmt)
    assert add is None or add.stride() == small.stride()
    out = torch.empty_like(like)  # preserve_format: channels_last in, channels_last out
    if ALGO == "rows":
        bc, bw, rows, warps = _row_tile(v, "scale", 1)
        if blocks is not None:
            bc, bw = blocks
        cols = NCHW_COLS and fmt == torch.contiguous_format
        if cols:
            small = _cols(small, W, True)
            add = None if add is None else _cols(add, W, False)
        n_cblk, n_hblk, n_wblk = _cdiv(C, bc), _cdiv(H, rows), _cdiv(W, bw)
        _kernel(_triton_scale_rows, interpret)[(B * n_cblk * n_hblk * n_wblk,)](
            v, small, small if add is None else add, out, C, H, W, L, n_cblk, n_hblk, n_wblk,
            *v.stride(), *out.stride(), *small.stride(),
            HAS_ADD=add is not None, SPAN_H=_span(H, L), SPAN_W=_span(W, L), BLOCK_C=bc,
            BLOCK_W=bw, ROWS=rows, COLS=cols, num_warps=warps,
        )
        return out
    bc, bs = _blocks(v, False, 1, blocks)
    n_cblk = _cdiv(C, bc)
    n_sblk = _cdiv(H * W, bs)
    _kernel(_triton_scale, interpret)[(B * n_cblk * n_sblk,)](
        v, small, small if add is None else add, out, C, H, W, L, n_cblk, n_sblk,
        *v.stride(), *out.stride(), *small.stride(),
        HAS_ADD=add is not None, SPAN_H=_span(H, L), SPAN_W=_span(W, L), BLOCK_C=bc, BLOCK_S=bs,
        V_DENSE=_dense_rows(v), O_DENSE=_dense_rows(out),
    )
    return out


# --------------------------------------------------------------------------------------------
# The (B, C, L, L) middle, in PyTorch
# --------------------------------------------------------------------------------------------


def _middle(local: Tensor, w_global: Tensor, w_local: Tensor, local_weight: float) -> Tensor:
    """(B, C, L, L) local means -> (B, C, L, L) small attention, as in the seed.

    The local conv1d runs over the bins laid out bin-major/channel-minor as one (B, 1, L*L*C)
    sequence; the global vector is the mean of the L x L bins (not the global mean of x,
    which differs when bins overlap).
    """
    B, C, L, _ = local.shape
    seq = local.reshape(B, C, L * L).transpose(1, 2).reshape(B, 1, L * L * C)
    glob = local.mean(dim=(2, 3)).unsqueeze(1)  # (B, 1, C)
    with _no_tf32():
        y_local = F.conv1d(seq, w_local, padding=(w_local.shape[-1] - 1) // 2)
        y_global = F.conv1d(glob, w_global, padding=(w_global.shape[-1] - 1) // 2)
    y_local = y_local.reshape(B, L * L, C).transpose(1, 2).reshape(B, C, L, L)
    y_global = y_global.reshape(B, C, 1, 1)
    return y_global.sigmoid() * (1.0 - local_weight) + y_local.sigmoid() * local_weight


def _no_tf32():
    """cuDNN runs float32 convolutions in TF32 by default (10-bit mantissa); this path is exact.
    (On an H100 a weight gradient in the CUDA tests was 3% off until TF32 was turned off here.)"""
    b = torch.backends.cudnn
    return b.flags(enabled=b.enabled, benchmark=b.benchmark, deterministic=b.deterministic,
                   allow_tf32=False)


# Elements of the (channels, bins) tile one middle program holds. The backward mode gathers
# about (KL + 1)**2 + (KG + 1)**2 such tiles (the neighbours' conv gradients are recomputed):
# at 1024 elements and 4 warps ptxas needed all 255 registers and spilled 0.4-2.9 KiB per thread
# for 5 and 7 taps (sm_90); 256 elements spill nothing up to 7 taps (<= 150 registers), and
# neither does the forward at 1024 (<= 141). tests/test_mlca_triton.py checks ptxas' report.
MIDDLE_TILE = {"forward": 1024, "backward": 256}


@lru_cache(maxsize=1024)
def _middle_tile(C: int, L: int, budget: int) -> tuple[int, int, int, int]:
    """(BLOCK_C, LLP, n_cblk, num_warps) of the middle kernel: all L*L bins of a block of
    channels, about ``budget`` (a ``MIDDLE_TILE`` value, an argument so that the cache never
    outlives a change of the setting) elements per program (the work is tiny; this keeps several
    programs per sample). Warps grow with the tile only where L*L alone is wider (L > 16
    backward, L > 32 forward), to keep the per-thread share and so the registers as measured."""
    llp = _next_pow2(L * L)
    bc = max(1, min(_next_pow2(C), budget // llp))
    warps = max(4, min(16, 4 * (bc * llp) // budget))
    return bc, llp, _cdiv(C, bc), warps


def _fused_middle(local: Tensor, w_global: Tensor, w_local: Tensor, local_weight: float,
                  fmt: torch.memory_format, interpret: bool) -> Tensor:
    """``_middle`` in one launch: (B, C, L, L) local means -> float32 attention in layout fmt."""
    B, C, L, _ = local.shape
    att = torch.empty((B, C, L, L), device=local.device, dtype=torch.float32, memory_format=fmt)
    bc, llp, n_cblk, warps = _middle_tile(C, L, MIDDLE_TILE["forward"])
    # H = W = 1: unused in MODE 0, a fixed value keeps one compiled variant.
    _kernel(_triton_middle, interpret)[(B * n_cblk,)](
        local, w_global, w_local, local, att, att, att, C, 1, 1, L, n_cblk, 1.0 / (L * L),
        local_weight, *att.stride(), MODE=0, GRAD_X=False, KG=w_global.shape[-1],
        KL=w_local.shape[-1], BLOCK_C=bc, LLP=llp, num_warps=warps,
    )
    return att


def _fused_middle_backward(local: Tensor, d_small: Tensor, w_global: Tensor, w_local: Tensor,
                           local_weight: float, fmt: torch.memory_format | None, H: int, W: int,
                           interpret: bool
                           ) -> tuple[Tensor | None, Tensor | None, Tensor, Tensor]:
    """Backward of the middle, one launch: (att, add, dLoss/d w_global, dLoss/d w_local).

    att (the forward's small attention, recomputed) and add (the scale kernel's pooling-adjoint
    weights) are float32 (B, C, L, L) in layout fmt, what pass 2 over g reads; both None when
    fmt is None (no dLoss/dx wanted). The weight gradients are float32."""
    B, C, L, _ = local.shape
    kg, kl = w_global.shape[-1], w_local.shape[-1]
    bc, llp, n_cblk, warps = _middle_tile(C, L, MIDDLE_TILE["backward"])
    part = torch.empty((B * n_cblk, kg + kl), device=local.device, dtype=torch.float32)
    att = add = None
    if fmt is not None:
        att = torch.empty((B, C, L, L), device=local.device, dtype=torch.float32, memory_format=fmt)
        add = torch.empty_like(att)
    # Without GRAD_X the kernel writes neither: placeholders.
    att_arg, add_arg, strides = ((att, add, att.stride()) if att is not None
                                 else (part, part, (0,) * 4))
    _kernel(_triton_middle, interpret)[(B * n_cblk,)](
        local, w_global, w_local, d_small, att_arg, add_arg, part, C, H, W, L, n_cblk,
        1.0 / (L * L), local_weight, *strides, MODE=1, GRAD_X=att is not None, KG=kg, KL=kl,
        BLOCK_C=bc, LLP=llp, num_warps=warps,
    )
    # Per-program partial sums, added in a fixed order: deterministic, no atomics. (Two sums, not
    # views of one: the custom op's outputs may not alias each other.)
    d_wg, d_wl = part[:, :kg].sum(0), part[:, kg:].sum(0)
    return att, add, d_wg.view(1, 1, kg), d_wl.view(1, 1, kl)


def _attention_small(local: Tensor, w_global: Tensor, w_local: Tensor, local_weight: float,
                     big: Tensor, interpret: bool) -> Tensor:
    """The (B, C, L, L) float32 attention from the bin means, in the layout the scale kernel
    reads for ``big``: the fused middle, or the PyTorch one (``FUSED_MIDDLE = False``)."""
    if FUSED_MIDDLE:
        return _fused_middle(local, w_global.contiguous(), w_local.contiguous(), local_weight,
                             _small_format(big), interpret)
    return _middle(local, w_global.float(), w_local.float(), local_weight).contiguous()


def _forward(x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float,
             blocks: tuple[int, int] | None, interpret: bool) -> tuple[Tensor, Tensor]:
    """(out, local): the three forward launches; the bin means, all the backward keeps."""
    local = _bin_reduce(x, None, local_size, interpret, blocks)
    att_small = _attention_small(local, w_global, w_local, local_weight, x, interpret)
    return _scale(x, att_small, None, x, interpret, blocks), local


def _backward(g: Tensor, x: Tensor, w_global: Tensor, w_local: Tensor, local: Tensor,
              local_weight: float, needs: tuple[bool, bool, bool],
              blocks: tuple[int, int] | None, interpret: bool
              ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of x, w_global, w_local (None where ``needs`` says so) from the forward's bin
    means: pass 1 over (g, x), the middle's backward (which recomputes the small attention),
    pass 2 over g."""
    need_x, need_wg, need_wl = needs
    L = local.shape[-1]
    # Pass 1 over (g, x): dLoss/d att_small = U_h^T (g * x) U_w.
    d_small = _bin_reduce(g, x, L, interpret, blocks)
    H, W = x.shape[-2:]
    if FUSED_MIDDLE:
        # att and add come in the layout the scale kernel picks for g.
        att, add, d_wg, d_wl = _fused_middle_backward(
            local, d_small, w_global.contiguous(), w_local.contiguous(), local_weight,
            _small_format(g) if need_x else None, H, W, interpret)
        grad_x = _scale(g, att, add, x, interpret, blocks) if need_x else None
        return (grad_x, d_wg.to(w_global.dtype) if need_wg else None,
                d_wl.to(w_local.dtype) if need_wl else None)
    # The middle's backward by autograd on a recomputed (tiny) graph.
    with torch.enable_grad(), _no_tf32():
        loc = local.detach().requires_grad_(need_x)
        wg = w_global.detach().float().requires_grad_(need_wg)
        wl = w_local.detach().float().requires_grad_(need_wl)
        leaves = [t for t in (loc, wg, wl) if t.requires_grad]
        att = _middle(loc, wg, wl, local_weight)
        grads = iter(torch.autograd.grad(att, leaves, d_small) if leaves else ())
    d_local = next(grads) if need_x else None
    d_wg = next(grads).to(w_global.dtype) if need_wg else None
    d_wl = next(grads).to(w_local.dtype) if need_wl else None
    grad_x = None
    if need_x:
        # Pass 2 over g: grad_x = g * att + P^T d_local, P = adaptive pooling (mean over bins).
        counts = _bin_counts(H, L, x.device)[:, None] * _bin_counts(W, L, x.device)[None, :]
        grad_x = _scale(g, att.detach(), d_local / counts, x, interpret, blocks)
    return grad_x, d_wg, d_wl


class _MLCATritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int,
                local_weight: float, blocks: tuple[int, int] | None) -> Tensor:
        interpret = _use_interpreter(x)
        out, local = _forward(x, w_global, w_local, local_size, local_weight, blocks, interpret)
        ctx.save_for_backward(x, w_global, w_local, local)
        ctx.local_weight = local_weight
        ctx.blocks = blocks
        ctx.interpret = interpret
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, w_global, w_local, local = ctx.saved_tensors
        with _on_device_of(grad_out):
            grads = _backward(grad_out, x, w_global, w_local, local, ctx.local_weight,
                              tuple(ctx.needs_input_grad[:3]), ctx.blocks, ctx.interpret)
        return (*grads, None, None, None)


def triton_forward_core(x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int,
                        local_weight: float) -> tuple[Tensor, Tensor]:
    """Forward without autograd, for the custom op that ``torch.compile`` calls: x (B, C, H, W)
    -> (out (B, C, H, W), local (B, C, L, L) float32, all the backward needs besides x)."""
    _check(x, w_global, w_local, local_size)
    if x.numel() == 0:
        return torch.empty_like(x), x.new_zeros((*x.shape[:2], local_size, local_size),
                                                dtype=torch.float32)
    with _on_device_of(x):
        out, local = _forward(x, w_global, w_local, local_size, float(local_weight), None,
                              _use_interpreter(x))
    return out, local


def triton_backward_core(g: Tensor, x: Tensor, local: Tensor, w_global: Tensor, w_local: Tensor,
                         local_weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of x, w_global, w_local from ``triton_forward_core``'s ``local`` (the small
    attention map is recomputed inside the middle's backward launch)."""
    if x.numel() == 0:
        return torch.zeros_like(x), torch.zeros_like(w_global), torch.zeros_like(w_local)
    with _on_device_of(x):
        return _backward(g, x, w_global, w_local, local, float(local_weight), (True, True, True),
                         None, _use_interpreter(x))


def _check(x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int) -> None:
    if not _HAS_TRITON:
        raise RuntimeError("mlca_triton needs Triton (it ships with the CUDA builds of torch)")
    if x.dim() != 4:
        raise ValueError(f"mlca_triton: x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"mlca_triton: x dtype must be float32/float16/bfloat16, got {x.dtype}")
    if isinstance(local_size, bool) or not isinstance(local_size, int) or local_size < 1:
        raise ValueError(f"mlca_triton: local_size must be a positive int, got {local_size!r}")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"mlca_triton: H and W must be >= 1, got shape {tuple(x.shape)}")
    for name, w in (("w_global", w_global), ("w_local", w_local)):
        if w.dim() != 3 or w.shape[0] != 1 or w.shape[1] != 1 or w.shape[2] % 2 == 0:
            raise ValueError(
                f"mlca_triton: {name} must be a conv1d weight of shape (1, 1, k) with odd k, "
                f"got {tuple(w.shape)}"
            )
        if w.device != x.device:
            raise ValueError(f"mlca_triton: {name} is on {w.device} but x is on {x.device}")


def mlca_triton(x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float,
                *, block_sizes: tuple[int, int] | None = None) -> Tensor:
    """MLCA of ``x`` with the fused Triton kernels; differentiable in x and both weights.

    Args:
        x: (B, C, H, W) float32/float16/bfloat16, NCHW or channels_last (any strides work).
        w_global: (1, 1, k) weight of the conv1d over the channel means (``MLCA.conv``).
        w_local: (1, 1, k) weight of the conv1d over the local bins (``MLCA.conv_local``).
        local_size: L, the side of the local pooling grid.
        local_weight: the weight of the local branch in the mix.
        block_sizes: (BLOCK_C, BLOCK_S) override for tests and tuning; None picks by layout.

    Returns:
        (B, C, H, W) ``x * att``, same dtype and memory format as ``x``.
    """
    _check(x, w_global, w_local, local_size)
    if x.numel() == 0:
        return x * 1.0
    with _on_device_of(x):
        if not (torch.is_grad_enabled() and (x.requires_grad or w_global.requires_grad
                                             or w_local.requires_grad)):
            # inference: no autograd node to set up (host time is what limits small maps)
            return _forward(x, w_global, w_local, local_size, float(local_weight), block_sizes,
                            _use_interpreter(x))[0]
        return _MLCATritonFunction.apply(x, w_global, w_local, local_size, float(local_weight),
                                         block_sizes)

