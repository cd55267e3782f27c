"""Every module of the zoo exports to ONNX with both exporters, and onnxruntime agrees with
PyTorch: the dynamo exporter (opset 18, dynamic batch, height and width, several sizes of one
file) and the TorchScript-based one (``dynamo=False``, static and with dynamic axes)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mlca.attention import create_attention

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

NAMES = ["none", "se", "se-resnet", "eca", "cbam", "ca", "mlca", "simam", "ema"]
C = 16


def _random_module(name: str, seed: int) -> tuple[torch.nn.Module, torch.Generator]:
    """The zoo module in eval mode with random weights (not its init: every branch matters), and
    the generator to draw its inputs from."""
    gen = torch.Generator().manual_seed(seed)
    m = create_attention(name, C).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return m, gen


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_dynamic_size_matches_pytorch(name, tmp_path):
    m, gen = _random_module(name, seed=0)
    x = torch.randn(2, C, 8, 6, generator=gen)
    dims = {0: torch.export.Dim("B", min=1), 2: torch.export.Dim("H", min=1), 3: torch.export.Dim("W", min=1)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(m, (x,), dynamo=True, opset_version=18, dynamic_shapes=(dims,), verbose=False)
    path = tmp_path / f"{name}.onnx"
    program.save(str(path))
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    for shape in [(1, C, 13, 11), (3, C, 1, 1), (2, C, 40, 40)]:
        xs = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            expected = m(xs).numpy()
        got = session.run(None, {feed: xs.numpy()})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=f"{name} at {shape}")


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("name", NAMES)
def test_torchscript_exporter_matches_pytorch(name, dynamic, tmp_path):
    """The TorchScript-based exporter (``dynamo=False``, what ultralytics' ``export`` runs): sizes
    are traced as tensors there, so a module that computes with them must still export."""
    m, gen = _random_module(name, seed=1)
    x = torch.randn(2, C, 13, 11, generator=gen)
    path = tmp_path / f"{name}.onnx"
    axes = {"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b", 2: "h", 3: "w"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes=axes)  # fmt: skip
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shapes = [(2, C, 13, 11), (1, C, 26, 7), (3, C, 1, 1)] if dynamic else [(2, C, 13, 11)]
    for shape in shapes:
        xs = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            expected = m(xs).numpy()
        got = session.run(None, {"x": xs.numpy()})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=f"{name} at {shape}")
