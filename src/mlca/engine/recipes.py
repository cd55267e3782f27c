"""Named training recipes: sets of TrainConfig values a run can start from (``mlca train --recipe NAME``).

``paper``: the setting of the MLCA paper's official code, YOLOv5 6.1 trained from scratch with
``hyp.scratch-low.yaml``: SGD (Nesterov) lr0 0.01 decaying to lr0 * lrf, lrf 0.01 (with mlca's
cosine schedule, YOLOv5's default being linear); momentum 0.937, weight decay
5e-4, 3 warmup epochs (at least 100 iterations) with the bias learning rate starting at 0.1 and
momentum at 0.8, mosaic on every image until the end, the scratch-low colour jitter, EMA with
YOLOv5's ramp (tau 2000), 300 epochs at 640 px, batch 40, the anchor-based YOLOv5 head.

Options given explicitly win over the recipe's values (see :func:`apply_recipe`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["RECIPES", "apply_recipe", "recipe_values"]

RECIPES: dict[str, dict[str, Any]] = {
    "paper": {
        "head": "yolov5",
        "optimizer": "sgd",
        "lr0": 0.01,
        "lrf": 0.01,
        "momentum": 0.937,
        "weight_decay": 5e-4,
        "warmup_epochs": 3.0,
        "warmup_min_iters": 100,
        "warmup_momentum": 0.8,
        "warmup_bias_lr": 0.1,
        "ema_tau": 2000.0,
        "close_mosaic": 0,
        "epochs": 300,
        "img_size": 640,
        "batch_size": 40,
        # hyp.scratch-low's augmentation where it differs from mlca's defaults (loss gains are equal)
        "hyp": {"mosaic": 1.0, "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4},
    },
}


def recipe_values(name: str) -> dict[str, Any]:
    """A copy of the TrainConfig values of recipe ``name``."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {sorted(RECIPES)}")
    values = dict(RECIPES[name])
    values["hyp"] = dict(values.get("hyp", {}))
    return values


def apply_recipe(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The recipe's values updated with ``given`` (the options set explicitly); ``hyp`` is merged
    key by key, so ``--hyp mosaic=0.5`` changes only the mosaic of the recipe's settings."""
    values = recipe_values(name)
    hyp = {**values.pop("hyp"), **dict(given.get("hyp") or {})}
    return {**values, **given, "hyp": hyp}
