"""Fit the anchors to the dataset (YOLOv5's autoanchor): best-possible-recall check, k-means, evolution.

The default anchors come from COCO at 640 px. A small dataset trained at 416 px has other box
shapes and sizes; when fewer than ``min_bpr`` of its boxes can be matched by any anchor under
the loss's ratio rule, the anchors are refitted: k-means on the boxes' (w, h), then a genetic
search that maximises the mean best-anchor ratio. Everything is seeded, so a run (and its
resumption) gets the same anchors.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from torch import nn

from mlca.engine.unwrap import unwrap


def dataset_wh(records_or_wh: Any, img_size: int, scale_jitter: float = 0.1, seed: int = 0) -> np.ndarray:
    """Box widths and heights ``(n, 2)`` in pixels of the ``img_size`` letterboxed input.

    Args:
        records_or_wh: a ``DetectionDataset`` (its ``records``), a list of records
            (``boxes`` xyxy in original pixels, ``width``, ``height``), or an array ``(n, 2)`` of
            (w, h) already at training scale.
        img_size: the training image size (the letterbox scales the long side to it).
        scale_jitter: each image's boxes are scaled by ``U(1 - j, 1 + j)``, as YOLOv5 does, so
            the fit does not hinge on one exact size per object.
    """
    records = getattr(records_or_wh, "records", records_or_wh)
    if isinstance(records, (np.ndarray, torch.Tensor)):
        wh = np.asarray(records, dtype=np.float64).reshape(-1, 2)
        return wh[(wh >= 2.0).all(1)]
    rng = np.random.default_rng(seed)
    parts = []
    for rec in records:
        boxes = np.asarray(rec.train_objects[0], dtype=np.float64).reshape(-1, 4)  # ignored objects left out
        if not len(boxes):
            continue
        ratio = img_size / max(rec.width, rec.height)
        s = rng.uniform(1 - scale_jitter, 1 + scale_jitter)
        parts.append((boxes[:, 2:] - boxes[:, :2]) * ratio * s)
    wh = np.concatenate(parts) if parts else np.zeros((0, 2))
    # boxes under 2 px carry no shape information and are unlearnable anyway
    return wh[(wh >= 2.0).all(1)]


def _ratio_metric(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(n, 2), (k, 2) -> (n, k): the worse of the w and h ratios, as a number in (0, 1]."""
    r = wh[:, None] / anchors[None]
    return np.minimum(r, 1 / r).min(2)


def anchor_fitness(wh: np.ndarray, anchors: np.ndarray, thr: float = 4.0) -> tuple[float, float]:
    """Best possible recall (fraction of boxes some anchor matches) and anchors above threshold per box."""
    x = _ratio_metric(wh, anchors)
    best = x.max(1)
    return float((best > 1 / thr).mean()), float((x > 1 / thr).sum(1).mean())


def _kmeans_rng(kmeans: Any, rng: np.random.Generator) -> dict[str, Any]:
    """How to hand ``rng`` to scipy's ``kmeans``: ``rng=`` from scipy 1.15, ``seed=`` (which takes a
    Generator as well) before; both draw the same initial centroids from the same generator."""
    return {"rng": rng} if "rng" in inspect.signature(kmeans).parameters else {"seed": rng}


