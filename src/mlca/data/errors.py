"""The one exception every dataset reader raises for bad data.

A user with 17,000 annotation files needs to know *which* file and *which* line broke, not
a bare ``ValueError`` from deep inside NumPy, so every check in :mod:`mlca.data` raises
:class:`DataError` with the offending file and, where there is one, the line.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad or missing data, located to a file and (where it has lines) a line.

    Attributes:
        file: the file that holds the bad data (an image, label, XML, JSON or YAML file).
        line: 1-based line number in ``file``, or ``None``.
        where: a location that is not a line (e.g. ``"annotations[12] (id 40)"`` in a COCO
            JSON file), or ``None``.
        reason: what is wrong, without the location.
    """

    def __init__(
        self,
        file: str | Path | None,
        reason: str,
        line: int | None = None,
        where: str | None = None,
    ) -> None:
        self.file = Path(file) if file is not None else None
        self.line = line
        self.where = where
        self.reason = reason
        super().__init__(f"{self.location}: {reason}" if self.location else reason)

    @property
    def location(self) -> str:
        """``file:line`` or ``file (where)`` or ``file``; empty when no file is known."""
        if self.file is None:
            return ""
        loc = str(self.file)
        if self.line is not None:
            loc += f":{self.line}"
        if self.where:
            loc += f" ({self.where})"
        return loc

    def __reduce__(self):
        # DataLoader workers pickle exceptions back to the main process
        return (type(self), (self.file, self.reason, self.line, self.where))
