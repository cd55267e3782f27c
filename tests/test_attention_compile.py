"""torch.compile(dynamic=True) of every zoo module: one compiled module serves several sizes,
forward and backward, with the eager values. Slow (inductor compiles C++ on the CPU)."""

from __future__ import annotations

import pytest
import torch

from mlca.attention import create_attention

NAMES = ["se", "se-resnet", "eca", "cbam", "ca", "simam", "ema"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_compiled_dynamic_sizes_match_eager(name):
    torch.manual_seed(0)
    m = create_attention(name, 16)
    compiled = torch.compile(m, dynamic=True)
    for hw in [(5, 7), (9, 3), (12, 12)]:
        x = torch.randn(2, 16, *hw, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_(True)
        y = compiled(x)
        y_ref = m(x_ref)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
        g = torch.randn_like(y)
        y.backward(g)
        y_ref.backward(g)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
