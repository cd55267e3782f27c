"""The Triton kernels of MLCA: few passes over ``x``, deterministic, exact.

MLCA (``mlca.attention.mlca``) is, for ``x`` of shape ``(B, C, H, W)`` and ``L = local_size``::

    local = adaptive_avg_pool2d(x, L)                     # (B, C, L, L)   "pool"
    att_s = middle(local)                                 # (B, C, L, L)   conv1d, sigmoid, mix
    out   = x * adaptive_avg_pool2d(att_s, (H, W))        # (B, C, H, W)   "scale"

The stock-op composition materialises the ``(B, C, H, W)`` attention map and, in backward,
the adaptive-pooling adjoints. Here the big tensors are touched only by two kernels.

The kernels used by default are the "rows" variants, ``_triton_bin_reduce_rows`` and
``_triton_scale_rows``, which work on 2-D (channel, column) tiles: on an H100 they were 2.4x
(NCHW) and 14x (channels_last) faster for the reduction and 1.4x for the NCHW scale than the
flat-pixel kernels below (the same for the channels_last scale). ``TritonSettings(algo="flat")``
keeps those for comparison. Both compute the same thing in the same way:

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
Forward: 3 launches; backward: 3 (``TritonSettings(fused_middle=False)`` keeps the PyTorch middle,
with its backward by autograd on a recomputed copy, for comparison).

The launchers (tiles, grids, the host side) are in ``launch.py``. Kernels run compiled on CUDA
tensors, and on CPU tensors through Triton's interpreter when
``TRITON_INTERPRET=1`` is set (read at call time, so tests can scope it with
``monkeypatch.setenv``); the interpreter is for testing only (thousands of times slower).
"""

from __future__ import annotations

try:  # Triton ships with the CUDA builds of torch; the CPU builds have none.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    HAS_TRITON = False

__all__ = [
    "HAS_TRITON", "triton", "_triton_bin_reduce", "_triton_scale", "_triton_bin_reduce_rows",
    "_triton_scale_rows", "_triton_middle",
]


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
