"""The fused Triton MLCA path (backend "triton") against a float64 reference written from the definition.

Most tests run the kernels on CPU tensors through Triton's interpreter, so they need no GPU.
The ``test_cuda_*`` tests run the compiled kernels on a CUDA device with the same float64
reference (computed on the CPU) and are skipped where there is none.

How TRITON_INTERPRET is scoped: an autouse fixture sets it with ``monkeypatch.setenv`` for each
test of this file only and restores it afterwards, so other test files sharing the pytest-xdist
worker never see it. That is enough because the backend reads the variable at call time and
wraps its kernels per call (``InterpretedFunction`` vs ``JITFunction``, cached separately);
nothing is decided when triton or mlca is imported, so import order does not matter. Shapes are
tiny because the interpreter runs each program in Python.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from mlca.attention.mlca.backends import triton as tb  # noqa: E402
from mlca.attention.mlca.backends.triton import kernels as tk  # noqa: E402
from mlca.attention.mlca.backends.triton import launch as mt  # noqa: E402
from mlca.attention.mlca.backends.triton.settings import DEFAULT_SETTINGS, TritonSettings  # noqa: E402

pytestmark = pytest.mark.triton


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


# ------------------------------------------------------------------------------------------
# Reference, from the definition: loops over the pooling bins, explicit zero-padded conv taps,
# the upsampling as averaging over the covering source bins. float64 throughout.
# ------------------------------------------------------------------------------------------


def _bins(n: int, L: int) -> list[tuple[int, int]]:
    """Adaptive-pooling bins of n positions into L: [floor(i*n/L), ceil((i+1)*n/L))."""
    return [((i * n) // L, -(-((i + 1) * n) // L)) for i in range(L)]


def _conv1d_zero_pad(seq: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B, N) sequence, (1, 1, k) taps, zero padding (k-1)/2 at both ends, no bias."""
    k = w.numel()
    pad = (k - 1) // 2
    n = seq.shape[-1]
    out = torch.zeros_like(seq)
    for t in range(k):
        off = t - pad
        lo, hi = max(0, -off), min(n, n - off)
        if lo < hi:
            out[:, lo:hi] = out[:, lo:hi] + w.reshape(-1)[t] * seq[:, lo + off : hi + off]
    return out


def _upsample_matrix(n: int, L: int) -> torch.Tensor:
    """(n, L): output position o averages source bins [floor(o*L/n), ceil((o+1)*L/n))."""
    U = torch.zeros(n, L, dtype=torch.float64)
    for o in range(n):
        r0, r1 = (o * L) // n, -(-((o + 1) * L) // n)
        U[o, r0:r1] = 1.0 / (r1 - r0)
    return U


def reference(x, w_global, w_local, L: int, local_weight: float) -> torch.Tensor:
    """MLCA in float64 from the definition; x (B, C, H, W) -> (B, C, H, W)."""
    B, C, H, W = x.shape
    local = torch.stack(
        [
            torch.stack([x[:, :, hs:he, ws:we].mean((2, 3)) for ws, we in _bins(W, L)], -1)
            for hs, he in _bins(H, L)
        ],
        -2,
    )  # (B, C, L, L)
    glob = local.mean((2, 3))  # mean of the L*L bins, not of x
    seq = local.permute(0, 2, 3, 1).reshape(B, L * L * C)  # bin-major, channel-minor
    y_local = _conv1d_zero_pad(seq, w_local).reshape(B, L, L, C).permute(0, 3, 1, 2)
    y_global = _conv1d_zero_pad(glob, w_global)
    small = y_global.sigmoid()[:, :, None, None] * (1 - local_weight) + y_local.sigmoid() * local_weight
    att = torch.einsum("hr,bcrq,wq->bchw", _upsample_matrix(H, L), small, _upsample_matrix(W, L))
    return x * att


def _reference_grads(x, wg, wl, L, lw, g):
    xd, wgd, wld = (t.detach().double().requires_grad_() for t in (x, wg, wl))
    out = reference(xd, wgd, wld, L, lw)
    return (out.detach(), *torch.autograd.grad(out, (xd, wgd, wld), g.double()))


def _run(x, wg, wl, L, lw, g, block_sizes=None, settings=None):
    x, wg, wl = (t.detach().requires_grad_() for t in (x, wg, wl))
    out = tb.mlca_triton(x, wg, wl, L, lw, block_sizes=block_sizes, settings=settings)
    return (out.detach(), *torch.autograd.grad(out, (x, wg, wl), g))


