"""The backend switch of MLCA: per module, global (set_default_backend / $MLCA_BACKEND), and the
dispatch to the Triton path only where it applies."""

from __future__ import annotations

import sys

import pytest
import torch

import mlca.attention.mlca as mlca_mod
from mlca.attention.mlca.backends.c import native_available
from mlca.attention.mlca import MLCA, get_default_backend, set_default_backend


@pytest.fixture(autouse=True)
def _restore_default():
    yield
    set_default_backend(None)


def test_default_backend_from_setter_and_environment(monkeypatch):
    monkeypatch.delenv("MLCA_BACKEND", raising=False)
    assert get_default_backend() == "auto"
    monkeypatch.setenv("MLCA_BACKEND", "torch")
    assert get_default_backend() == "torch"
    set_default_backend("triton")
    assert get_default_backend() == "triton"  # the setter wins over the environment
    set_default_backend(None)
    monkeypatch.setenv("MLCA_BACKEND", "gpu")
    with pytest.raises(ValueError, match="MLCA_BACKEND"):
        get_default_backend()
    with pytest.raises(ValueError, match="backend"):
        set_default_backend("cuda")


class _Spy:
    def __init__(self):
        self.calls = 0

    def __call__(self, x, w_global, w_local, local_size, local_weight):
        self.calls += 1
        return x * 0 + 42.0, x.new_zeros(x.shape[0], x.shape[1], local_size, local_size)


@pytest.fixture
def spy(monkeypatch):
    triton_mod = pytest.importorskip("mlca.attention.mlca.backends.triton")
    s = _Spy()
    monkeypatch.setattr(triton_mod, "forward", s)
    monkeypatch.setattr(triton_mod, "triton_available", lambda: True)
    return s


def test_auto_on_cpu_uses_torch_and_forced_triton_dispatches(spy):
    x = torch.randn(1, 8, 10, 10)
    MLCA(8)(x)
    assert spy.calls == 0  # CPU tensor: auto never takes the GPU path
    y = MLCA(8, backend="triton")(x)
    assert spy.calls == 1 and torch.all(y == 42)
    set_default_backend("triton")
    MLCA(8)(x)
    assert spy.calls == 2
    MLCA(8, backend="torch")(x)  # an explicit module setting beats the global default
    assert spy.calls == 2


def test_missing_triton_module_falls_back_or_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlca.attention.mlca.backends.triton", None)  # import -> ImportError
    x = torch.randn(1, 8, 6, 6)
    set_default_backend("auto")
    assert MLCA(8)(x).shape == x.shape
    with pytest.raises(ImportError):
        MLCA(8, backend="triton")(x)


def test_scripting_and_plain_path_ignore_backend():
    m = MLCA(8, backend="triton")
    scripted = torch.jit.script(m)  # the scripted graph is the PyTorch formulation
    x = torch.randn(2, 8, 7, 7)
    expected = mlca_mod.mlca_plain(x, m.conv.weight, m.conv_local.weight, 5, 0.5)
    torch.testing.assert_close(scripted(x), expected)


@pytest.mark.parametrize("backend", [
    pytest.param("c", marks=pytest.mark.skipif(not native_available(),
                                               reason="the C extension is not built here")),
    "triton",
])
def test_dispatch_modes_see_the_pytorch_kernels(backend):
    """A FLOP counter (any TorchDispatchMode) must see MLCA's ops; the C kernels and Triton
    launches are invisible to it. Under one, even a forced "c" or "triton" backend runs the
    PyTorch kernels, and the counted FLOPs are their two 1-D convs."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 64, 20, 20)
    counts = []
    for name in (backend, "torch"):
        with FlopCounterMode(display=False) as fc:
            MLCA(64, backend=name)(x)
        counts.append(fc.get_total_flops())
    k = MLCA(64).conv.kernel_size[0]
    assert counts[0] == counts[1] == 2 * k * (64 + 25 * 64)
