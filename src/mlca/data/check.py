"""Check a dataset before training: counts, box sizes, bad files, clipped boxes, a preview.

    mlca check my_data.yaml [--preview grid.png] [--splits train val]
    python -m mlca.data.check my_data.yaml ...          (the same)

Prints where the dataset root was found (and any other reading of a relative ``path:`` that
also exists), then reads every split with ``skip_bad=True`` so one run lists *all* problems
(with file and line), and prints a table per split. Exit status 1 if any file is bad, 2 if the
config or a split cannot be read at all.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DatasetConfig, load_dataset_config
from .errors import DataError
from .records import scan_records
from .scan import ReadReport

__all__ = ["SplitStats", "check_dataset", "format_stats", "format_root", "add_arguments", "run", "main"]


@dataclass
class SplitStats:
    """What one split holds."""

    split: str
    images: int
    objects: int
    per_class: dict[str, int]
    empty_images: int
    box_long_side: dict[str, float]  # percentiles of the box's long side, in original pixels
    report: ReadReport = field(repr=False)

    @property
    def bad(self) -> list[DataError]:
        return self.report.bad


def _stats(cfg: DatasetConfig, split: str, report: ReadReport) -> SplitStats:
    recs = report.records
    labels = np.concatenate([r.labels for r in recs]) if recs else np.zeros(0, np.int64)
    boxes = np.concatenate([r.boxes for r in recs]) if recs else np.zeros((0, 4), np.float32)
    counts = np.bincount(labels, minlength=cfg.nc)
    long_side = (boxes[:, 2:] - boxes[:, :2]).max(1) if len(boxes) else np.zeros(1)
    pct = dict(zip(["min", "p10", "median", "p90", "max"], np.percentile(long_side, [0, 10, 50, 90, 100]).tolist()))
    return SplitStats(
        split=split,
        images=len(recs),
        objects=int(len(labels)),
        per_class={n: int(c) for n, c in zip(cfg.names, counts)},
        empty_images=sum(len(r.labels) == 0 for r in recs),
        box_long_side=pct,
        report=report,
    )


def check_dataset(
    spec: str | Path | DatasetConfig, splits: tuple[str, ...] = ("train", "val"), preview: str | Path | None = None
) -> list[SplitStats]:
    """Read each split (skipping and collecting bad files) and summarise it.

    ``preview``: write a grid PNG of the first 8 images of the first split, boxes drawn.
    """
    cfg = load_dataset_config(spec)
    out = []
    for split in splits:
        out.append(_stats(cfg, split, scan_records(cfg, split, skip_bad=True)))
    if preview is not None and out and out[0].report.records:
        from .preview import preview_grid

        preview_grid(out[0].report.records[:8], cfg.names, preview)
    return out


def format_stats(stats: list[SplitStats]) -> str:
    """A plain-text report of :func:`check_dataset`'s result (every note listed)."""
    lines = []
    for s in stats:
        b = s.box_long_side
        lines.append(
            f"{s.split}: {s.images} images ({s.empty_images} without objects), {s.objects} objects; "
            f"box long side px: min {b['min']:.0f}, p10 {b['p10']:.0f}, median {b['median']:.0f}, "
            f"p90 {b['p90']:.0f}, max {b['max']:.0f}"
        )
        width = max((len(n) for n in s.per_class), default=0)
        lines += [f"  {n:<{width}}  {c}" for n, c in s.per_class.items()]
        text = s.report.summary(s.split, limit=None)
        if text:
            lines += ["  " + line for line in text.splitlines()]
    return "\n".join(lines)


def format_root(cfg: DatasetConfig) -> str:
    """Where the root is, and how a relative ``path:`` was read (every reading that exists)."""
    head = f"dataset {cfg.name!r} ({cfg.format}, {cfg.nc} classes), root {cfg.root}"
    found = [(p, how) for p, how in cfg.root_tried if p.exists()]
    if not found:
        return head + ("" if cfg.root.exists() else " (not found)")
    lines = [head + f" ({found[0][1]})"]
    lines += [f"  note: 'path' also exists {how}: {p}; write an absolute path to choose" for p, how in found[1:]]
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``mlca check`` (also ``python -m mlca.data.check``)."""
    ap.add_argument("data", help="dataset YAML, a shipped config name, or 'embedded'")
    ap.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val", "test"],
                    help="the splits to read")  # fmt: skip
    ap.add_argument("--preview", type=Path, help="write a PNG grid of images of the first split with their boxes")
    return ap


def run(args: argparse.Namespace) -> int:
    """Check ``args.data``; the exit status (0 clean, 1 bad files, 2 unreadable config or split)."""
    try:
        cfg = load_dataset_config(args.data)
        print(format_root(cfg))
        stats = check_dataset(cfg, tuple(args.splits), args.preview)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_stats(stats))
    return 1 if any(s.bad for s in stats) else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mlca.data.check", description=__doc__.splitlines()[0])
    return run(add_arguments(ap).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