def _inputs(B, C, H, W, k, dtype=torch.float32, channels_last=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=gen).to(dtype)
    g = torch.randn(B, C, H, W, generator=gen).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    wg = torch.randn(1, 1, k, generator=gen)
    wl = torch.randn(1, 1, k, generator=gen)
    return x, wg, wl, g


def _assert_matches(got, want, rtol, atol, wrtol=1e-5):
    out, gx, gwg, gwl = got
    r_out, r_gx, r_gwg, r_gwl = want
    torch.testing.assert_close(out.double(), r_out, rtol=rtol, atol=atol)
    torch.testing.assert_close(gx.double(), r_gx, rtol=rtol, atol=atol)
    # Weight gradients are sums over the whole tensor, accumulated in float32 whatever x's dtype.
    for a, b in ((gwg, r_gwg), (gwl, r_gwl)):
        torch.testing.assert_close(a.double(), b, rtol=wrtol, atol=wrtol * (1 + b.abs().max().item()))


# ------------------------------------------------------------------------------------------


def test_reference_is_the_seed_function():
    """The reference above equals the seed's formulation (adaptive pooling both ways)."""
    torch.manual_seed(1)
    for B, C, H, W, L in [(2, 6, 7, 9, 3), (1, 4, 3, 2, 5), (1, 8, 10, 10, 5)]:
        x = torch.randn(B, C, H, W, dtype=torch.float64)
        wg, wl = torch.randn(1, 1, 3, dtype=torch.float64), torch.randn(1, 1, 3, dtype=torch.float64)
        local = F.adaptive_avg_pool2d(x, L)
        glob = F.adaptive_avg_pool2d(local, 1)
        seq = local.view(B, C, -1).transpose(-1, -2).reshape(B, 1, -1)
        y_local = F.conv1d(seq, wl, padding=1).reshape(B, L * L, C).transpose(-1, -2).reshape(B, C, L, L)
        y_global = F.conv1d(glob.view(B, C, -1).transpose(-1, -2), wg, padding=1).transpose(-1, -2).unsqueeze(-1)
        att_g = F.adaptive_avg_pool2d(y_global.sigmoid(), [L, L])
        att = F.adaptive_avg_pool2d(att_g * 0.7 + y_local.sigmoid() * 0.3, [H, W])
        torch.testing.assert_close(reference(x, wg, wl, L, 0.3), x * att, rtol=1e-12, atol=1e-12)


# (B, C, H, W, L, k, channels_last, block_sizes): H or W < L, uneven/overlapping bins, L = 1..7,
# tiles that do not divide C or H*W (small forced blocks make several loop trips and ragged tails
# at shapes the interpreter runs quickly), both memory layouts.
CASES = [
    (2, 6, 7, 9, 3, 3, False, None),
    (2, 6, 7, 9, 3, 3, True, None),
    (1, 5, 2, 3, 5, 3, False, None),  # H, W < L: bins repeat rows/cols
    (1, 5, 3, 2, 5, 3, True, None),
    (1, 3, 1, 1, 7, 3, False, None),  # a single pixel
    (2, 4, 5, 6, 1, 1, False, None),  # L = 1: global-only pooling grid, k = 1
    (1, 4, 5, 5, 7, 5, True, None),  # H, W < L = 7
    (1, 10, 13, 11, 7, 3, False, None),  # uneven overlapping bins, L = 7
    (1, 11, 9, 12, 5, 5, False, (4, 16)),  # C % 4 != 0, bin rows of 24 px over 16-px tiles
    (1, 11, 12, 7, 3, 3, True, (8, 16)),
    (1, 70, 6, 3, 3, 3, True, None),  # C > the channels_last block (64)
    (2, 9, 20, 20, 5, 3, False, None),  # a YOLO-like 20x20 map, even bins
]


