"""NMS inside the exported graph (``mlca export --nms``).

PyTorch side: the custom op ``mlca::nms`` runs torchvision's NMS per image; ONNX side: a
custom translation maps it onto the standard ``NonMaxSuppression`` operator, which every
runtime implements. Classes are kept apart the usual way (YOLOv5, torchvision's
``batched_nms``): each class's boxes are shifted by ``class * MAX_WH`` so boxes of different
classes never overlap. Candidates are scored ``obj * max class probability`` like
:func:`mlca.engine.postprocess.non_max_suppression` (``multi_label=False``), so both give
the same detections.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

__all__ = ["MAX_WH", "DetectWithNMS", "onnx_translation_table"]

MAX_WH = 7680.0  # larger than any image side: shifted boxes of different classes never overlap


@torch.library.custom_op("mlca::nms", mutates_args=())
def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float, score_thr: float, max_det: int) -> torch.Tensor:
    """boxes (B, N, 4) xyxy, scores (B, N) -> (K, 3) int64 rows [image, 0, box index], each
    image's rows by descending score (the layout of ONNX NonMaxSuppression)."""
    out = []
    for b in range(boxes.shape[0]):
        idx = (scores[b] > score_thr).nonzero().flatten()
        keep = torchvision.ops.nms(boxes[b, idx].float(), scores[b, idx].float(), iou)[:max_det]
        sel = idx[keep]
        out.append(torch.stack([torch.full_like(sel, b), torch.zeros_like(sel), sel], 1))
    return torch.cat(out) if out else boxes.new_zeros((0, 3), dtype=torch.int64)


@_nms.register_fake
def _(boxes, scores, iou, score_thr, max_det):
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(), 3), dtype=torch.int64)


def _nms_onnx(boxes, scores, iou: float, score_thr: float, max_det: int):
    from onnxscript import opset18 as op

    return op.NonMaxSuppression(
        boxes, op.Unsqueeze(scores, [1]), op.Constant(value_ints=[max_det]),
        op.Constant(value_floats=[iou]), op.Constant(value_floats=[score_thr]),
    )


def onnx_translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``."""
    return {torch.ops.mlca.nms.default: _nms_onnx}


class DetectWithNMS(nn.Module):
    """MAY followed by class-aware NMS.

    Args:
        model: MAY in eval mode (decoded outputs).
        conf: keep candidates with ``obj * p_cls > conf``.
        iou: suppress same-class boxes with IoU above this.
        max_det: detections kept per image.
    """

    def __init__(self, model: nn.Module, conf: float = 0.25, iou: float = 0.45, max_det: int = 300):
        super().__init__()
        self.model, self.conf, self.iou, self.max_det = model, float(conf), float(iou), int(max_det)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (K, 7) rows [image index, x1, y1, x2, y2, score, class], all images
        together, each image's rows by descending score."""
        pred = self.model(x)  # (B, N, 5 + nc)
        xy, wh = pred[..., :2], pred[..., 2:4]
        boxes = torch.cat((xy - wh / 2, xy + wh / 2), -1)
        score, cls = (pred[..., 5:] * pred[..., 4:5]).max(-1)
        shifted = boxes + cls.unsqueeze(-1).to(boxes.dtype) * MAX_WH
        sel = torch.ops.mlca.nms(shifted, score, self.iou, self.conf, self.max_det)
        b, i = sel[:, 0], sel[:, 2]
        return torch.cat(
            (b.unsqueeze(1).to(boxes.dtype), boxes[b, i], score[b, i].unsqueeze(1), cls[b, i].unsqueeze(1).to(boxes.dtype)),
            1,
        )
