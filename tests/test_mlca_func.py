"""MLCA under torch.func transforms (vmap, grad, jacrev, jvp): per-sample gradients and batched
evaluation, checked against the float64 reference of ``_mlca_ref`` applied one sample at a time.

The autograd.Functions and the C/Triton kernels cannot run under these transforms; MLCA hands
them its plain differentiable formulation, wherever the wrapping is (the input, or only the
weights when differentiating with respect to the parameters)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.func import functional_call, grad, jacrev, jvp, vmap

import _mlca_ref as ref
from mlca.attention.mlca import MLCA


def _module(c: int, seed: int, backend: str = "auto") -> MLCA:
    m = MLCA(c, backend=backend).double()
    ref.random_weights(m, torch.Generator().manual_seed(seed))
    return m


def _reference(m: MLCA, x: torch.Tensor, wg=None, wl=None) -> torch.Tensor:
    wg = m.conv.weight if wg is None else wg
    wl = m.conv_local.weight if wl is None else wl
    return ref.mlca_reference(x, wg, wl, m.local_size, m.local_weight)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 3), B=st.integers(1, 2), C=st.integers(1, 9), H=st.integers(1, 12),
       W=st.integers(1, 12), backend=st.sampled_from(["auto", "torch"]), seed=st.integers(0, 2**16))
def test_vmap_matches_the_reference_per_slice(n, B, C, H, W, backend, seed):
    """Sizes that are and are not multiples of local_size, and smaller than it."""
    m = _module(C, seed, backend)
    x = torch.randn(n, B, C, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    got = vmap(m)(x)
    with torch.no_grad():
        want = torch.stack([_reference(m, xi) for xi in x])
    torch.testing.assert_close(got.detach(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 16, 10, 10), (2, 8, 7, 13)])
def test_per_sample_gradients_match_the_reference(shape):
    """vmap(grad(loss)) over the batch, with respect to the parameters only (the usual
    per-sample-gradient recipe): here only the weights are wrapped, not the input."""
    m = _module(shape[1], 1)
    x = torch.randn(shape, dtype=torch.float64)
    target = torch.randn(shape, dtype=torch.float64)
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(p, xi, ti):
        return (functional_call(m, p, (xi[None],)) - ti[None]).square().sum()

    got = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target)
    for i in range(shape[0]):
        wg = m.conv.weight.detach().clone().requires_grad_()
        wl = m.conv_local.weight.detach().clone().requires_grad_()
        out = _reference(m, x[i : i + 1], wg, wl)
        want = torch.autograd.grad((out - target[i : i + 1]).square().sum(), (wg, wl))
        torch.testing.assert_close(got["conv.weight"][i], want[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got["conv_local.weight"][i], want[1], rtol=1e-10, atol=1e-12)


def test_jacrev_and_jvp_match_the_reference():
    m = _module(4, 2)
    x = torch.randn(1, 4, 6, 7, dtype=torch.float64)
    v = torch.randn_like(x)
    with torch.no_grad():
        jac_want = torch.autograd.functional.jacobian(lambda t: _reference(m, t), x)
        _, tangent_want = torch.autograd.functional.jvp(lambda t: _reference(m, t), x, v)
    torch.testing.assert_close(jacrev(m)(x), jac_want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(jvp(m, (x,), (v,))[1], tangent_want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["c", "triton"])
def test_forced_kernels_refuse_torch_func_clearly(backend):
    m = _module(8, 3, backend)
    with pytest.raises(ValueError, match="torch.func transform"):
        vmap(m)(torch.randn(2, 1, 8, 5, 5, dtype=torch.float64))