@pytest.mark.parametrize("B,C,H,W,L,k,cl,blocks", CASES)
def test_float32_matches_reference(B, C, H, W, L, k, cl, blocks):
    x, wg, wl, g = _inputs(B, C, H, W, k, channels_last=cl)
    got = _run(x, wg, wl, L, 0.3, g, blocks)
    _assert_matches(got, _reference_grads(x, wg, wl, L, 0.3, g), rtol=2e-5, atol=2e-6)
    with torch.no_grad():  # inference skips the autograd node: the same kernels, the same bits
        assert torch.equal(tb.mlca_triton(x, wg, wl, L, 0.3, block_sizes=blocks), got[0])
    # Same memory format out as in, for the output and for the input gradient.
    fmt = torch.channels_last if cl else torch.contiguous_format
    assert got[0].is_contiguous(memory_format=fmt) and got[1].is_contiguous(memory_format=fmt)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 2), C=st.integers(1, 6), H=st.integers(1, 9), W=st.integers(1, 9),
    L=st.sampled_from([1, 2, 3, 5, 7]), k=st.sampled_from([1, 3, 5]), cl=st.booleans(),
    lw=st.floats(0.0, 1.0), seed=st.integers(0, 2**16),
)
def test_random_shapes_match_reference(B, C, H, W, L, k, cl, lw, seed):
    x, wg, wl, g = _inputs(B, C, H, W, k, channels_last=cl, seed=seed)
    got = _run(x, wg, wl, L, lw, g, (4, 16))
    _assert_matches(got, _reference_grads(x, wg, wl, L, lw, g), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)]
)
@pytest.mark.parametrize("cl", [False, True])
def test_half_precision_inputs(dtype, tol, cl):
    """fp16/bf16 in and out, float32 inside: one rounding of the output (and of grad_x)."""
    x, wg, wl, g = _inputs(2, 6, 7, 9, 3, dtype=dtype, channels_last=cl, seed=3)
    got = _run(x, wg, wl, 3, 0.5, g)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    assert got[2].dtype == torch.float32 and got[3].dtype == torch.float32
    # The reference sees the same rounded inputs, so the error is the final rounding only.
    _assert_matches(got, _reference_grads(x, wg, wl, 3, 0.5, g), rtol=tol, atol=tol, wrtol=1e-4)


def _reference_middle(local, wg, wl, lw):
    """float64 (B, C, L, L) local means -> small attention, from the definition."""
    B, C, L, _ = local.shape
    seq = local.permute(0, 2, 3, 1).reshape(B, L * L * C)
    y_local = _conv1d_zero_pad(seq, wl).reshape(B, L, L, C).permute(0, 3, 1, 2)
    y_global = _conv1d_zero_pad(local.mean((2, 3)), wg)
    return y_global.sigmoid()[:, :, None, None] * (1 - lw) + y_local.sigmoid() * lw


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 2), C=st.integers(1, 300), L=st.integers(1, 7), H=st.integers(1, 12),
    W=st.integers(1, 12), kg=st.sampled_from([1, 3, 5, 7]), kl=st.sampled_from([1, 3, 5, 7]),
    lw=st.floats(0.0, 1.0), cl=st.booleans(), seed=st.integers(0, 2**16),
)
def test_fused_middle_matches_reference(B, C, L, H, W, kg, kl, lw, cl, seed):
    """The middle kernels alone, at channel counts that span several channel blocks (the conv
    taps cross block and bin boundaries) and with different tap counts for the two convs."""
    gen = torch.Generator().manual_seed(seed)
    local = torch.randn(B, C, L, L, generator=gen)
    wg, wl = torch.randn(1, 1, kg, generator=gen), torch.randn(1, 1, kl, generator=gen)
    d_att = torch.randn(B, C, L, L, generator=gen)
    fmt = torch.channels_last if cl else torch.contiguous_format
    att = mt._fused_middle(local, wg, wl, lw, fmt, True)
    assert att.is_contiguous(memory_format=fmt)
    ld, wgd, wld = (t.double().requires_grad_() for t in (local, wg, wl))
    want = _reference_middle(ld, wgd, wld, lw)
    torch.testing.assert_close(att.double(), want.detach(), rtol=1e-5, atol=1e-6)

    att_b, add, gwg, gwl = mt._fused_middle_backward(local, d_att, wg, wl, lw, fmt, H, W, True)
    r_local, r_wg, r_wl = torch.autograd.grad(want, (ld, wgd, wld), d_att.double())
    # The backward recomputes att for pass 2, in the scale kernel's layout, with add.
    assert att_b.is_contiguous(memory_format=fmt) and add.stride() == att_b.stride()
    torch.testing.assert_close(att_b.double(), want.detach(), rtol=1e-5, atol=1e-6)
    # add = dLoss/d local divided by the size of each pooling bin (the scale kernel gathers it).
    rows = torch.tensor([he - hs for hs, he in _bins(H, L)], dtype=torch.float64)
    cols = torch.tensor([we - ws for ws, we in _bins(W, L)], dtype=torch.float64)
    torch.testing.assert_close(add.double(), r_local / (rows[:, None] * cols[None, :]),
                               rtol=1e-5, atol=1e-6)
    for got, ref in ((gwg, r_wg), (gwl, r_wl)):
        assert got.shape == ref.shape
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * (1 + ref.abs().max().item()))
    # Weight gradients only (x frozen): nothing for pass 2, the same weight gradients.
    none_att, none_add, gwg2, gwl2 = mt._fused_middle_backward(local, d_att, wg, wl, lw, None, H, W, True)
    assert none_att is None and none_add is None
    assert torch.equal(gwg2, gwg) and torch.equal(gwl2, gwl)


