"""The detector whose latency ``mlca bench`` measures: MAY, or an ultralytics YOLO with an attention.

``build_detector("may", att)`` is :func:`mlca.build_may`. ``build_detector("yolo11n", att)``
(any ultralytics model name, or a model YAML path) is ultralytics' ``DetectionModel`` of the
YAML :func:`mlca.ultralytics.yaml_with_attention` writes (``where``: after each backbone
C3k2/C2f stage, or on each Detect input; ``none`` = the base model), built (one forward:
mlca's lazy layers take their channels), with conv + batch norm fused as ultralytics fuses them
for inference and export, and its Detect layer in export mode (one ``(B, 4 + nc, N)`` tensor
out, as in ultralytics' ONNX files).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

__all__ = ["build_detector", "default_num_classes", "detector_yaml", "export_detector_onnx", "is_ultralytics_model"]


def default_num_classes(detector: str) -> int:
    """20 (VOC, the paper's) for MAY; 80 (COCO, the published sizes) for ultralytics models."""
    return 20 if detector == "may" else 80


def detector_yaml(detector: str, attention: str, where: str, folder: Path, **attention_kwargs) -> str:
    """The ultralytics model YAML of ``attention`` in ``detector`` (a model name or YAML path):
    the base model for ``none``, else a copy with the attention placed ``where``, written into
    ``folder`` under a name that keeps the scale letter ultralytics reads from it."""
    base = detector if detector.endswith((".yaml", ".yml")) else f"{detector}.yaml"
    if attention == "none":
        return base
    from mlca.ultralytics import yaml_with_attention

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{Path(base).stem}-{attention}{'-neck' if where == 'neck' else ''}.yaml"
    return str(yaml_with_attention(base, attention, where, out=out, **attention_kwargs))


def is_ultralytics_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("ultralytics.")


def build_detector(detector: str, attention: str, num_classes: int | None = None, where: str = "backbone",
                   width: float = 1.0, head: str = "yolov5") -> nn.Module:  # fmt: skip
    """The eval-mode detector of ``attention``; ``width``/``head`` apply to MAY only."""
    num_classes = default_num_classes(detector) if num_classes is None else num_classes
    if detector == "may":
        from mlca.models import build_may

        return build_may(attention, num_classes=num_classes, width=width, head=head).eval()
    from mlca.extras import require_ultralytics

    require_ultralytics("mlca bench --detector")
    from ultralytics.nn.tasks import DetectionModel

    with tempfile.TemporaryDirectory() as tmp:
        yaml_path = detector_yaml(detector, attention, where, Path(tmp))
        try:
            model = DetectionModel(yaml_path, nc=num_classes, verbose=False)
        except FileNotFoundError as e:
            raise ValueError(f"unknown detector {detector!r}: {e}") from None
    model = model.fuse(verbose=False).eval()
    for m in model.modules():
        if hasattr(m, "export") and type(m).__name__ in ("Detect", "v10Detect"):
            m.export = True
    return model


def export_detector_onnx(model: nn.Module, path: Path, img_size: int, batch: int = 1, opset: int = 18,
                         mlca: str = "exact") -> Path:
    """A static ONNX export of an ultralytics model, with the TorchScript-based exporter that
    ultralytics itself uses (``dynamo=False``).

    That exporter traces, and a trace may later run at other sizes, so MLCA layers are always
    written in a size-generic formulation: ``mlca="exact"`` (banded gathers, the seed's values
    for every input) or ``"dense"`` (averaging matrices; see
    :func:`mlca.attention.mlca.export_formulation`, which also serves ``YOLO.export``)."""
    from mlca.attention.mlca import export_formulation

    x = torch.zeros(batch, 3, img_size, img_size)
    with torch.no_grad(), export_formulation(mlca):
        torch.onnx.export(model, (x,), str(path), opset_version=opset, dynamo=False,
                          input_names=["images"], output_names=["output0"])  # fmt: skip
    return path
