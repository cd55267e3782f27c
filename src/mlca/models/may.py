"""MAY (MobileNet-Attention-YOLO): the detector the MLCA paper uses to compare attention modules.

MobileNetV3-small backbone with a registered attention module in place of SE
(:mod:`mlca.models.mobilenetv3`), YOLOv5 v6 PAN neck (:mod:`mlca.models.neck`) and
anchor-based Detect head (:mod:`mlca.models.head`), following the official
``mobilenetv3-MLCA.yaml`` of wandahangFY/MLCA. ``head="yolov8"`` swaps the paper's head for an
anchor-free decoupled one (:mod:`mlca.models.head_decoupled`); both give the same inference output.

    >>> model = build_may("mlca", num_classes=20)
    >>> model = build_may("mlca", num_classes=20, head="yolov8")  # anchor-free, decoupled
    >>> model = build_may_from_yaml("may.yaml")      # packaged config, or any path
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .head import DEFAULT_ANCHORS, Detect, is_tracing
from .head_decoupled import DecoupledDetect
from .mobilenetv3 import MAY_BLOCKS, MAY_STEM, BlockSetting, MobileNetV3Backbone
from .neck import MAY_NECK, PAN

__all__ = ["MAY", "build_may", "build_may_from_yaml"]

STRIDES = (8, 16, 32)
# "yolov5": the paper's anchor-based coupled head; "yolov8": anchor-free, decoupled, DFL boxes
HEADS = ("yolov5", "yolov8")


def _plain(value: Any) -> Any:
    """Nested tuples/tensors -> nested lists of Python numbers (checkpoint- and YAML-safe)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class MAY(nn.Module):
    """MobileNet-Attention-YOLO.

    Args:
        attention: registered attention name placed in the backbone's marked blocks.
        num_classes: number of object classes.
        width: channel multiplier for every layer (1.0 is the paper's model).
        anchors: ``(3, 3, 2)`` anchor sizes in pixels; YOLOv5's defaults when None.
        attention_kwargs: keyword arguments for every attention module.
        stem, blocks, neck: architecture tables (defaults: the official MAY).
        head: ``"yolov5"`` (the paper's anchor-based Detect) or ``"yolov8"`` (anchor-free
            :class:`~mlca.models.head_decoupled.DecoupledDetect`; takes no anchors).

    Attributes:
        num_classes, names (``list[str] | None``, set by the trainer), stride ``(3,)``,
        head, detect (for yolov5 with buffer ``detect.anchors`` ``(3, na, 2)`` pixels), config (the build
        arguments: ``build_may(**model.config)`` rebuilds the architecture).
    """

    def __init__(
        self,
        attention: str = "mlca",
        num_classes: int = 20,
        width: float = 1.0,
        anchors: Sequence | torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        stem: int = MAY_STEM,
        blocks: Sequence[Sequence] = MAY_BLOCKS,
        neck: Sequence[int] = MAY_NECK,
        head: str = "yolov5",
    ):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"MAY: head must be one of {HEADS}, got {head!r}")
        if head != "yolov5" and anchors is not None:
            raise ValueError(f"MAY: the {head} head is anchor-free; got anchors {_plain(anchors)}")
        if int(num_classes) < 1:
            raise ValueError(f"MAY: num_classes must be >= 1, got {num_classes}")
        if not width > 0:
            raise ValueError(f"MAY: width must be > 0, got {width}")
        attention_kwargs = dict(attention_kwargs or {})
        blocks = tuple(BlockSetting(*row) for row in blocks)
        anchors = DEFAULT_ANCHORS if anchors is None else anchors
        self.backbone = MobileNetV3Backbone(attention, width, stem, blocks, **attention_kwargs)
        self.neck = PAN(self.backbone.out_channels, neck, width)
        if head == "yolov5":
            self.detect = Detect(num_classes, self.neck.out_channels, anchors, STRIDES)
        else:
            self.detect = DecoupledDetect(num_classes, self.neck.out_channels, STRIDES)
        self.head = head
        self.num_classes = int(num_classes)
        self.names: list[str] | None = None
        self.register_buffer("stride", torch.tensor(STRIDES, dtype=torch.float32), persistent=False)
        self.config: dict[str, Any] = {
            "attention": attention,
            "num_classes": int(num_classes),
            "width": float(width),
            "anchors": _plain(self.detect.anchors) if head == "yolov5" else None,
            "attention_kwargs": attention_kwargs,
            "head": head,
        }
        # only non-default tables go in the config, so a plain model's config stays short
        if stem != MAY_STEM or blocks != MAY_BLOCKS or tuple(neck) != MAY_NECK:
            self.config.update(stem=int(stem), blocks=[list(map(int, b)) for b in blocks], neck=list(neck))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        """x: (B, 3, H, W), H and W multiples of 32.

        Returns:
            train mode: list of 3 raw tensors for s = 8, 16, 32: (B, na, H/s, W/s, 5 + nc) for
            the yolov5 head, (B, 4 * reg_max + nc, H/s, W/s) for the yolov8 head;
            eval mode: (B, N, 5 + nc) decoded, N = sum(na * H/s * W/s), columns
            [cx, cy, w, h] (input pixels), objectness (1 for yolov8), nc class probabilities.
        """
        if not is_tracing():
            # checked in eager only: a shape guard would pin sizes during export
            if x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f"MAY expects images (B, 3, H, W); got shape {tuple(x.shape)}")
            if x.shape[2] % 32 or x.shape[3] % 32:
                raise ValueError(
                    f"MAY needs H and W that are multiples of 32 (its largest stride); got "
                    f"{tuple(x.shape[2:])} (letterbox/pad the image)"
                )
        return self.detect(self.neck(*self.backbone(x)))