@pytest.mark.parametrize("algo,cols,fused", [("rows", False, False), ("rows", True, True),
                                             ("flat", False, True)])
def test_other_kernel_variants_match_reference(algo, cols, fused):
    """The variants the benchmark compares: NCHW scale with W-upsampled maps, flat kernels, the
    PyTorch middle instead of the fused one."""
    settings = TritonSettings(algo=algo, nchw_cols=cols, fused_middle=fused)
    for B, C, H, W, L, k, cl, blocks in (CASES[0], CASES[2], CASES[8]):
        x, wg, wl, g = _inputs(B, C, H, W, k, channels_last=cl, seed=9)
        got = _run(x, wg, wl, L, 0.3, g, blocks, settings)
        _assert_matches(got, _reference_grads(x, wg, wl, L, 0.3, g), rtol=2e-5, atol=2e-6)


def test_settings_are_immutable_copies_with_clear_errors():
    """Variants are new objects: the defaults MLCA runs with never change under a benchmark."""
    flat = DEFAULT_SETTINGS.replace(algo="flat")
    assert flat.algo == "flat" and DEFAULT_SETTINGS.algo == "rows"
    tiled = DEFAULT_SETTINGS.with_tile("scale_nchw", (2, 128, 4, 4))
    assert tiled.tuning["scale_nchw"] == (2, 128, 4, 4)
    assert DEFAULT_SETTINGS.tuning["scale_nchw"] == (4, 256, 8, 4)
    with pytest.raises(TypeError):
        DEFAULT_SETTINGS.tuning["scale_nchw"] = (1, 1, 1, 1)  # read-only mapping
    with pytest.raises(ValueError, match="algo.*rows.*flat"):
        TritonSettings(algo="tiles")
    with pytest.raises(ValueError, match="unknown tile"):
        DEFAULT_SETTINGS.with_tile("scale_nhwc", (1, 1, 1, 1))


def test_gradient_with_other_strides_than_x():
    """grad_output laid out differently from x (NCHW x, channels_last g) and a non-dense x."""
    x, wg, wl, g = _inputs(1, 5, 6, 7, 3, seed=4)
    g_cl = g.to(memory_format=torch.channels_last)
    got = _run(x, wg, wl, 3, 0.5, g_cl)
    _assert_matches(got, _reference_grads(x, wg, wl, 3, 0.5, g), rtol=2e-5, atol=2e-6)
    big = torch.randn(1, 5, 12, 7)
    x_strided = big[:, :, ::2]  # (1, 5, 6, 7) with a row stride of 14
    got = _run(x_strided, wg, wl, 3, 0.5, g)
    _assert_matches(got, _reference_grads(x_strided, wg, wl, 3, 0.5, g), rtol=2e-5, atol=2e-6)


def test_only_some_inputs_need_grad():
    x, wg, wl, g = _inputs(1, 4, 5, 6, 3, seed=5)
    want = _reference_grads(x, wg, wl, 3, 0.5, g)
    wl_ = wl.detach().requires_grad_()
    out = tb.mlca_triton(x, wg, wl_, 3, 0.5)
    (gwl,) = torch.autograd.grad(out, (wl_,), g)
    torch.testing.assert_close(gwl.double(), want[3], rtol=1e-5, atol=1e-6)
    x_ = x.detach().requires_grad_()
    out = tb.mlca_triton(x_, wg, wl, 3, 0.5)
    (gx,) = torch.autograd.grad(out, (x_,), g)
    torch.testing.assert_close(gx.double(), want[1], rtol=2e-5, atol=2e-6)


