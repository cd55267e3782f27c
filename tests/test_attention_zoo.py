"""Every module of the zoo: shapes, gradients, dtypes, layouts, and values against float64
references written from each paper's formula (tests/_attention_refs.py)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import _attention_refs as ref
from mlca.attention import create_attention, list_attentions
from mlca.attention.eca import eca_kernel_size
from mlca.attention.se import make_divisible

BUILTIN = ["none", "se", "se-resnet", "eca", "cbam", "ca", "mlca", "simam", "ema"]
C = 16  # divisible by EMA's 8 groups; small enough to be fast


def test_every_builtin_is_registered():
    assert set(BUILTIN) <= set(list_attentions())


def _randomise(module: nn.Module, gen: torch.Generator) -> nn.Module:
    """Random parameters and BN statistics, so a test cannot pass on the default init."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
        for name, buf in module.named_buffers():
            if name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen, dtype=buf.dtype) + 0.5)
            elif name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen, dtype=buf.dtype) * 0.3)
    return module


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (3, 5), (13, 11)])
def test_shape_and_gradient_flow(name, hw):
    torch.manual_seed(0)
    m = create_attention(name, C)
    x = torch.randn(2, C, *hw, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: no gradient for {pname}"


@pytest.mark.parametrize("name", BUILTIN)
def test_batch_zero_and_one(name):
    m = create_attention(name, C)
    assert m(torch.randn(0, C, 5, 4)).shape == (0, C, 5, 4)
    m.train()
    assert m(torch.randn(1, C, 1, 1)).shape == (1, C, 1, 1)  # one value per channel still trains


@settings(max_examples=15, deadline=None)
@given(
    name=st.sampled_from(BUILTIN),
    b=st.integers(1, 3),
    groups_of_8=st.integers(1, 5),
    h=st.integers(1, 17),
    w=st.integers(1, 17),
)
def test_any_shape(name, b, groups_of_8, h, w):
    c = 8 * groups_of_8
    m = create_attention(name, c)
    x = torch.randn(b, c, h, w)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("name", BUILTIN)
def test_channels_last_in_channels_last_out(name):
    torch.manual_seed(1)
    m = create_attention(name, C).eval()
    x = torch.randn(2, C, 6, 5)
    y = m(x.to(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, m(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", BUILTIN)
def test_autocast_bfloat16(name):
    """Under autocast the output keeps the input's dtype and the gate is not computed in bf16."""
    torch.manual_seed(2)
    m = create_attention(name, C).eval()
    x = torch.randn(2, C, 7, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y32 = m(x)
        y16 = m(x.bfloat16())
    assert y32.dtype == torch.float32 and y16.dtype == torch.bfloat16
    expected = m(x.bfloat16().float())
    # float32 in: exact up to float32 rounding; bf16 in: only the final product rounds to bf16
    torch.testing.assert_close(y32, m(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y16.float(), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", [n for n in BUILTIN if n != "none"])
def test_low_precision_input_without_autocast(name):
    m = create_attention(name, C).eval()
    x = torch.randn(2, C, 5, 5)
    y = m(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), m(x.bfloat16().float()), rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------- known values against references


def _params64(m: nn.Module) -> dict:
    return {k: v.detach().double() for k, v in m.state_dict().items()}


REFERENCES = {
    "se": lambda x, m: ref.se_ref(x, _params64(m), ref.hard_sigmoid),
    "se-resnet": lambda x, m: ref.se_ref(x, _params64(m), ref.sigmoid),
    "eca": lambda x, m: ref.eca_ref(x, _params64(m)),
    "cbam": lambda x, m: ref.cbam_ref(x, _params64(m)),
    "ca": lambda x, m: ref.coord_ref(x, _params64(m), training=m.training),
    "simam": lambda x, m: ref.simam_ref(x, m.e_lambda),
    "ema": lambda x, m: ref.ema_ref(x, _params64(m), m.groups),
    "none": lambda x, m: x,
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("hw", [(1, 1), (2, 9), (7, 5)])
@pytest.mark.parametrize("training", [False, True])
def test_matches_float64_reference(name, hw, training):
    gen = torch.Generator().manual_seed(hash((name, hw, training)) % 2**31)
    m = _randomise(create_attention(name, C), gen).train(training)
    x = torch.randn(3, C, *hw, generator=gen, dtype=torch.float64)
    expected = REFERENCES[name](x, m)
    # float32 module on the rounded input
    torch.testing.assert_close(m(x.float()).double(), expected, rtol=2e-5, atol=2e-5)
    # the same module in float64 agrees to float64 rounding
    m64 = m.double()
    torch.testing.assert_close(m64(x), expected, rtol=1e-10, atol=1e-10)


def test_ema_reference_with_other_groups():
    gen = torch.Generator().manual_seed(5)
    m = _randomise(create_attention("ema", 24, groups=3), gen).double()
    x = torch.randn(2, 24, 6, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(m(x), ref.ema_ref(x, _params64(m), 3), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- constructor rules from the papers


@pytest.mark.parametrize(
    "channels,k", [(1, 1), (16, 3), (24, 3), (64, 3), (72, 3), (127, 3), (128, 5), (256, 5), (512, 5), (2048, 7)]
)
def test_eca_kernel_rule(channels, k):
    # t = int(|log2 C + 1| / 2), odd upwards
    t = int(abs(math.log2(channels) + 1) / 2)
    assert k == (t if t % 2 else t + 1) == eca_kernel_size(channels)
    assert create_attention("eca", channels).conv.kernel_size == (k,)


def test_eca_and_mlca_pick_the_same_kernel():
    for c in [3, 16, 40, 96, 240, 576, 1000]:
        assert create_attention("eca", c).kernel_size == create_attention("mlca", c).conv.kernel_size[0]


def test_se_widths_match_torchvision_mobilenet_v3():
    from torchvision.ops import SqueezeExcitation
    from torchvision.models._utils import _make_divisible

    for c in [16, 72, 88, 96, 120, 144, 240, 288, 576, 20, 36]:
        m = create_attention("se", c)
        assert m.rd_channels == _make_divisible(c // 4, 8) == make_divisible(c // 4, 8)
        assert isinstance(m.gate, nn.Hardsigmoid) and isinstance(m.act, nn.ReLU)
        # same parameter names and shapes: torchvision's SE state_dict loads
        tv = SqueezeExcitation(c, _make_divisible(c // 4, 8), scale_activation=nn.Hardsigmoid)
        m.load_state_dict(tv.state_dict(), strict=True)
        x = torch.randn(2, c, 3, 3)
        torch.testing.assert_close(m(x), tv(x))


def test_se_resnet_reduction_16_sigmoid():
    m = create_attention("se-resnet", 256)
    assert m.rd_channels == 16 and isinstance(m.gate, nn.Sigmoid)
    assert create_attention("se-resnet", 8).rd_channels == 1  # never 0


@pytest.mark.parametrize("c,mip", [(16, 8), (256, 8), (512, 16), (1024, 32)])
def test_coord_attention_mid_channels(c, mip):
    m = create_attention("ca", c)
    assert m.mip == mip and isinstance(m.act, nn.Hardswish)


def test_cbam_defaults():
    m = create_attention("cbam", 64)
    assert m.fc1.out_features == 4 and m.spatial.kernel_size == (7, 7)


def test_simam_has_no_parameters_and_1x1_gives_sigmoid_half():
    m = create_attention("simam", 8)
    assert sum(p.numel() for p in m.parameters()) == 0
    x = torch.randn(2, 8, 1, 1)
    torch.testing.assert_close(m(x), x * torch.sigmoid(torch.tensor(0.5)))


def test_ema_channels_not_divisible_by_groups_is_a_clear_error():
    with pytest.raises(ValueError, match=r"channels=12.*groups=8.*groups=6"):
        create_attention("ema", 12)
    with pytest.raises(ValueError, match=r"channels=7.*groups=7"):
        create_attention("ema", 7)
    assert create_attention("ema", 12, groups=4)(torch.randn(1, 12, 3, 3)).shape == (1, 12, 3, 3)


# ---------------------------------------------------------------- CUDA (skipped without a GPU)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_channels_last_forward_backward(name, dtype):
    torch.manual_seed(3)
    m = create_attention(name, 64).cuda()
    x = torch.randn(2, 64, 19, 23, device="cuda")
    xl = x.to(dtype).to(memory_format=torch.channels_last).requires_grad_(True)
    with torch.autocast("cuda", dtype=dtype):
        y = m(xl)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    ref32 = m(x.to(dtype).float())  # same rounded input, everything in float32
    torch.testing.assert_close(y.float(), ref32, rtol=2e-2, atol=2e-2)
    y.float().square().sum().backward()
    assert torch.isfinite(xl.grad).all()
    assert all(p.grad is None or (p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()) for p in m.parameters())


@cuda
@pytest.mark.parametrize("name", BUILTIN)
def test_cuda_matches_cpu(name):
    torch.manual_seed(4)
    m = create_attention(name, 32).double().eval()
    x = torch.randn(2, 32, 9, 14, dtype=torch.float64)
    # 1e-7, not 1e-12: PyTorch's CUDA hardsigmoid/hardswish kernels multiply by a float32 1/6 even
    # in float64 (seen on an H100 with torch 2.11: se and ca differ by 3e-9, the others by ~1e-16)
    torch.testing.assert_close(m.cuda()(x.cuda()).cpu(), m.cpu()(x), rtol=1e-7, atol=1e-7)
