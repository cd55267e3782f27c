"""The comparison table: one row per attention, written as CSV and Markdown and printed.

``results.csv`` columns (one row per attention, in the order given):

=================  ===========================================================================
attention          registry name
params             parameter count of MAY with that attention
gflops             GFLOPs of one batch-1 forward at ``img_size`` (torch.utils.flop_counter)
latency_cpu_ms     median batch-1 latency on the CPU, all models timed interleaved in one process
latency_cuda_ms    the same on CUDA (empty when no GPU)
seeds              number of seeds (runs) behind the mAP columns
map50_mean/_std    mAP@0.5 of the last epoch, mean and sample std (ddof=1) over seeds
map_mean/_std      mAP@0.5:0.95, likewise
d_map50, d_map     mean difference to the baseline (0 for the baseline itself)
p_map50, p_map     two-sided Welch's t-test p-value against the baseline (empty: no test possible)
sig_map50, sig_map yes / no / n/a: does the difference exceed the seed-to-seed spread (p < 0.05)
train_time_s       mean wall-clock training time of one run
=================  ===========================================================================

``runs.csv``: one row per (attention, seed): attention, seed, map50, map, best_map50, best_map,
epochs, train_time_s, reused, run_dir.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .runner import RunOutcome
from .stats import ALPHA, TEST_RULE, summarize, verdict, welch

__all__ = ["ResultRow", "build_rows", "write_results_csv", "write_runs_csv", "markdown_table", "RESULT_COLUMNS", "RUN_COLUMNS"]

RESULT_COLUMNS = [
    "attention", "params", "gflops", "latency_cpu_ms", "latency_cuda_ms", "seeds",
    "map50_mean", "map50_std", "map_mean", "map_std",
    "d_map50", "p_map50", "sig_map50", "d_map", "p_map", "sig_map", "train_time_s",
]
RUN_COLUMNS = ["attention", "seed", "map50", "map", "best_map50", "best_map", "epochs", "train_time_s", "reused", "run_dir"]


@dataclass
class ResultRow:
    attention: str
    params: int
    gflops: float
    latency_cpu_ms: float
    latency_cuda_ms: float
    seeds: int
    map50_mean: float
    map50_std: float
    map_mean: float
    map_std: float
    d_map50: float
    p_map50: float
    sig_map50: str
    d_map: float
    p_map: float
    sig_map: str
    train_time_s: float


def build_rows(
    outcomes: Sequence[RunOutcome],
    attentions: Sequence[str],
    baseline: str | None,
    params: Mapping[str, int],
    gflops: Mapping[str, float],
    latency_cpu: Mapping[str, float],
    latency_cuda: Mapping[str, float] | None = None,
) -> list[ResultRow]:
    """Aggregate the runs of each attention and compare each with ``baseline`` (if given)."""
    by_att: dict[str, list[RunOutcome]] = {a: [] for a in attentions}
    for o in outcomes:
        if o.attention not in by_att:
            raise ValueError(f"build_rows: run of {o.attention!r} is not among attentions {list(attentions)}")
        by_att[o.attention].append(o)
    base = by_att.get(baseline, []) if baseline else []
    rows = []
    for a in attentions:
        runs = by_att[a]
        m50 = [o.map50 for o in runs]
        m = [o.map for o in runs]
        s50, s = summarize(m50), summarize(m)
        if base:
            c50 = welch(m50, [o.map50 for o in base])
            c = welch(m, [o.map for o in base])
        else:
            c50 = c = None
        is_base = a == baseline
        rows.append(
            ResultRow(
                attention=a,
                params=int(params[a]),
                gflops=float(gflops[a]),
                latency_cpu_ms=float(latency_cpu[a]),
                latency_cuda_ms=float(latency_cuda[a]) if latency_cuda else math.nan,
                seeds=len(runs),
                map50_mean=s50.mean,
                map50_std=s50.std,
                map_mean=s.mean,
                map_std=s.std,
                d_map50=c50.diff if c50 else math.nan,
                p_map50=math.nan if (is_base or not c50) else c50.p,
                sig_map50="" if (is_base or not c50) else verdict(c50.p),
                d_map=c.diff if c else math.nan,
                p_map=math.nan if (is_base or not c) else c.p,
                sig_map="" if (is_base or not c) else verdict(c.p),
                train_time_s=summarize([o.train_time_s for o in runs]).mean if runs else math.nan,
            )
        )
    return rows


def _csv_value(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return str(v)


def _write_csv(path: Path, columns: tuple[str, ...] | list[str], items: Iterable) -> Path:
    """One row per item, the named attributes in ``columns`` order (NaN as an empty cell)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for item in items:
            w.writerow([_csv_value(getattr(item, c)) for c in columns])
    return path


def write_results_csv(rows: Iterable[ResultRow], path: Path) -> Path:
    return _write_csv(path, RESULT_COLUMNS, rows)


def write_runs_csv(outcomes: Iterable[RunOutcome], path: Path) -> Path:
    return _write_csv(path, RUN_COLUMNS, outcomes)


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _num(v: float, fmt: str) -> str:
    return "–" if math.isnan(v) else format(v, fmt)


def _p(p: float) -> str:
    if math.isnan(p):
        return "–"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.0e}"


def markdown_table(rows: Sequence[ResultRow], img_size: int, baseline: str | None, footer: Sequence[str] = ()) -> str:
    """The table as GitHub Markdown, with the test and its rule in the footer."""
    cuda = any(not math.isnan(r.latency_cuda_ms) for r in rows)
    head = ["attention", "params (M)", f"GFLOPs @{img_size}", "CPU ms"] + (["CUDA ms"] if cuda else [])
    head += ["mAP@0.5", "Δ", "p", "> spread", "mAP@0.5:0.95", "Δ", "p", "> spread"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        is_base = r.attention == baseline
        cells = [
            f"**{r.attention}**" if is_base else r.attention,
            f"{r.params / 1e6:.3f}",
            f"{r.gflops:.3f}",
            _num(r.latency_cpu_ms, ".1f"),
        ]
        if cuda:
            cells.append(_num(r.latency_cuda_ms, ".2f"))
        for mean, std, d, p, sig in (
            (r.map50_mean, r.map50_std, r.d_map50, r.p_map50, r.sig_map50),
            (r.map_mean, r.map_std, r.d_map, r.p_map, r.sig_map),
        ):
            cells += [_pm(mean, std)]
            cells += ["baseline", "", ""] if is_base else [_num(d, "+.3f"), _p(p), sig or "–"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"mAP: last epoch, mean ± sample std (ddof=1) over seeds; baseline: {baseline or '(none)'}.",
        TEST_RULE.format(alpha=ALPHA),
        "Latency: batch 1, median over interleaved rounds after warm-up, all models in one process.",
        *footer,
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
