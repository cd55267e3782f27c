"""Mosaic: four images tiled around a random centre on a 2S x 2S canvas (YOLOv5's augmentation).

Each image is resized so its long side is S and anchored at the centre point ``(xc, yc)``,
one per quadrant, extending away from it (top-left image: its bottom-right corner at the
centre, and so on), so tiles never overlap and only the canvas border cuts them. Boxes are
moved with their image and clipped to the part of it that landed on the canvas; a box that
lost more than ``1 - min_visible`` of its area there is dropped. The caller then applies
:func:`mlca.data.transforms.random_affine`, which centre-crops the canvas to S x S.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors

from .transforms import PAD_VALUE, fit_image

__all__ = ["mosaic4"]


def mosaic4(
    samples: list[tuple[torch.Tensor, np.ndarray, np.ndarray]],
    size: int,
    center: tuple[int, int] | None = None,
    min_visible: float = 0.2,
) -> tuple[torch.Tensor, tv_tensors.BoundingBoxes, torch.Tensor]:
    """Tile four images.

    Args:
        samples: four ``(image (3, h, w) uint8, boxes (n, 4) xyxy pixels, labels (n,))``.
        size: S; the canvas is ``2S x 2S``.
        center: ``(xc, yc)``; random in ``[S/2, 3S/2)`` when ``None`` (torch RNG).
        min_visible: boxes keeping less than this fraction of their area on the canvas are dropped.

    Returns:
        ``(canvas (3, 2S, 2S) uint8, boxes BoundingBoxes (m, 4) XYXY on the canvas, labels (m,) int64)``.
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic4 needs 4 samples, got {len(samples)}")
    s2 = 2 * size
    if center is None:
        xc, yc = (int(v) for v in torch.randint(size // 2, size + size // 2, (2,)))
    else:
        xc, yc = center
    canvas = torch.full((3, s2, s2), PAD_VALUE, dtype=torch.uint8)
    all_boxes, all_labels = [], []
    for k, (image, boxes, labels) in enumerate(samples):
        h, w = image.shape[-2:]
        img = fit_image(image, size)
        nh, nw = img.shape[-2:]
        # top-left corner of the tile on the canvas, so that it touches (xc, yc)
        ox = xc - nw if k in (0, 2) else xc
        oy = yc - nh if k in (0, 1) else yc
        # the part of the tile that lands on the canvas
        x1, y1, x2, y2 = max(ox, 0), max(oy, 0), min(ox + nw, s2), min(oy + nh, s2)
        canvas[:, y1:y2, x1:x2] = img[:, y1 - oy : y2 - oy, x1 - ox : x2 - ox]
        b = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4).clone()
        # the exact per-axis resize factors keep boxes on the resized pixels
        b[:, [0, 2]] = b[:, [0, 2]] * (nw / w) + ox
        b[:, [1, 3]] = b[:, [1, 3]] * (nh / h) + oy
        full = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        b[:, [0, 2]] = b[:, [0, 2]].clamp(x1, x2)
        b[:, [1, 3]] = b[:, [1, 3]].clamp(y1, y2)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        keep = (area > 0) & (area >= min_visible * full)
        all_boxes.append(b[keep])
        all_labels.append(torch.as_tensor(np.asarray(labels, dtype=np.int64)).reshape(-1)[keep])
    boxes = tv_tensors.BoundingBoxes(
        torch.cat(all_boxes), format="XYXY", canvas_size=(s2, s2), clamping_mode=None
    )
    return canvas, boxes, torch.cat(all_labels)
