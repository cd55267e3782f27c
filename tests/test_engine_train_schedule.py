"""Warmup + cosine schedule, parameter groups, EMA: checked against their definitions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mlca.engine.ema import ModelEMA
from mlca.engine.schedule import WarmupCosine, build_optimizer, param_groups


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4, 2))


def test_param_groups_partition():
    net = _net()
    groups = param_groups(net, weight_decay=5e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in net.parameters())  # every parameter exactly once
    decay, no_decay, bias = groups
    assert {id(p) for p in decay["params"]} == {id(net[0].weight), id(net[2].weight), id(net[4].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(net[1].weight)}
    assert {id(p) for p in bias["params"]} == {id(net[1].bias), id(net[2].bias), id(net[4].bias)}
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0 and bias["weight_decay"] == 0


def test_build_optimizer_kinds():
    net = _net()
    sgd = build_optimizer(net, "sgd", 0.01, 0.937, 5e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]
    adamw = build_optimizer(net, "AdamW", 0.001, 0.9, 5e-4)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="sgd"):
        build_optimizer(net, "lbfgs", 0.1, 0.9, 0)


def _reference_steps(kind, params, groups_wd, grads, lr, momentum):
    """SGD-Nesterov / AdamW written from their definitions in float64 (decoupled decay for AdamW)."""
    p = [x.detach().double().clone() for x in params]
    state = [dict(m=torch.zeros_like(x), v=torch.zeros_like(x), buf=None) for x in p]
    for t, gs in enumerate(grads, start=1):
        for x, g, wd, s in zip(p, gs, groups_wd, state):
            g = g.double()
            if kind == "sgd":
                g = g + wd * x
                s["buf"] = g.clone() if s["buf"] is None else momentum * s["buf"] + g
                x -= lr * (g + momentum * s["buf"])
            else:
                x *= 1 - lr * wd
                s["m"] = momentum * s["m"] + (1 - momentum) * g
                s["v"] = 0.999 * s["v"] + 0.001 * g * g
                m_hat, v_hat = s["m"] / (1 - momentum**t), s["v"] / (1 - 0.999**t)
                x -= lr * m_hat / (v_hat.sqrt() + 1e-8)
    return p


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_optimizer_steps_follow_the_definition(kind):
    """The optimizer build_optimizer makes (fused on the CPU) updates every group as written."""
    net = _net()
    opt = build_optimizer(net, kind, 0.01, 0.9, 0.05)
    assert opt.defaults.get("fused") is True
    params = [p for g in opt.param_groups for p in g["params"]]
    wds = [g["weight_decay"] for g in opt.param_groups for _ in g["params"]]
    grads = [[torch.randn_like(p) for p in params] for _ in range(4)]
    ref = _reference_steps(kind, params, wds, grads, 0.01, 0.9)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach().double(), r, rtol=1e-5, atol=1e-6)


def _reference_lr(it, lr0, lrf, total, warm, bias_lr):
    """Written from the definition in float64."""
    cos = lr0 * (lrf + (1 - lrf) * 0.5 * (1 + math.cos(math.pi * min(it, total) / total)))
    if it >= warm:
        return cos, cos
    f = it / warm
    return f * cos, bias_lr + f * (cos - bias_lr)


@settings(max_examples=60, deadline=None)
@given(lr0=st.floats(1e-4, 0.1), lrf=st.floats(0.01, 1.0), total=st.integers(2, 5000), frac=st.floats(0, 0.5),
       data=st.data())
def test_schedule_matches_definition(lr0, lrf, total, frac, data):
    warm = int(total * frac)
    s = WarmupCosine(lr0=lr0, lrf=lrf, total_iters=total, warmup_iters=warm, momentum=0.937)
    it = data.draw(st.integers(0, total))
    w_ref, b_ref = _reference_lr(it, lr0, lrf, total, warm, s.warmup_bias_lr)
    w, nd, b = s.lrs(it)
    assert w == pytest.approx(w_ref, rel=1e-9, abs=1e-15) and nd == w
    assert b == pytest.approx(b_ref, rel=1e-9, abs=1e-15)
    if it >= warm:
        assert s.momentum_at(it) == 0.937


def test_schedule_endpoints_and_apply():
    s = WarmupCosine(lr0=0.01, lrf=0.01, total_iters=1000, warmup_iters=100, momentum=0.937)
    assert s.lrs(0) == [0.0, 0.0, 0.1]
    assert s.momentum_at(0) == pytest.approx(0.8)
    assert s.lrs(1000)[0] == pytest.approx(1e-4)
    opt = build_optimizer(_net(), "sgd", 0.01, 0.937, 5e-4)
    s.apply(opt, 50)
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == pytest.approx(s.lrs(50)) and opt.param_groups[0]["momentum"] == pytest.approx(s.momentum_at(50))


def test_ema_follows_definition():
    torch.manual_seed(0)
    net = _net()
    net(torch.randn(2, 3, 3, 3))  # fill BN stats
    ema = ModelEMA(net, decay=0.99, tau=10.0)
    ref = {k: v.double().clone() for k, v in net.state_dict().items()}
    for step in range(1, 6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net.train()(torch.randn(2, 3, 3, 3))
        ema.update(net)
        d = 0.99 * (1 - math.exp(-step / 10.0))
        for k, v in net.state_dict().items():
            if v.dtype.is_floating_point:
                ref[k] = d * ref[k] + (1 - d) * v.double()
            else:
                ref[k] = v.clone()
    for k, v in ema.state_dict().items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(v.double(), ref[k], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(v, ref[k])
    assert all(not p.requires_grad for p in ema.ema.parameters())
    with pytest.raises(ValueError):
        ModelEMA(net, decay=1.0)
