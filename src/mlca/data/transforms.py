"""Letterbox and training augmentation, on torchvision.transforms.v2 tv_tensors.

Boxes travel as ``tv_tensors.BoundingBoxes`` (XYXY, with their canvas size) beside a
``tv_tensors.Image``, so every geometric op moves image and boxes together through the same
v2 kernel. During the geometric steps the boxes are left unclamped (``clamping_mode=None``) so
we can measure how much of each box is still inside the image before clamping it; a box that
kept less than ``min_visible`` of its area, or is thinner than ``min_size`` pixels, is dropped
(by ``v2.SanitizeBoundingBoxes``), as a sliver of an object is not a fair target.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = [
    "AugmentSettings",
    "DEFAULT_HYP",
    "PAD_VALUE",
    "resolve_hyp",
    "letterbox_params",
    "fit_image",
    "letterbox",
    "random_affine",
    "TrainAugment",
]

# YOLO's grey: the padding value the detectors of this family are trained with
PAD_VALUE = 114

@dataclass(frozen=True)
class AugmentSettings:
    """Training augmentation settings, with defaults chosen for small datasets trained from
    scratch (YOLOv5's hyp.scratch-low, toned down where a short schedule cannot absorb it).
    """

    hsv_h: float = 0.0  # hue jitter, fraction of the colour wheel: off, as hue is often a class cue and
    # v2's RGB->HSV->RGB round trip is 3/4 of the colour jitter's cost
    hsv_s: float = 0.5  # saturation jitter: factor in [1 - s, 1 + s]
    hsv_v: float = 0.3  # brightness jitter: factor in [1 - v, 1 + v]
    degrees: float = 0.0  # rotation: boxes of rotated boxes grow loose, so off by default
    translate: float = 0.1  # shift, fraction of the output size
    scale: float = 0.5  # zoom factor in [1 - scale, 1 + scale]
    shear: float = 0.0  # shear in degrees
    fliplr: float = 0.5  # probability of a horizontal flip
    flipud: float = 0.0  # probability of a vertical flip (off: most scenes have an "up")
    mosaic: float = 0.5  # probability that a training image is a 4-image mosaic
    min_size: float = 2.0  # boxes thinner than this (pixels, after augmentation) are dropped
    min_visible: float = 0.2  # boxes keeping less than this fraction of their area are dropped

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(f"hyp[{f.name!r}] must be a number, got {v!r}")
            object.__setattr__(self, f.name, float(v))
        for k in ("fliplr", "flipud", "mosaic", "min_visible"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ValueError(f"hyp[{k!r}] must be a probability/fraction in [0, 1], got {getattr(self, k)}")
        if not 0.0 <= self.scale < 1.0:
            raise ValueError(f"hyp['scale'] must be in [0, 1), got {self.scale}")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, hyp: Mapping[str, Any] | None) -> AugmentSettings:
        """The defaults updated with ``hyp``'s augmentation keys (other keys, e.g. loss gains, are ignored)."""
        return cls(**{k: v for k, v in (hyp or {}).items() if k in cls.keys()})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


# The defaults as a read-only mapping, for code that reads them by key.
DEFAULT_HYP: Mapping[str, float] = MappingProxyType(AugmentSettings().to_dict())


def resolve_hyp(hyp: AugmentSettings | Mapping[str, Any] | None) -> dict[str, float]:
    """Augmentation settings as a plain dict (the dataset's ``hyp``, which the trainer may edit).

    ``hyp`` is an :class:`AugmentSettings`, or a mapping whose augmentation keys override the
    defaults (other keys, e.g. loss gains, are ignored); values are checked as there.
    """
    if not isinstance(hyp, AugmentSettings):
        hyp = AugmentSettings.from_mapping(hyp)
    return hyp.to_dict()


def letterbox_params(width: int, height: int, size: int) -> tuple[float, int, int, int, int]:
    """``(ratio, new_w, new_h, pad_x, pad_y)`` to fit a ``width x height`` image in ``size x size``.

    The long side becomes ``size`` (up- or down-scaled); the short side is padded evenly
    (the odd pixel goes right/bottom). A point ``p`` of the original maps to ``p * ratio + pad``.
    """
    ratio = size / max(width, height)
    new_w = min(size, max(1, round(width * ratio)))
    new_h = min(size, max(1, round(height * ratio)))
    return ratio, new_w, new_h, (size - new_w) // 2, (size - new_h) // 2


def fit_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """``(3, H, W)`` -> ``(3, new_h, new_w)``: resized (antialiased) so its long side is ``size``,
    aspect kept (:func:`letterbox_params`' new size). Letterbox and mosaic resize with it; an
    image already at that size comes back as it is, so resizing once and keeping the result
    changes nothing downstream."""
    h, w = image.shape[-2:]
    _, new_w, new_h, _, _ = letterbox_params(w, h, size)
    return F.resize(tv_tensors.Image(image), [new_h, new_w], antialias=True).as_subclass(torch.Tensor)


def letterbox(
    image: torch.Tensor, boxes: torch.Tensor | np.ndarray, size: int
) -> tuple[tv_tensors.Image, tv_tensors.BoundingBoxes, float, tuple[int, int]]:
    """Resize keeping the aspect ratio, then pad to ``size x size`` with grey 114.

    Args:
        image: ``(3, H, W)`` uint8.
        boxes: ``(n, 4)`` xyxy in the image's pixels.
        size: the output side ``S``.

    Returns:
        ``(image (3, S, S) uint8, boxes (n, 4) = boxes * ratio + pad, ratio, (pad_x, pad_y))``.
        Boxes use exactly ``ratio`` (not the rounded resize factor), so the engine's
        ``(b - pad) / ratio`` inverts them exactly.
    """
    h, w = image.shape[-2:]
    ratio, new_w, new_h, px, py = letterbox_params(w, h, size)
    img = tv_tensors.Image(fit_image(image, size))
    img = F.pad(img, [px, py, size - new_w - px, size - new_h - py], fill=PAD_VALUE)
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4) * ratio
    b = b + torch.tensor([px, py, px, py], dtype=b.dtype)
    bb = tv_tensors.BoundingBoxes(b, format="XYXY", canvas_size=(size, size), clamping_mode=None)
    return img, bb, ratio, (px, py)


