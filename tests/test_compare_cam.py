"""Heatmaps of compare --cam: EigenCAM maps, and MLCA's local weights recomputed by a hook."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mlca.attention  # noqa: F401  (registers the zoo)
from mlca.attention.mlca import MLCA
from mlca.compare.cam import _local_weights, cam_layers, eigencam_maps, mlca_local_maps
from mlca.models.may import build_may


@settings(max_examples=15, deadline=None)
@given(
    channels=st.integers(1, 48),
    local_size=st.sampled_from([1, 3, 5]),
    mult=st.integers(1, 3),
    local_weight=st.floats(0.1, 0.9),
)
def test_recomputed_local_weights_are_the_layers_own(channels, local_size, mult, local_weight):
    # With H = W = local_size * mult the layer's attention is constant on mult x mult blocks:
    # att = (1 - w) * global(c) + w * local(c, i, j). Differences between blocks cancel the
    # global part, so they must equal w * (differences of the recomputed local weights).
    torch.manual_seed(channels * 100 + local_size * 10 + mult)
    layer = MLCA(channels, local_size=local_size, local_weight=local_weight).double()
    with torch.no_grad():
        layer.conv_local.weight.normal_()
    s = local_size * mult
    x = torch.rand(2, channels, s, s, dtype=torch.float64) + 0.5  # no zeros: att = out / x
    with torch.no_grad():
        att = layer(x) / x
        local = _local_weights(layer, x).double()
    blocks = att[..., ::mult, ::mult]
    assert local.shape == (2, channels, local_size, local_size)
    assert ((local > 0) & (local < 1)).all()
    got = blocks - blocks[..., :1, :1]
    want = local_weight * (local - local[..., :1, :1])
    assert torch.allclose(got, want, atol=1e-6)  # local weights are recomputed in float32


@pytest.mark.slow  # importing pytorch_grad_cam alone can take 10-20 s on a loaded 2-core CPU
def test_mlca_maps_one_per_layer_and_eigencam_shape():
    torch.manual_seed(0)
    model = build_may("mlca", num_classes=2, width=0.25)
    images = torch.rand(2, 3, 64, 64)
    maps = mlca_local_maps(model, images)
    n_mlca = sum(isinstance(m, MLCA) for m in model.modules())
    assert n_mlca > 0 and len(maps) == n_mlca
    assert all(m.shape == (2, 5, 5) and ((m > 0) & (m < 1)).all() for _, m in maps)
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed

    heat = eigencam_maps(model, images)
    assert heat.shape == (2, 64, 64)
    assert heat.min() >= 0.0 and heat.max() <= 1.0 + 1e-6 and heat.max() > 0.5
    assert len(cam_layers(model)) == 3
