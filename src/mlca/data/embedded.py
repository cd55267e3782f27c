"""The embedded dataset: procedurally drawn objects on cluttered, textured backgrounds.

``mlca train`` must work on a fresh machine with no download, and the attention modules
mlca compares must have something to do, so this set is built to need both *what* (colour,
texture: channel attention) and *where* (shape, context: spatial attention):

- 8 classes, each with a shape AND a colour/texture statistic, paired so that neither cue
  alone separates every class: ``disc`` and ``ring`` share their warm colours and differ by
  the hole; ``checker`` and ``stripes`` share shape and random colours and differ by texture;
  ``triangle``, ``star``, ``cross``, ``hexagon`` each have a shape and a hue range.
- intra-class variation: size 12-120 px (log-uniform), aspect 0.7-1.4, any rotation, hue /
  saturation / brightness jitter, shading;
- textured backgrounds (gradients, low-frequency colour noise, stripes, pixel noise) and
  clutter: irregular blobs and thick lines in any colour, behind and in front of objects;
- occlusion: objects overlap (each keeps at least half of its area visible; its box is the
  box of its visible pixels, as in VOC);
- a fifth of the images hold 10-25 small objects (12-32 px).

Images are 240-320 px per side (non-square, to exercise the letterbox), JPEG quality 90,
written in the YOLO layout (``images/{train,val}``, ``labels/{train,val}``, ``data.yaml``).

A second set, ``embedded-dense`` (:mod:`mlca.data.embedded_dense`), looks like aerial imagery:
many small, dense objects of two classes on textured ground. Both are written by the code below;
a *variant* names the set (its renderer, class names, version and default size).

Generation is deterministic: image ``i`` of a split is drawn from its own NumPy generator
seeded with ``(seed, split, i)``, so a smaller set is a prefix of the full one. It is written
into a temporary folder and renamed into place with a completion marker, so two processes
that generate at once both end with the same complete set.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import find_objects

from .dataset_config import DatasetConfig

__all__ = [
    "NAMES",
    "VERSION",
    "N_TRAIN",
    "N_VAL",
    "embedded_home",
    "embedded_root",
    "ensure_embedded",
    "embedded_config",
    "generate_embedded",
    "render_image",
]

VERSION = 2
NAMES = ["disc", "ring", "triangle", "star", "cross", "hexagon", "checker", "stripes"]
N_TRAIN = 600
N_VAL = 150
SEED = 20230607  # any fixed number; changing it (or the drawing code) needs a new VERSION
MARKER = "COMPLETE.json"
_SPLIT_CODE = {"train": 0, "val": 1}
_SS = 3  # supersampling of shape masks, for anti-aliased edges

# hue ranges (fraction of the colour wheel) of the single-colour classes
_HUES = {"disc": (-0.03, 0.08), "ring": (-0.03, 0.08), "triangle": (0.25, 0.40), "star": (0.12, 0.17),
         "cross": (0.55, 0.66), "hexagon": (0.74, 0.86)}  # fmt: skip


def embedded_home() -> Path:
    """``$MLCA_HOME`` or ``~/.cache/mlca``."""
    home = os.environ.get("MLCA_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "mlca"


def _variant(variant: str):
    """``(render, names, version, n_train, n_val)`` of a set: ``"embedded"`` or ``"embedded-dense"``."""
    if variant == "embedded":
        return render_image, NAMES, VERSION, N_TRAIN, N_VAL
    if variant == "embedded-dense":
        from . import embedded_dense as d

        return d.render_dense_image, d.NAMES, d.VERSION, d.N_TRAIN, d.N_VAL
    raise ValueError(f"unknown embedded set {variant!r}; choose 'embedded' or 'embedded-dense'")


def embedded_root(n_train: int | None = None, n_val: int | None = None, variant: str = "embedded") -> Path:
    """Where the set lives: ``<home>/<variant>-v<VERSION>`` (with the counts appended when not the default)."""
    _, _, version, d_train, d_val = _variant(variant)
    n_train, n_val = d_train if n_train is None else n_train, d_val if n_val is None else n_val
    name = f"{variant}-v{version}"
    if (n_train, n_val) != (d_train, d_val):
        name += f"-{n_train}-{n_val}"
    return embedded_home() / name


# ----------------------------------------------------------------------------- drawing


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


def render_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one image: ``(image (H, W, 3) uint8, boxes (n, 4) xyxy pixels, labels (n,))``."""
    h, w = (int(v) for v in rng.choice([240, 256, 288, 320], 2))
    canvas = _Canvas(_background(rng, h, w))
    _clutter(rng, canvas, int(rng.integers(2, 9)), keep=1.0)  # behind everything
    small = rng.random() < 0.2
    n = int(rng.integers(10, 26)) if small else int(rng.integers(2, 9))
    labels = []
    for _ in range(n):
        cls = int(rng.integers(len(NAMES)))
        name = NAMES[cls]
        lo, hi = (12, 32) if small else (16, 120)
        size = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        angle = rng.uniform(0, 2 * np.pi)
        outlines = _polygon(name, rng)
        ok = _place(rng, canvas, outlines, size, rng.uniform(0.7, 1.4), angle,
                    lambda p, nm=name, a=angle: _texture(nm, rng, p, a), len(labels), keep=0.5)  # fmt: skip
        if ok:
            labels.append(cls)
    _clutter(rng, canvas, int(rng.integers(0, 4)), keep=0.6)  # occluders in front
    # the box of each object's visible pixels, all objects in one pass
    boxes = [[sx.start, sy.start, sx.stop, sy.stop] for sy, sx in find_objects(canvas.owner + 1, len(labels))]
    img = np.clip(canvas.img, 0, 255).round().astype(np.uint8)
    return img, np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(labels, dtype=np.int64)


