"""Scanning a split: the box checks every reader shares, and gathering records into a report.

All formats end up as the same list of :class:`~mlca.data.record.Record` s: boxes in
original-image pixels, xyxy, with contiguous class indices. The readers share one set of box
checks (:func:`check_boxes`) and one loop (:func:`collect`), so "outside the image",
"clipped", "degenerate" and "restored" mean the same thing whatever the format.

Things that are fixed rather than refused (a degenerate box dropped, a damaged JPEG loaded)
are reported as :class:`Note` s: the code that finds one calls :func:`note`, and
:func:`parse_one` (which :func:`collect` runs per item) gathers the notes of its item into
its result. So they reach the :class:`ReadReport` without every reader passing them along,
and a parallel or cached scan gets them with each item's result.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import numpy as np

from .errors import DataError
from .record import Record

__all__ = [
    "Note", "note", "ReadReport", "check_boxes", "degenerate", "drop_degenerate", "parse_one", "collect", "add_result",
]

# a box may poke out of the image by this many pixels (float rounding of normalised or
# 1-based coordinates) before it is counted as clipped
_CLIP_TOL = 0.01

# how many notes of a kind a summary lists before it says "... and N more"
_LIST_LIMIT = 10


class Note(NamedTuple):
    """Something a reader fixed instead of refusing, located (a plain pair, so a cache can store it).

    Attributes:
        kind: ``"restored"`` (a JPEG without its end marker, or with bytes after it, loaded as
            decoded) or ``"dropped"`` (a degenerate box left out of its image's record).
        text: where and what, e.g. ``"labels/a.txt:3: degenerate box [...]"``.
    """

    kind: str
    text: str


_NOTES: ContextVar[list[Note] | None] = ContextVar("mlca_data_scan_notes", default=None)


def note(kind: str, text: str) -> None:
    """Record a :class:`Note` for the item being parsed (a no-op outside :func:`parse_one`)."""
    notes = _NOTES.get()
    if notes is not None:
        notes.append(Note(kind, text))


@dataclass
class ReadReport:
    """What a reader found: good records, bad files, clipped and dropped boxes, restored images."""

    records: list[Record] = field(default_factory=list)
    bad: list[DataError] = field(default_factory=list)
    clipped: int = 0
    clipped_files: list[Path] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # one located text per degenerate box left out
    restored: list[str] = field(default_factory=list)  # one text per damaged JPEG loaded anyway

    def summary(self, split: str = "", limit: int | None = _LIST_LIMIT) -> str:
        """A short human-readable report (empty when nothing was skipped, clipped, dropped or restored).

        ``limit``: list at most this many dropped boxes and restored images (``None``: all);
        bad images are always all listed, since each one is an image left out.
        """
        what = f" ({split})" if split else ""
        lines = []
        if self.bad:
            lines.append(f"skipped {len(self.bad)} bad image(s){what}:")
            lines += [f"  {e}" for e in self.bad]
        if self.restored:
            lines.append(
                f"restored {len(self.restored)} corrupt JPEG(s){what}: no end-of-image marker (truncated) "
                f"or bytes after it; loaded as far as they decode:"
            )
            lines += _listed(self.restored, limit)
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} degenerate box(es){what} (zero width or height "
                         f"after clipping to the image); their images are kept:")  # fmt: skip
            lines += _listed(self.dropped, limit)
        if self.clipped:
            lines.append(
                f"clipped {self.clipped} box(es) partly outside the image{what} "
                f"in {len(self.clipped_files)} file(s)"
            )
        return "\n".join(lines)


def _listed(items: list[str], limit: int | None) -> list[str]:
    shown = items if limit is None else items[:limit]
    out = [f"  {t}" for t in shown]
    if len(items) > len(shown):
        out.append(f"  ... and {len(items) - len(shown)} more (`mlca check` lists all)")
    return out


def degenerate(boxes: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: the xyxy boxes with zero or negative width or height."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    return (boxes[:, 2] - boxes[:, 0] <= 0) | (boxes[:, 3] - boxes[:, 1] <= 0)


def check_boxes(
    boxes: np.ndarray,
    width: int,
    height: int,
    file: Path,
    lines: list[int | None] | None = None,
    wheres: list[str | None] | None = None,
) -> tuple[np.ndarray, int]:
    """Validate and clip boxes against the image.

    A box that is degenerate after clipping (zero or negative width or height: inverted,
    empty, or wholly outside the image) is not an error: it is returned clipped (still
    degenerate, so :func:`degenerate` finds it) and noted as ``"dropped"`` with its location;
    :func:`parse_one` then leaves it out of the record, so one bad box costs that box, not the
    image. Callers outside a scan drop them with :func:`drop_degenerate` or :func:`degenerate`.

    Args:
        boxes: ``(n, 4)`` xyxy in pixels (float64 preferred).
        width, height: the image size.
        file: the annotation file, for errors and notes.
        lines / wheres: per box, its line number / location in ``file``, for errors and notes.

    Returns:
        ``(boxes (n, 4) float32 clipped to the image, number of kept boxes that were clipped)``.

    Raises:
        DataError: a non-finite box (a value that no clipping makes meaningful).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    lines = lines if lines is not None else [None] * n
    wheres = wheres if wheres is not None else [None] * n
    clipped = np.empty_like(boxes)
    clipped[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    bad = degenerate(clipped)
    n_clipped = 0
    for i, (b, c) in enumerate(zip(boxes, clipped)):
        desc = f"box [{b[0]:.6g}, {b[1]:.6g}, {b[2]:.6g}, {b[3]:.6g}] (xyxy px) in a {width}x{height} image"
        if not np.isfinite(b).all():
            raise DataError(file, f"non-finite {desc}", lines[i], wheres[i])
        if bad[i]:
            if b[2] < b[0] or b[3] < b[1]:
                why = "inverted (x2 < x1 or y2 < y1)"
            elif b[0] >= width or b[1] >= height or b[2] <= 0 or b[3] <= 0:
                why = "outside the image"
            else:
                why = "zero width or height"
            # worded and located as an error would be, so a dropped box reads like a refused one
            note("dropped", str(DataError(file, f"degenerate {desc}: {why}", lines[i], wheres[i])))
        elif np.abs(b - c).max() > _CLIP_TOL:
            n_clipped += 1
    return clipped.astype(np.float32), n_clipped


def drop_degenerate(record: Record) -> Record:
    """``record`` without its degenerate boxes (and their entries in every per-box array)."""
    bad = degenerate(record.boxes)
    return record.select(~bad) if bad.any() else record


def parse_one(parse: Callable[[object], tuple], item: object) -> tuple[Record, int, list[Note]]:
    """``parse(item)`` with its notes gathered and its degenerate boxes dropped.

    ``parse(item)`` returns ``(record, n_clipped)``, or ``(record, n_clipped, notes)`` when it
    replays an earlier result (a cache): those notes, ``Note`` s or ``(kind, text)`` pairs, are
    kept with the ones made now. Returns ``(record, n_clipped, notes)``, so a parallel or cached
    scan can run this per item and store the result whole; a :class:`DataError` from ``parse``
    propagates. Safe in worker threads or processes (each call gathers only its own notes).
    """
    notes: list[Note] = []
    token = _NOTES.set(notes)
    try:
        record, n_clipped, *earlier = parse(item)
    finally:
        _NOTES.reset(token)
    old = [Note(*n) for n in earlier[0]] if earlier else []
    return drop_degenerate(record), n_clipped, old + notes


def collect(
    items: Iterable,
    parse: Callable[[object], tuple[Record, int]],
    skip_bad: bool,
) -> ReadReport:
    """Run ``parse`` on each item, gathering records, clip counts, notes and (with skip_bad) errors.

    ``parse(item) -> (record, n_clipped)`` (or ``(record, n_clipped, notes)``, see
    :func:`parse_one`) raises :class:`DataError` for bad data: re-raised at once unless
    ``skip_bad``, in which case the item is dropped and remembered.
    """
    report = ReadReport()
    for item in items:
        try:
            result = parse_one(parse, item)
        except DataError as e:
            if not skip_bad:
                raise
            report.bad.append(e)
            continue
        add_result(report, *result)
    return report


def add_result(report: ReadReport, record: Record, n_clipped: int, notes: list[Note]) -> None:
    """Add one :func:`parse_one` result to ``report`` (for readers that run items in another order)."""
    report.records.append(record)
    if n_clipped:
        report.clipped += n_clipped
        report.clipped_files.append(record.image)
    for n in notes:
        getattr(report, n.kind).append(n.text)  # a note's kind names its list in the report
