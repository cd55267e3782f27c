"""The registry: names, errors that help, and third-party modules added with the decorator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mlca
from mlca.attention import create_attention, get_attention_class, list_attentions, register_attention
from mlca.attention.registry import _REGISTRY


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError) as err:
        create_attention("squeeze-me", 16)
    message = str(err.value)
    assert "squeeze-me" in message
    for name in ["ca", "cbam", "eca", "ema", "mlca", "none", "se", "se-resnet", "simam"]:
        assert name in message


def test_wrong_keyword_says_which_and_what_is_accepted():
    with pytest.raises(TypeError, match=r"\['reduction_ratio'\].*rd_ratio"):
        create_attention("se", 16, reduction_ratio=8)
    with pytest.raises(TypeError, match=r"'ema'.*\['factor'\].*groups"):
        create_attention("ema", 16, factor=8)
    with pytest.raises(TypeError, match=r"kernel"):
        create_attention("simam", 16, kernel_size=3)


def test_keywords_reach_the_module():
    assert create_attention("eca", 64, kernel_size=7).kernel_size == 7
    assert create_attention("se", 64, gate_layer=nn.Sigmoid).gate.__class__ is nn.Sigmoid
    assert create_attention("cbam", 64, reduction=8).fc1.out_features == 8
    assert create_attention("ca", 256, reduction=16).mip == 16


def test_names_are_case_and_underscore_insensitive():
    assert get_attention_class("SE_ResNet") is get_attention_class("se-resnet")


def test_public_api_reaches_the_registry():
    assert mlca.list_attentions() == list_attentions()
    assert isinstance(mlca.create_attention("eca", 8), nn.Module)


def test_third_party_module_registers_with_the_decorator():
    name = "test-gated-identity"
    try:

        @register_attention(name)
        class Gated(nn.Module):
            """y = x * sigmoid(scale), one learnable scale."""

            def __init__(self, channels: int, init: float = 0.0):
                super().__init__()
                self.scale = nn.Parameter(torch.full((channels, 1, 1), init))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                """(B, C, H, W) -> (B, C, H, W)"""
                return x * torch.sigmoid(self.scale)

        assert name in list_attentions()
        m = create_attention(name, 4, init=2.0)
        x = torch.randn(1, 4, 2, 3)
        torch.testing.assert_close(m(x), x * torch.sigmoid(torch.tensor(2.0)))
        with pytest.raises(TypeError, match=r"\['bogus'\]"):
            create_attention(name, 4, bogus=1)
        with pytest.raises(ValueError, match="already registered"):
            register_attention(name)(nn.Identity)
        # and surgery can use it like any built-in
        from torchvision.ops import SqueezeExcitation

        net = nn.Sequential(nn.Conv2d(3, 8, 3), SqueezeExcitation(8, 2))
        from mlca.attention.surgery import replace_attention

        assert replace_attention(net, name) == 1 and isinstance(net[1], Gated)
    finally:
        _REGISTRY.pop(name, None)
