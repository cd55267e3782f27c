"""Each image's output depends on that image only, for every attention of the zoo.

Copies of MLCA in circulation keep the first official commit's global branch, which averages
the global attention over the batch: their batch-1 self-tests pass while every image of a larger
batch changes the others. Here image 0 alone must give the same output as image 0 in a batch of
random others, in eval mode and, for modules without BatchNorm, in train mode, in float64.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mlca

ZOO = mlca.list_attentions()
HAS_BATCHNORM = {n for n in ZOO if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                       for m in mlca.create_attention(n, 16).modules())}


def _seed_style_global_branch(x: torch.Tensor) -> torch.Tensor:
    """The batch-averaged global branch of those copies, to show this test can fail."""
    return x * torch.sigmoid(x.mean(dim=(0, 2, 3), keepdim=True))


def _independent(fn, x: torch.Tensor) -> bool:
    alone = fn(x[:1])
    together = fn(x)[:1]
    return torch.allclose(alone, together, rtol=1e-12, atol=1e-12)


def test_the_check_catches_batch_averaging():
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    assert not _independent(_seed_style_global_branch, x)


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("mode", ["eval", "train"])
@settings(max_examples=6, deadline=None)
@given(
    batch=st.integers(2, 4),
    c=st.sampled_from([16, 32, 40]),
    h=st.integers(1, 13),
    w=st.integers(1, 13),
    seed=st.integers(0, 2**31 - 1),
)
def test_output_of_one_image_ignores_the_batch(name, mode, batch, c, h, w, seed):
    if mode == "train" and name in HAS_BATCHNORM:
        pytest.skip(f"{name} has BatchNorm: in train mode the batch statistics are the definition")
    g = torch.Generator().manual_seed(seed)
    module = mlca.create_attention(name, c).double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    module.train(mode == "train")
    x = torch.randn(batch, c, h, w, generator=g, dtype=torch.float64) * 3
    with torch.no_grad():
        assert _independent(module, x), f"{name}: image 0's output depends on the other images"
