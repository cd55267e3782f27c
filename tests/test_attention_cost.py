"""attention_cost: parameter and FLOP counts against hand-derived formulas, and the elementwise
count against the rules written in mlca/attention/cost.py."""

from __future__ import annotations

import pytest
import torch

import mlca
from mlca.attention import list_attentions
from mlca.attention.cost import AttentionCost, attention_cost, count_elementwise


@pytest.mark.parametrize("name", sorted(set(list_attentions()) & {"none", "se", "se-resnet", "eca", "cbam", "ca", "mlca", "simam", "ema"}))
def test_every_op_of_the_builtins_is_counted(name):
    cost = attention_cost(name, 32, (7, 9))
    assert cost.uncounted == ()
    assert cost.hw == (7, 9) and cost.channels == 32


def test_none_costs_nothing():
    assert attention_cost("none", 256, 40) == AttentionCost("none", 256, (40, 40), 0, 0, 0)


@pytest.mark.parametrize("c,h,w", [(256, 40, 40), (24, 3, 5)])
def test_se_by_hand(c, h, w):
    r = max(8, (c // 4 + 4) // 8 * 8)  # make_divisible(C // 4, 8) for these sizes
    cost = attention_cost("se", c, (h, w))
    assert cost.params == (c * r + r) + (r * c + c)
    assert cost.flops == 2 * (c * r + r * c)  # two 1x1 convs on a 1x1 map, 2 per MAC
    # mean over HW (CHW), bias + ReLU (2r), bias + hard-sigmoid (2C), x * gate (CHW)
    assert cost.elementwise == 2 * c * h * w + 2 * r + 2 * c


def test_eca_by_hand():
    c, h, w = 256, 40, 40
    k = 5
    cost = attention_cost("eca", c, h)
    # the 1-D conv runs as k shifted multiply-adds (see eca.py), which FlopCounterMode does not see
    assert cost.params == k and cost.flops == 0
    # mean (CHW), k products and k - 1 sums over C, sigmoid (C), x * gate (CHW)
    assert cost.elementwise == c * h * w + k * c + (k - 1) * c + c + c * h * w


def test_simam_is_invisible_to_the_flop_counter_but_not_to_us():
    c, h, w = 64, 10, 12
    cost = attention_cost("simam", c, (h, w))
    assert cost.params == 0 and cost.flops == 0
    # mean, subtract, square, sum, divide, sigmoid, +0.5, product: 8 per element; /n, +lambda, *4 per channel
    assert cost.elementwise == 8 * c * h * w + 3 * c


def test_ca_flops_by_hand():
    c, h, w = 256, 20, 30
    mip = 8
    cost = attention_cost("ca", c, (h, w))
    assert cost.params == (c * mip + mip) + 2 * mip + 2 * (mip * c + c)  # conv1, BN affine, conv_h, conv_w
    assert cost.flops == 2 * c * mip * (h + w) + 2 * mip * c * h + 2 * mip * c * w


def test_cbam_and_ema_flops_by_hand():
    c, h, w = 64, 10, 10
    hidden = c // 16
    cost = attention_cost("cbam", c, (h, w))
    assert cost.flops == 2 * 2 * (c * hidden + hidden * c) + 2 * 2 * 49 * h * w  # MLP twice, 7x7 conv 2 -> 1
    g, cg = 8, c // 8
    cost = attention_cost("ema", c, (h, w))
    mac = g * (cg * cg * (h + w) + cg * cg * 9 * h * w + 2 * cg * h * w)  # 1x1, 3x3, two (1 x c) @ (c x HW)
    assert cost.flops == 2 * mac


def test_counter_follows_its_rules_on_a_small_graph():
    class Toy(torch.nn.Module):
        def forward(self, x):
            s = torch.softmax(x, dim=1)  # 5 per element
            return torch.nn.functional.group_norm(s, 1) + x.amax(dim=(2, 3), keepdim=True)  # 5/el, reduction, add

    x = torch.randn(1, 3, 4, 5)
    flops, elementwise, uncounted = count_elementwise(Toy(), x)
    n = x.numel()
    assert flops == 0 and uncounted == ()
    assert elementwise == 5 * n + 5 * n + n + n


def test_unknown_ops_are_listed_not_guessed():
    class Sorty(torch.nn.Module):
        def forward(self, x):
            return torch.sort(x, dim=1).values

    assert "aten.sort" in count_elementwise(Sorty(), torch.randn(1, 2, 3, 3))[2]


def test_public_name_and_bad_sizes():
    assert mlca.attention_cost("eca", 16, 4).params == 3
    with pytest.raises(ValueError, match=r"hw=\(0, 4\)"):
        attention_cost("eca", 16, (0, 4))
    with pytest.raises(KeyError, match="known"):
        attention_cost("nope", 16, 4)


class _Bags(torch.nn.Module):
    """Row sums by embedding_bag, weighted or not, plus index construction (memoised tables)."""

    def __init__(self, weighted: bool) -> None:
        super().__init__()
        self.weighted = weighted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (R, L) -> (R // 2, L), sums of consecutive row pairs."""
        rows = x.shape[0]
        idx = torch.nonzero(torch.ones(rows)).flatten()
        counts = torch.bincount(torch.arange(rows // 2).repeat(2))  # [2, 2, ...]
        offsets = torch.cumsum(counts, 0) - counts
        w = torch.full((rows,), 0.5) if self.weighted else None
        return torch.nn.functional.embedding_bag(idx, x, offsets, mode="sum", per_sample_weights=w)


@pytest.mark.parametrize("weighted", [False, True])
def test_embedding_bag_row_sums_and_index_building(weighted):
    x = torch.randn(6, 7)
    got = _Bags(weighted)(x)
    torch.testing.assert_close(got, (x[0::2] + x[1::2]) * (0.5 if weighted else 1.0))
    flops, ops, uncounted = count_elementwise(_Bags(weighted), x)
    # 6 rows of 7 summed (x2 when weighted); bincount/nonzero/integer cumsum are index building
    assert uncounted == () and flops == 0
    assert ops == 6 * 7 * (2 if weighted else 1) + 3  # + the 3-element pointwise subtraction
