"""MLCA deploys: TorchScript, torch.compile with changing sizes (no recompile storm, no graph
break), ONNX (dynamo exporter, dynamic batch/H/W) matching onnxruntime at many sizes."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

import _mlca_ref as ref
from mlca.attention.mlca.backends.c import native_available
from mlca.attention.mlca import MLCA, export_formulation


def _model(c: int = 16, ls: int = 5, lw: float = 0.5) -> MLCA:
    m = MLCA(c, local_size=ls, local_weight=lw).eval()
    ref.random_weights(m, torch.Generator().manual_seed(0))
    return m


def test_torchscript_matches_eager_and_reference():
    m = _model(lw=0.3)
    scripted = torch.jit.script(m)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    wg, wl = m.conv.weight.detach().double(), m.conv_local.weight.detach().double()
    for shape in [(2, 16, 20, 20), (1, 16, 7, 9), (3, 16, 2, 3), (0, 16, 5, 5)]:
        x = torch.randn(shape, dtype=torch.float64)
        expected = ref.mlca_reference(x, wg, wl, 5, 0.3)
        got = loaded(x.float()).double()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(scripted(x.float()), m(x.float()), rtol=1e-6, atol=1e-7)
    with pytest.raises(Exception, match="4-D"):
        scripted(torch.randn(2, 16, 5))


def test_compile_dynamic_sizes_one_graph_no_break():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    m = _model(8)
    compiled = torch.compile(m, dynamic=True)
    for shape in [(2, 8, 7, 9), (2, 8, 20, 20), (2, 8, 17, 23), (2, 8, 3, 2)]:
        x = torch.randn(shape, requires_grad=True)
        y = compiled(x)
        gx, gw = torch.autograd.grad(y.square().sum(), [x, m.conv_local.weight])
        xe = x.detach().clone().requires_grad_(True)
        ye = m(xe)
        ex, ew = torch.autograd.grad(ye.square().sum(), [xe, m.conv_local.weight])
        torch.testing.assert_close(y, ye, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gx, ex, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gw, ew, rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.slow
@pytest.mark.parametrize("formulation", ["exact", "dense"])
def test_onnx_dynamic_batch_height_width_matches_onnxruntime(tmp_path, formulation):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    m = _model(16)
    dims = {0: torch.export.Dim("B", min=1), 2: torch.export.Dim("H", min=1),
            3: torch.export.Dim("W", min=1)}
    with warnings.catch_warnings(), export_formulation(formulation):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(m, (torch.randn(2, 16, 20, 20),), dynamo=True,
                                    opset_version=18, dynamic_shapes=(dims,), verbose=False)
    path = tmp_path / "mlca.onnx"
    program.save(str(path))
    onnx.checker.check_model(str(path))
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ("MatMul" in ops) == (formulation == "dense"), ops  # the dense graph pools by MatMul
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(1)
    wg, wl = m.conv.weight.detach().double(), m.conv_local.weight.detach().double()
    for shape in [(1, 16, 3, 3), (2, 16, 7, 9), (3, 16, 17, 23), (1, 16, 40, 40),
                  (1, 16, 80, 80), (1, 16, 160, 160), (1, 16, 1, 1), (2, 16, 4, 13)]:
        x = torch.randn(shape, generator=gen)
        got = session.run(None, {feed: x.numpy()})[0]
        expected = ref.mlca_reference(x.double(), wg, wl, 5, 0.5).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=f"at {shape}")


def _poison(x: torch.Tensor) -> torch.Tensor:
    """x with a NaN, an Inf and a -Inf in different channels and bins."""
    x = x.clone()
    x[0, 1, 0, 1] = float("nan")
    x[0, 4, -1, -1] = float("inf")
    x[-1, 9, x.shape[2] // 2, 0] = -float("inf")
    return x


def _assert_like_reference(got: torch.Tensor, x: torch.Tensor, m: MLCA, where: str) -> None:
    """got equals the float64 reference: same NaN/Inf positions, finite values to 1e-5."""
    wg, wl = m.conv.weight.detach().double(), m.conv_local.weight.detach().double()
    expected = ref.mlca_reference(x.double(), wg, wl, m.local_size, m.local_weight)
    got = got.double()
    assert torch.equal(torch.isnan(got), torch.isnan(expected)), where
    assert torch.equal(torch.isinf(got), torch.isinf(expected)), where
    fin = torch.isfinite(expected)
    torch.testing.assert_close(got[fin], expected[fin], rtol=1e-5, atol=1e-6, msg=where)


@pytest.mark.parametrize("ls", [5, 3])
def test_onnx_static_export_block_graph_where_sizes_allow(tmp_path, ls):
    """A static export at sizes that are multiples of local_size pools by ReduceMean and unpools
    by a nearest Resize (no gathers); at other sizes it gathers. Both give the reference's
    values and its NaN/Inf positions in onnxruntime."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    m = _model(16, ls=ls)
    gen = torch.Generator().manual_seed(2)
    for shape, blocks in [((2, 16, 4 * ls, 4 * ls), True), ((1, 16, 7 * ls, 3 * ls), True),
                          ((2, 16, ls, 2 * ls), True), ((2, 16, 4 * ls + 1, 4 * ls), False)]:
        x = torch.randn(shape, generator=gen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(m, (x,), dynamo=True, opset_version=18, verbose=False)
        path = tmp_path / f"mlca-{shape[2]}x{shape[3]}.onnx"
        program.save(str(path))
        ops = {node.op_type for node in onnx.load(str(path)).graph.node}
        assert ("Resize" in ops and "Gather" not in ops and "GatherElements" not in ops) == blocks, ops
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        xp = _poison(x)
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: xp.numpy()})[0])
        _assert_like_reference(got, xp, m, f"at {shape}")


