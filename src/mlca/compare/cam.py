"""Where each model looks: EigenCAM grids per attention, and MLCA's own local attention maps.

Layer choice. The attention modules live in the backbone (the neck and head are the same
for every model), so the heatmap is taken on the backbone's three outputs, the last block
of strides 8, 16 and 32 that feed the neck; grad-cam averages the three maps after scaling
each to the image. EigenCAM (the first principal component of the activations, Muhammad &
Yeasin 2020) is used because it needs no gradient and no class target: a detector has no
single class score to differentiate, which is what Grad-CAM would need (a target function
over boxes) — EigenCAM is the usual choice for YOLO models for that reason.

MLCA maps. The MLCA layer mixes a global channel weight with a ``local_size × local_size``
grid of local weights; only the local part varies over the image. A forward hook on each
MLCA module recomputes, from the module's input and its own ``conv_local`` weights, the
local weights exactly as the layer defines them (pool to ``local_size²`` bins, 1-D conv
over the channel-major sequence, sigmoid), averages them over channels and shows them
block-upsampled over the image, as the layer itself spreads them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import CompareConfig
from .runner import RunOutcome

__all__ = ["eigencam_maps", "mlca_local_maps", "write_cams", "cam_layers"]


def cam_layers(model: nn.Module) -> list[nn.Module]:
    """The backbone blocks whose outputs feed the neck (strides 8, 16, 32) of a MAY."""
    backbone = model.backbone
    return [backbone.blocks[i] for i in backbone.taps]


def eigencam_maps(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """images (B, 3, S, S) in [0, 1] -> EigenCAM heatmaps (B, S, S) in [0, 1] (float32)."""
    from pytorch_grad_cam import EigenCAM

    model.eval()
    with EigenCAM(model, target_layers=cam_layers(model)) as cam:
        # EigenCAM uses no target; passing one per image skips grad-cam's classifier-style
        # argmax over the (B, N, 5 + nc) detections, which means nothing for a detector.
        return cam(images, targets=[lambda out: out.sum()] * images.shape[0])


def _mlca_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from mlca.attention.registry import get_attention_class

    cls = get_attention_class("mlca")
    return [(n, m) for n, m in model.named_modules() if isinstance(m, cls)]


def _local_weights(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) -> the MLCA layer's local weights (B, C, ls, ls), recomputed from its definition."""
    ls = int(module.local_size)
    b, c = x.shape[:2]
    pooled = F.adaptive_avg_pool2d(x.float(), ls)  # (B, C, ls, ls)
    seq = pooled.reshape(b, c, ls * ls).transpose(1, 2).reshape(b, 1, ls * ls * c)  # position-major, channel-minor
    conv: nn.Conv1d = module.conv_local
    y = F.conv1d(seq, conv.weight.float(), padding=conv.padding)
    return y.reshape(b, ls * ls, c).transpose(1, 2).reshape(b, c, ls, ls).sigmoid()


@torch.no_grad()
def mlca_local_maps(model: nn.Module, images: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """images (B, 3, S, S) -> [(module name, channel-mean local weights (B, ls, ls))] per MLCA layer."""
    mods = _mlca_modules(model)
    maps: dict[str, torch.Tensor] = {}
    hooks = []
    for name, m in mods:
        if not hasattr(m, "conv_local") or not hasattr(m, "local_size"):
            raise AttributeError(f"MLCA module {name} has no conv_local/local_size; cannot recompute its local weights")

        def hook(mod, inputs, output, name=name):
            maps[name] = _local_weights(mod, inputs[0]).mean(1)

        hooks.append(m.register_forward_hook(hook))
    try:
        model.eval()
        model(images)
    finally:
        for h in hooks:
            h.remove()
    return [(name, maps[name]) for name, _ in mods]


def _val_images(cfg: CompareConfig, n: int) -> tuple[torch.Tensor, list[str]]:
    from mlca.data.config import load_dataset_config
    from mlca.data.dataset import DetectionDataset
    from mlca.data.records import read_records

    records = read_records(load_dataset_config(cfg.data), "val")[:n]
    ds = DetectionDataset(records, cfg.img_size, augment=False)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([it[0] for it in items]), [Path(it[2]["path"]).name for it in items]


def _overlay(img: torch.Tensor, heat: np.ndarray) -> np.ndarray:
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = img.permute(1, 2, 0).cpu().numpy().astype(np.float32)
    return show_cam_on_image(rgb, heat.astype(np.float32), use_rgb=True)


def _grid(cells: list[list[np.ndarray]], row_titles: Sequence[str], col_titles: Sequence[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(cells), len(cells[0])
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows + 0.5), squeeze=False, constrained_layout=True)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(cells[r][c])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(row_titles[r], fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_cams(cfg: CompareConfig, runs: Sequence[RunOutcome], log: Callable[[str], None] = print) -> dict[str, Path]:
    """``cam.png`` (row per val image, column per attention, seed-0 last weights) and, when an
    MLCA model is among them, ``mlca-attention.png`` (column per MLCA layer)."""
    from mlca.engine.checkpoint import load_model

    images, names = _val_images(cfg, cfg.cam_images)
    first = {}
    for o in sorted(runs, key=lambda o: o.seed):
        first.setdefault(o.attention, o)
    files: dict[str, Path] = {}
    cells = [[(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)] for img in images]
    cols = ["image"]
    mlca_model = None
    for att in cfg.attentions:
        model = load_model(Path(first[att].run_dir) / "weights" / "last.pt", device="cpu")
        heat = eigencam_maps(model, images)
        for r, img in enumerate(images):
            cells[r].append(_overlay(img, heat[r]))
        cols.append(f"{att} (seed {first[att].seed})")
        if mlca_model is None and _mlca_modules(model):
            mlca_model = (att, model)
    files["cam.png"] = _grid(cells, names, cols, cfg.out / "cam.png", "EigenCAM on the backbone outputs (strides 8/16/32)")
    log(f"compare: wrote {files['cam.png']}")
    if mlca_model is not None:
        att, model = mlca_model
        layer_maps = mlca_local_maps(model, images)
        s = images.shape[-1]
        cells = []
        for r, img in enumerate(images):
            row = [(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)]
            for _, m in layer_maps:
                up = F.interpolate(m[r][None, None], size=(s, s), mode="nearest")[0, 0].numpy()
                lo, hi = float(up.min()), float(up.max())
                # spread each map over [0, 1]: the local weights vary by a few percent around 0.5
                heat = (up - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(up)
                row.append(_overlay(img, heat))
            cells.append(row)
        titles = ["image"] + [
            f"{n.replace('backbone.blocks.', 'block ').split('.block')[0]}\n[{float(m.min()):.2f}, {float(m.max()):.2f}]"
            for n, m in layer_maps
        ]
        files["mlca-attention.png"] = _grid(
            cells, names, titles, cfg.out / "mlca-attention.png",
            f"{att}: MLCA local weights (channel mean, min-max scaled; range in title)",
        )
        log(f"compare: wrote {files['mlca-attention.png']}")
    return files
