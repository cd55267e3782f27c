"""Float64 references for the attention zoo, written from each paper's formula.

Deliberately naive: explicit sums over kernel offsets, hand-written softmax / norms / gates,
no nn.Module and no torch.nn.functional conv or pooling, so they share no code path with the
modules under test. Each takes the input and the module's parameters (as float64 tensors).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def sigmoid(z: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-z))


def hard_sigmoid(z: Tensor) -> Tensor:  # relu6(z + 3) / 6
    return torch.clamp(z + 3.0, 0.0, 6.0) / 6.0


def hard_swish(z: Tensor) -> Tensor:
    return z * hard_sigmoid(z)


def spatial_mean(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C): sum over every position divided by H*W."""
    return x.sum(dim=(2, 3)) / (x.shape[2] * x.shape[3])


def dense(s: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """(B, Cin) with weight (Cout, Cin[,1,1]) -> (B, Cout), written as an explicit sum."""
    w = weight.reshape(weight.shape[0], -1)
    out = (s[:, None, :] * w[None, :, :]).sum(-1)
    return out if bias is None else out + bias


def conv2d_same(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Zero-padded 'same' conv, odd square kernel, as a sum over kernel offsets."""
    b, cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    p = k // 2
    xp = torch.zeros(b, cin, h + 2 * p, w + 2 * p, dtype=x.dtype)
    xp[:, :, p : p + h, p : p + w] = x
    out = torch.zeros(b, cout, h, w, dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i : i + h, j : j + w]  # (B, Cin, H, W)
            out += (weight[None, :, :, i, j, None, None] * patch[:, None]).sum(2)
    return out if bias is None else out + bias[None, :, None, None]


def se_ref(x: Tensor, p: dict, gate) -> Tensor:
    s = spatial_mean(x)
    z = torch.clamp(dense(s, p["fc1.weight"], p["fc1.bias"]), min=0.0)
    g = gate(dense(z, p["fc2.weight"], p["fc2.bias"]))
    return x * g[:, :, None, None]


def eca_ref(x: Tensor, p: dict) -> Tensor:
    w = p["conv.weight"].reshape(-1)
    k = w.numel()
    c = x.shape[1]
    s = spatial_mean(x)
    z = torch.zeros_like(s)
    for ch in range(c):  # y_c = sum_j w_j s_{c + j - (k-1)/2}, zero outside [0, C)
        for j in range(k):
            src = ch + j - (k - 1) // 2
            if 0 <= src < c:
                z[:, ch] += w[j] * s[:, src]
    return x * sigmoid(z)[:, :, None, None]


def cbam_ref(x: Tensor, p: dict) -> Tensor:
    def mlp(v: Tensor) -> Tensor:
        return dense(torch.clamp(dense(v, p["fc1.weight"], p["fc1.bias"]), min=0.0), p["fc2.weight"], p["fc2.bias"])

    avg = spatial_mean(x)
    mx = x.flatten(2).max(dim=2).values
    x1 = x * sigmoid(mlp(avg) + mlp(mx))[:, :, None, None]
    stats = torch.stack([x1.sum(1) / x1.shape[1], x1.max(dim=1).values], dim=1)  # (B, 2, H, W)
    return x1 * sigmoid(conv2d_same(stats, p["spatial.weight"], p["spatial.bias"]))


def coord_ref(x: Tensor, p: dict, training: bool, eps: float = 1e-5) -> Tensor:
    b, c, h, w = x.shape
    x_h = x.sum(3) / w  # (B, C, H): average over the width of each row
    x_w = x.sum(2) / h  # (B, C, W)
    y = torch.cat([x_h, x_w], dim=2)  # (B, C, H + W)
    z = (y[:, None] * p["conv1.weight"].reshape(-1, c)[None, :, :, None]).sum(2) + p["conv1.bias"][None, :, None]
    if training:  # batch statistics over (B, H + W), biased variance
        mean = z.mean(dim=(0, 2))
        var = ((z - mean[None, :, None]) ** 2).mean(dim=(0, 2))
    else:
        mean, var = p["bn1.running_mean"], p["bn1.running_var"]
    z = (z - mean[None, :, None]) / torch.sqrt(var[None, :, None] + eps) * p["bn1.weight"][None, :, None] + p["bn1.bias"][None, :, None]
    z = hard_swish(z)
    z_h, z_w = z[:, :, :h], z[:, :, h:]
    mip = z.shape[1]
    a_h = sigmoid((z_h[:, None] * p["conv_h.weight"].reshape(c, mip)[None, :, :, None]).sum(2) + p["conv_h.bias"][None, :, None])
    a_w = sigmoid((z_w[:, None] * p["conv_w.weight"].reshape(c, mip)[None, :, :, None]).sum(2) + p["conv_w.bias"][None, :, None])
    return x * a_h[:, :, :, None] * a_w[:, :, None, :]


def simam_ref(x: Tensor, e_lambda: float = 1e-4) -> Tensor:
    b, c, h, w = x.shape
    n = max(h * w - 1, 1)
    mu = spatial_mean(x)[:, :, None, None]
    d = (x - mu) ** 2
    var = d.sum(dim=(2, 3), keepdim=True) / n
    e_inv = d / (4 * (var + e_lambda)) + 0.5
    return x * sigmoid(e_inv)


def ema_ref(x: Tensor, p: dict, groups: int, eps: float = 1e-5) -> Tensor:
    b, ch, h, w = x.shape
    cg = ch // groups
    out = torch.empty_like(x)
    w1 = p["conv1x1.weight"].reshape(cg, cg)
    for bi in range(b):
        for gi in range(groups):
            g = x[bi, gi * cg : (gi + 1) * cg]  # (c, H, W)
            pool_h = g.sum(2) / w  # (c, H)
            pool_w = g.sum(1) / h  # (c, W)
            a_h = sigmoid(w1 @ pool_h + p["conv1x1.bias"][:, None])  # (c, H)
            a_w = sigmoid(w1 @ pool_w + p["conv1x1.bias"][:, None])  # (c, W)
            t = g * a_h[:, :, None] * a_w[:, None, :]
            mean = t.sum(dim=(1, 2), keepdim=True) / (h * w)
            var = ((t - mean) ** 2).sum(dim=(1, 2), keepdim=True) / (h * w)
            x1 = (t - mean) / torch.sqrt(var + eps) * p["gn.weight"][:, None, None] + p["gn.bias"][:, None, None]
            x2 = conv2d_same(g[None], p["conv3x3.weight"], p["conv3x3.bias"])[0]

            def softmax(v: Tensor) -> Tensor:
                e = torch.exp(v - v.max())
                return e / e.sum()

            s1 = softmax(x1.sum(dim=(1, 2)) / (h * w))  # (c,)
            s2 = softmax(x2.sum(dim=(1, 2)) / (h * w))
            weights = (s1[:, None, None] * x2).sum(0) + (s2[:, None, None] * x1).sum(0)  # (H, W)
            out[bi, gi * cg : (gi + 1) * cg] = g * sigmoid(weights)[None]
    return out
