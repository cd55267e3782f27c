"""Which function reads which dataset format: ``register_reader`` and ``reader_for``.

A reader is ``read(config, spec, skip_bad) -> ReadReport`` for one split spec of a
:class:`~mlca.data.config.DatasetConfig`. The built-in readers (``mlca.data.yolo``, ``voc``,
``coco``) register themselves when imported; :mod:`mlca.data.records` imports them, so
:func:`~mlca.data.records.read_records` knows them. A new format is one decorated function::

    from mlca.data.registry import register_reader

    @register_reader("csv")
    def read_csv(config, spec, skip_bad=False):
        ...  # -> ReadReport

This module is a leaf (it imports only :mod:`mlca.data.errors`), so readers and the config
can both depend on it without depending on each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .errors import DataError

__all__ = ["BUILTIN_FORMATS", "register_reader", "reader_for", "known_formats"]

# the formats mlca ships readers for; their modules register them on import
BUILTIN_FORMATS = ("voc", "yolo", "coco", "embedded")

_READERS: dict[str, Callable] = {}


def register_reader(*formats: str) -> Callable[[Callable], Callable]:
    """Decorator: ``fn`` reads each of ``formats`` (lower-case names, e.g. ``"yolo"``).

    Registering a format twice with a different function is an error (two readers would
    silently shadow each other depending on import order).
    """
    if not formats:
        raise TypeError("register_reader needs at least one format name")

    def deco(fn: Callable) -> Callable:
        for fmt in formats:
            if fmt != fmt.lower() or not fmt:
                raise ValueError(f"format names are lower-case and non-empty, got {fmt!r}")
            old = _READERS.get(fmt)
            if old is not None and old is not fn and _qualname(old) != _qualname(fn):
                raise ValueError(f"format {fmt!r} already has a reader: {_qualname(old)}")
            _READERS[fmt] = fn
        return fn

    return deco


def _qualname(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"


def known_formats() -> tuple[str, ...]:
    """Every format a config may name: the built-in ones and any registered since."""
    return tuple(sorted(set(BUILTIN_FORMATS) | set(_READERS)))


def reader_for(fmt: str, source: Path | None = None) -> Callable:
    """The reader registered for ``fmt``; :class:`DataError` (naming ``source``) listing the known ones."""
    try:
        return _READERS[fmt]
    except KeyError:
        raise DataError(
            source, f"no reader for dataset format {fmt!r}; known formats: {', '.join(sorted(_READERS))}"
        ) from None
