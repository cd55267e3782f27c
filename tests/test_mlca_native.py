"""The C kernels (backend "c", NCHW and channels_last): built where CI runs, chosen by "auto"
exactly where they apply, refused with a clear error where they do not, and independent of the
thread count.

Their numerics against the float64 reference are tested with the PyTorch kernels' in
test_mlca_layer.py (every reference test runs on both backends)."""

from __future__ import annotations

import os

import pytest
import torch

import _mlca_ref as ref
import mlca.attention.mlca.backends.c as native_mod
from mlca.attention.mlca import MLCA

needs_native = pytest.mark.skipif(not native_mod.native_available(),
                                  reason="the C extension is not built here")


def test_extension_is_built_in_ci():
    if not os.environ.get("CI"):
        pytest.skip("only CI promises a C compiler at install time")
    assert native_mod.native_available(), "pip install did not build mlca.attention._mlca_c"


class _Count:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@needs_native
def test_auto_takes_the_c_kernels_exactly_where_they_apply(monkeypatch):
    fwd, bwd = _Count(native_mod.forward), _Count(native_mod.backward)
    monkeypatch.setattr(native_mod, "forward", fwd)
    monkeypatch.setattr(native_mod, "backward", bwd)
    m = MLCA(8)
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    m(x).sum().backward()
    m.double()(x.detach().double())
    assert (fwd.calls, bwd.calls) == (2, 1)
    m.float()
    m(x.detach().contiguous(memory_format=torch.channels_last))  # the NHWC kernels
    assert (fwd.calls, bwd.calls) == (3, 1)
    m(x.detach().to(torch.bfloat16))
    m(x.detach()[..., ::2])  # neither NCHW- nor channels_last-contiguous
    MLCA(8, backend="torch")(x)
    assert (fwd.calls, bwd.calls) == (3, 1)


@needs_native
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: torch.randn(1, 8, 10, 10, dtype=torch.float16), "float16"),
        (lambda: torch.randn(1, 8, 10, 20)[..., ::2], r"contiguous NCHW or channels_last.*strides"),
        (lambda: torch.randn(2, 8, 10, 10).transpose(0, 1), "contiguous"),
    ],
)
def test_forced_c_backend_names_what_it_cannot_take(make, match):
    with pytest.raises(ValueError, match=f"backend 'c'.*{match}"):
        MLCA(8, backend="c")(make())


def test_forced_c_backend_without_the_extension_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(native_mod, "_mlca_c", None)
    with pytest.raises(ValueError, match="not built.*compiler"):
        MLCA(8, backend="c")(torch.randn(1, 8, 10, 10))
    # auto falls back to the PyTorch kernels, same function
    x = torch.randn(2, 8, 11, 9, dtype=torch.float64)
    m = MLCA(8).double()
    r = ref.mlca_reference(x, m.conv.weight.detach(), m.conv_local.weight.detach(), 5, 0.5)
    assert torch.allclose(m(x), r, rtol=0, atol=1e-12)


@needs_native
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(4, 64, 40, 40), (2, 400, 13, 17), (1, 3, 2, 6)])
def test_results_do_not_depend_on_the_thread_count(shape, channels_last):
    """Every reduction runs per plane or per batch in a fixed order (claimed in backends/c/_mlca_c.c)."""
    m = MLCA(shape[1], backend="c")
    ref.random_weights(m, torch.Generator().manual_seed(0))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=fmt)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(2)).contiguous(memory_format=fmt)
    before = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            xx = x.clone().requires_grad_(True)
            m.zero_grad()
            y = m(xx)
            y.backward(g)
            runs.append((y, xx.grad, m.conv.weight.grad.clone(), m.conv_local.weight.grad.clone()))
    finally:
        torch.set_num_threads(before)
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


@needs_native
def test_empty_batch_and_non_contiguous_gradient():
    m = MLCA(8, backend="c")
    x = torch.randn(0, 8, 10, 10, requires_grad=True)
    y = m(x)
    y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape
    assert torch.count_nonzero(m.conv.weight.grad) == 0
    # an expanded (stride-0) incoming gradient, as from .sum(), against the PyTorch kernels
    x = torch.randn(2, 8, 15, 10, dtype=torch.float64, requires_grad=True)
    m64, t64 = MLCA(8, backend="c").double(), MLCA(8, backend="torch").double()
    t64.load_state_dict(m64.state_dict())
    (ga,) = torch.autograd.grad(m64(x).sum(), x)
    (gb,) = torch.autograd.grad(t64(x).sum(), x)
    assert torch.allclose(ga, gb, rtol=1e-12, atol=1e-14)


@needs_native
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 8, 20, 20), (2, 5, 13, 11), (1, 3, 7, 33), (1, 3, 7, 36)])
def test_streamed_outputs_are_the_same_bits(dtype, shape, channels_last):
    """Non-temporal stores (outputs >= the streaming threshold) change how, not what, is
    written: aligned and unaligned rows, vector body and scalar head/tail."""
    from mlca.attention.mlca.function import mlca_function

    m = MLCA(shape[1], backend="c").to(dtype)
    ref.random_weights(m, torch.Generator().manual_seed(3))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=dtype)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    x, g = x.contiguous(memory_format=fmt), g.contiguous(memory_format=fmt)
    runs = []
    for min_bytes in (2**62, 0):
        backend = native_mod.configured(stream_min_bytes=min_bytes)
        xx = x.clone().requires_grad_(True)
        m.zero_grad()
        y = mlca_function(xx, m.conv.weight, m.conv_local.weight, m.local_size, m.local_weight,
                          backend)
        y.backward(g)
        runs.append((y, xx.grad, m.conv.weight.grad.clone(), m.conv_local.weight.grad.clone()))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@needs_native
@pytest.mark.parametrize(
    "c, gamma", [(1, 2), (8, 2), (300, 2), (64, 1), (8, 0.5), (16, 0.5), (40, 0.5)])
def test_every_kernel_size_matches_the_pytorch_kernels(c, gamma):
    """The C convolutions unroll k = 3, 5, 7, 9 and loop otherwise (k = 1, 11, 13 here; the
    reference tests' channel counts reach k = 5 only): float64 outputs and all gradients agree
    with the PyTorch kernels, which the reference tests check."""
    mc = MLCA(c, gamma=gamma, backend="c").double()
    ref.random_weights(mc, torch.Generator().manual_seed(c))
    mt = MLCA(c, gamma=gamma, backend="torch").double()
    mt.load_state_dict(mc.state_dict())
    x = torch.randn(2, c, 11, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = torch.randn(2, c, 11, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grads = []
    for m in (mc, mt):
        xx = x.clone().requires_grad_(True)
        y = m(xx)
        y.backward(g)
        grads.append((y, xx.grad, m.conv.weight.grad, m.conv_local.weight.grad))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12 * b.abs().max().item())
