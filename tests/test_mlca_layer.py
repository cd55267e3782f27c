"""mlca.MLCA computes the seed's function: outputs and gradients against an independent float64
reference (tests/_mlca_ref.py), at every shape, in every memory format and precision."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import _mlca_ref as ref
from mlca.attention import create_attention
from mlca.attention.mlca.backends.c import native_available
from mlca.attention.mlca import MLCA, eca_kernel_size, mlca_plain, mlca_plain_dense

# The CPU kernels under test: PyTorch's, and the C extension's where it is built (CI checks that
# it is: test_mlca_native.py).
BACKENDS = ["torch", "c"] if native_available() else ["torch"]


def _pair(c: int, ls: int, lw: float, seed: int, dtype=torch.float64,
          backend: str = "auto") -> tuple[MLCA, tuple]:
    """An MLCA with random kernels and the float64 copies of its weights for the reference."""
    gen = torch.Generator().manual_seed(seed)
    m = MLCA(c, local_size=ls, local_weight=lw, backend=backend).to(dtype)
    ref.random_weights(m, gen)
    w = (m.conv.weight.detach().double(), m.conv_local.weight.detach().double())
    return m, w


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the largest magnitude of b (0 for empty tensors)."""
    if b.numel() == 0:
        return 0.0
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


@contextlib.contextmanager
def _recording_convs():
    """Record (input sequence, output) of every ``conv_taps`` call of the reference."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = ref.conv_taps

    def recording(seq, weight):
        out = original(seq, weight)
        calls.append((seq, out))
        return out

    ref.conv_taps = recording
    try:
        yield calls
    finally:
        ref.conv_taps = original


def _weight_grad_scale(seq: torch.Tensor, grad_out: torch.Tensor, k: int) -> float:
    """max over taps j of sum_t |grad_out[t]| |seq_padded[t + j]|: the magnitude of the terms
    whose sum is the gradient of tap j (the gradient itself, when nothing cancels)."""
    pad = (k - 1) // 2
    length = seq.shape[1]
    padded = F.pad(seq.detach().abs(), (pad, pad))
    mags = [(grad_out.abs() * padded[:, j:j + length]).sum() for j in range(k)]
    return max(float(m) for m in mags)


def _check_against_reference(shape, ls, lw, seed, dtype, tol, channels_last=False,
                             backend="torch"):
    b, c, h, w = shape
    m, (wg, wl) = _pair(c, ls, lw, seed, dtype, backend)
    gen = torch.Generator().manual_seed(seed + 1)
    # The reference gets exactly the values the layer gets (rounded to ``dtype``), so the check
    # measures the layer's arithmetic, not the rounding of its inputs.
    x64 = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).double()
    g64 = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).double()

    x = x64.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = m(x)
    assert y.shape == x.shape and y.dtype == dtype
    if channels_last and c > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    gx, gwg, gwl = torch.autograd.grad(y, [x, m.conv.weight, m.conv_local.weight], g64.to(dtype))

    xr = x64.clone().requires_grad_(True)
    wgr, wlr = wg.clone().requires_grad_(True), wl.clone().requires_grad_(True)
    with _recording_convs() as convs:
        yr = ref.mlca_reference(xr, wgr, wlr, ls, lw)
    if b > 0:
        (seq_l, out_l), (seq_g, out_g) = convs  # the local conv runs first in the reference
        rx, rwg, rwl, a_l, a_g = torch.autograd.grad(yr, [xr, wgr, wlr, out_l, out_g], g64)
        scale_wg = _weight_grad_scale(seq_g, a_g, wg.numel())
        scale_wl = _weight_grad_scale(seq_l, a_l, wl.numel())
    else:
        rx, rwg, rwl = torch.autograd.grad(yr, [xr, wgr, wlr], g64)

    assert _rel_err(y, yr) < tol, "output"
    assert _rel_err(gx, rx) < tol, "grad x"
    if b > 0:
        # A weight gradient is a sum over every bin and channel whose terms cancel: its error is
        # measured against the size of those terms (exact when there is no cancellation).
        # (the 1e-30 floor, as in _rel_err: with local_weight ~ 1e-320 the terms underflow)
        assert (gwg.double() - rwg).abs().max() <= tol * max(scale_wg, 1e-30), "grad conv.weight"
        assert (gwl.double() - rwl).abs().max() <= tol * max(scale_wl, 1e-30), "grad conv_local.weight"
    else:
        assert torch.count_nonzero(gwg) == 0 and torch.count_nonzero(gwl) == 0


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(0, 3),
    c=st.integers(1, 20),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    ls=st.sampled_from([1, 3, 5, 7]),
    lw=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    channels_last=st.booleans(),
    backend=st.sampled_from(BACKENDS),
)
def test_float64_matches_reference_any_shape(b, c, h, w, ls, lw, seed, channels_last, backend):
    _check_against_reference((b, c, h, w), ls, lw, seed, torch.float64, 1e-10, channels_last,
                             backend)


@settings(max_examples=20, deadline=None)
@given(
    b=st.integers(1, 2),
    c=st.integers(1, 40),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    ls=st.sampled_from([1, 3, 5, 7]),
    seed=st.integers(0, 2**16),
    backend=st.sampled_from(BACKENDS),
)
def test_float32_matches_reference_any_shape(b, c, h, w, ls, seed, backend):
    _check_against_reference((b, c, h, w), ls, 0.5, seed, torch.float32, 1e-5, backend=backend)


@pytest.mark.parametrize(
    "shape, ls",
    [
        ((1, 8, 160, 160), 5),  # YOLO-large map, divisible
        ((1, 6, 160, 96), 7),  # non-square, not divisible
        ((2, 5, 3, 2), 5),  # smaller than local_size: adaptive pooling repeats rows
        ((1, 300, 13, 13), 5),  # many channels -> kernel size 5
        ((1, 3, 80, 80), 1),
        ((2, 400, 10, 10), 5),  # 2 x 10,000-long local sequences: the scaled-adds conv path
        ((3, 64, 15, 10), 5),  # several rows laid end to end in one conv1d call
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_named_shapes(shape, ls, channels_last, backend):
    _check_against_reference(shape, ls, 0.5, 7, torch.float64, 1e-10, channels_last, backend)
    _check_against_reference(shape, ls, 0.5, 8, torch.float32, 1e-5, channels_last, backend)


@pytest.mark.parametrize("shape", [(2, 16, 20, 20), (2, 16, 17, 23), (1, 3, 2, 6)])
def test_same_as_seed_module_and_state_dict_both_ways(shape):
    gen = torch.Generator().manual_seed(3)
    seed = ref.SeedMLCA(shape[1]).double()
    ref.random_weights(seed, gen)
    m = MLCA(shape[1]).double()
    m.load_state_dict(seed.state_dict(), strict=True)
    back = ref.SeedMLCA(shape[1]).double()
    back.load_state_dict(m.state_dict(), strict=True)
    assert set(m.state_dict()) == {"conv.weight", "conv_local.weight"}

    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    outs = []
    for mod in (seed, m, back):
        y = mod(x)
        outs.append((y, *torch.autograd.grad(y, [x, mod.conv.weight, mod.conv_local.weight], g)))
    for a, b in zip(outs[0], outs[1]):
        assert _rel_err(b, a) < 1e-10
    for a, b in zip(outs[0], outs[2]):
        assert torch.equal(a, b)


def test_plain_path_matches_function_path():
    """The branch-free formulation (script/export/compile) equals the eager Function."""
    m, _ = _pair(12, 5, 0.3, 0)
    for shape in [(2, 12, 20, 20), (2, 12, 9, 7), (1, 12, 2, 3)]:
        x = torch.randn(shape, dtype=torch.float64)
        y = mlca_plain(x, m.conv.weight, m.conv_local.weight, 5, 0.3)
        assert _rel_err(m(x), y) < 1e-12


def test_kernel_size_follows_eca_rule_and_any_channel_count_runs():
    for c, k in [(1, 1), (3, 1), (8, 3), (64, 3), (128, 5), (256, 5), (512, 5), (1024, 5)]:
        assert MLCA(c).conv.kernel_size == (k,) == MLCA(c).conv_local.kernel_size
        assert eca_kernel_size(c) == k
    m = MLCA(256)  # in_size only sets the kernel size, like the seed
    assert m(torch.randn(1, 7, 9, 9)).shape == (1, 7, 9, 9)
    assert isinstance(create_attention("mlca", 64, local_size=3), MLCA)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"in_size": 0}, "in_size"),
        ({"in_size": 8, "local_size": 0}, "local_size"),
        ({"in_size": 8, "local_weight": 1.5}, "local_weight"),
        ({"in_size": 8, "local_weight": -0.1}, "local_weight"),
        ({"in_size": 8, "backend": "cuda"}, "backend"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLCA(**kwargs)


@pytest.mark.parametrize("shape", [(2, 3, 8), (8, 8), (1, 2, 3, 4, 5)])
def test_non_4d_input_names_the_shape(shape):
    with pytest.raises(ValueError, match=r"4-D.*" + ", ".join(map(str, shape))):
        MLCA(8)(torch.randn(shape))


def test_empty_spatial_input_raises():
    with pytest.raises(ValueError, match="H and W"):
        MLCA(8)(torch.randn(1, 8, 0, 5))


@pytest.mark.parametrize("shape", [(1, 8, 20, 20), (1, 8, 17, 11), (1, 5, 3, 4)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_non_finite_values_land_where_the_seeds_do(shape, bad, backend, channels_last):
    gen = torch.Generator().manual_seed(0)
    seed = ref.SeedMLCA(shape[1])
    ref.random_weights(seed, gen)
    m = MLCA(shape[1], backend=backend)
    m.load_state_dict(seed.state_dict())
    x = torch.randn(shape, generator=gen)
    x[0, 0, 1, 2] = bad  # channel 0: the local conv wraps into the last channel of the bin before
    x[0, -1, -1, -1] = bad
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y, ys = m(x), seed(x)
    assert torch.equal(torch.isnan(y), torch.isnan(ys))
    assert torch.equal(torch.isinf(y), torch.isinf(ys))
    fin = torch.isfinite(ys)
    assert _rel_err(y[fin], ys[fin]) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_does_not_call_adaptive_pooling(monkeypatch, backend):
    def forbidden(*a, **k):
        raise AssertionError("adaptive pooling called at run time")

    monkeypatch.setattr(F, "adaptive_avg_pool2d", forbidden)
    monkeypatch.setattr(torch._C._nn, "adaptive_avg_pool2d", forbidden)
    monkeypatch.setattr(torch, "_adaptive_avg_pool2d", forbidden, raising=False)
    m = MLCA(8, backend=backend)
    for shape in [(2, 8, 20, 20), (2, 8, 7, 9)]:
        x = torch.randn(shape, requires_grad=True)
        m(x).sum().backward()
        mlca_plain(x, m.conv.weight, m.conv_local.weight, 5, 0.5).sum().backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_mode_bitwise_repeatable(backend):
    m, _ = _pair(16, 5, 0.5, 1, torch.float32, backend)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            for shape in [(2, 16, 20, 20), (2, 16, 13, 11)]:
                x = torch.ones(shape).cumsum(-1).sin().requires_grad_(True)
                m.zero_grad()
                m(x).square().sum().backward()
                grads.append((x.grad, m.conv.weight.grad.clone(), m.conv_local.weight.grad.clone()))
        for a, b in zip(grads[:2], grads[2:]):
            assert all(torch.equal(u, v) for u, v in zip(a, b))
    finally:
        torch.use_deterministic_algorithms(prev)


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 16, 20, 20), (2, 16, 9, 14)])
def test_autocast_gate_in_float32_output_in_input_dtype(amp_dtype, shape):
    m, (wg, wl) = _pair(16, 5, 0.5, 2, torch.float32)
    x = torch.randn(shape)
    try:
        with torch.autocast("cpu", dtype=amp_dtype):
            y32 = m(x)
            ylow = m(x.to(amp_dtype))
    except RuntimeError as e:  # a torch build without this CPU autocast dtype
        pytest.skip(str(e))
    # float32 input: identical to no autocast, i.e. the gate was not computed in low precision
    assert y32.dtype == torch.float32
    assert _rel_err(y32, m(x)) < 1e-6
    # low-precision input: low-precision output, only the final rounding differs
    assert ylow.dtype == amp_dtype
    r = ref.mlca_reference(x.to(amp_dtype).double(), wg, wl, 5, 0.5)
    assert _rel_err(ylow, r) < 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_grads(dtype):
    m, (wg, wl) = _pair(8, 5, 0.5, 4, torch.float32)
    x = torch.randn(2, 8, 10, 15).to(dtype).requires_grad_(True)
    m(x).sum().backward()
    xr = x.detach().double().requires_grad_(True)
    ref.mlca_reference(xr, wg, wl, 5, 0.5).sum().backward()
    assert x.grad.dtype == dtype and m.conv.weight.grad.dtype == torch.float32
    assert _rel_err(x.grad, xr.grad) < 2e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_keeps_less_for_backward_than_the_seed(backend):
    """Activation memory saved for backward: x plus (B, C, ls, ls)-sized tensors only."""

    def saved_bytes(mod, x):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            mod(x).sum().backward()
        return sum(storages.values())

    x = torch.randn(2, 32, 40, 40, requires_grad=True)
    seed, m = ref.SeedMLCA(32), MLCA(32, backend=backend)
    ours, theirs = saved_bytes(m, x), saved_bytes(seed, x)
    assert ours <= theirs
    assert ours <= x.numel() * 4 + 64 * 1024  # x itself + small maps, never an H x W map


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(0, 2), c=st.integers(1, 12), h=st.integers(1, 30), w=st.integers(1, 30),
    ls=st.sampled_from([1, 3, 5, 7]), seed=st.integers(0, 2**16),
)
def test_dense_export_formulation_matches_reference(b, c, h, w, ls, seed):
    """``mlca_plain_dense`` (export with ``mlca="dense"``) is the seed's function for finite x."""
    m, (wg, wl) = _pair(c, ls, 0.4, seed)
    x = torch.randn((b, c, h, w), generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    y = mlca_plain_dense(x, m.conv.weight, m.conv_local.weight, ls, 0.4)
    assert _rel_err(y, ref.mlca_reference(x, wg, wl, ls, 0.4)) < 1e-10