def test_torchscript_block_and_gather_paths_keep_non_finite_values_in_their_bins():
    m = _model(16)
    scripted = torch.jit.script(m)
    gen = torch.Generator().manual_seed(3)
    for shape in [(2, 16, 20, 20), (2, 16, 10, 35), (2, 16, 12, 9)]:
        x = _poison(torch.randn(shape, generator=gen))
        _assert_like_reference(scripted(x), x, m, f"at {shape}")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("backend", ["torch"] + (["c"] if native_available() else []))
@pytest.mark.parametrize("shape", [(2, 8, 20, 20), (2, 8, 13, 13), (2, 8, 7, 9), (1, 8, 3, 2)])
def test_custom_ops_agree_with_their_fake_kernels(shape, backend, channels_last):
    """torch.library.opcheck: the fake (meta) kernels that torch.compile traces with give the
    real kernels' shapes, dtypes and strides, on the block path and on the dense path, with the
    PyTorch kernels and with the C kernels (the op's ``backend`` argument), NCHW and
    channels_last (whose C kernels save their bin means bin-major)."""
    from mlca.attention.mlca import op  # noqa: F401  (registers the ops)

    m = _model(8)
    wg, wl = m.conv.weight.detach(), m.conv_local.weight.detach()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape).contiguous(memory_format=fmt)
    torch.library.opcheck(torch.ops.mlca.mlca_fwd.default, (x, wg, wl, 5, 0.5, backend))
    out, local = torch.ops.mlca.mlca_fwd(x, wg, wl, 5, 0.5, backend)
    g = torch.randn(shape).contiguous(memory_format=fmt)
    torch.library.opcheck(torch.ops.mlca.mlca_bwd.default, (g, x, local, wg, wl, 5, 0.5, backend))


def test_export_formulation_is_scoped_and_checked():
    from mlca.attention.mlca import get_export_formulation

    with export_formulation("dense"):
        assert get_export_formulation() == "dense"
        with pytest.raises(ValueError, match="exact.*dense"):
            with export_formulation("fast"):
                pass
        assert get_export_formulation() == "dense"
    assert get_export_formulation() == "exact"
