""":class:`DatasetConfig`: where a dataset lives and what is in it (the parsed data YAML).

A leaf of the data package (it imports only the error type and the format registry), so the
readers and the embedded set can build or take a config without importing the YAML loader in
:mod:`mlca.data.config`, which imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError
from .registry import known_formats

__all__ = ["DatasetConfig", "check_root"]


def check_root(root: Path, tried: tuple[tuple[Path, str], ...], source: Path | None) -> None:
    """:class:`DataError` (naming ``source``) if ``root`` does not exist, listing every reading tried."""
    if root.exists():
        return
    if tried:
        raise DataError(source, "dataset root not found; tried " + "; ".join(f"{p} ({how})" for p, how in tried))
    raise DataError(source, f"dataset root {root} not found")


@dataclass
class DatasetConfig:
    """Where a dataset lives and what is in it.

    Attributes:
        name: a short name (the YAML file's stem unless it sets ``name``).
        format: a registered format, e.g. ``'voc'``, ``'yolo'``, ``'coco'`` or ``'embedded'``.
        root: the dataset root; split paths are relative to it.
        train, val: format-specific split specs (a path, or a list of paths, or for COCO a
            dict ``{annotations: ..., images: ...}``).
        names: class names; a class index is a position in this list.
        test: optional third split.
        options: other keys of the YAML (e.g. ``keep_difficult`` for VOC).
        source: the YAML file this came from (``None`` when built in code).
        root_tried: the readings of a relative ``path:`` that were tried, as
            ``(path, how it was read)`` in the order tried (empty when ``path`` was absolute
            or absent); an error about a missing root lists them.
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
    root_tried: tuple[tuple[Path, str], ...] = ()

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.format not in known_formats():
            raise DataError(self.source, f"unknown dataset format {self.format!r}; expected one of {known_formats()}")

    def check_root(self) -> None:
        """:class:`DataError` if the root does not exist, listing every reading of ``path:`` tried."""
        check_root(self.root, self.root_tried, self.source)

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