def build_may(
    attention: str = "mlca",
    num_classes: int = 20,
    width: float = 1.0,
    anchors: Sequence | torch.Tensor | None = None,
    *,
    attention_kwargs: dict[str, Any] | None = None,
    stem: int = MAY_STEM,
    blocks: Sequence[Sequence] = MAY_BLOCKS,
    neck: Sequence[int] = MAY_NECK,
    head: str = "yolov5",
    **kwargs: Any,
) -> MAY:
    """Build MAY with any registered attention.

    Extra keyword arguments go to the attention modules (``build_may("mlca", local_size=3)``);
    ``attention_kwargs=`` does the same as a dict, so ``build_may(**model.config)`` rebuilds a model.
    ``head`` picks the detection head (see :class:`MAY`); the paper's is ``"yolov5"``.
    """
    merged = {**(attention_kwargs or {}), **kwargs}
    return MAY(attention, num_classes, width, anchors, merged, stem, blocks, neck, head)


_YAML_KEYS = {"attention", "num_classes", "width", "anchors", "attention_kwargs", "stem", "blocks", "neck", "head"}


def _resolve_yaml(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    packaged = resources.files("mlca").joinpath("configs", p.name)
    if packaged.is_file():
        return Path(str(packaged))
    raise FileNotFoundError(f"model config {str(path)!r} not found (nor as a packaged config in mlca/configs)")


def build_may_from_yaml(path: str | Path, **overrides: Any) -> MAY:
    """Build MAY from a YAML file (keys: attention, num_classes, width, anchors,
    attention_kwargs, stem, blocks, neck, head — all optional); ``overrides`` win over the file.

    ``path`` is a file path, or the name of a packaged config (``"may.yaml"``).
    """
    import yaml

    p = _resolve_yaml(path)
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: invalid YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{p}: expected a mapping of build arguments, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - _YAML_KEYS)
    if unknown:
        raise ValueError(f"{p}: unknown key(s) {unknown}; known: {sorted(_YAML_KEYS)}")
    cfg.update(overrides)
    if "blocks" in cfg:
        for i, row in enumerate(cfg["blocks"]):
            if not isinstance(row, (list, tuple)) or len(row) != 6:
                raise ValueError(f"{p}: blocks[{i}] must be [out, expand, kernel, stride, attention, hswish], got {row}")
    return build_may(**cfg)
