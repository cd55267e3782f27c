"""One annotated image: :class:`Record`, what every reader produces.

A leaf of the data package (it imports nothing else from it), so readers, datasets and the
engine can all use it without pulling each other in.
"""

from __future__ import annotations

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
    """

    image: Path
    boxes: np.ndarray
    labels: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        self.image = Path(self.image)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.boxes) != len(self.labels):
            raise ValueError(f"{self.image}: {len(self.boxes)} boxes but {len(self.labels)} labels")
