"""Test helpers for MLCA: an independent float64 reference and the seed's module.

``mlca_reference`` is written from the definition (loops over the adaptive-pooling bins, the 1-D
convolution as a sum over kernel taps with explicit zero padding); it shares no code with
``mlca.attention``. ``SeedMLCA`` is the paper's code, copied here only as the counterpart for
state_dict round trips and NaN/Inf parity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def adaptive_bins(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """Bin i of adaptive pooling n_in -> n_out: [floor(i*n_in/n_out), ceil((i+1)*n_in/n_out))."""
    return [((i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)) for i in range(n_out)]


def _pool_rows(t: Tensor, n_out: int) -> Tensor:
    """Average over the bins of dim 2 of (B, C, H, W): -> (B, C, n_out, W)."""
    return torch.stack([t[:, :, s:e, :].mean(dim=2) for s, e in adaptive_bins(t.shape[2], n_out)], 2)


def _pool_cols(t: Tensor, n_out: int) -> Tensor:
    return torch.stack([t[:, :, :, s:e].mean(dim=3) for s, e in adaptive_bins(t.shape[3], n_out)], 3)


def adaptive_avg(t: Tensor, h: int, w: int) -> Tensor:
    """2-D adaptive average pooling: the mean over each (row bin x column bin) rectangle."""
    return _pool_cols(_pool_rows(t, h), w)


def conv_taps(seq: Tensor, weight: Tensor) -> Tensor:
    """Cross-correlation of (B, L) with k taps, zero padding (k-1)//2 on both ends -> (B, L)."""
    k = weight.numel()
    pad = (k - 1) // 2
    b, length = seq.shape
    zeros = seq.new_zeros(b, pad)
    padded = torch.cat([zeros, seq, zeros], dim=1)
    return sum(weight.reshape(-1)[j] * padded[:, j:j + length] for j in range(k))


def mlca_reference(x: Tensor, w_global: Tensor, w_local: Tensor, ls: int, lw: float) -> Tensor:
    """MLCA from the definition, in x's dtype (use float64). x: (B, C, H, W) -> (B, C, H, W)."""
    b, c, h, w = x.shape
    local = adaptive_avg(x, ls, ls)  # (B, C, ls, ls)
    glob = local.mean(dim=(2, 3))  # mean of the ls*ls bins, not of x
    # sequence of length ls*ls*C laid out bin-major: position p*C + ch holds local[ch, p]
    seq = local.reshape(b, c, ls * ls).permute(0, 2, 1).reshape(b, ls * ls * c)
    att_local = torch.sigmoid(conv_taps(seq, w_local)).reshape(b, ls * ls, c).permute(0, 2, 1)
    att_local = att_local.reshape(b, c, ls, ls)
    att_global = torch.sigmoid(conv_taps(glob, w_global)).reshape(b, c, 1, 1)
    mix = att_global * (1 - lw) + att_local * lw
    return x * adaptive_avg(mix, h, w)


class SeedMLCA(nn.Module):
    """The seed's MLCA module (paper code), kept verbatim in behaviour."""

    def __init__(self, in_size, local_size=5, gamma=2, b=1, local_weight=0.5):
        super().__init__()
        self.local_size = local_size
        self.gamma = gamma
        self.b = b
        t = int(abs(math.log(in_size, 2) + self.b) / self.gamma)
        k = t if t % 2 else t + 1
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.conv_local = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.local_weight = local_weight
        self.local_arv_pool = nn.AdaptiveAvgPool2d(local_size)
        self.global_arv_pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        local_arv = self.local_arv_pool(x)
        global_arv = self.global_arv_pool(local_arv)
        b, c, m, n = x.shape
        b_local, c_local, m_local, n_local = local_arv.shape
        temp_local = local_arv.view(b, c_local, -1).transpose(-1, -2).reshape(b, 1, -1)
        temp_global = global_arv.view(b, c, -1).transpose(-1, -2)
        y_local = self.conv_local(temp_local)
        y_global = self.conv(temp_global)
        y_local_transpose = y_local.reshape(b, self.local_size * self.local_size, c).transpose(
            -1, -2).view(b, c, self.local_size, self.local_size)
        y_global_transpose = y_global.transpose(-1, -2).unsqueeze(-1)
        att_local = y_local_transpose.sigmoid()
        att_global = F.adaptive_avg_pool2d(y_global_transpose.sigmoid(),
                                           [self.local_size, self.local_size])
        att_all = F.adaptive_avg_pool2d(
            att_global * (1 - self.local_weight) + (att_local * self.local_weight), [m, n])
        return x * att_all


def random_weights(module: nn.Module, gen: torch.Generator) -> None:
    """Give both conv kernels random (not default-init) values, so that bugs in tap order show."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
