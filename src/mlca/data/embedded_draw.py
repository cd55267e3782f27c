"""Drawing primitives of the embedded sets: shapes, textures, backgrounds, clutter, a canvas
that tracks which object owns each pixel, and placement with an occlusion limit.

Shared by :mod:`mlca.data.embedded` and :mod:`mlca.data.embedded_dense`; every function
draws from the NumPy generator it is given, so the sets stay deterministic. Changing what
these functions draw changes the sets' bytes and needs a new ``VERSION`` in each set.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

_SS = 3  # supersampling of shape masks, for anti-aliased edges

# hue ranges (fraction of the colour wheel) of the single-colour classes
_HUES = {"disc": (-0.03, 0.08), "ring": (-0.03, 0.08), "triangle": (0.25, 0.40), "star": (0.12, 0.17),
         "cross": (0.55, 0.66), "hexagon": (0.74, 0.86)}  # fmt: skip


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255


def _class_colour(rng: np.random.Generator, name: str) -> np.ndarray:
    lo, hi = _HUES[name]
    return _hsv(rng.uniform(lo, hi), rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.2, 1.0))


def _polygon(name: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Unit-size outline(s) of a class shape, centred at 0, radius ~1; the 2nd, if any, is a hole."""
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], 1)
    if name == "disc":
        return [circle]
    if name == "ring":
        return [circle, circle * rng.uniform(0.45, 0.65)]
    if name == "triangle":
        a = np.array([90, 210, 330]) + rng.uniform(-15, 15, 3)
        return [np.stack([np.cos(np.radians(a)), np.sin(np.radians(a))], 1)]
    if name == "star":
        a = np.radians(np.arange(10) * 36 + 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        return [np.stack([r * np.cos(a), r * np.sin(a)], 1)]
    if name == "cross":
        w = rng.uniform(0.28, 0.42)
        return [np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w],
                          [w, 1], [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w]])]  # fmt: skip
    if name == "hexagon":
        a = np.radians(np.arange(6) * 60)
        return [np.stack([np.cos(a), np.sin(a)], 1)]
    if name in ("checker", "stripes"):
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * 0.8]
    raise ValueError(name)


def _blob(rng: np.random.Generator) -> list[np.ndarray]:
    """An irregular clutter blob: no class has such a ragged outline."""
    n = int(rng.integers(7, 13))
    a = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(0.35, 1.0, n)
    return [np.stack([r * np.cos(a), r * np.sin(a)], 1)]


