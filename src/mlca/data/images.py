"""Opening images: a cheap check at read time, a full decode at load time.

Reading records must stay fast on 17k-image datasets, so :func:`probe_image` reads only the
header (size, format) plus two cheap integrity checks; :func:`load_image` decodes fully and
turns any decoder failure into a :class:`DataError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

__all__ = ["IMAGE_SUFFIXES", "probe_image", "load_image"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def probe_image(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image, raising :class:`DataError` if it is missing or corrupt.

    Checks: the file exists, PIL recognises it, the size is positive, PNG chunk CRCs
    (``Image.verify``), and a JPEG ends with its end-of-image marker (a truncated download).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    try:
        with Image.open(path) as im:
            w, h = im.size
            fmt = im.format
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(path, f"corrupt or unreadable image ({e})") from None
    if w <= 0 or h <= 0:
        raise DataError(path, f"image has size {w}x{h}")
    if fmt == "JPEG":
        with open(path, "rb") as f:
            f.seek(-2, 2)
            if f.read() != b"\xff\xd9":
                raise DataError(path, "corrupt JPEG: truncated (no end-of-image marker)")
    return w, h


def load_image(path: Path) -> np.ndarray:
    """Decode an image to ``(H, W, 3)`` uint8 RGB (grey, palette and alpha are converted)."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.array(im.convert("RGB"))  # a writable copy: torch warns on read-only arrays
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(path, f"corrupt or unreadable image ({e})") from None