def test_deterministic_bit_identical_gradients():
    """No atomics: deterministic mode is accepted and two runs agree bit for bit."""
    x, wg, wl, g = _inputs(2, 5, 7, 8, 5, channels_last=True, seed=6)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = _run(x, wg, wl, 5, 0.5, g)
        second = _run(x, wg, wl, 5, 0.5, g)
    finally:
        torch.use_deterministic_algorithms(was)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_non_finite_stays_in_its_bins():
    """An inf in x poisons only the pooling bins that contain it (select, not 0/1 multiply)."""
    x = torch.randn(1, 2, 6, 6)
    x[0, 0, 0, 0] = float("inf")
    local = mt._bin_reduce(x, None, 3, True, None)
    expected = F.adaptive_avg_pool2d(x.double(), 3)
    assert torch.equal(torch.isinf(local), torch.isinf(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(local.double()[finite], expected[finite], rtol=1e-6, atol=1e-6)


def test_empty_batch():
    x = torch.randn(0, 4, 5, 5)
    out = tb.mlca_triton(x, torch.randn(1, 1, 3), torch.randn(1, 1, 3), 3, 0.5)
    assert out.shape == x.shape


def test_bad_inputs_have_clear_errors(monkeypatch):
    w = torch.randn(1, 1, 3)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        tb.mlca_triton(torch.randn(2, 3, 4), w, w, 3, 0.5)
    with pytest.raises(TypeError, match="float64"):
        tb.mlca_triton(torch.randn(1, 2, 4, 4, dtype=torch.float64), w, w, 3, 0.5)
    with pytest.raises(ValueError, match="odd k"):
        tb.mlca_triton(torch.randn(1, 2, 4, 4), torch.randn(1, 1, 2), w, 3, 0.5)
    with pytest.raises(ValueError, match="local_size"):
        tb.mlca_triton(torch.randn(1, 2, 4, 4), w, w, 0, 0.5)
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        tb.mlca_triton(torch.randn(1, 2, 4, 4), w, w, 3, 0.5)


def test_triton_available_follows_the_environment(monkeypatch):
    assert tb.triton_available()  # interpreter requested by the fixture
    monkeypatch.delenv("TRITON_INTERPRET")
    assert tb.triton_available() == torch.cuda.is_available()


def test_mlca_module_triton_backend_matches_torch_backend():
    """Wiring: MLCA(backend='triton') runs these kernels and agrees with the PyTorch path."""
    mlca_mod = pytest.importorskip("mlca.attention.mlca")
    torch.manual_seed(7)
    torch_mod = mlca_mod.MLCA(16, local_size=5, backend="torch")
    triton_mod = mlca_mod.MLCA(16, local_size=5, backend="triton")
    triton_mod.load_state_dict(torch_mod.state_dict())
    x = torch.randn(2, 16, 11, 9)
    g = torch.randn_like(x)
    outs = []
    for mod in (torch_mod, triton_mod):
        xi = x.clone().requires_grad_()
        out = mod(xi)
        out.backward(g)
        outs.append((out.detach(), xi.grad, mod.conv.weight.grad, mod.conv_local.weight.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# The interpreter on CPU tensors; the compiled kernels where a GPU is (the id says "cuda", so
# ``-k cuda`` in benchmarks/gpu_checks.sh picks these too).
_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="needs a CUDA device"))]


def _on(device: str, monkeypatch, *tensors):
    """tensors on device; on CUDA the compiled kernels, not the interpreter."""
    if device == "cuda":
        monkeypatch.delenv("TRITON_INTERPRET")
    return tuple(t.to(device) for t in tensors)


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("cl", [False, True])
def test_custom_ops_with_triton_kernels_agree_with_their_fakes(monkeypatch, cl, device):
    """torch.library.opcheck of the custom ops torch.compile calls, with the Triton kernels."""
    from mlca.attention.mlca import op  # noqa: F401  (registers the ops)

    x, wg, wl, g = _on(device, monkeypatch, *_inputs(2, 6, 7, 9, 3, channels_last=cl, seed=13))
    torch.library.opcheck(torch.ops.mlca.mlca_fwd.default, (x, wg, wl, 3, 0.5, "triton"))
    out, local = torch.ops.mlca.mlca_fwd(x, wg, wl, 3, 0.5, "triton")
    torch.library.opcheck(torch.ops.mlca.mlca_bwd.default, (g, x, local, wg, wl, 3, 0.5, "triton"))


@pytest.mark.parametrize("device", _DEVICES)
def test_compile_runs_the_triton_kernels_in_one_graph(monkeypatch, device):
    """Under torch.compile the Triton path runs inside the opaque custom op: one graph for all
    sizes, no break, and the reference's values and gradients (forward and backward kernels
    both ran: the spies see them)."""
    from torch._dynamo.utils import counters

    from mlca.attention.mlca import MLCA

    _on(device, monkeypatch)
    calls = []
    for name in ("forward", "backward"):
        real = getattr(tb, name)
        monkeypatch.setattr(tb, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    torch._dynamo.reset()
    counters.clear()
    m = MLCA(8, local_size=3, backend="triton").to(device)
    wg, wl = m.conv.weight, m.conv_local.weight
    compiled = torch.compile(m, dynamic=True)
    for shape in [(2, 8, 7, 9), (2, 8, 4, 6), (2, 8, 2, 3)]:  # batch 1 would specialise
        x = torch.randn(shape, device=device, requires_grad=True)
        g = torch.randn(shape, device=device)
        out = compiled(x)
        got = [t.cpu() for t in (out.detach(), *torch.autograd.grad(out, (x, wg, wl), g))]
        want = _reference_grads(x.cpu(), wg.cpu(), wl.cpu(), 3, m.local_weight, g.cpu())
        _assert_matches(got, want, rtol=2e-5, atol=2e-6)
    assert calls.count("forward") == 3 and calls.count("backward") == 3
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


def _load_benchmark(monkeypatch, name: str):
    """benchmarks/<name>.py as a module (the folder is scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_gpu_benchmark_refuses_cleanly_without_cuda(capsys, monkeypatch):
    assert _load_benchmark(monkeypatch, "bench_mlca_gpu").main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_gpu_benchmark_code_paths_on_the_interpreter(capsys, monkeypatch):
    """Everything but the CUDA timing: contenders, agreement with the seed, table, determinism."""
    bench = _load_benchmark(monkeypatch, "bench_mlca_gpu")
    assert bench.minimal_bytes((2, 3, 4, 5), torch.float16) == (3 * 240, 7 * 240)
    assert bench.main(["--interpret-check", "--dtype", "float16", "--channels-last"]) == 0
    out = capsys.readouterr().out
    assert "mlca triton" in out and "triton torch-mid" in out and "bit-identical" in out
    errs = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "max|err| vs seed" in line]
    # The seed computes in float16 throughout, MLCA in float32: a few float16 ulps apart.
    assert len(errs) == 4 and max(errs) < 5e-3
    assert errs[0] == 0.0  # the seed against itself: the comparison is wired


def test_host_benchmark_runs(capsys, monkeypatch):
    """benchmarks/bench_mlca_triton_host.py (launches stubbed, CPU only) prints its table."""
    module = _load_benchmark(monkeypatch, "bench_mlca_triton_host")
    real_kernel = mt._kernel
    assert module.main(["--reps", "3", "--rounds", "2", "--shapes", "2x8x10x10"]) == 0
    assert mt._kernel is real_kernel  # the stub is undone
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2x8x10x10")]
    assert [r.split("|")[2].strip() for r in rows] == ["mlca", "triton int helpers"]


def test_host_integer_helpers_match_tritons():
    import triton

    for n in range(0, 2100):
        assert mt._next_pow2(n) == triton.next_power_of_2(n)
        for b in (1, 3, 16, 128):
            assert mt._cdiv(n, b) == triton.cdiv(n, b)


# The (B, C, L, L) maps are float32 whatever x's dtype.
_FP32_POINTERS = {"_triton_bin_reduce": {"out_ptr"}, "_triton_scale": {"small_ptr", "add_ptr"},
                  "_triton_bin_reduce_rows": {"out_ptr"}, "_triton_scale_rows": {"small_ptr", "add_ptr"},
                  "_triton_middle": {"local_ptr", "d_ptr", "att_ptr", "add_ptr", "part_ptr"}}


def _signature(kernel: str, dtype: str, constexprs: dict) -> dict:
    """Triton signature of one of our kernels: ``*_ptr`` are pointers, other runtime args i32."""
    import inspect

    sig = {}
    for name in inspect.signature(getattr(tk, kernel)).parameters:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*fp32" if name in _FP32_POINTERS.get(kernel, ()) else f"*{dtype}"
        elif name in ("inv_ll", "local_weight"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


@pytest.mark.parametrize(
    "kernel,dtype,constexprs",
    [
        ("_triton_bin_reduce", "fp32", dict(MODE=0, BLOCK_C=8, BLOCK_S=128, LP=8, A_DENSE=True, B_DENSE=True)),
        ("_triton_bin_reduce", "bf16", dict(MODE=1, BLOCK_C=64, BLOCK_S=16, LP=8, A_DENSE=False, B_DENSE=True)),
        ("_triton_scale", "fp16",
         dict(HAS_ADD=True, SPAN_H=2, SPAN_W=3, BLOCK_C=4, BLOCK_S=256, V_DENSE=True, O_DENSE=False)),
        ("_triton_bin_reduce_rows", "bf16", dict(MODE=1, BLOCK_C=64, BLOCK_W=16, LP=8)),
        ("_triton_bin_reduce_rows", "fp32", dict(MODE=0, BLOCK_C=8, BLOCK_W=128, LP=8)),
        ("_triton_scale_rows", "fp16", dict(HAS_ADD=True, SPAN_H=2, SPAN_W=3, BLOCK_C=4, BLOCK_W=256, ROWS=4)),
        # The middle's pointers are all float32 maps, but for the weights (any float dtype).
        ("_triton_middle", "fp32", dict(MODE=0, GRAD_X=False, KG=5, KL=5, BLOCK_C=32, LLP=32, H=1, W=1)),
        ("_triton_middle", "fp16", dict(MODE=1, GRAD_X=True, KG=3, KL=7, BLOCK_C=16, LLP=64)),
        ("_triton_middle", "bf16", dict(MODE=1, GRAD_X=False, KG=5, KL=3, BLOCK_C=32, LLP=32)),
        # Triton turns integer arguments equal to 1 into constants: L = 1, C = 1, H = W = 1.
        ("_triton_middle", "fp32", dict(MODE=1, GRAD_X=True, KG=1, KL=1, BLOCK_C=1, LLP=1, L=1, C=1, H=1, W=1)),
    ],
)
def test_kernels_compile_for_a_gpu_without_one(kernel, dtype, constexprs):
    """The interpreter does not type-check like the compiler: build real sm_90 cubins (ptxas
    ships with Triton; no GPU or driver is needed to compile)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    src = ASTSource(fn=JITFunction(getattr(tk, kernel)), signature=_signature(kernel, dtype, constexprs),
                    constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32))
    assert compiled.asm["cubin"]  # a loadable binary came out of ptxas


@pytest.mark.parametrize("direction,C,L,k", [("forward", 256, 5, 7), ("backward", 256, 5, 5),
                                             ("backward", 256, 5, 7), ("backward", 128, 7, 7),
                                             ("backward", 3, 23, 3)])
def test_middle_kernel_does_not_spill_at_the_tiles_mlca_picks(monkeypatch, capsys, direction, C, L, k):
    """The backward mode recomputes its neighbours' conv gradients: many gathered tiles live at
    once. At the tiles ``_middle_tile`` picks, ptxas (Triton's own call, its log) spills none."""
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    bc, llp, _, warps = mt._middle_tile(C, L, DEFAULT_SETTINGS.middle_tile[direction])
    constexprs = dict(MODE=int(direction == "backward"), GRAD_X=direction == "backward", KG=k, KL=k,
                      BLOCK_C=bc, LLP=llp)
    src = ASTSource(fn=JITFunction(tk._triton_middle), constexprs=constexprs,
                    signature=_signature("_triton_middle", "fp32", constexprs))
    monkeypatch.setattr(triton.knobs.nvidia, "dump_ptxas_log", True)
    monkeypatch.setattr(triton.knobs.compilation, "always_compile", True)  # a cache hit runs no ptxas
    capsys.readouterr()
    triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))
    log = capsys.readouterr().out
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert spills, log  # the log was captured
    assert all(st == "0" and ld == "0" for st, ld in spills), log


