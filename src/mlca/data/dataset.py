"""``DetectionDataset``: records -> letterboxed (and, for training, augmented) tensors.

Every sample is S x S (S a multiple of 32, the detector's largest stride), so batches need
no padding logic: ``collate`` stacks images and concatenates targets with their image index.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError
from .images import load_image
from .mosaic import mosaic4
from .record import Record
from .transforms import TrainAugment, fit_image, letterbox, letterbox_params, resolve_hyp

__all__ = ["DetectionDataset", "collate", "boxes_to_targets"]


def boxes_to_targets(boxes: torch.Tensor, labels: torch.Tensor, size: int) -> torch.Tensor:
    """``(n, 4)`` xyxy pixels + ``(n,)`` labels -> ``(n, 5)`` float32 ``[cls, cx, cy, w, h] / size``."""
    b = boxes.float().reshape(-1, 4)
    out = torch.empty((len(b), 5), dtype=torch.float32)
    out[:, 0] = labels.float()
    out[:, 1] = (b[:, 0] + b[:, 2]) / (2 * size)
    out[:, 2] = (b[:, 1] + b[:, 3]) / (2 * size)
    out[:, 3] = (b[:, 2] - b[:, 0]) / size
    out[:, 4] = (b[:, 3] - b[:, 1]) / size
    return out


class DetectionDataset(Dataset):
    """A detection dataset over :class:`~mlca.data.records.Record` s.

    Args:
        records: from :func:`mlca.data.records.read_records`.
        img_size: S, the side of the square network input; a multiple of 32.
        augment: training augmentation (mosaic, affine, flips, colour jitter; see
            :data:`mlca.data.transforms.DEFAULT_HYP`); ``False`` gives letterbox only.
        hyp: augmentation settings overriding the defaults; other keys are ignored, so a
            trainer may pass its whole hyperparameter dict. ``dataset.hyp["mosaic"] = 0``
            turns mosaic off for the last epochs.
        cache: keep images in memory (per worker) after their first read, decoded and resized
            to the network size (long side S, the resize letterbox and mosaic make), so later
            reads neither decode nor resize again; samples are the same as without it.

    ``__getitem__(i) -> (img (3, S, S) float32 in [0, 1], targets (n, 5) float32
    [cls, cx, cy, w, h] normalised by S, meta)``, meta =
    ``dict(path=str, orig_size=(h, w), ratio=float, pad=(pad_x, pad_y))``: the letterbox of
    image ``i``, so that ``orig = (letterboxed - pad) / ratio``. With ``augment`` the image is
    augmented after (or instead of, for a mosaic) that letterbox and meta only describes image
    ``i``'s plain letterbox.
    """

    def __init__(
        self,
        records: Sequence[Record],
        img_size: int,
        augment: bool,
        hyp: dict[str, Any] | None = None,
        cache: bool = False,
    ) -> None:
        if int(img_size) != img_size or img_size <= 0 or img_size % 32:
            raise ValueError(f"img_size must be a positive multiple of 32 (the largest stride), got {img_size}")
        self.records = list(records)
        self.img_size = int(img_size)
        self.augment = bool(augment)
        self.hyp = resolve_hyp(hyp)
        self.cache = cache
        self._cache: dict[int, torch.Tensor] = {}
        self._augment = TrainAugment(self.hyp)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, i: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """``(image (3, H, W) uint8, boxes (n, 4) float32 xyxy original pixels, labels (n,) int64)``.

        The image as stored, decoded from its file. The boxes are the training objects: those
        the record marks ``ignore`` (VOC difficult, COCO crowd) are left out, as they are
        neither objects to learn nor background.
        """
        rec = self.records[i]
        arr = load_image(rec.image)
        if arr.shape[:2] != (rec.height, rec.width):
            raise DataError(
                rec.image, f"image is {arr.shape[1]}x{arr.shape[0]} but its record says {rec.width}x{rec.height}"
            )
        boxes, labels = rec.train_objects
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), boxes, labels

    def fitted(self, i: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """:meth:`load`'s image resized so its long side is S (``(3, h', w')`` uint8, aspect kept),
        with its original-pixel boxes and labels; from the in-memory cache when ``cache``.

        :func:`~mlca.data.transforms.fit_image`, the resize :func:`~mlca.data.transforms.letterbox`
        and :func:`~mlca.data.mosaic.mosaic4` make, so handing them this image with boxes scaled
        as they would scale them gives the same sample.
        """
        rec = self.records[i]
        img = self._cache.get(i)
        if img is None:
            image, boxes, labels = self.load(i)
            img = fit_image(image, self.img_size)
            if self.cache:
                self._cache[i] = img
        else:
            boxes, labels = rec.train_objects
        return img, boxes, labels

    def _for_letterbox(self, i: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """The fitted image with boxes scaled by the letterbox ratio (letterbox then only pads)."""
        rec = self.records[i]
        img, boxes, labels = self.fitted(i)
        ratio = letterbox_params(rec.width, rec.height, self.img_size)[0]
        return img, torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4) * ratio, labels

    def _for_mosaic(self, i: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """The fitted image with boxes scaled per axis to its pixels, as mosaic4 scales them."""
        rec = self.records[i]
        img, boxes, labels = self.fitted(i)
        h, w = img.shape[-2:]
        b = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4).clone()
        b[:, [0, 2]] = b[:, [0, 2]] * (w / rec.width)
        b[:, [1, 3]] = b[:, [1, 3]] * (h / rec.height)
        return img, b.numpy(), labels

    def meta(self, i: int) -> dict[str, Any]:
        """The letterbox of image ``i``: ``dict(path, orig_size=(h, w), ratio, pad=(pad_x, pad_y))``."""
        rec = self.records[i]
        ratio, _, _, px, py = letterbox_params(rec.width, rec.height, self.img_size)
        return {"path": str(rec.image), "orig_size": (rec.height, rec.width), "ratio": ratio, "pad": (px, py)}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        S = self.img_size
        if not self.augment:
            image, boxes, labels = self._for_letterbox(i)
            img, bb, _, _ = letterbox(image, boxes, S)
            box_t, lab_t = bb.as_subclass(torch.Tensor), torch.as_tensor(labels)
        else:
            if self.hyp["mosaic"] > 0 and torch.rand(()).item() < self.hyp["mosaic"]:
                others = torch.randint(0, len(self), (3,)).tolist()
                samples = [self._for_mosaic(j) for j in [i, *others]]
                img, bb, lab = mosaic4(samples, S, min_visible=self.hyp["min_visible"])
            else:
                image, boxes, labels = self._for_letterbox(i)
                img, bb, _, _ = letterbox(image, boxes, S)
                lab = torch.as_tensor(labels)
            img, box_t, lab_t = self._augment(img, bb, lab, S)
        img = img.as_subclass(torch.Tensor).float().div_(255.0)
        return img, boxes_to_targets(box_t, lab_t, S), self.meta(i)


def collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]],
) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """Batch samples: ``(imgs (B, 3, S, S), targets (N, 6) [img_idx, cls, cx, cy, w, h], metas)``."""
    if not batch:
        raise ValueError("collate got an empty batch")
    imgs = torch.stack([b[0] for b in batch])
    targets = torch.cat([torch.cat([torch.full((len(t), 1), float(k)), t], 1) for k, (_, t, _) in enumerate(batch)])
    return imgs, targets, [b[2] for b in batch]
