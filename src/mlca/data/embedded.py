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

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import find_objects

from .dataset_config import DatasetConfig
from .embedded_draw import _background, _Canvas, _clutter, _place, _polygon, _texture

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