# ------------------------------------------------------------------------------------------
# The compiled kernels on a real GPU (skipped without CUDA): same float64 reference, CPU-side.
# ------------------------------------------------------------------------------------------

_needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# (B, C, H, W, L, k, channels_last, dtype, rtol/atol): the interpreter's edge cases plus YOLO
# sizes whose tiles the default block sizes do not divide.
CUDA_CASES = [
    (2, 6, 7, 9, 3, 3, False, torch.float32, 2e-5),
    (1, 5, 2, 3, 5, 3, True, torch.float32, 2e-5),
    (1, 3, 1, 1, 7, 3, False, torch.float32, 2e-5),
    (1, 10, 13, 11, 7, 3, False, torch.float32, 2e-5),
    (1, 70, 6, 3, 3, 3, True, torch.float32, 2e-5),
    (2, 64, 80, 80, 5, 3, False, torch.float32, 2e-5),
    (2, 64, 80, 80, 5, 3, True, torch.float32, 2e-5),
    (1, 96, 37, 301, 5, 5, False, torch.float32, 2e-5),  # W > the widest tile: several chunks
    (2, 128, 40, 40, 5, 3, False, torch.float16, 2e-3),
    (2, 256, 20, 20, 5, 5, True, torch.bfloat16, 1.6e-2),
]


