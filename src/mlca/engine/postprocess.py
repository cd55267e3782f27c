"""From decoded network outputs to final boxes: confidence filter, class-aware NMS, letterbox undo."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_convert, clip_boxes_to_image


def non_max_suppression(
    pred: Tensor,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 300,
    multi_label: bool = False,
    agnostic: bool = False,
    classes: Sequence[int] | None = None,
    max_nms: int = 3000,
) -> list[Tensor]:
    """Class-aware NMS over decoded predictions.

    Args:
        pred: ``(B, N, 5 + nc)`` rows ``[cx, cy, w, h, obj, p_1..p_nc]`` (boxes in input pixels,
            probabilities, as ``MAY.eval()`` returns).
        conf_thres: keep candidates with ``obj * p_cls > conf_thres``.
        iou_thres: IoU above which a lower-scored box of the same class is suppressed.
        max_det: at most this many detections per image, the highest scored.
        multi_label: one candidate per class above ``conf_thres`` instead of only the best
            class (used for mAP, where it recovers boxes whose second class is right).
        agnostic: suppress across classes too.
        classes: keep only these class indices.
        max_nms: at most this many candidates (highest score) enter NMS. NMS is quadratic on
            the CPU (30000 candidates take seconds per image), and a half-trained model passes
            thousands of anchors at ``conf_thres=0.001``; 3000 (torchvision's detectors keep
            1000 per level) leaves the top-``max_det`` result, and COCO's top-100, practically
            unchanged.

    Returns:
        ``B`` tensors ``(n_i, 6)`` rows ``[x1, y1, x2, y2, score, cls]``, sorted by score
        (descending), in ``pred``'s dtype and device.
    """
    if pred.dim() != 3 or pred.shape[-1] < 6:
        raise ValueError(f"pred must be (B, N, 5 + nc) with nc >= 1, got {tuple(pred.shape)}")
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ValueError(f"conf_thres and iou_thres must be in [0, 1], got {conf_thres} and {iou_thres}")
    out: list[Tensor] = []
    for x in pred:  # (N, 5 + nc)
        # cheap pre-filter on objectness before forming the (N, nc) score matrix
        x = x[x[:, 4] > conf_thres]
        scores = x[:, 5:] * x[:, 4:5]
        boxes = box_convert(x[:, :4], "cxcywh", "xyxy")
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=True)
            boxes, score, cls = boxes[i], scores[i, j], j
        else:
            score, cls = scores.max(dim=1) if len(scores) else (scores[:, 0], scores[:, 0].long())
            keep = score > conf_thres
            boxes, score, cls = boxes[keep], score[keep], cls[keep]
        if classes is not None:
            keep = torch.isin(cls, torch.as_tensor(list(classes), device=cls.device))
            boxes, score, cls = boxes[keep], score[keep], cls[keep]
        if len(score) > max_nms:
            top = score.topk(max_nms).indices
            boxes, score, cls = boxes[top], score[top], cls[top]
        # batched_nms works in float32 (half NMS is not supported on every device)
        keep = batched_nms(boxes.float(), score.float(), torch.zeros_like(cls) if agnostic else cls, iou_thres)
        keep = keep[:max_det]
        out.append(torch.cat((boxes[keep], score[keep, None], cls[keep, None].to(boxes.dtype)), dim=1))
    return out


def scale_boxes(boxes_xyxy: Tensor, meta: Mapping[str, Any]) -> Tensor:
    """Undo the letterbox: boxes of the network input back to original-image pixels, clipped.

    Args:
        boxes_xyxy: ``(n, 4)`` (or ``(n, >=4)``: extra columns pass through unchanged) in
            letterboxed-input pixels.
        meta: the dataset's meta dict with ``ratio`` (float, resized = original * ratio),
            ``pad`` ``(pad_x, pad_y)`` (left/top padding in pixels) and ``orig_size`` ``(h, w)``.

    Returns:
        A new tensor of the same shape, the first 4 columns in original-image pixels, clipped
        to ``[0, w] x [0, h]``.
    """
    try:
        ratio, (pad_x, pad_y), (h, w) = float(meta["ratio"]), meta["pad"], meta["orig_size"]
    except KeyError as e:
        raise KeyError(f"scale_boxes needs meta keys 'ratio', 'pad', 'orig_size'; missing {e}") from None
    if boxes_xyxy.dim() != 2 or boxes_xyxy.shape[1] < 4:
        raise ValueError(f"boxes must be (n, 4) xyxy, got {tuple(boxes_xyxy.shape)}")
    out = boxes_xyxy.clone()
    pad = torch.tensor([pad_x, pad_y, pad_x, pad_y], dtype=out.dtype, device=out.device)
    out[:, :4] = clip_boxes_to_image((out[:, :4] - pad) / ratio, (int(h), int(w)))
    return out


__all__ = ["non_max_suppression", "scale_boxes"]
