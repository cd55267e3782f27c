"""The comparison's figures: mAP against cost with seed error bars, and all training curves.

matplotlib's Agg backend is selected explicitly, so plotting works with no display.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .columns import map_columns, normalise  # noqa: E402
from .report import ResultRow  # noqa: E402
from .runner import RunOutcome  # noqa: E402

__all__ = ["plot_map_vs", "plot_curves", "read_run_csv"]

_METRICS = (("map50", "mAP@0.5"), ("map", "mAP@0.5:0.95"))


def _colors(names: Sequence[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def plot_map_vs(rows: Sequence[ResultRow], x: str, path: Path, title: str = "") -> Path:
    """mAP@0.5 and mAP@0.5:0.95 (mean, error bar = std over seeds) against ``x``.

    ``x`` is ``'latency'`` (CPU ms, batch 1) or ``'params'`` (millions).
    """
    if x == "latency":
        xs = [r.latency_cpu_ms for r in rows]
        xlabel = "CPU latency, batch 1 (ms, median)"
    elif x == "params":
        xs = [r.params / 1e6 for r in rows]
        xlabel = "parameters (M)"
    else:
        raise ValueError(f"plot_map_vs: x must be 'latency' or 'params', got {x!r}")
    colors = _colors([r.attention for r in rows])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, (key, label) in zip(axes, _METRICS):
        for r, xv in zip(rows, xs):
            mean, std = getattr(r, f"{key}_mean"), getattr(r, f"{key}_std")
            ax.errorbar(
                xv, mean, yerr=0.0 if math.isnan(std) else std, fmt="o", capsize=4,
                color=colors[r.attention], label=f"{r.attention} (n={r.seeds})",
            )
            ax.annotate(r.attention, (xv, mean), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{label} (mean ± std over seeds)")
        ax.set_ylim(bottom=0.0)  # mAP is never negative; keeps an all-zero table readable
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def read_run_csv(path: Path) -> dict[str, list[float]]:
    """A trainer results.csv as column -> values (numeric columns only)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            if k is None:
                continue
            try:
                cols.setdefault(k.strip(), []).append(float(v))
            except (TypeError, ValueError):
                pass
    return cols


def _pick(cols: dict[str, list[float]], *candidates: str) -> str | None:
    norm = {normalise(k): k for k in cols}
    for c in candidates:
        if c.lower() in norm:
            return norm[c.lower()]
    return None


def plot_curves(outcomes: Sequence[RunOutcome], attentions: Sequence[str], path: Path) -> Path:
    """Training loss and validation mAP per epoch of every run on one figure.

    Colour = attention, line style = seed. The loss is the sum of the trainer's train loss
    columns (``*loss*``, excluding validation losses).
    """
    colors = _colors(list(attentions))
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    labelled: set[str] = set()
    for o in outcomes:
        csv_path = Path(o.run_dir) / "results.csv"
        if not csv_path.is_file():
            continue
        cols = read_run_csv(csv_path)
        ep = cols.get(_pick(cols, "epoch") or "", None) or list(range(1, 1 + max(map(len, cols.values()), default=0)))
        style = dict(color=colors.get(o.attention), linestyle=styles[o.seed % len(styles)], linewidth=1.2, marker="o", markersize=3)
        label = o.attention if o.attention not in labelled else None
        labelled.add(o.attention)
        loss_cols = [k for k in cols if "loss" in k.lower() and "val" not in k.lower()]
        if loss_cols:
            total = [sum(vals) for vals in zip(*(cols[k] for k in loss_cols))]
            axes[0].plot(ep[: len(total)], total, label=label, **style)
        for ax, k in zip(axes[1:], map_columns(cols)):
            if k:
                ax.plot(ep[: len(cols[k])], cols[k], label=label, **style)
    for ax, title in zip(axes, ["train loss (sum of terms)", "val mAP@0.5", "val mAP@0.5:0.95"]):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, title="colour: attention\nline style: seed")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
