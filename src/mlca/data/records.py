"""One annotated image (:class:`Record`) and :func:`read_records`, the entry point of every reader.

All formats (VOC XML, YOLO txt, COCO JSON, the embedded set) end up as the same list of
records: boxes in original-image pixels, xyxy, with contiguous class indices. The readers
share one set of box checks (:func:`check_boxes`) so "outside the image", "clipped" and
"degenerate" mean the same thing whatever the format.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from .errors import DataError

if TYPE_CHECKING:
    from .config import DatasetConfig

__all__ = ["Record", "ReadReport", "read_records", "scan_records", "check_boxes", "collect"]

# a box may poke out of the image by this many pixels (float rounding of normalised or
# 1-based coordinates) before it is counted as clipped
_CLIP_TOL = 0.01


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
        """A record with only the objects ``keep`` (a boolean mask or indices) selects."""
        return Record(self.image, self.boxes[keep], self.labels[keep], self.width, self.height,
                      self.ignore[keep], self.area[keep], self.image_id)  # fmt: skip

    @property
    def train_objects(self) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes, labels)`` of the objects training learns from (the ignored ones left out)."""
        keep = ~self.ignore
        return self.boxes[keep], self.labels[keep]


@dataclass
class ReadReport:
    """What a reader found: good records, bad files, and how many boxes it clipped."""

    records: list[Record] = field(default_factory=list)
    bad: list[DataError] = field(default_factory=list)
    clipped: int = 0
    clipped_files: list[Path] = field(default_factory=list)

    def summary(self, split: str = "") -> str:
        """A short human-readable report (empty when nothing was skipped or clipped)."""
        what = f" ({split})" if split else ""
        lines = []
        if self.bad:
            lines.append(f"skipped {len(self.bad)} bad image(s){what}:")
            lines += [f"  {e}" for e in self.bad]
        if self.clipped:
            lines.append(
                f"clipped {self.clipped} box(es) partly outside the image{what} "
                f"in {len(self.clipped_files)} file(s)"
            )
        return "\n".join(lines)


def check_boxes(
    boxes: np.ndarray,
    width: int,
    height: int,
    file: Path,
    lines: list[int | None] | None = None,
    wheres: list[str | None] | None = None,
) -> tuple[np.ndarray, int]:
    """Validate and clip boxes against the image.

    Args:
        boxes: ``(n, 4)`` xyxy in pixels (float64 preferred).
        width, height: the image size.
        file: the annotation file, for errors.
        lines / wheres: per box, its line number / location in ``file``, for errors.

    Returns:
        ``(boxes (n, 4) float32 clipped to the image, number of boxes that were clipped)``.

    Raises:
        DataError: a non-finite box, an inverted box (x2 < x1 or y2 < y1), a box wholly
            outside the image, or one with zero area after clipping (degenerate).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    lines = lines if lines is not None else [None] * n
    wheres = wheres if wheres is not None else [None] * n
    clipped = np.empty_like(boxes)
    clipped[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    n_clipped = 0
    for i, (b, c) in enumerate(zip(boxes, clipped)):
        desc = f"box [{b[0]:.6g}, {b[1]:.6g}, {b[2]:.6g}, {b[3]:.6g}] (xyxy px) in a {width}x{height} image"
        if not np.isfinite(b).all():
            raise DataError(file, f"non-finite {desc}", lines[i], wheres[i])
        if b[2] < b[0] or b[3] < b[1]:
            raise DataError(file, f"inverted {desc} (x2 < x1 or y2 < y1)", lines[i], wheres[i])
        if b[0] >= width or b[1] >= height or b[2] <= 0 or b[3] <= 0:
            raise DataError(file, f"{desc} lies outside the image", lines[i], wheres[i])
        if c[2] - c[0] <= 0 or c[3] - c[1] <= 0:
            raise DataError(file, f"degenerate {desc} (zero width or height)", lines[i], wheres[i])
        if np.abs(b - c).max() > _CLIP_TOL:
            n_clipped += 1
    return clipped.astype(np.float32), n_clipped


def collect(
    items: Iterable,
    parse: Callable[[object], tuple[Record, int]],
    skip_bad: bool,
) -> ReadReport:
    """Run ``parse`` on each item, gathering records, clip counts and (with skip_bad) errors.

    ``parse(item) -> (record, n_clipped)`` raises :class:`DataError` for bad data: re-raised
    at once unless ``skip_bad``, in which case the item is dropped and remembered.
    """
    report = ReadReport()
    for item in items:
        try:
            record, n_clipped = parse(item)
        except DataError as e:
            if not skip_bad:
                raise
            report.bad.append(e)
            continue
        report.records.append(record)
        if n_clipped:
            report.clipped += n_clipped
            report.clipped_files.append(record.image)
    return report


def scan_records(config: DatasetConfig | str | Path, split: str, skip_bad: bool = False) -> ReadReport:
    """Read a split and return the full :class:`ReadReport` (records, bad files, clip count).

    ``config`` is a :class:`DatasetConfig` or anything :func:`load_dataset_config` takes.
    """
    from .config import load_dataset_config

    config = load_dataset_config(config)
    spec = config.split(split)
    if config.format in ("yolo", "embedded"):
        from .yolo import read_yolo

        return read_yolo(config, spec, skip_bad)
    if config.format == "voc":
        from .voc import read_voc

        return read_voc(config, spec, skip_bad)
    if config.format == "coco":
        from .coco import read_coco

        return read_coco(config, spec, skip_bad)
    raise DataError(config.source, f"unknown dataset format {config.format!r}")


def read_records(config: DatasetConfig | str | Path, split: str, skip_bad: bool = False) -> list[Record]:
    """Read the ``split`` (``'train'``, ``'val'`` or ``'test'``) of a dataset.

    ``config`` is a :class:`DatasetConfig` or anything :func:`load_dataset_config` takes (a
    YAML path, a shipped config name, ``"embedded"``).

    Bad data raises :class:`DataError` naming the file and line. With ``skip_bad=True`` the
    bad images are left out and a summary (how many, and which, with the reason) is printed
    to stderr; boxes partly outside their image are clipped and their count printed too.
    """
    from .config import load_dataset_config

    config = load_dataset_config(config)
    report = scan_records(config, split, skip_bad)
    text = report.summary(f"{config.name} {split}")
    if text:
        print(text, file=sys.stderr)
    if not report.records:
        raise DataError(config.source, f"split {split!r} of dataset {config.name!r} has no usable images")
    return report.records