def kmean_anchors(
    wh: np.ndarray, n: int = 9, img_size: int = 640, thr: float = 4.0, gen: int = 1000, seed: int = 0
) -> np.ndarray:
    """``n`` anchors (n, 2) in pixels sorted by area: k-means on (w, h), refined by evolution.

    The evolution mutates all anchors by log-normal factors and keeps a mutation if it raises
    the fitness ``mean(best ratio * [best ratio > 1/thr])`` (YOLOv5's criterion).
    """
    from scipy.cluster.vq import kmeans

    if len(wh) < n:
        raise ValueError(f"need at least {n} boxes (>= 2 px at {img_size} px) to fit {n} anchors, got {len(wh)}")
    rng = np.random.default_rng(seed)

    def fitness(k: np.ndarray) -> float:
        best = _ratio_metric(wh, k).max(1)
        return float((best * (best > 1 / thr)).mean())

    # k-means on whitened (w, h); scipy's kmeans draws its initial centroids from `rng`
    std = wh.std(0)
    std[std == 0] = 1.0
    k, _ = kmeans(wh / std, n, iter=30, **_kmeans_rng(kmeans, rng))
    if len(k) < n:  # fewer distinct clusters than asked (few distinct box sizes): fall back
        k = np.quantile(wh / std, np.linspace(0.05, 0.95, n), axis=0)
    k = k * std
    best_f = fitness(k)
    for _ in range(gen):
        mutate = np.ones_like(k)
        while (mutate == 1).all():  # redraw until something changes
            mutate = (rng.random(k.shape) < 0.9) * rng.random() * rng.standard_normal(k.shape) * 0.1 + 1
            mutate = mutate.clip(0.3, 3.0)
        child = (k * mutate).clip(min=2.0)
        f = fitness(child)
        if f > best_f:
            best_f, k = f, child
    return k[np.argsort(k.prod(1))]


def check_anchors(
    dataset: Any,
    model: nn.Module,
    thr: float = 4.0,
    img_size: int = 640,
    min_bpr: float = 0.98,
    gen: int = 1000,
    seed: int = 0,
    verbose: bool = True,
) -> torch.Tensor | None:
    """Refit ``model.detect.anchors`` to ``dataset`` if the current ones fit badly.

    Args:
        dataset: a ``DetectionDataset``, a list of records, or an ``(n, 2)`` array of box
            (w, h) in training-input pixels (see :func:`dataset_wh`).
        model: MAY (or a DDP wrapper); its ``detect.anchors`` ``(nl, na, 2)`` pixels is
            updated in place when new anchors are better.
        thr: the loss's ``anchor_t``: a box matches an anchor within this ratio.
        img_size: training image size.
        min_bpr: refit only when the best possible recall is below this.
        gen: generations of the evolution.
        seed: seeds the scale jitter, k-means and the evolution.

    Returns:
        The new anchors ``(nl, na, 2)`` in pixels (already written into the model), or ``None``
        when the current anchors are kept (good enough, too few boxes, or no better fit found).
    """
    net = unwrap(model)
    anchors = net.detect.anchors
    nl, na = int(anchors.shape[0]), int(anchors.shape[1])
    wh = dataset_wh(dataset, img_size, seed=seed)
    say = print if verbose else (lambda *a, **k: None)
    if len(wh) == 0:
        say("autoanchor: no boxes of 2 px or more, keeping the default anchors")
        return None
    current = anchors.detach().cpu().double().view(-1, 2).numpy()
    bpr, aat = anchor_fitness(wh, current, thr)
    msg = f"autoanchor: {aat:.2f} anchors/target, best possible recall {bpr:.4f}"
    if bpr >= min_bpr:
        say(f"{msg}; current anchors fit the dataset")
        return None
    if len(wh) < nl * na:
        say(f"{msg}; only {len(wh)} boxes, too few to fit {nl * na} anchors, keeping them")
        return None
    new = kmean_anchors(wh, n=nl * na, img_size=img_size, thr=thr, gen=gen, seed=seed)
    new_bpr, new_aat = anchor_fitness(wh, new, thr)
    if new_bpr <= bpr:
        say(f"{msg}; refitting did not improve it ({new_bpr:.4f}), keeping the current anchors")
        return None
    # smallest anchors to the finest level: anchors are sorted by area and the strides ascend
    new_t = torch.as_tensor(new, dtype=anchors.dtype).view(nl, na, 2)
    with torch.no_grad():
        anchors.copy_(new_t.to(anchors.device))
    say(f"{msg}; refitted: {new_aat:.2f} anchors/target, best possible recall {new_bpr:.4f}\n"
        f"autoanchor: new anchors {np.round(new).astype(int).reshape(nl, -1).tolist()}")
    return new_t


__all__ = ["anchor_fitness", "check_anchors", "dataset_wh", "kmean_anchors"]
