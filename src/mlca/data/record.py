"""One annotated image: :class:`Record`, what every reader produces.

A leaf of the data package (it imports nothing else from it), so readers, datasets and the
engine can all use it without pulling each other in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Record"]


@dataclass
class Record:
    """One image and its objects.

    Attributes:
        image: path of the image file.
        boxes: ``(n, 4)`` float32, ``[x1, y1, x2, y2]`` in original-image pixels (continuous
            coordinates: the image spans ``[0, width] x [0, height]``).
        labels: ``(n,)`` int64 class indices into the config's ``names``.
        width, height: the image size in pixels.
        ignore: ``(n,)`` bool, True for an object that evaluation ignores (VOC ``difficult``,
            COCO ``iscrowd``): a detection of it is neither a hit nor a false positive, and
            missing it is no miss. Training targets leave these boxes out. Default all False.
        area: ``(n,)`` float64, the object's area as the annotation gives it (COCO's ``area``,
            the segmentation area, which decides COCO's small/medium/large ranges); NaN where
            there is none, and evaluation then uses the box area. Default all NaN.
        image_id: the dataset's own id of the image (COCO's integer ``id``, VOC's image id such
            as ``"000005"``), written into result files; ``None`` when the format has none.

    The per-object arrays (``boxes``, ``labels``, ``ignore``, ``area``) are parallel; filter
    them together with :meth:`select`.
    """

    image: Path
    boxes: np.ndarray
    labels: np.ndarray
    width: int
    height: int
    ignore: np.ndarray | None = None
    area: np.ndarray | None = None
    image_id: int | str | None = None

    def __post_init__(self) -> None:
        self.image = Path(self.image)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.boxes)
        self.ignore = np.zeros(n, bool) if self.ignore is None else np.asarray(self.ignore, dtype=bool).reshape(-1)
        self.area = np.full(n, np.nan) if self.area is None else np.asarray(self.area, dtype=np.float64).reshape(-1)
        if isinstance(self.image_id, np.generic):
            self.image_id = self.image_id.item()
        for what, a in (("labels", self.labels), ("ignore flags", self.ignore), ("areas", self.area)):
            if len(a) != n:
                raise ValueError(f"{self.image}: {n} boxes but {len(a)} {what}")

    def select(self, keep: np.ndarray) -> Record:
        """A record with only the objects ``keep`` (a boolean mask or indices) selects.

        Every per-object array field is filtered, a subclass's own ones included.
        """
        n = len(self.boxes)
        per_box = {
            f.name: getattr(self, f.name)[keep]
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), np.ndarray) and len(getattr(self, f.name)) == n
        }
        return dataclasses.replace(self, **per_box)

    @property
    def train_objects(self) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes, labels)`` of the objects training learns from (the ignored ones left out)."""
        keep = ~self.ignore
        return self.boxes[keep], self.labels[keep]
