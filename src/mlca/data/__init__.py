"""Datasets for detection: config, readers (VOC, YOLO, COCO), augmentation, the embedded set.

Everything a trainer needs::

    from mlca.data import load_dataset_config, read_records, DetectionDataset, collate
    cfg = load_dataset_config("embedded")          # or a YAML path, or "voc"
    train = DetectionDataset(read_records(cfg, "train"), img_size=256, augment=True)

Submodules are imported lazily, so ``import mlca.data.config`` does not pull in torchvision.
"""

from __future__ import annotations

import importlib

_API = {
    "DatasetConfig": "config",
    "load_dataset_config": "config",
    "Record": "record",
    "ReadReport": "scan",
    "read_records": "records",
    "scan_records": "records",
    "DataError": "errors",
    "DetectionDataset": "dataset",
    "collate": "dataset",
    "DEFAULT_HYP": "transforms",
    "letterbox": "transforms",
    "mosaic4": "mosaic",
    "embedded_config": "embedded",
    "generate_embedded": "embedded",
    "ensure_embedded": "embedded",
    "preview_grid": "preview",
    "check_dataset": "check",
    "register_reader": "registry",
    "get_dataset": "download",
    "export_yolo": "yolo_export",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mlca.data' has no attribute {name!r}")


def __dir__():
    return __all__