def _area(b: torch.Tensor) -> torch.Tensor:
    return (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)


def _scale_translate(
    image: tv_tensors.Image, boxes: tv_tensors.BoundingBoxes, out_size: int, scale: float, translate: list[int]
) -> tuple[tv_tensors.Image, tv_tensors.BoundingBoxes]:
    """Scale about the centre, shift, centre-crop to ``out_size``: as v2 resize + pad + crop.

    The same map as ``F.affine(scale, translate)`` followed by ``F.center_crop``, without
    resampling the whole (possibly 2S x 2S) input through a sampling grid: 3-5x cheaper.
    """
    h, w = image.shape[-2:]
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    img = F.resize(image, [nh, nw], antialias=True)
    box = F.resize(boxes, [nh, nw])
    # top-left of the output window in the resized image: the centre stays the centre, then the shift
    left = round((nw - out_size) / 2 - translate[0])
    top = round((nh - out_size) / 2 - translate[1])
    pad = [max(0, -left), max(0, -top), max(0, left + out_size - nw), max(0, top + out_size - nh)]
    if any(pad):
        img = F.pad(img, pad, fill=PAD_VALUE)
        box = F.pad(box, pad)
    img = F.crop(img, top + pad[1], left + pad[0], out_size, out_size)
    box = F.crop(box, top + pad[1], left + pad[0], out_size, out_size)
    return img, box


def random_affine(
    image: tv_tensors.Image, boxes: tv_tensors.BoundingBoxes, out_size: int, hyp: dict[str, float]
) -> tuple[tv_tensors.Image, tv_tensors.BoundingBoxes, torch.Tensor]:
    """Random scale / translate (/ rotate / shear) about the centre, then a centre crop to ``out_size``.

    The input may be larger than the output (a 2S mosaic canvas): the crop then keeps the
    middle, as YOLOv5's mosaic border does. Translation is a fraction of ``out_size``. Without
    rotation and shear (the default) this runs as resize + pad + crop; otherwise through
    ``F.affine``.

    Returns:
        ``(image (3, out, out), boxes clamped to the output, visible (n,) fraction of each
        transformed box's area that lies inside the output)``.
    """
    r = torch.rand(3).tolist()
    scale = 1 + (2 * r[0] - 1) * hyp["scale"]
    angle = (2 * r[1] - 1) * hyp["degrees"]
    shear = (2 * r[2] - 1) * hyp["shear"]
    t = (torch.rand(2) * 2 - 1) * hyp["translate"] * out_size
    translate = [round(t[0].item()), round(t[1].item())]
    boxes = tv_tensors.wrap(boxes, like=boxes, clamping_mode=None)  # clamp below, after measuring
    if hyp["degrees"] == 0 and hyp["shear"] == 0:
        img, box = _scale_translate(image, boxes, out_size, scale, translate)
    else:
        img = F.affine(image, angle=angle, translate=translate, scale=scale, shear=[shear, 0.0], fill=PAD_VALUE)
        box = F.affine(boxes, angle=angle, translate=translate, scale=scale, shear=[shear, 0.0])
        if img.shape[-1] != out_size or img.shape[-2] != out_size:
            img = F.center_crop(img, [out_size, out_size])
            box = F.center_crop(box, [out_size, out_size])
    full = _area(box.as_subclass(torch.Tensor))
    box = F.clamp_bounding_boxes(box, clamping_mode="hard")
    visible = _area(box.as_subclass(torch.Tensor)) / full.clamp(min=1e-9)
    return img, box, visible


class TrainAugment:
    """Photometric and geometric augmentation of one (already letterboxed or mosaicked) sample.

    ``__call__(image (3, H, W) uint8, boxes BoundingBoxes (n, 4), labels (n,), out_size)``
    ``-> (image (3, out, out) uint8, boxes (m, 4) xyxy float32, labels (m,))``, ``m <= n``.
    """

    def __init__(self, hyp: AugmentSettings | Mapping[str, float]) -> None:
        hyp = resolve_hyp(hyp) if isinstance(hyp, AugmentSettings) else hyp
        self.hyp = hyp
        jitter = {
            "brightness": hyp["hsv_v"] or None,
            "saturation": hyp["hsv_s"] or None,
            "hue": hyp["hsv_h"] or None,
        }
        self.color = v2.ColorJitter(**jitter)
        self.flips = v2.Compose([v2.RandomHorizontalFlip(hyp["fliplr"]), v2.RandomVerticalFlip(hyp["flipud"])])
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=hyp["min_size"], min_area=hyp["min_size"] ** 2)

    def __call__(
        self, image: torch.Tensor, boxes: tv_tensors.BoundingBoxes, labels: torch.Tensor, out_size: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        img, box, visible = random_affine(tv_tensors.Image(image), boxes, out_size, self.hyp)
        keep = visible >= self.hyp["min_visible"]
        box = tv_tensors.wrap(box[keep], like=box)
        sample = {"image": img, "boxes": box, "labels": labels[keep]}
        sample = self.flips(sample)
        sample["image"] = self.color(sample["image"])
        sample = self.sanitize(sample)
        return (
            sample["image"].as_subclass(torch.Tensor),
            sample["boxes"].as_subclass(torch.Tensor).float(),
            sample["labels"],
        )

