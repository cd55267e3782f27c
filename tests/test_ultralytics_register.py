"""mlca.ultralytics.register(): names in ultralytics' YAML namespace, lazy channels, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from _ultralytics_env import ultralytics  # noqa: F401  (skips the module without ultralytics)

import mlca
import mlca.ultralytics as mu
from mlca.attention import registry
from ultralytics.nn import tasks
from ultralytics.nn.tasks import DetectionModel


def _model_dict(rows_backbone, nc=2):
    """A tiny detector: two stride-2 convs, the rows under test, an SPPF-free P3-P5 head."""
    return {
        "nc": nc,
        "scales": {"n": [1.0, 0.25, 1024], "s": [1.0, 0.5, 1024]},
        "scale": "n",
        "backbone": [
            [-1, 1, "Conv", [64, 3, 2]],
            [-1, 1, "Conv", [128, 3, 2]],
            [-1, 1, "Conv", [256, 3, 2]],  # 2: P3, 64 channels at n
            *rows_backbone,
            [-1, 1, "Conv", [256, 3, 2]],
            [-1, 1, "Conv", [256, 3, 2]],
        ],
        "head": [[[-3, -2, -1], 1, "Detect", ["nc"]]],
    }


def test_register_is_idempotent_and_names_every_attention():
    first = mu.register()
    snapshot = {n: getattr(tasks, n) for n in first}
    second = mu.register()
    assert first == second
    assert {n: getattr(tasks, n) for n in second} == snapshot
    expected = {"Attention"} | {n.upper().replace("-", "_") for n in mlca.list_attentions()}
    assert expected <= set(second)
    assert set(mu.registered_names()) >= expected
    # nothing of ultralytics' own namespace was replaced
    assert tasks.Conv.__module__.startswith("ultralytics.")


def test_third_party_attention_after_import():
    @mlca.register_attention("test-gain")
    class Gain(nn.Module):
        def __init__(self, channels: int, init: float = 1.0):
            super().__init__()
            self.g = nn.Parameter(torch.full((channels,), float(init)))

        def forward(self, x):
            """x: (B, C, H, W) -> (B, C, H, W)."""
            return x * self.g.view(1, -1, 1, 1)

    try:
        assert "TEST_GAIN" not in vars(tasks)
        mu.register()  # picks up the new registration
        m = DetectionModel(_model_dict([[-1, 1, "TEST_GAIN", [{"init": 2.0}]],
                                        [-1, 1, "Attention", ["test-gain", None, 3.0]]]), verbose=False)
        a, b = m.model[3].attn, m.model[4].attn
        assert isinstance(a, Gain) and a.g.shape == (64,) and float(a.g[0].detach()) == 2.0
        assert isinstance(b, Gain) and float(b.g[0].detach()) == 3.0
    finally:
        registry._REGISTRY.pop("test-gain", None)
        vars(tasks).pop("TEST_GAIN", None)


@pytest.mark.parametrize("scale", ["n", "s"])
def test_channels_inferred_and_parameters_exist_after_build(scale):
    d = _model_dict([[-1, 1, "MLCA", []], [-1, 1, "EMA", [{"groups": 4}]]])
    d["scale"] = scale
    m = DetectionModel(d, verbose=False)
    c = {"n": 64, "s": 128}[scale]
    mlca_layer, ema_layer = m.model[3], m.model[4]
    assert mlca_layer.channels == c and ema_layer.channels == c
    assert ema_layer.attn.groups == 4
    params = {id(p) for p in m.parameters()}  # what an optimizer built now would see
    for layer in (mlca_layer, ema_layer):
        assert all(id(p) in params for p in layer.attn.parameters())
        assert layer.np == sum(p.numel() for p in layer.attn.parameters()) > 0
    # k of the ECA rule at c channels: int(|log2 c + 1| / 2) made odd
    k = {64: 3, 128: 5}[c]
    assert mlca_layer.attn.conv.weight.shape == (1, 1, k)
    assert m.training  # ultralytics puts the model back in train mode; the new modules follow
    assert mlca_layer.attn.training and ema_layer.attn.training


def test_wrong_literal_channel_count_is_an_error_naming_both():
    with pytest.raises(ValueError, match=r"256 channels.*input has 64 channels"):
        DetectionModel(_model_dict([[-1, 1, "MLCA", [256]]]), verbose=False)
    # the right literal is accepted
    m = DetectionModel(_model_dict([[-1, 1, "MLCA", [64]]]), verbose=False)
    assert m.model[3].channels == 64


def test_bad_yaml_arguments_are_clear_errors():
    with pytest.raises(KeyError, match="unknown attention 'nope'"):
        DetectionModel(_model_dict([[-1, 1, "Attention", ["nope"]]]), verbose=False)
    with pytest.raises(ValueError, match="registry name as its first YAML argument"):
        DetectionModel(_model_dict([[-1, 1, "Attention", []]]), verbose=False)
    with pytest.raises(TypeError, match="unexpected keyword"):
        DetectionModel(_model_dict([[-1, 1, "MLCA", [{"local_sise": 3}]]]), verbose=False)
    with pytest.raises(ValueError, match="groups=4 for 20 channels|divisible by groups"):
        layer = mu.layer_class("ema")()
        layer(torch.zeros(1, 20, 4, 4))
    with pytest.raises(TypeError, match="single layer"):
        mu.layer_class("se")()([torch.zeros(1, 8, 2, 2)])
    layer = mu.layer_class("eca")()
    layer(torch.zeros(1, 8, 3, 3))
    with pytest.raises(ValueError, match="built for 8 channels, got an input with 16"):
        layer(torch.zeros(1, 16, 3, 3))


def test_deepcopy_and_state_dict_round_trip():
    m = DetectionModel(_model_dict([[-1, 1, "CBAM", [{"reduction": 8}]]]), verbose=False)
    with torch.no_grad():
        m.model[3].attn.fc1.weight.normal_()
    twin = copy.deepcopy(m)
    assert twin.model[3].attn is not m.model[3].attn
    assert type(twin.model[3]) is type(m.model[3])
    for (k1, v1), (k2, v2) in zip(m.state_dict().items(), twin.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    assert "model.3.attn.fc1.weight" in m.state_dict()
    x = torch.rand(1, 3, 64, 64)
    m.eval(), twin.eval()
    with torch.no_grad():
        assert torch.equal(m(x)[0], twin(x)[0])
