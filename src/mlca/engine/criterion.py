"""The loss that fits a model's head: :func:`build_loss`.

MAY has two heads (``model.head``): the paper's anchor-based ``"yolov5"`` head, trained with
:class:`~mlca.engine.loss.YoloLoss`, and the anchor-free ``"yolov8"`` head, trained with
:class:`~mlca.engine.loss_af.AnchorFreeLoss`. Both take ``(raw, targets)`` and return
``(loss, items)``; ``item_names`` names the three logged terms.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mlca.engine.unwrap import unwrap

__all__ = ["build_loss", "head_of", "item_names"]


def head_of(model: nn.Module) -> str:
    """``"yolov5"`` or ``"yolov8"``: the head of ``model`` (or of the model inside a wrapper)."""
    return str(getattr(unwrap(model), "head", "yolov5"))


def build_loss(model: nn.Module, gains: Any = None, img_size: int | None = None):
    """The loss for ``model``'s head; ``gains`` a LossGains or a mapping of overrides."""
    head = head_of(model)
    if head == "yolov5":
        from mlca.engine.loss import YoloLoss

        return YoloLoss(model, gains, img_size=img_size)
    if head == "yolov8":
        from mlca.engine.loss_af import AnchorFreeLoss

        return AnchorFreeLoss(model, gains, img_size=img_size)
    raise ValueError(f"no loss for head {head!r}; heads: yolov5, yolov8")


def item_names(loss: Any) -> tuple[str, str, str]:
    """Names of the three logged loss terms of ``loss`` (``box, obj, cls`` for YoloLoss)."""
    return tuple(getattr(loss, "item_names", ("box", "obj", "cls")))  # type: ignore[return-value]
