"""Opening images as they are displayed: a cheap check at read time, a full decode at load time.

Reading records must stay fast on 17k-image datasets, so :func:`probe_image` reads only the
header (size, format, EXIF orientation) plus cheap integrity checks; :func:`load_image`
decodes fully and turns any decoder failure into a :class:`DataError` naming the file.

Both honour the EXIF ``Orientation`` tag (phone photos are often stored sideways with a tag
saying so): the size is the displayed size and the pixels are the displayed pixels, so boxes
drawn on the displayed image (as every labelling tool, YOLOv5 and ultralytics show it) line
up. The rotation itself is PIL's ``ImageOps.exif_transpose``.

A JPEG that does not end with its end-of-image marker (a truncated download, or bytes
appended after the marker) still loads, as in YOLOv5: a truncated one is decoded as far as
its data goes (the rest of the picture grey), bytes after the marker are ignored. Each is
noted as ``"restored"`` (see :func:`mlca.data.scan.note`) so the split's summary counts it.
The file itself is never rewritten. A JPEG that does not decode even so is a
:class:`DataError`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError
from .scan import note

__all__ = ["IMAGE_SUFFIXES", "probe_image", "load_image", "jpeg_damage"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

_SOI, _EOI, _SOS = b"\xff\xd8", b"\xff\xd9", b"\xff\xda"
_EXIF_ORIENTATION = 0x0112
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


def _is_pil_open(fn) -> bool:
    return getattr(fn, "__module__", None) == Image.__name__ and getattr(fn, "__name__", None) == "open"


def _find_pil_open(start):
    """PIL's own ``Image.open``, also after other libraries replaced it, or None if it is not found.

    Ultralytics swaps ``PIL.Image.open`` for a wrapper that, on an unidentified file, tries to
    install and import a HEIF plugin (a network request, then ``ModuleNotFoundError``) instead
    of raising PIL's error. The original is found where wrappers keep it: in their closures or,
    for functions whose name says "open", in their module's globals (a few levels deep).
    """
    seen, todo = set(), [start]
    for _ in range(4):
        found = []
        for fn in todo:
            if _is_pil_open(fn):
                return fn
            if id(fn) in seen:
                continue
            seen.add(id(fn))
            for cell in getattr(fn, "__closure__", None) or ():
                try:
                    found.append(cell.cell_contents)
                except ValueError:  # an empty cell
                    pass
            found += [v for v in getattr(fn, "__globals__", {}).values()
                      if callable(v) and "open" in getattr(v, "__name__", "").lower()]  # fmt: skip
        todo = [f for f in found if callable(f)]
    return None


_resolved: tuple = (None, None)  # (the Image.open last looked at, PIL's own open behind it)


def _open(fp):
    """``Image.open`` as PIL defines it (see :func:`_find_pil_open`), so a corrupt image stays a
    named :class:`DataError` in a process that has imported ultralytics. The search runs once
    per replacement of ``Image.open``, not once per image."""
    global _resolved
    current = Image.open
    if _resolved[0] is not current:
        _resolved = (current, _find_pil_open(current) or current)
    return _resolved[1](fp)


def jpeg_damage(data: bytes) -> str | None:
    """How a JPEG's end is damaged: ``None`` (ends with its end-of-image marker), or a description.

    "Bytes after the marker" when the last end-of-image marker comes after the last
    start-of-scan (the main image's entropy-coded data cannot hold either marker, so an
    earlier pair belongs to an EXIF thumbnail); otherwise the image data is cut short.
    """
    if data.endswith(_EOI):
        return None
    eoi, sos = data.rfind(_EOI), data.rfind(_SOS)
    if eoi > sos >= 0:
        return f"{len(data) - eoi - 2} byte(s) after the end-of-image marker (ignored)"
    return "truncated: no end-of-image marker (decoded as far as the data goes)"


def _decodable_bytes(data: bytes) -> bytes:
    """A truncated JPEG gets the end-of-image marker it lacks, so the decoder stops cleanly."""
    if data.startswith(_SOI) and (damage := jpeg_damage(data)) is not None and damage.startswith("truncated"):
        return data + _EOI
    return data


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8; 1 = as stored) read from the header only."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # PIL would decode the whole PNG to look for a late eXIf chunk
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block is no orientation, as exif_transpose treats it
        return 1
    return value if value in range(1, 9) else 1


def probe_image(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image as displayed, raising :class:`DataError` if it is missing or corrupt.

    Orientations 5-8 (a quarter turn) swap the stored width and height. Checks: the file
    exists, PIL recognises it, the size is positive, PNG chunk CRCs (``Image.verify``), and a
    JPEG ends with its end-of-image marker; one that does not is decoded in full here (a
    rare case), so an image that cannot be restored is refused at read time, not mid-training.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    try:
        with _open(path) as im:
            w, h = im.size
            fmt = im.format
            orientation = _orientation(im)
            im.verify()
    except _DECODE_ERRORS as e:
        raise DataError(path, f"corrupt or unreadable image ({e})") from None
    if w <= 0 or h <= 0:
        raise DataError(path, f"image has size {w}x{h}")
    if fmt == "JPEG":
        with open(path, "rb") as f:
            f.seek(-2, 2)
            intact = f.read() == _EOI
        if not intact:
            data = path.read_bytes()
            damage = jpeg_damage(data)
            try:
                with _open(io.BytesIO(_decodable_bytes(data))) as im:
                    im.load()
            except _DECODE_ERRORS as e:
                raise DataError(path, f"corrupt JPEG, {damage}, and it does not decode ({e})") from None
            note("restored", f"{path}: {damage}")
    return (h, w) if orientation >= 5 else (w, h)


def load_image(path: Path) -> np.ndarray:
    """Decode an image to ``(H, W, 3)`` uint8 RGB as displayed (EXIF orientation applied;
    grey, palette and alpha converted; a damaged JPEG end tolerated as in :func:`probe_image`)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    try:
        with _open(io.BytesIO(_decodable_bytes(data))) as im:
            orientation = _orientation(im)  # before load(), to agree with probe_image
            im.load()
            if orientation != 1:
                im = ImageOps.exif_transpose(im)
            return np.array(im.convert("RGB"))  # a writable copy: torch warns on read-only arrays
    except _DECODE_ERRORS as e:
        raise DataError(path, f"corrupt or unreadable image ({e})") from None
