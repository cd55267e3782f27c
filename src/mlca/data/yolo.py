"""YOLO txt labels: ``images/`` + ``labels/``, one ``class cx cy w h`` line per object.

A line may also be a YOLO segmentation polygon ``class x1 y1 x2 y2 x3 y3 ...``; its bounding
box is the object's box.

Coordinates are normalised to ``[0, 1]`` by the image size. A split is a directory of
images, a ``.txt`` file listing images, or a list of either (YOLOv5's rules). Each image's
label file is found by replacing the last ``images`` directory in its path with ``labels``
and the suffix with ``.txt`` (beside the image if the path has no ``images`` part). An image
without a label file is a background image (no objects).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from .dataset_config import DatasetConfig
from .errors import DataError
from .images import IMAGE_SUFFIXES, probe_image
from .record import Record
from .registry import register_reader
from .scan import ReadReport, check_boxes, collect, degenerate

__all__ = ["read_yolo", "yolo_images", "label_path", "parse_label_file"]

# normalised coordinates may exceed [0, 1] by float rounding only
_NORM_TOL = 1e-6


def _resolve(p: str | Path, *bases: Path) -> Path:
    p = Path(p).expanduser()
    if p.is_absolute():
        return p
    for base in bases:
        if (base / p).exists():
            return base / p
    return bases[0] / p


def _split_path(s: str | Path, root: Path) -> Path:
    """A split entry relative to the root; an old-style ``../images/train`` that is not found
    there is read without its ``../`` (YOLOv5 and ultralytics do the same for old data YAMLs
    written relative to a folder inside the dataset)."""
    p = _resolve(s, root)
    text = str(s).replace("\\", "/")
    if not p.exists() and not Path(text).is_absolute() and text.startswith("../"):
        alt = root / text[3:]
        if alt.exists():
            return alt
    return p


def yolo_images(root: Path, spec: Any, source: Path | None = None) -> list[Path]:
    """The image paths of a split spec (dir, txt list, single image, or a list of those)."""
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    images: list[Path] = []
    for s in specs:
        p = _split_path(s, root)
        if p.is_dir():
            images += sorted((q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES), key=lambda q: q.parts)
        elif p.suffix.lower() == ".txt" and p.is_file():
            for line in p.read_text().splitlines():
                line = line.strip()
                if line:
                    images.append(_resolve(line, p.parent, root))
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)  # a missing image is reported per file by the reader
        else:
            raise DataError(source or p, f"split path {p} is neither a directory, a .txt list nor an image")
    return images


def label_path(image: Path) -> Path:
    """``.../images/a/b.jpg`` -> ``.../labels/a/b.txt`` (the last ``images`` part is replaced)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def parse_label_file(path: Path, nc: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Parse one label file.

    Returns:
        ``(boxes (n, 4) float32 xyxy pixels clipped to the image, labels (n,) int64, n_clipped)``.

    Raises:
        DataError: naming ``path`` and the line: wrong field count, a non-numeric field, a
            class index that is not an integer in ``[0, nc)``, coordinates outside ``[0, 1]``.
            A degenerate box (zero width or height) is left out, and noted by
            :func:`~mlca.data.scan.check_boxes`.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a BOM from Windows editors
    except UnicodeDecodeError:
        raise DataError(path, "label file is not text") from None
    rows, labels, lines = [], [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        # 5 fields: a box; 7, 9, ...: a segmentation polygon "class x1 y1 x2 y2 x3 y3 ...", whose
        # bounding box is the object's box (YOLOv5 reads segment labels the same way)
        if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
            raise DataError(
                path, f"expected 5 fields 'class cx cy w h' (or a polygon 'class x1 y1 x2 y2 x3 y3 ...'), "
                f"got {len(fields)}: {line.strip()!r}", lineno,
            )  # fmt: skip
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise DataError(path, f"non-numeric field in {line.strip()!r}", lineno) from None
        cls = values[0]
        if not np.isfinite(values).all():
            raise DataError(path, f"non-finite value in {line.strip()!r}", lineno)
        if cls != int(cls) or not 0 <= cls < nc:
            raise DataError(path, f"class {fields[0]} not in the config (classes 0..{nc - 1})", lineno)
        coords = np.array(values[1:])
        if (coords < -_NORM_TOL).any() or (coords > 1 + _NORM_TOL).any():
            shown = fields[1:] if len(fields) == 5 else fields[1:5] + ["..."]
            raise DataError(path, f"coordinates {shown} are not normalised to [0, 1] (pixel coordinates?)", lineno)
        if len(coords) == 4:
            cx, cy, w, h = coords
            rows.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
        else:
            xs, ys = coords[0::2] * width, coords[1::2] * height
            rows.append([xs.min(), ys.min(), xs.max(), ys.max()])
        labels.append(int(cls))
        lines.append(lineno)
    boxes, n_clipped = check_boxes(np.array(rows).reshape(-1, 4), width, height, path, lines)
    keep = ~degenerate(boxes)  # noted by check_boxes; one bad line costs its box, not the image
    return boxes[keep], np.array(labels, dtype=np.int64)[keep], n_clipped


@register_reader("yolo", "embedded")
def read_yolo(config: DatasetConfig, spec: Any, skip_bad: bool = False) -> ReadReport:
    """Read one split of a YOLO-format dataset into records."""
    images = yolo_images(config.root, spec, config.source)
    if not images:
        raise DataError(config.source, f"no images found for split {spec!r} under {config.root}")

    def parse(image: Path) -> tuple[Record, int]:
        width, height = probe_image(image)
        lbl = label_path(image)
        if lbl.is_file():
            boxes, labels, n_clipped = parse_label_file(lbl, config.nc, width, height)
        else:
            boxes, labels, n_clipped = np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 0
        return Record(image, boxes, labels, width, height), n_clipped

    from . import cache, images as _images_mod, record as _record_mod, scan as _scan_mod

    simple = not isinstance(spec, (list, tuple)) and _resolve(spec, config.root).is_dir()
    anchor = label_path(_resolve(spec, config.root) / "_.jpg" if simple else images[0]).parent
    where = cache.cache_file(anchor, spec, simple) if cache.cache_enabled(config.options) else None
    code = cache.code_hash(sys.modules[__name__], _images_mod, _record_mod, _scan_mod)
    fp = {"reader": "yolo", "nc": config.nc, "code": code}
    return cache.cached_collect(images, parse, skip_bad, where, fp, deps=lambda im: [im, label_path(im)])
