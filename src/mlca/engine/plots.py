"""Loss and mAP curves of a run, drawn from its ``results.csv`` (matplotlib, Agg backend)."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["read_results", "plot_results"]

LOSS_COLUMNS = ("box_loss", "obj_loss", "cls_loss")
MAP_COLUMNS = ("map50", "map")


def read_results(csv_path: str | Path) -> dict[str, list[float]]:
    """Columns of a results.csv as float lists (empty cells become NaN)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            cols.setdefault(k, []).append(float(v) if v not in ("", None) else float("nan"))
    return cols


def plot_results(csv_path: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``loss.png`` (train box/obj/cls loss per epoch) and ``map.png`` (val mAP@0.5 and
    mAP@0.5:0.95 per epoch) next to ``csv_path`` (or into ``out_dir``).

    Returns:
        The two PNG paths.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display on servers; never pick an interactive backend
    import matplotlib.pyplot as plt

    csv_path = Path(csv_path)
    out_dir = Path(out_dir) if out_dir is not None else csv_path.parent
    cols = read_results(csv_path)
    epochs = cols.get("epoch", [])

    loss_png, map_png = out_dir / "loss.png", out_dir / "map.png"
    fig, axes = plt.subplots(1, len(LOSS_COLUMNS), figsize=(12, 3.5))
    # fixed margins: tight_layout costs more than the drawing itself
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.15, top=0.9, wspace=0.25)
    for ax, name in zip(axes, LOSS_COLUMNS):
        ax.plot(epochs, cols.get(name, []), marker=".", color="tab:blue")
        ax.set_title(f"train {name.replace('_', ' ')}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.savefig(loss_png, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    fig.subplots_adjust(left=0.15, right=0.97, bottom=0.15, top=0.95)
    for name, label in zip(MAP_COLUMNS, ("mAP@0.5", "mAP@0.5:0.95")):
        ax.plot(epochs, cols.get(name, []), marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mAP (EMA weights)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(map_png, dpi=120)
    plt.close(fig)
    return loss_png, map_png
