"""A picture of a dataset: a grid of images with their labelled boxes, to check data by eye."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .images import load_image
from .record import Record

__all__ = ["preview_grid", "class_colour"]


def class_colour(cls: int) -> tuple[int, int, int]:
    """A distinct, stable colour per class index (golden-ratio hue steps)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((cls * 0.618034) % 1.0, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def preview_grid(
    records: Sequence[Record], names: Sequence[str], out: str | Path, cols: int = 4, cell: int = 320
) -> Path:
    """Draw ``records`` (boxes and class names) into a ``cols``-wide grid PNG at ``out``."""
    rows = (len(records) + cols - 1) // cols
    grid = Image.new("RGB", (cols * cell, rows * cell), (255, 255, 255))
    for k, rec in enumerate(records):
        im = Image.fromarray(load_image(rec.image))
        scale = cell / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
        draw = ImageDraw.Draw(im)
        for box, cls in zip(np.asarray(rec.boxes) * scale, rec.labels):
            c = class_colour(int(cls))
            draw.rectangle([float(v) for v in box], outline=c, width=2)
            draw.text((float(box[0]) + 2, float(box[1]) + 1), names[int(cls)], fill=c)
        grid.paste(im, ((k % cols) * cell, (k // cols) * cell))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out
