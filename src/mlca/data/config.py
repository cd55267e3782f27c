"""Dataset configs: one YAML file names the format, the paths, the classes and the splits.

The format is YOLOv5's data YAML, extended with a ``format`` key, so a YOLOv5 data YAML
loads as-is (its format is inferred as ``yolo``)::

    format: voc                 # voc | yolo | coco | embedded (default: yolo)
    path: /data/VOCdevkit       # the dataset root; relative paths are relative to this file
    train: [VOC2007/trainval, VOC2012/trainval]
    val: VOC2007/test
    names: [aeroplane, bicycle, ...]   # a list, or a dict {0: aeroplane, 1: ...}

What a split (``train``/``val``/``test``) may be depends on the format; see ``docs/data.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import DataError

__all__ = ["DatasetConfig", "load_dataset_config", "FORMATS", "VOC_NAMES"]

FORMATS = ("voc", "yolo", "coco", "embedded")

# Pascal VOC's 20 classes in their usual order (the default names of a VOC config)
VOC_NAMES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip

_KNOWN_KEYS = {"name", "format", "path", "root", "train", "val", "test", "names", "nc", "download"}


@dataclass
class DatasetConfig:
    """Where a dataset lives and what is in it.

    Attributes:
        name: a short name (the YAML file's stem unless it sets ``name``).
        format: ``'voc'``, ``'yolo'``, ``'coco'`` or ``'embedded'``.
        root: the dataset root; split paths are relative to it.
        train, val: format-specific split specs (a path, or a list of paths, or for COCO a
            dict ``{annotations: ..., images: ...}``).
        names: class names; a class index is a position in this list.
        test: optional third split.
        options: other keys of the YAML (e.g. ``keep_difficult`` for VOC).
        source: the YAML file this came from (``None`` when built in code).
    """

    name: str
    format: str
    root: Path
    train: Any
    val: Any
    names: list[str]
    test: Any = None
    options: dict = field(default_factory=dict)
    source: Path | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.format not in FORMATS:
            raise DataError(self.source, f"unknown dataset format {self.format!r}; expected one of {FORMATS}")

    @property
    def nc(self) -> int:
        """Number of classes."""
        return len(self.names)

    def split(self, split: str) -> Any:
        """The spec of ``split`` (``'train'``, ``'val'`` or ``'test'``)."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        spec = getattr(self, split)
        if spec is None or spec == [] or spec == "":
            raise DataError(self.source, f"dataset {self.name!r} has no {split!r} split")
        return spec


def _names(value: Any, source: Path) -> list[str]:
    if isinstance(value, dict):
        try:
            keys = sorted(int(k) for k in value)
        except (TypeError, ValueError):
            raise DataError(source, f"'names' dict keys must be class indices, got {list(value)[:5]}") from None
        if keys != list(range(len(keys))):
            raise DataError(source, f"'names' dict keys must be 0..{len(keys) - 1}, got {keys}")
        value = [{int(k): v for k, v in value.items()}[i] for i in keys]
    if not isinstance(value, (list, tuple)):
        raise DataError(source, f"'names' must be a list or a dict, got {type(value).__name__}")
    names = [str(n) for n in value]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DataError(source, f"duplicate class names {dup}")
    return names


def _find(spec: str | Path) -> tuple[Path, Path]:
    """The YAML file for ``spec`` and the directory its relative ``path`` is relative to."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path, path.parent.resolve()
    # a bare name ("voc") names a config shipped with mlca; its relative paths are relative
    # to the current directory, since the package directory holds no data
    if path.suffix == "" and len(path.parts) == 1:
        from .download import dataset_yaml  # a set fetched by `mlca data get NAME` comes first

        if dataset_yaml(path.name).is_file():
            return dataset_yaml(path.name), dataset_yaml(path.name).parent
        shipped = resources.files("mlca") / "configs" / f"{path.name}.yaml"
        if shipped.is_file():
            return Path(str(shipped)), Path.cwd()
    raise DataError(path, "dataset config not found (expected a YAML file, a shipped config name, or 'embedded')")


def load_dataset_config(spec: str | Path | DatasetConfig) -> DatasetConfig:
    """Load a dataset config.

    Args:
        spec: a YAML path (a YOLOv5 data YAML works as-is), the name of a config shipped in
            ``mlca/configs`` (e.g. ``"voc"``), ``"embedded"`` for the built-in synthetic set
            (generated on first use), or an already loaded :class:`DatasetConfig`.

    Raises:
        DataError: the file is missing, is not valid YAML (with the line), or lacks a key.
    """
    if isinstance(spec, DatasetConfig):
        return spec
    if str(spec) == "embedded":
        from .embedded import embedded_config

        return embedded_config()
    path, base = _find(spec)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark is not None else None
        raise DataError(path, f"invalid YAML: {e.problem}", line) from None
    except yaml.YAMLError as e:
        raise DataError(path, f"invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise DataError(path, f"a dataset config must be a mapping, got {type(data).__name__}")

    fmt = str(data.get("format", "yolo")).lower()
    if fmt not in FORMATS:
        raise DataError(path, f"unknown dataset format {fmt!r}; expected one of {FORMATS}")
    if fmt == "embedded":
        from .embedded import embedded_config

        return embedded_config()
    for key in ("train", "val"):
        if data.get(key) in (None, "", []):
            raise DataError(path, f"missing {key!r} split")

    root = data.get("path", data.get("root"))
    root = base if root in (None, "") else Path(str(root)).expanduser()
    root = root if root.is_absolute() else (base / root)

    if "names" in data:
        names = _names(data["names"], path)
    elif fmt == "voc":
        names = list(VOC_NAMES)
    elif fmt == "coco":
        from .coco import coco_names, coco_split

        names = coco_names(coco_split(root, data["train"], path)[0])
    else:
        raise DataError(path, "missing 'names' (the class names)")
    if "nc" in data and int(data["nc"]) != len(names):
        raise DataError(path, f"'nc' is {data['nc']} but 'names' has {len(names)} entries")
    if not names:
        raise DataError(path, "'names' is empty")

    return DatasetConfig(
        name=str(data.get("name", path.stem)),
        format=fmt,
        root=root,
        train=data["train"],
        val=data["val"],
        names=names,
        test=data.get("test"),
        options={k: v for k, v in data.items() if k not in _KNOWN_KEYS},
        source=path,
    )
