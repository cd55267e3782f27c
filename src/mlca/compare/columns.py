"""Which columns of a trainer's ``results.csv`` hold the validation mAPs.

mlca's trainer writes ``map50`` and ``map``; ultralytics writes ``metrics/mAP50(B)`` and
``metrics/mAP50-95(B)``; YOLOv5 ``metrics/mAP_0.5`` and ``metrics/mAP_0.5:0.95``. Every name is
read through one normalisation so the runner and the plots agree.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["normalise", "map_columns"]

_MAP50 = ("map50", "map_0.5")
_MAP = ("map", "map50-95", "map_0.5:0.95")


def normalise(name: str) -> str:
    """``'metrics/mAP50-95(B)'`` -> ``'map50-95'``: lower case, no ``val/``/``metrics/`` prefix, no ``(B)``."""
    n = name.strip().lower()
    for prefix in ("val/", "metrics/"):
        if n.startswith(prefix):
            n = n[len(prefix) :]
    return n[:-3] if n.endswith("(b)") else n


def map_columns(columns: Iterable[str]) -> tuple[str | None, str | None]:
    """The (mAP@0.5, mAP@0.5:0.95) column names among ``columns`` (None where absent)."""
    cols = [c for c in columns if c]
    k50 = next((c for c in cols if normalise(c) in _MAP50), None)
    k = next((c for c in cols if normalise(c) in _MAP), None)
    return k50, k