# ----------------------------------------------------------------------------- on disk


def _data_yaml(n_train: int, n_val: int, variant: str = "embedded") -> str:
    _, names, version, _, _ = _variant(variant)
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(names))
    return (
        f"# mlca {variant} dataset v{version} ({n_train} train / {n_val} val images); see docs/data.md\n"
        f"format: yolo\npath: .\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
    )


def _write_images(out: Path | str, split: str, indices: range, seed: int, variant: str = "embedded") -> None:
    """Render and write images ``indices`` of ``split`` (one worker's share)."""
    out = Path(out)
    render = _variant(variant)[0]
    for i in indices:
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
        img, boxes, labels = render(rng)
        stem = f"{split}_{i:05d}"
        Image.fromarray(img).save(out / "images" / split / f"{stem}.jpg", quality=90)
        h, w = img.shape[:2]
        lines = [
            f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
            for c, (x1, y1, x2, y2) in zip(labels, boxes)
        ]
        (out / "labels" / split / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))


def generate_embedded(
    out: Path, n_train: int | None = None, n_val: int | None = None, seed: int = SEED, workers: int | None = None,
    variant: str = "embedded",
) -> Path:
    """Write the set into ``out`` (created): images, YOLO labels and ``data.yaml``. Returns ``out``.

    ``variant`` is ``"embedded"`` or ``"embedded-dense"``; the counts default to the variant's.

    ``workers`` processes share the work (default: the CPU count, and 1 for small sets);
    the bytes do not depend on it, as each image has its own generator.
    """
    out = Path(out)
    _, _, _, d_train, d_val = _variant(variant)
    n_train, n_val = d_train if n_train is None else n_train, d_val if n_val is None else n_val
    jobs = []
    for split, n in (("train", n_train), ("val", n_val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        jobs += [(split, range(k, min(k + 50, n))) for k in range(0, n, 50)]
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if n_train + n_val >= 200 else 1
    workers = max(1, min(workers, len(jobs)))
    if workers > 1:
        # fresh interpreters, not multiprocessing: a fork would inherit the caller's torch/OpenMP
        # threads, and spawn re-imports the caller's script (a bomb in an unguarded script)
        procs = []
        for k in range(workers):
            share = [(split, idx.start, idx.stop) for split, idx in jobs[k::workers]]
            code = (
                "import sys, json; from mlca.data.embedded import _write_images; "
                "[_write_images(sys.argv[1], s, range(a, b), int(sys.argv[3]), sys.argv[4]) "
                "for s, a, b in json.loads(sys.argv[2])]"
            )
            args = [sys.executable, "-c", code, str(out), json.dumps(share), str(seed), variant]
            procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        errors = [(p.communicate()[1], p.returncode) for p in procs]
        failed = [err for err, rc in errors if rc != 0]
        if failed:
            raise RuntimeError(f"generating the embedded dataset failed in a worker process:\n{failed[0]}")
    else:
        for split, idx in jobs:
            _write_images(out, split, idx, seed, variant)
    (out / "data.yaml").write_text(_data_yaml(n_train, n_val, variant))
    return out


def ensure_embedded(n_train: int | None = None, n_val: int | None = None, variant: str = "embedded") -> Path:
    """The set's folder, generated first if missing. Safe when several processes call it at once."""
    _, names, version, d_train, d_val = _variant(variant)
    n_train, n_val = d_train if n_train is None else n_train, d_val if n_val is None else n_val
    final = embedded_root(n_train, n_val, variant)
    if (final / MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        generate_embedded(tmp, n_train, n_val, variant=variant)
        info = {"version": version, "seed": SEED, "n_train": n_train, "n_val": n_val, "names": names}
        (tmp / MARKER).write_text(json.dumps(info, indent=1))
        try:
            os.rename(tmp, final)  # atomic: others see no folder or a complete one
        except OSError:
            if not (final / MARKER).is_file():
                # a folder without the marker is not ours to trust (left by hand?): replace it
                stale = Path(tempfile.mkdtemp(prefix=f".{final.name}.stale-", dir=final.parent))
                os.rename(final, stale / "old")
                os.rename(tmp, final)
                shutil.rmtree(stale, ignore_errors=True)
            # else another process finished first; its set is identical to ours
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def embedded_config(n_train: int | None = None, n_val: int | None = None, variant: str = "embedded") -> DatasetConfig:
    """The embedded set's (or ``variant``'s) :class:`DatasetConfig` (generating it on first use)."""
    root = ensure_embedded(n_train, n_val, variant)
    return DatasetConfig(
        name=variant,
        format="embedded",
        root=root,
        train="images/train",
        val="images/val",
        names=list(_variant(variant)[1]),
        source=root / "data.yaml",
    )
