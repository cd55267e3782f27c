"""Steps 2-4 of MLCA on the small pooled map: the global vector, the two 1-D convolutions, the
sigmoids and the mix. Every formulation and backend that runs these steps in PyTorch imports them
from here (the C and Triton kernels compute the same steps in their own languages).

With ``local`` the (B, C, ls, ls) bin means:

2. ``gvec = mean of the ls*ls bins`` (B, 1, C): the mean of the bins, which is not the mean of x
   when bins overlap or are uneven;
3. ECA-style 1-D convolutions, zero padding ``(k-1)/2``: ``conv`` over the C global values,
   ``conv_local`` over the sequence of length ls*ls*C laid out bin-major ``(bin, channel)``, so
   its kernel crosses from the last channel of one bin into the first channel of the next; then
   sigmoid;
4. ``mix = s_global * (1 - local_weight) + s_local * local_weight`` (B, C, ls, ls).

``mlca_mix`` is the plain formulation (scriptable, exportable, differentiable by autograd);
``mix_eager`` the same values in fewer ops for the eager kernels, and ``mix_backward`` its
hand-written gradient. This module imports nothing else of the package: every formulation
and backend can import it without a circle.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["conv1d_same", "mlca_mix", "mix_eager", "mix_backward"]


def conv1d_same(x: Tensor, w: Tensor) -> Tensor:
    """``F.conv1d(x, w, padding=(k-1)//2)`` for one channel and odd k, as k shifted multiply-adds.

    x: (B, 1, L), w: (1, 1, k) -> (B, 1, L). Why: oneDNN's convolution has a large fixed cost for
    a single-channel 1-D conv (milliseconds on CPU for ~10^5 elements), the shifted sum does not.
    """
    k = w.shape[-1]
    pad = (k - 1) // 2
    length = x.shape[-1]
    xp = F.pad(x, (pad, pad))
    y = xp[:, :, 0:length] * w[:, :, 0:1]
    for j in range(1, k):
        y = y + xp[:, :, j:j + length] * w[:, :, j:j + 1]
    return y


def mlca_mix(
    local: Tensor, w_global: Tensor, w_local: Tensor, local_weight: float,
    shifted_conv: bool = False,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Steps 2-4 on the small pooled map.

    local: (B, C, ls, ls); w_global, w_local: (1, 1, k) ->
    ``(mix (B, C, ls, ls), s_global (B, 1, C), s_local (B, 1, ls*ls*C), gvec (B, 1, C),
    seq (B, 1, ls*ls*C))`` where ``s_*`` are the sigmoids and ``gvec``/``seq`` the conv inputs.
    ``shifted_conv``: the convolutions as shifted multiply-adds (``conv1d_same``) instead of
    ``F.conv1d``.
    """
    b, c, ls = local.shape[0], local.shape[1], local.shape[2]
    pad = (w_global.shape[-1] - 1) // 2
    gvec = local.mean(dim=(2, 3)).reshape(b, 1, c)
    # bin-major flattening, exactly as the seed: (B, C, ls*ls) -> (B, ls*ls, C) -> (B, 1, ls*ls*C)
    seq = local.reshape(b, c, ls * ls).transpose(1, 2).reshape(b, 1, ls * ls * c)
    if shifted_conv:
        s_global = torch.sigmoid(conv1d_same(gvec, w_global))
        s_local = torch.sigmoid(conv1d_same(seq, w_local))
    else:
        s_global = torch.sigmoid(F.conv1d(gvec, w_global, padding=pad))
        s_local = torch.sigmoid(F.conv1d(seq, w_local, padding=pad))
    att_local = s_local.reshape(b, ls * ls, c).transpose(1, 2).reshape(b, c, ls, ls)
    mix = s_global.reshape(b, c, 1, 1) * (1.0 - local_weight) + att_local * local_weight
    return mix, s_global, s_local, gvec, seq


# Up to this many elements (batch x padded length), a single-channel conv1d on the CPU is one
# cheap oneDNN call; beyond it oneDNN switches to a path that costs far more than k shifted
# multiply-adds (measured with torch 2.14: (1, 1, 14400) 22 us, (1, 1, 28800) 175 us).
_CONV1D_MAX = 16384


def _conv_same(x: Tensor, w: Tensor) -> Tensor:
    """``conv1d_same(x, w)`` in the fewest ops: x (B, 1, L), w (1, 1, k) -> (B, 1, L).

    CPU, small: one ``F.conv1d``; for B > 1 the B rows, each padded, laid end to end as one
    sequence and convolved in one call without padding; row b's outputs start at b * (L + 2p)
    (the window never crosses into the next row's values, only into its zero padding).
    CPU, large: k scaled adds with the taps as Python numbers. Elsewhere: the shifted
    multiply-adds of ``conv1d_same``.
    """
    if x.device.type != "cpu" or x.numel() == 0:
        return conv1d_same(x, w)
    b, length, k = x.shape[0], x.shape[-1], w.shape[-1]
    pad = (k - 1) // 2
    span = length + 2 * pad
    if b == 1 and span <= _CONV1D_MAX:
        return torch.conv1d(x, w, None, 1, pad)
    xp = F.pad(x, (pad, pad))
    if b * span <= _CONV1D_MAX:
        y = F.conv1d(xp.reshape(1, 1, b * span), w)  # (1, 1, b * span - 2 * pad)
        return y.as_strided((b, 1, length), (span, span, 1))
    taps = w.reshape(k).tolist()
    y = xp[:, :, 0:length] * taps[0]
    for j in range(1, k):
        y.add_(xp[:, :, j:j + length], alpha=taps[j])
    return y


_MEAN_VECTORS: Dict[Tuple[int, str, torch.dtype], Tensor] = {}


def _mean_vector(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A cached read-only (n,) vector of 1/n: one dictionary lookup instead of an op per call
    (bounded: emptied at 64 entries, one per (ls, device, dtype) met)."""
    key = (n, str(device), dtype)
    vec = _MEAN_VECTORS.get(key)
    if vec is None:
        if len(_MEAN_VECTORS) >= 64:
            _MEAN_VECTORS.clear()
        vec = _MEAN_VECTORS[key] = torch.full((n,), 1.0 / n, device=device, dtype=dtype)
    return vec


def mix_eager(
    local: Tensor, wg: Tensor, wl: Tensor, lw: float
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``mlca_mix`` (steps 2-4) in fewer ops, for the eager kernels.

    local: (B, C, ls, ls) -> (mix (B, C, ls, ls), s_global (B, 1, C), s_local (B, 1, ls*ls*C),
    gvec (B, 1, C), seq (B, 1, ls*ls*C)), as ``mlca_mix``.
    """
    b, c, ls = local.shape[0], local.shape[1], local.shape[2]
    bins = ls * ls
    # mean of the bins as a matrix-vector product (a third of the reduction kernel's time here)
    mean_vec = _mean_vector(bins, local.device, local.dtype)
    gvec = torch.mv(local.reshape(b * c, bins), mean_vec)
    gvec = gvec.reshape(b, 1, c)
    seq = local.reshape(b, c, bins).transpose(1, 2).reshape(b, 1, bins * c)  # bin-major
    s_global = torch.sigmoid(_conv_same(gvec, wg))
    s_local = torch.sigmoid(_conv_same(seq, wl))
    # global * (1 - lw) + local * lw as one lerp, reading the bin-major local gates through a
    # transposed view and writing the channel-major map (B, C, ls*ls) directly.
    mix = torch.empty(b, c, bins, dtype=s_local.dtype, device=s_local.device)
    torch.lerp(s_global.reshape(b, c, 1), s_local.reshape(b, bins, c).transpose(1, 2), lw,
               out=mix)
    return mix.reshape(b, c, ls, ls), s_global, s_local, gvec, seq


def _conv1d_same_backward(x: Tensor, w: Tensor, g_y: Tensor, need_w: bool):
    """Grads of ``conv1d_same(x, w)``: x (B, 1, L), w (1, 1, k), g_y (B, 1, L).

    Input grad: the transposed conv, i.e. the same-padded correlation with the flipped kernel
    (stride 1, odd k). Weight grad: ``g_w[j] = sum_{b,t} g_y[b, t] * x_pad[b, t + j]``.
    """
    g_x = _conv_same(g_y, w.flip(-1))
    g_w = None
    if need_w:
        k = w.shape[-1]
        pad = (k - 1) // 2
        length = x.shape[-1]
        # the k shifted windows of the padded input as rows of one (k, B*L) matrix: one
        # matrix-vector product instead of k products and k sums
        b = x.shape[0]
        xp = F.pad(x, (pad, pad)).reshape(b, length + 2 * pad)
        windows = xp.unfold(1, length, 1).transpose(0, 1).reshape(k, b * length)
        g_w = torch.mv(windows, g_y.reshape(b * length)).view(1, 1, k)
    return g_x, g_w


def mix_backward(
    g_mix: Tensor, s_global: Tensor, s_local: Tensor, gvec: Tensor, seq: Tensor,
    wg: Tensor, wl: Tensor, lw: float, need_w: Tuple[bool, bool],
) -> Tuple[Tensor, Tensor | None, Tensor | None]:
    """Backward of ``mlca_mix``: (B, C, ls, ls) grad of mix -> grads of local, w_global, w_local
    (the weights' None where ``need_w`` says so). The other arguments are ``mix_eager``'s
    outputs and inputs."""
    b, c, ls = g_mix.shape[0], g_mix.shape[1], g_mix.shape[2]
    # mix = s_global * (1 - lw) + s_local * lw, s_global broadcast over the ls*ls bins.
    g_sl = (g_mix * lw).reshape(b, c, ls * ls).transpose(1, 2).reshape(b, 1, ls * ls * c)
    g_yl = g_sl * s_local * (1.0 - s_local)
    g_yg = (g_mix.sum(dim=(2, 3)) * (1.0 - lw)).reshape(b, 1, c) * s_global * (1.0 - s_global)
    g_seq, g_wl = _conv1d_same_backward(seq, wl, g_yl, need_w[1])
    g_gvec, g_wg = _conv1d_same_backward(gvec, wg, g_yg, need_w[0])
    g_local = g_seq.reshape(b, ls * ls, c).transpose(1, 2).reshape(b, c, ls, ls)
    g_local = g_local + g_gvec.reshape(b, c, 1, 1) / (ls * ls)  # gvec = mean of the ls*ls bins
    return g_local, g_wg, g_wl
