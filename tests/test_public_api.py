"""The public API: every name in ``mlca.__all__`` resolves, and ``import mlca`` stays light."""

import subprocess
import sys

import pytest

import mlca


@pytest.mark.parametrize("name", [n for n in mlca.__all__ if n != "__version__"])
def test_every_public_name_resolves(name):
    assert getattr(mlca, name) is not None


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mlca.nope  # noqa: B018


def test_import_mlca_does_not_import_heavy_dependencies():
    code = (
        "import sys, mlca; heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'matplotlib', "
        "'pytorch_grad_cam', 'triton') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "mlca", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("train", "val", "predict", "compare", "export", "bench"):
        assert cmd in out.stdout
