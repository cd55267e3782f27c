"""COCO JSON annotations (``images``, ``annotations`` with ``bbox: [x, y, w, h]``, ``categories``).

A COCO split spec is ``{annotations: annotations/instances_train2017.json, images: train2017}``
or just the annotation file, in which case the images are looked up (by ``file_name``) in
``<root>/<set>`` or ``<root>/images/<set>`` (``<set>`` is the file's stem without
``instances_``), then beside the JSON, then in the root.

Category ids are mapped to contiguous class indices in order of increasing id, and the
class names come from ``categories`` unless the config gives ``names`` (then categories are
matched to names by name); :func:`coco_category_ids` gives the way back, for result files.

Each record keeps what COCO's own evaluation needs: ``image_id`` is the image's ``id`` in the
JSON, ``iscrowd`` annotations are kept with ``ignore`` set (left out of training; at
evaluation they are passed to COCOeval as ``iscrowd=1``, so a detection on a crowd region is
neither a hit nor a false positive), and ``area`` is the annotation's own ``area`` (the
segmentation area, which COCOeval's small/medium/large ranges use; NaN when absent, and the
box area is used).
"""

from __future__ import annotations

import json
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .dataset_config import DatasetConfig
from .errors import DataError
from .images import probe_image
from .record import Record
from .registry import register_reader
from .scan import ReadReport, check_boxes, collect

__all__ = ["read_coco", "coco_split", "coco_names", "coco_category_ids"]


def _rel(root: Path, p: Any) -> Path:
    p = Path(str(p)).expanduser()
    return p if p.is_absolute() else root / p


def coco_split(root: Path, spec: Any, source: Path | None = None) -> tuple[Path, Path]:
    """``(annotation json, image dir)`` of a COCO split spec."""
    if isinstance(spec, dict):
        if "annotations" not in spec:
            raise DataError(source, f"COCO split {spec} needs an 'annotations' key")
        ann = _rel(root, spec["annotations"])
        images = _rel(root, spec.get("images", "."))
        return ann, images
    if isinstance(spec, (list, tuple)):
        raise DataError(source, "a COCO split is one annotation file (or a dict with annotations/images), not a list")
    ann = _rel(root, spec)
    stem = ann.stem.removeprefix("instances_")
    for d in (root / stem, root / "images" / stem, ann.parent, root):
        if d.is_dir():
            return ann, d
    return ann, root


@lru_cache(maxsize=4)
def _load(path: Path, mtime_ns: int, size: int) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON: {e.msg} (column {e.colno})", e.lineno) from None
    if not isinstance(data, dict):
        raise DataError(path, "a COCO file must hold a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(path, f"missing or non-list {key!r}")
    return data


def _coco(path: Path) -> dict:
    if not path.is_file():
        raise DataError(path, "COCO annotation file not found")
    st = path.stat()  # a rewritten file must not hit the cache
    return _load(path, st.st_mtime_ns, st.st_size)


def coco_names(path: Path) -> list[str]:
    """Class names of a COCO file: ``categories`` sorted by id."""
    cats = _coco(path)["categories"]
    return [str(c["name"]) for c in sorted(cats, key=lambda c: c["id"])]


def coco_category_ids(config: DatasetConfig, split: str) -> list[int]:
    """The COCO ``category_id`` of each class index of ``config`` (for ``split``'s JSON).

    A class whose name is not among the file's categories raises :class:`DataError`.
    """
    ann_path, _ = coco_split(config.root, config.split(split), config.source)
    by_name = {str(c["name"]): c["id"] for c in _coco(ann_path)["categories"]}
    missing = [n for n in config.names if n not in by_name]
    if missing:
        raise DataError(ann_path, f"classes {missing} of the config have no category in the file")
    return [by_name[n] for n in config.names]


@register_reader("coco")
def read_coco(config: DatasetConfig, spec: Any, skip_bad: bool = False) -> ReadReport:
    """Read one split of a COCO-format dataset into records."""
    ann_path, image_dir = coco_split(config.root, spec, config.source)
    data = _coco(ann_path)
    index = {n: i for i, n in enumerate(config.names)}
    cat_to_cls = {c["id"]: index.get(str(c["name"])) for c in data["categories"]}
    images = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not {"id", "file_name"} <= im.keys():
            raise DataError(ann_path, "image entry without 'id' and 'file_name'", where=f"images[{i}]")
        images[im["id"]] = im
    per_image: dict[Any, list[tuple[int, dict]]] = defaultdict(list)
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or a.get("image_id") not in images:
            where = f"annotations[{i}]" + (f" (id {a.get('id')})" if isinstance(a, dict) else "")
            raise DataError(ann_path, "annotation refers to no image in 'images'", where=where)
        per_image[a["image_id"]].append((i, a))

    def parse(image_id: Any) -> tuple[Record, int]:
        im = images[image_id]
        image = image_dir / im["file_name"]
        width, height = probe_image(image)
        if im.get("width") and im.get("height") and (im["width"], im["height"]) != (width, height):
            raise DataError(
                ann_path, f"JSON says {im['width']}x{im['height']} but {image} is {width}x{height}",
                where=f"image id {image_id}",
            )  # fmt: skip
        rows, labels, crowd, areas, wheres = [], [], [], [], []
        for i, a in per_image[image_id]:
            where = f"annotations[{i}] (id {a.get('id')})"
            cls = cat_to_cls.get(a.get("category_id"))
            if cls is None:
                raise DataError(ann_path, f"category {a.get('category_id')} not in the config's names", where=where)
            bbox = a.get("bbox")
            try:
                x, y, w, h = (float(v) for v in bbox)
            except (TypeError, ValueError):
                raise DataError(ann_path, f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}", where=where) from None
            area = a.get("area")
            if area is not None and (isinstance(area, bool) or not isinstance(area, (int, float)) or area < 0):
                raise DataError(ann_path, f"area must be a number >= 0, got {area!r}", where=where)
            rows.append([x, y, x + w, y + h])
            labels.append(cls)
            crowd.append(bool(a.get("iscrowd", 0)))
            areas.append(np.nan if area is None else float(area))
            wheres.append(where)
        boxes, n_clipped = check_boxes(np.array(rows).reshape(-1, 4), width, height, ann_path, wheres=wheres)
        record = Record(image, boxes, np.array(labels, dtype=np.int64), width, height,
                        ignore=np.array(crowd, dtype=bool), area=np.array(areas, dtype=np.float64),
                        image_id=image_id)  # fmt: skip
        return record, n_clipped

    return collect(sorted(images, key=lambda k: str(images[k]["file_name"])), parse, skip_bad)
