"""``deterministic=True`` training: mlca's layers raise no nondeterminism warning.

ultralytics' ``deterministic=True`` calls ``torch.use_deterministic_algorithms(True,
warn_only=True)``; the MLCA copies in circulation then warn on every step (adaptive average
pooling's CUDA backward has no deterministic kernel). mlca's layers never call adaptive pooling:
checked on the aten ops of a training step, and by a step under deterministic mode (on CUDA
too, where the machine has it).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from _ultralytics_env import ultralytics  # noqa: F401

import mlca
import mlca.ultralytics as mu

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _step(layer: torch.nn.Module, x: torch.Tensor) -> None:
    y = layer(x)
    y.square().mean().backward()


@pytest.mark.parametrize("name", mlca.list_attentions())
def test_no_adaptive_pooling_in_a_training_step(name):
    layer = mu.layer_class(name)()
    layer(torch.zeros(1, 32, 4, 4))  # build
    ops = _Ops()
    with ops:
        for hw in ((20, 20), (13, 13), (7, 11)):
            _step(layer.train(), torch.randn(2, 32, *hw, requires_grad=True))
    assert "aten.mean" in ops.ops or "aten.sum" in ops.ops or name == "none"  # the recorder saw ops
    assert not [o for o in ops.ops if "adaptive" in o], sorted(ops.ops)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_mode_step_emits_no_warning_from_mlca(device):
    layers = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        *[mu.layer_class(n)() for n in mlca.list_attentions()],
    ).to(device)
    x = torch.randn(2, 3, 26, 26, device=device)
    layers(x)  # build every attention for 32 channels
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _step(layers.train(), x)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    bad = [str(w.message) for w in caught if "determinis" in str(w.message)]
    assert not bad, bad


def test_the_recorder_sees_adaptive_pooling_where_it_is_used():
    """The copies' unpooling, ``adaptive_avg_pool2d(att, (H, W))``, as the control."""
    x = torch.randn(2, 8, 13, 13, requires_grad=True)
    ops = _Ops()
    with ops:
        local = torch.nn.functional.adaptive_avg_pool2d(x, 5)
        torch.nn.functional.adaptive_avg_pool2d(local, (13, 13)).sum().backward()
    assert [o for o in ops.ops if "adaptive" in o]
