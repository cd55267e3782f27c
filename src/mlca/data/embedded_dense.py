"""The dense embedded set: many small objects of two classes on textured, aerial-like ground.

The first embedded set (:mod:`mlca.data.embedded`) has few, mostly large objects of eight
classes; detectors that do well on it can still fall behind on aerial data, where an image holds
dozens of small, crowded objects of one or two classes. This set looks like that:

- 2 classes: ``vehicle`` (elongated rectangles, aspect 1.8-2.8, any colour, with a darker
  window band) and ``tank`` (discs with the lit-ball shading of the first set, warm colours);
- 25-70 objects per image, 7-22 px (log-uniform), in 1-4 crowded clusters ("parking lots")
  plus scattered ones, touching or overlapping (each keeps 70% of its area visible);
- ground: the first set's textured backgrounds, with roads (long grey bands) and small
  clutter (blobs and short lines) drawn between the objects.

Images are 256-320 px per side. Drawing, determinism and the on-disk layout are the first
set's (the same helpers), so ``generate_embedded(out, variant="embedded-dense")`` writes it.
"""

from __future__ import annotations

import numpy as np

from .embedded_draw import _background, _Canvas, _clutter, _hsv, _mask, _place, _polygon, _random_colour, _texture

__all__ = ["NAMES", "VERSION", "N_TRAIN", "N_VAL", "render_dense_image"]

VERSION = 1
NAMES = ["vehicle", "tank"]
N_TRAIN = 300
N_VAL = 80


def _vehicle_texture(rng: np.random.Generator, patch: int, angle: float) -> np.ndarray:
    """A body colour with a darker band across the front third, along the object's long axis."""
    xx = np.arange(patch, dtype=np.float32)[None, :] - patch / 2
    yy = np.arange(patch, dtype=np.float32)[:, None] - patch / 2
    u = (xx * np.cos(angle) + yy * np.sin(angle)) / (patch / 2)
    body = _random_colour(rng)
    band = (u > 0.1) & (u < 0.35)
    tex = np.where(band[..., None], body * 0.35, body)
    return tex + rng.standard_normal((patch, patch, 1), dtype=np.float32) * 5


def _road(rng: np.random.Generator, canvas: _Canvas) -> None:
    """A long grey band across the image (behind the objects)."""
    h, w = canvas.h, canvas.w
    length = float(max(h, w)) * 1.4
    thick = rng.uniform(0.04, 0.08)
    line = [np.array([[-1, -thick], [1, -thick], [1, thick], [-1, thick]])]
    grey = _hsv(0, 0, rng.uniform(0.35, 0.6))
    patch = int(np.ceil(length * 1.5)) + 2
    alpha = _mask(line, length, 1.0, rng.uniform(0, np.pi), patch)
    cx, cy = int(rng.uniform(0, w)), int(rng.uniform(0, h))
    win = canvas.window(cx, cy, patch)
    if win is not None:
        cw, pw = win
        canvas.paint(cw, pw, alpha, np.broadcast_to(grey, (patch, patch, 3)).copy(), -1)


def render_dense_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one image: ``(image (H, W, 3) uint8, boxes (n, 4) xyxy pixels, labels (n,))``."""
    from scipy.ndimage import find_objects

    h, w = (int(v) for v in rng.choice([256, 288, 320], 2))
    canvas = _Canvas(_background(rng, h, w))
    for _ in range(int(rng.integers(1, 4))):
        _road(rng, canvas)
    _clutter(rng, canvas, int(rng.integers(3, 10)), keep=1.0)
    n = int(rng.integers(25, 71))
    # crowded clusters: a sub-canvas per cluster so that _place's uniform positions fall inside it
    clusters = [(int(rng.uniform(0.15, 0.85) * w), int(rng.uniform(0.15, 0.85) * h), int(rng.uniform(30, 70)))
                for _ in range(int(rng.integers(1, 5)))]
    labels: list[int] = []
    for k in range(n):
        cls = int(rng.random() < 0.35)  # tanks are the rarer class
        size = float(np.exp(rng.uniform(np.log(7), np.log(22))))
        angle = rng.uniform(0, 2 * np.pi)
        if cls == 0:
            outlines, aspect = _polygon("stripes", rng), rng.uniform(1.8, 2.8)

            def tex(p, a=angle):
                return _vehicle_texture(rng, p, a)
        else:
            outlines, aspect = _polygon("disc", rng), 1.0

            def tex(p, a=angle):
                return _texture("disc", rng, p, a)
        target: _Canvas | _SubCanvas = canvas
        if k < 0.7 * n:  # most objects in a cluster, the rest scattered
            cx, cy, r = clusters[k % len(clusters)]
            x0, y0 = max(cx - r, 0), max(cy - r, 0)
            x1, y1 = min(cx + r, w), min(cy + r, h)
            target = _SubCanvas(canvas, x0, y0, x1, y1)
        ok = _place(rng, target, outlines, size, aspect, angle, tex, len(labels), keep=0.7)
        if ok:
            labels.append(cls)
    _clutter(rng, canvas, int(rng.integers(0, 3)), keep=0.7)
    boxes = [[sx.start, sy.start, sx.stop, sy.stop] for sy, sx in find_objects(canvas.owner + 1, len(labels))]
    img = np.clip(canvas.img, 0, 255).round().astype(np.uint8)
    return img, np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(labels, dtype=np.int64)


class _SubCanvas:
    """A rectangle of a :class:`~mlca.data.embedded_draw._Canvas` that ``_place`` can draw into:
    positions are drawn inside it, pixels and ownership are the parent's."""

    def __init__(self, parent: _Canvas, x0: int, y0: int, x1: int, y1: int) -> None:
        self.parent, self.x0, self.y0 = parent, x0, y0
        self.w, self.h = x1 - x0, y1 - y0

    def window(self, cx: int, cy: int, patch: int):
        return self.parent.window(cx + self.x0, cy + self.y0, patch)

    def occludes_too_much(self, cw, cover, keep):
        return self.parent.occludes_too_much(cw, cover, keep)

    def paint(self, cw, pw, alpha, tex, owner):
        self.parent.paint(cw, pw, alpha, tex, owner)
