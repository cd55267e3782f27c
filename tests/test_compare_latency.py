"""Side-by-side latency measurement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlca.compare.latency import measure_latency


class _Counting(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (1, 3, S, S) -> (1, width, S, S)."""
        self.calls += 1
        return self.conv(x)


def test_two_tiny_models_give_positive_medians_and_each_runs_warmup_plus_rounds():
    models = {"small": _Counting(4), "big": _Counting(32)}
    lat = measure_latency(models, img_size=32, warmup=2, rounds=5)
    assert set(lat) == {"small", "big"}
    assert all(v > 0 for v in lat.values())
    assert models["small"].calls == 7 and models["big"].calls == 7
    assert not models["small"].training  # measured in eval mode


def test_bad_arguments():
    with pytest.raises(ValueError, match="no models"):
        measure_latency({}, 32)
    with pytest.raises(ValueError, match="rounds"):
        measure_latency({"a": _Counting(2)}, 32, rounds=0)
