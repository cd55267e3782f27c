"""Deployment: ONNX / TorchScript export checked against PyTorch, onnxruntime inference, latency.

onnx, onnxscript and onnxruntime are optional (``pip install 'mlca[export]'``); they are
imported only when used.
"""

from .export import ExportError, ExportReport, export_onnx, export_torchscript

__all__ = ["ExportError", "ExportReport", "export_onnx", "export_torchscript", "OnnxBackend"]


def __getattr__(name: str):
    if name == "OnnxBackend":  # needs onnxruntime: imported on first use only
        from .onnxrt import OnnxBackend

        return OnnxBackend
    raise AttributeError(f"module 'mlca.deploy' has no attribute {name!r}")