@_needs_cuda
@pytest.mark.parametrize("algo,cols,fused", [("rows", False, True), ("rows", True, True),
                                             ("flat", False, True), ("rows", False, False)])
@pytest.mark.parametrize("B,C,H,W,L,k,cl,dtype,tol", CUDA_CASES)
def test_cuda_compiled_kernels_match_reference(monkeypatch, algo, cols, fused, B, C, H, W, L, k, cl, dtype,
                                               tol):
    monkeypatch.delenv("TRITON_INTERPRET")
    settings = TritonSettings(algo=algo, nchw_cols=cols, fused_middle=fused)
    x, wg, wl, g = _inputs(B, C, H, W, k, dtype=dtype, channels_last=cl, seed=B * C + H + W)
    dev = torch.device("cuda")
    # Poison the allocator's free blocks so an unwritten output element cannot pass as zero.
    torch.empty(4 * x.numel(), device=dev).fill_(float("nan"))
    got = _run(x.to(dev), wg.to(dev), wl.to(dev), L, 0.3, g.to(dev), settings=settings)
    assert all(t.is_cuda for t in got)
    wrtol = 1e-5 if dtype == torch.float32 else 1e-4
    _assert_matches([t.cpu() for t in got], _reference_grads(x, wg, wl, L, 0.3, g),
                    rtol=tol, atol=tol, wrtol=wrtol)
    fmt = torch.channels_last if cl else torch.contiguous_format
    assert got[0].is_contiguous(memory_format=fmt) and got[1].is_contiguous(memory_format=fmt)


