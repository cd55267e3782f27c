"""Write any dataset mlca reads as a YOLO-format dataset (``images/``, ``labels/``, a data YAML).

The result is what YOLOv5 / Ultralytics read as-is: ``images/<split>/<file>`` with
``labels/<split>/<stem>.txt`` beside them (one ``class cx cy w h`` line per object, normalised
to the image size, an empty file for an image without objects) and a ``data.yaml`` with an
absolute ``path``, the split folders and ``names`` (index -> name). Ultralytics resolves a
relative ``path`` against its own datasets folder, so the path is written absolute.

Objects a reader leaves out (VOC ``difficult``, COCO ``iscrowd``) are not written, and boxes
are the reader's (clipped to the image), so mlca reads the export back to the same records.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import yaml

from .config import DatasetConfig, load_dataset_config
from .records import Record, read_records

__all__ = ["export_yolo", "yolo_lines"]


def yolo_lines(record: Record) -> str:
    """The YOLO label text of a record: ``class cx cy w h`` per object, normalised, 6 decimals."""
    w, h = record.width, record.height
    out = []
    for c, (x1, y1, x2, y2) in zip(record.labels.tolist(), record.boxes.astype("float64").tolist()):
        out.append(f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n")
    return "".join(out)


def _place(src: Path, dst: Path, link: bool) -> None:
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy
    shutil.copyfile(src, dst)


def export_yolo(
    data: str | Path | DatasetConfig,
    out: str | Path,
    splits: tuple[str, ...] | None = None,
    link: bool = False,
    overwrite: bool = False,
    limits: dict[str, int] | None = None,
) -> Path:
    """Write ``data`` (anything :func:`load_dataset_config` takes) as a YOLO dataset in ``out``.

    Args:
        splits: the splits to write (default: train, val, and test when the config has one).
        link: hard-link the images instead of copying them (falls back to a copy).
        overwrite: replace an existing non-empty ``out``.
        limits: split -> N: write only the first N images of that split (as ``--max-train-images``
            and ``--max-val-images`` read them).

    Returns:
        the written ``out/data.yaml``.

    The set is written into a temporary folder beside ``out`` and renamed into place, so an
    interrupted export leaves no half dataset.
    """
    cfg = load_dataset_config(data)
    out = Path(out).expanduser().absolute()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --overwrite to replace it)")
    if splits is None:
        splits = ("train", "val") + (("test",) if cfg.test not in (None, "", []) else ())
    records = {split: read_records(cfg, split)[: (limits or {}).get(split)] for split in splits}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for split, recs in records.items():
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            names = [r.image.name for r in recs]
            unique = len(set(names)) == len(names)  # else (several source folders) number them
            for i, r in enumerate(recs):
                name = r.image.name if unique else f"{i:06d}_{r.image.name}"
                _place(r.image, tmp / "images" / split / name, link)
                (tmp / "labels" / split / Path(name).with_suffix(".txt")).write_text(yolo_lines(r))
        doc = {"path": str(out), **{s: f"images/{s}" for s in splits}, "nc": cfg.nc,
               "names": dict(enumerate(cfg.names))}  # fmt: skip
        header = f"# {cfg.name} written as a YOLO dataset by mlca (mlca data export)\n"
        (tmp / "data.yaml").write_text(header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        os.chmod(tmp, 0o755)
        if out.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, stale / "old")
            os.replace(tmp, out)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "data.yaml"
