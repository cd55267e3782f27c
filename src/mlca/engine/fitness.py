"""The model-selection score: which epoch's weights become ``best.pt``."""

from __future__ import annotations

__all__ = ["fitness"]


def fitness(map50: float, map_: float) -> float:
    """YOLOv5's score, ``0.1 * mAP@0.5 + 0.9 * mAP@0.5:0.95``: mostly the strict metric, a little the loose one."""
    return 0.1 * map50 + 0.9 * map_
