"""The host side of the Triton backend: tile choice, grids and launches of the kernels in
``kernels.py``, and the forward and backward passes built from them.

Forward: bin means of x (one reduction launch), the (B, C, L, L) middle (one launch), x times the
attention rebuilt on the fly (one scale launch). Backward: U^T (g * x) (one reduction launch),
the middle's backward (one launch, recomputing the small attention), g * att + P^T dlocal (one
scale launch). Every function takes the ``TritonSettings`` it runs with (``settings.py``).
"""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from typing import Callable

import torch
from torch import Tensor

from ...mix import mlca_mix
from .kernels import (
    HAS_TRITON, _triton_bin_reduce, _triton_bin_reduce_rows, _triton_middle, _triton_scale,
    _triton_scale_rows,
)
from .settings import DEFAULT_SETTINGS, TritonSettings

__all__ = ["triton_available", "check", "forward", "backward", "use_interpreter", "on_device_of"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def triton_available() -> bool:
    """Whether the Triton kernels can run here: Triton importable and (CUDA or the interpreter)."""
    return HAS_TRITON and (torch.cuda.is_available() or _interpret_requested())


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


def use_interpreter(x: Tensor) -> bool:
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


def on_device_of(t: Tensor):
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


def _row_tile(x: Tensor, key: str, lp: int, settings: TritonSettings) -> tuple[int, ...]:
    """Tile of the row kernels for x: (BLOCK_C, BLOCK_W, *rest of the ``settings.tuning``
    entry)."""
    cl = _is_channels_last(x)
    cfg = settings.tuning[key + ("_cl" if cl else "_nchw")]
    return _row_tile_for(x.shape[1], x.shape[3], cl, key, lp, cfg, settings.fit_w)


@lru_cache(maxsize=1024)
def _row_tile_for(C: int, W: int, cl: bool, key: str, lp: int, cfg: tuple[int, ...],
                  fit_w: bool) -> tuple[int, ...]:
    """Cached: tile arithmetic is per call host time, which bounds the small maps on a GPU (the
    settings it reads are arguments, so other tiles or fit_w get fresh entries)."""
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
                blocks: tuple[int, int] | None,
                settings: TritonSettings = DEFAULT_SETTINGS) -> Tensor:
    """Mode 0 (b None): (B, C, L, L) bin means of a. Mode 1: U^T (a*b) U. float32."""
    B, C, H, W = a.shape
    out = torch.empty((B, C, L, L), device=a.device, dtype=torch.float32)
    lp = _next_pow2(L)
    other = a if b is None else b
    if settings.algo == "rows":
        bc, bw, warps = _row_tile(a, "reduce", lp, settings)
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
           blocks: tuple[int, int] | None, settings: TritonSettings = DEFAULT_SETTINGS) -> Tensor:
    """v * upsample(small) (+ gather(add)), written in the dtype and memory format of ``like``."""
    B, C, H, W = v.shape
    L = small.shape[-1]
    fmt = _small_format(v)
    small = small.contiguous(memory_format=fmt)
    add = None if add is None else add.contiguous(memory_format=fmt)
    assert add is None or add.stride() == small.stride()
    out = torch.empty_like(like)  # preserve_format: channels_last in, channels_last out
    if settings.algo == "rows":
        bc, bw, rows, warps = _row_tile(v, "scale", 1, settings)
        if blocks is not None:
            bc, bw = blocks
        cols = settings.nchw_cols and fmt == torch.contiguous_format
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
    """(B, C, L, L) local means -> (B, C, L, L) small attention as PyTorch ops (``mlca_mix``),
    with cuDNN's TF32 off: the unfused variant the benchmark compares the fused middle with."""
    with _no_tf32():
        return mlca_mix(local, w_global, w_local, local_weight)[0]


def _no_tf32():
    """cuDNN runs float32 convolutions in TF32 by default (10-bit mantissa); this path is exact.
    (On an H100 a weight gradient in the CUDA tests was 3% off until TF32 was turned off here.)"""
    b = torch.backends.cudnn
    return b.flags(enabled=b.enabled, benchmark=b.benchmark, deterministic=b.deterministic,
                   allow_tf32=False)


