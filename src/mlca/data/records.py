""":func:`read_records`, the entry point of every reader, and the names readers share.

``read_records(config, split)`` loads the config, looks its format up in the reader
registry (:mod:`mlca.data.registry`) and runs that reader. The built-in readers (YOLO txt,
Pascal VOC XML, COCO JSON; the embedded set is YOLO) are imported here so that they register.

:class:`Record` (in :mod:`mlca.data.record`), :class:`ReadReport`, :func:`check_boxes` and
:func:`collect` (in :mod:`mlca.data.scan`) are re-exported, so ``mlca.data.records.Record``
keeps working; they live in leaf modules so the readers need not import this one.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import coco, voc, yolo  # noqa: F401  (the built-in formats register their readers)
from .config import load_dataset_config
from .dataset_config import DatasetConfig
from .errors import DataError
from .record import Record
from .registry import reader_for
from .scan import ReadReport, check_boxes, collect

__all__ = ["Record", "ReadReport", "read_records", "scan_records", "check_boxes", "collect"]


def scan_records(config: DatasetConfig | str | Path, split: str, skip_bad: bool = False) -> ReadReport:
    """Read a split and return the full :class:`ReadReport` (records, bad files, clipped and
    dropped boxes, restored images) without printing.

    ``config`` is a :class:`DatasetConfig` or anything :func:`load_dataset_config` takes.
    """
    config = load_dataset_config(config)
    spec = config.split(split)
    read = reader_for(config.format, config.source)
    config.check_root()
    return read(config, spec, skip_bad)


def read_records(config: DatasetConfig | str | Path, split: str, skip_bad: bool = False) -> list[Record]:
    """Read the ``split`` (``'train'``, ``'val'`` or ``'test'``) of a dataset.

    ``config`` is a :class:`DatasetConfig` or anything :func:`load_dataset_config` takes (a
    YAML path, a shipped config name, ``"embedded"``).

    Bad data raises :class:`DataError` naming the file and line. With ``skip_bad=True`` the
    bad images are left out and a summary (how many, and which, with the reason) is printed
    to stderr. Whatever ``skip_bad``, one summary per split on stderr counts what was fixed
    rather than refused: boxes clipped to their image, degenerate boxes dropped (with file
    and line), damaged JPEGs loaded anyway.
    """
    config = load_dataset_config(config)
    report = scan_records(config, split, skip_bad)
    text = report.summary(f"{config.name} {split}")
    if text:
        print(text, file=sys.stderr)
    if not report.records:
        raise DataError(config.source, f"split {split!r} of dataset {config.name!r} has no usable images")
    return report.records