def _mask(outlines: list[np.ndarray], size: float, aspect: float, angle: float, patch: int) -> np.ndarray:
    """Anti-aliased coverage ``(patch, patch)`` float32 in [0, 1] of the transformed outlines."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    scale = np.array([np.sqrt(aspect), 1 / np.sqrt(aspect)]) * size / 2
    im = Image.new("L", (patch * _SS, patch * _SS), 0)
    draw = ImageDraw.Draw(im)
    for k, poly in enumerate(outlines):
        pts = (poly * scale) @ rot.T * _SS + patch * _SS / 2
        draw.polygon([tuple(p) for p in pts], fill=255 if k == 0 else 0)
    im = im.resize((patch, patch), Image.BOX)
    return np.asarray(im, dtype=np.float32) / 255


def _texture(name: str, rng: np.random.Generator, patch: int, angle: float) -> np.ndarray:
    """``(patch, patch, 3)`` float32 colours of an object (only its masked part is seen)."""
    yy = np.arange(patch, dtype=np.float32)[:, None] - patch / 2
    xx = np.arange(patch, dtype=np.float32)[None, :] - patch / 2
    # coordinates along the object's own axes, so textures turn with it
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    noise = rng.standard_normal((patch, patch, 1), dtype=np.float32) * 6
    if name in ("checker", "stripes"):
        c1, c2 = _random_colour(rng), _random_colour(rng)
        while np.abs(c1 - c2).sum() < 180:  # the texture must be visible
            c2 = _random_colour(rng)
        period = rng.uniform(max(3.0, patch / 14), max(4.0, patch / 5))
        if name == "checker":
            on = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
        else:
            on = np.floor(u / period) % 2 == 0
        return np.where(on[..., None], c1, c2) + noise
    base = _class_colour(rng, name)
    r = np.sqrt(xx**2 + yy**2) / (patch / 2)
    if name == "disc":  # shading of a lit ball: bright off-centre spot, darker rim
        hx, hy = rng.uniform(-0.4, 0.2, 2) * patch / 2
        d = np.sqrt((xx - hx) ** 2 + (yy - hy) ** 2) / (patch / 2)
        tex = base * (1.25 - 0.6 * d[..., None])
    elif name == "hexagon":  # a grid of darker dots
        period = rng.uniform(max(3.0, patch / 10), max(4.0, patch / 5))
        dots = (np.mod(u, period) - period / 2) ** 2 + (np.mod(v, period) - period / 2) ** 2 < (period / 4) ** 2
        tex = np.where(dots[..., None], base * 0.45, base)
    elif name == "triangle":  # a linear gradient across the object
        tex = base * (1.0 + 0.35 * (v / (patch / 2)))[..., None]
    else:
        tex = base * (1.0 - 0.15 * r[..., None])
    return tex + noise


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    a = rng.uniform(0, 2 * np.pi)
    g = (xx * np.cos(a) + yy * np.sin(a)) / max(h, w)
    g = (g - g.min()) / max(g.max() - g.min(), 1e-6)
    c1 = _hsv(rng.random(), rng.uniform(0, 0.45), rng.uniform(0.25, 0.9))
    c2 = _hsv(rng.random(), rng.uniform(0, 0.45), rng.uniform(0.25, 0.9))
    bg = c1 * (1 - g[..., None]) + c2 * g[..., None]
    # low-frequency colour noise: cloudy, textured areas
    gh, gw = (int(v) for v in rng.integers(3, 12, 2))
    low = Image.fromarray((rng.random((gh, gw, 3)) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    bg += (np.asarray(low, dtype=np.float32) - 128) * rng.uniform(0.15, 0.45)
    if rng.random() < 0.35:  # faint stripes, a texture that competes with the 'stripes' class
        period = rng.uniform(6, 30)
        b = rng.uniform(0, np.pi)
        on = np.floor((xx * np.cos(b) + yy * np.sin(b)) / period) % 2 == 0
        bg += np.where(on, 1.0, -1.0)[..., None] * rng.uniform(8, 25)
    return bg + rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(2, 9)


class _Canvas:
    """An image being drawn, with a map of which object owns each pixel (for occlusion)."""

    def __init__(self, img: np.ndarray) -> None:
        self.img = img
        self.h, self.w = img.shape[:2]
        self.owner = np.full((self.h, self.w), -1, dtype=np.int32)  # -1: background / clutter
        self.full_area: list[int] = []
        self.visible: list[int] = []  # pixels each object still shows

    def window(self, cx: int, cy: int, patch: int):
        """Canvas slices and patch slices of a patch centred at (cx, cy), cut by the border."""
        x0, y0 = cx - patch // 2, cy - patch // 2
        x1, y1 = max(x0, 0), max(y0, 0)
        x2, y2 = min(x0 + patch, self.w), min(y0 + patch, self.h)
        if x2 <= x1 or y2 <= y1:
            return None
        return (slice(y1, y2), slice(x1, x2)), (slice(y1 - y0, y2 - y0), slice(x1 - x0, x2 - x0))

    def occludes_too_much(self, cw, cover: np.ndarray, keep: float) -> bool:
        """Would painting ``cover`` leave any object with less than ``keep`` of its area visible?"""
        under = self.owner[cw][cover]
        under = under[under >= 0]
        if not len(under):
            return False
        lost = np.bincount(under, minlength=len(self.visible))
        return bool((np.array(self.visible) - lost < keep * np.array(self.full_area)).any())

    def paint(self, cw, pw, alpha: np.ndarray, tex: np.ndarray, owner: int) -> None:
        a = alpha[pw][..., None]
        self.img[cw] = self.img[cw] * (1 - a) + tex[pw] * a
        cover = alpha[pw] > 0.5
        under = self.owner[cw][cover]
        under = under[under >= 0]
        if len(under):
            lost = np.bincount(under, minlength=len(self.visible))
            self.visible = [v - int(k) for v, k in zip(self.visible, lost)]
        self.owner[cw][cover] = owner
        if owner >= 0:
            self.full_area.append(int(cover.sum()))
            self.visible.append(int(cover.sum()))


def _place(rng, canvas: _Canvas, outlines, size, aspect, angle, tex_fn, owner, keep, tries=8) -> bool:
    patch = int(np.ceil(size * 1.5)) + 2
    alpha = _mask(outlines, size, aspect, angle, patch)
    for _ in range(tries):
        # up to ~20% of an object may fall outside the image
        m = size * 0.3
        cx = int(rng.uniform(-m + size / 2, canvas.w + m - size / 2)) if canvas.w > size else canvas.w // 2
        cy = int(rng.uniform(-m + size / 2, canvas.h + m - size / 2)) if canvas.h > size else canvas.h // 2
        win = canvas.window(cx, cy, patch)
        if win is None:
            continue
        cw, pw = win
        cover = alpha[pw] > 0.5
        if owner >= 0 and cover.sum() < 0.6 * (alpha > 0.5).sum():
            continue  # too much of it outside the image
        if canvas.occludes_too_much(cw, cover, keep):
            continue
        canvas.paint(cw, pw, alpha, tex_fn(patch), owner)
        return True
    return False


def _clutter(rng: np.random.Generator, canvas: _Canvas, n: int, keep: float) -> None:
    for _ in range(n):
        size = float(np.exp(rng.uniform(np.log(8), np.log(90))))
        if rng.random() < 0.6:
            colour = _random_colour(rng)
            std = rng.uniform(3, 25)

            def tex(p, colour=colour, std=std):
                return colour + rng.standard_normal((p, p, 1), dtype=np.float32) * std

            _place(rng, canvas, _blob(rng), size, rng.uniform(0.5, 2), rng.uniform(0, np.pi), tex, -1, keep, 3)
        else:  # a thick line segment
            thick = rng.uniform(0.05, 0.15)
            line = [np.array([[-1, -thick], [1, -thick], [1, thick], [-1, thick]])]
            colour = _random_colour(rng)
            _place(rng, canvas, line, size * 1.5, 1.0, rng.uniform(0, np.pi),
                   lambda p, c=colour: np.broadcast_to(c, (p, p, 3)).copy(), -1, keep, 3)  # fmt: skip
