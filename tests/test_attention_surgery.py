"""Model surgery on torchvision (and timm, where installed) models."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import SqueezeExcitation

from mlca.attention import create_attention, get_attention_class, list_attentions
from mlca.attention.surgery import AttentionAfter, insert_attention, is_squeeze_excitation, replace_attention


def _se_paths(model: nn.Module, cls=SqueezeExcitation) -> dict[str, int]:
    return {n: m.fc1.in_channels for n, m in model.named_modules() if isinstance(m, cls)}


def _forward_backward(model: nn.Module, size: int = 64) -> None:
    x = torch.randn(2, 3, size, size, requires_grad=True)
    model.train()
    out = model(x)
    out.float().sum().backward()
    assert torch.isfinite(out).all() and x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["eca", "ca", "simam"])
def test_mobilenet_v3_small_replaces_exactly_the_se_blocks(name):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None)
    se = _se_paths(model)
    kept = {k: v.clone() for k, v in model.state_dict().items() if not any(k.startswith(p + ".") for p in se)}
    assert len(se) == 9
    assert replace_attention(model, name) == 9
    modules = dict(model.named_modules())
    cls = get_attention_class(name)
    for path, channels in se.items():  # same place, right width
        assert isinstance(modules[path], cls) and modules[path].channels == channels
    assert not any(isinstance(m, SqueezeExcitation) for m in model.modules())
    after = model.state_dict()
    for k, v in kept.items():  # everything else untouched
        assert torch.equal(after[k], v)
    _forward_backward(model)


def test_every_registered_name_fits_mobilenet_v3():
    base = torchvision.models.mobilenet_v3_small(weights=None).eval()
    for name in list_attentions():
        model = copy.deepcopy(base)
        assert replace_attention(model, name) == 9
        with torch.no_grad():
            assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_mobilenet_v3_large_and_efficientnet_b0():
    large = torchvision.models.mobilenet_v3_large(weights=None)
    assert replace_attention(large, "simam") == len(_se_paths(torchvision.models.mobilenet_v3_large(weights=None))) == 8
    eff = torchvision.models.efficientnet_b0(weights=None)
    se = _se_paths(eff)
    assert len(se) == 16 and replace_attention(eff, "se-resnet") == 16
    modules = dict(eff.named_modules())
    assert {p: modules[p].channels for p in se} == se
    _forward_backward(eff, 32)


def test_replacement_keeps_dtype_device_and_mode():
    model = torchvision.models.mobilenet_v3_small(weights=None).double().eval()
    replace_attention(model, "eca")
    new = [m for m in model.modules() if isinstance(m, get_attention_class("eca"))]
    assert new and all(m.conv.weight.dtype == torch.float64 and not m.training for m in new)
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


def test_replace_passes_kwargs_and_shares_shared_blocks():
    se = SqueezeExcitation(32, 8)
    net = nn.Sequential(nn.Conv2d(3, 32, 1), se, nn.ReLU(), se)
    assert replace_attention(net, "eca", kernel_size=7) == 2
    assert net[1] is net[3] and net[1].kernel_size == 7
    assert replace_attention(nn.Sequential(nn.Conv2d(3, 4, 1)), "eca") == 0
    # the zoo's own SE counts as SE too, so a model can be switched twice
    assert replace_attention(nn.Sequential(create_attention("se", 16)), "ca") == 1
    assert is_squeeze_excitation(create_attention("se-resnet", 16))


def test_insert_after_resnet_basic_blocks_by_dry_run():
    model = torchvision.models.resnet18(weights=None)
    assert insert_attention(model, BasicBlock, "cbam") == 8
    wrapped = [m for m in model.modules() if isinstance(m, AttentionAfter)]
    assert [w.attention.channels for w in wrapped] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert all(isinstance(w.block, BasicBlock) for w in wrapped)
    _forward_backward(model)


def test_insert_after_bottlenecks_with_a_predicate():
    model = torchvision.models.resnet50(weights=None)
    n = insert_attention(model, after=lambda m: isinstance(m, Bottleneck), name="eca")
    wrapped = [m for m in model.modules() if isinstance(m, AttentionAfter)]
    assert n == len(wrapped) == 16
    assert {w.attention.channels for w in wrapped} == {256, 512, 1024, 2048}
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_insert_reads_out_channels_without_running_the_model():
    class NoForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 6, 1)
            self.b = nn.Conv2d(6, 10, 1)

        def forward(self, x):
            raise AssertionError("the dry run must not happen when out_channels can be read")

    model = NoForward()
    assert insert_attention(model, nn.Conv2d, "se") == 2
    assert model.a.attention.channels == 6 and model.b.attention.channels == 10


def test_insert_with_explicit_channels_and_example_input():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU())
    assert insert_attention(model, nn.ReLU, "ema", channels=None, example_input=torch.zeros(1, 1, 9, 9), groups=4) == 2
    assert [model[1].attention.channels, model[3].attention.channels] == [4, 8]
    assert model(torch.randn(2, 1, 9, 9)).shape == (2, 8, 5, 5)
    assert insert_attention(model, lambda m: isinstance(m, nn.Conv2d) and m.out_channels == 8, "eca", channels=8) == 1


def test_insert_after_a_non_feature_map_is_a_clear_error():
    model = torchvision.models.resnet18(weights=None)
    with pytest.raises(ValueError, match=r"Linear returns \(1, 1000\)"):
        insert_attention(model, nn.Linear, "eca")
    with pytest.raises(TypeError, match="predicate"):
        insert_attention(model, "Bottleneck", "eca")


def test_timm_se_blocks_are_replaced():
    timm = pytest.importorskip("timm")
    for arch, expected in [("mobilenetv3_small_100", 9), ("efficientnet_b0", 16), ("seresnet18", 8)]:
        model = timm.create_model(arch, pretrained=False, num_classes=10)
        found = [m for m in model.modules() if is_squeeze_excitation(m)]
        assert len(found) == expected
        assert replace_attention(model, "mlca") == expected
        assert not any(is_squeeze_excitation(m) for m in model.modules())
    _forward_backward(model)  # seresnet18