@lru_cache(maxsize=1024)
def _middle_tile(C: int, L: int, budget: int) -> tuple[int, int, int, int]:
    """(BLOCK_C, LLP, n_cblk, num_warps) of the middle kernel: all L*L bins of a block of
    channels, about ``budget`` (a ``middle_tile`` setting, an argument so that the cache never
    outlives a change of the setting) elements per program (the work is tiny; this keeps several
    programs per sample). Warps grow with the tile only where L*L alone is wider (L > 16
    backward, L > 32 forward), to keep the per-thread share and so the registers as measured."""
    llp = _next_pow2(L * L)
    bc = max(1, min(_next_pow2(C), budget // llp))
    warps = max(4, min(16, 4 * (bc * llp) // budget))
    return bc, llp, _cdiv(C, bc), warps


def _fused_middle(local: Tensor, w_global: Tensor, w_local: Tensor, local_weight: float,
                  fmt: torch.memory_format, interpret: bool,
                  settings: TritonSettings = DEFAULT_SETTINGS) -> Tensor:
    """``_middle`` in one launch: (B, C, L, L) local means -> float32 attention in layout fmt."""
    B, C, L, _ = local.shape
    att = torch.empty((B, C, L, L), device=local.device, dtype=torch.float32, memory_format=fmt)
    bc, llp, n_cblk, warps = _middle_tile(C, L, settings.middle_tile["forward"])
    # H = W = 1: unused in MODE 0, a fixed value keeps one compiled variant.
    _kernel(_triton_middle, interpret)[(B * n_cblk,)](
        local, w_global, w_local, local, att, att, att, C, 1, 1, L, n_cblk, 1.0 / (L * L),
        local_weight, *att.stride(), MODE=0, GRAD_X=False, KG=w_global.shape[-1],
        KL=w_local.shape[-1], BLOCK_C=bc, LLP=llp, num_warps=warps,
    )
    return att


def _fused_middle_backward(local: Tensor, d_small: Tensor, w_global: Tensor, w_local: Tensor,
                           local_weight: float, fmt: torch.memory_format | None, H: int, W: int,
                           interpret: bool, settings: TritonSettings = DEFAULT_SETTINGS
                           ) -> tuple[Tensor | None, Tensor | None, Tensor, Tensor]:
    """Backward of the middle, one launch: (att, add, dLoss/d w_global, dLoss/d w_local).

    att (the forward's small attention, recomputed) and add (the scale kernel's pooling-adjoint
    weights) are float32 (B, C, L, L) in layout fmt, what pass 2 over g reads; both None when
    fmt is None (no dLoss/dx wanted). The weight gradients are float32."""
    B, C, L, _ = local.shape
    kg, kl = w_global.shape[-1], w_local.shape[-1]
    bc, llp, n_cblk, warps = _middle_tile(C, L, settings.middle_tile["backward"])
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
                     big: Tensor, interpret: bool, settings: TritonSettings) -> Tensor:
    """The (B, C, L, L) float32 attention from the bin means, in the layout the scale kernel
    reads for ``big``: the fused middle, or the PyTorch one (``fused_middle=False``)."""
    if settings.fused_middle:
        return _fused_middle(local, w_global.contiguous(), w_local.contiguous(), local_weight,
                             _small_format(big), interpret, settings)
    return _middle(local, w_global.float(), w_local.float(), local_weight).contiguous()


def _forward(x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float,
             blocks: tuple[int, int] | None, interpret: bool,
             settings: TritonSettings = DEFAULT_SETTINGS) -> tuple[Tensor, Tensor]:
    """(out, local): the three forward launches; the bin means, all the backward keeps."""
    local = _bin_reduce(x, None, local_size, interpret, blocks, settings)
    att_small = _attention_small(local, w_global, w_local, local_weight, x, interpret, settings)
    return _scale(x, att_small, None, x, interpret, blocks, settings), local


def _backward(g: Tensor, x: Tensor, w_global: Tensor, w_local: Tensor, local: Tensor,
              local_weight: float, needs: tuple[bool, bool, bool],
              blocks: tuple[int, int] | None, interpret: bool,
              settings: TritonSettings = DEFAULT_SETTINGS,
              ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of x, w_global, w_local (None where ``needs`` says so) from the forward's bin
    means: pass 1 over (g, x), the middle's backward (which recomputes the small attention),
    pass 2 over g."""
    need_x, need_wg, need_wl = needs
    L = local.shape[-1]
    # Pass 1 over (g, x): dLoss/d att_small = U_h^T (g * x) U_w.
    d_small = _bin_reduce(g, x, L, interpret, blocks, settings)
    H, W = x.shape[-2:]
    if settings.fused_middle:
        # att and add come in the layout the scale kernel picks for g.
        att, add, d_wg, d_wl = _fused_middle_backward(
            local, d_small, w_global.contiguous(), w_local.contiguous(), local_weight,
            _small_format(g) if need_x else None, H, W, interpret, settings)
        grad_x = _scale(g, att, add, x, interpret, blocks, settings) if need_x else None
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
        grad_x = _scale(g, att.detach(), d_local / counts, x, interpret, blocks, settings)
    return grad_x, d_wg, d_wl


def forward(x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float,
            settings: TritonSettings = DEFAULT_SETTINGS, blocks: tuple[int, int] | None = None,
            ) -> tuple[Tensor, Tensor]:
    """Forward without autograd: x (B, C, H, W) -> (out (B, C, H, W), local (B, C, L, L)
    float32, all the backward needs besides x). ``blocks``: (BLOCK_C, BLOCK_S) override."""
    check(x, w_global, w_local, local_size)
    if x.numel() == 0:
        return torch.empty_like(x), x.new_zeros((*x.shape[:2], local_size, local_size),
                                                dtype=torch.float32)
    with on_device_of(x):
        return _forward(x, w_global, w_local, local_size, float(local_weight), blocks,
                        use_interpreter(x), settings)


def backward(g: Tensor, x: Tensor, local: Tensor, w_global: Tensor, w_local: Tensor,
             local_weight: float, needs: tuple[bool, bool, bool] = (True, True, True),
             settings: TritonSettings = DEFAULT_SETTINGS, blocks: tuple[int, int] | None = None,
             ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of x, w_global, w_local (None where ``needs`` says so) from ``forward``'s
    ``local`` (the small attention map is recomputed inside the middle's backward launch)."""
    if x.numel() == 0:
        return tuple(torch.zeros_like(t) if need else None
                     for t, need in zip((x, w_global, w_local), needs))  # type: ignore[return-value]
    with on_device_of(g):
        return _backward(g, x, w_global, w_local, local, float(local_weight), needs, blocks,
                         use_interpreter(x), settings)


def check(x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int) -> None:
    """Raise a clear error for what the kernels cannot take (naming the shape or dtype)."""
    if not HAS_TRITON:
        raise RuntimeError("mlca_triton needs Triton (it ships with the CUDA builds of torch)")
    if x.dim() != 4:
        raise ValueError(f"mlca_triton: x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
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