@_needs_cuda
def test_cuda_deterministic_bit_identical_gradients(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    x, wg, wl, g = _inputs(4, 128, 40, 40, 5, seed=11)
    x, wg, wl, g = (t.cuda() for t in (x, wg, wl, g))
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = _run(x, wg, wl, 5, 0.5, g)
        second = _run(x, wg, wl, 5, 0.5, g)
    finally:
        torch.use_deterministic_algorithms(was)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@_needs_cuda
def test_cuda_graph_capture_replays_the_triton_path(monkeypatch):
    """Forward+backward of the Triton path captured in a CUDA graph (what
    ``torch.compile(mode="reduce-overhead")`` does to take the host out of small layers) and
    replayed on new inputs gives the reference's values: no host sync, no host-to-device copy,
    every buffer allocated inside the capture."""
    monkeypatch.delenv("TRITON_INTERPRET")
    x, wg, wl, g = (t.cuda() for t in _inputs(2, 64, 20, 20, 5, channels_last=True, seed=21))
    x.requires_grad_()
    wg.requires_grad_()
    wl.requires_grad_()

    def step():
        out = tb.mlca_triton(x, wg, wl, 5, 0.3)
        return (out.detach(), *torch.autograd.grad(out, (x, wg, wl), g))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile the kernels before capturing
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    for seed in (22, 23):
        new_x, new_wg, _, new_g = _inputs(2, 64, 20, 20, 5, channels_last=True, seed=seed)
        with torch.no_grad():
            x.copy_(new_x)
            wg.copy_(new_wg)
            g.copy_(new_g)
        graph.replay()
        torch.cuda.synchronize()
        _assert_matches([t.cpu() for t in static], _reference_grads(new_x, new_wg, wl.cpu(), 5, 0.3, new_g),
                        rtol=2e-5, atol=2e-6)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_second_device_while_the_first_is_current(monkeypatch):
    """Triton launches on the current device: tensors on cuda:1 with cuda:0 current must still
    give the reference's values and gradients (the path switches device around its launches)."""
    monkeypatch.delenv("TRITON_INTERPRET")
    x, wg, wl, g = _inputs(2, 16, 9, 11, 3, seed=12)
    dev = torch.device("cuda", 1)
    with torch.cuda.device(0):
        got = _run(x.to(dev), wg.to(dev), wl.to(dev), 3, 0.3, g.to(dev))
    assert all(t.device == dev for t in got)
    _assert_matches([t.cpu() for t in got], _reference_grads(x, wg, wl, 3, 0.3, g), rtol=2e-5, atol=2e-6)


@_needs_cuda
def test_cuda_auto_backend_takes_the_triton_path(monkeypatch):
    """MLCA(backend='auto') on a CUDA float tensor runs the Triton kernels and agrees with 'torch'."""
    monkeypatch.delenv("TRITON_INTERPRET")
    mlca_mod = pytest.importorskip("mlca.attention.mlca")
    calls = []
    real = tb.forward

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(tb, "forward", spy)
    torch.manual_seed(8)
    auto = mlca_mod.MLCA(64, backend="auto").cuda()
    ref = mlca_mod.MLCA(64, backend="torch").cuda()
    ref.load_state_dict(auto.state_dict())
    x = torch.randn(2, 64, 33, 47, device="cuda")
    out = auto(x)
    assert calls == [x.shape]
    torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)
