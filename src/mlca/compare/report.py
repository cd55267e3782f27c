"""The comparison table: one row per attention, written as CSV and Markdown and printed.

``results.csv`` columns (one row per attention, in the order given):

====================  ========================================================================
attention             registry name
attention_kwargs      the module's constructor settings, as JSON (``{}``: the zoo defaults)
params                parameter count of MAY with that attention
gflops                GFLOPs of one batch-1 forward at ``img_size`` (torch.utils.flop_counter)
latency_cpu_ms        median batch-1 latency on the CPU, all models timed interleaved in one process
latency_cuda_ms       the same on CUDA (empty when no GPU)
seeds                 number of seeds (runs) behind the mAP columns
map50_mean/_std       mAP@0.5 of the last epoch, mean and sample std (ddof=1) over seeds
map_mean/_std         mAP@0.5:0.95, likewise
d_map50, d_map        mean difference to the baseline (0 for the baseline itself)
ci_low_/ci_high_*     95 % Welch-Satterthwaite confidence interval of that difference
p_map50, p_map        two-sided Welch's t-test p-value against the baseline, uncorrected
p_holm_map50, _map    the same, Holm-adjusted over every test in the table (all attentions x
                      both metrics)
sig_map50, sig_map    yes / no / n/a: does the difference exceed the seed-to-seed spread
                      (Holm-adjusted p < 0.05)
mde_map50, mde_map    smallest |difference| the run detects with 80 % power (see ``stats``)
train_time_s          mean wall-clock training time of one run
====================  ========================================================================

Statistics columns are empty where no test is possible (and for the baseline's own row).

``runs.csv``: one row per (attention, seed): attention, seed, map50, map, best_map50, best_map,
epochs, train_time_s, reused, run_dir.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .runner import RunOutcome
from .stats import ALPHA, TEST_RULE, Comparison, holm, summarize, verdict, welch

__all__ = ["ResultRow", "build_rows", "write_results_csv", "write_runs_csv", "markdown_table", "RESULT_COLUMNS", "RUN_COLUMNS"]

METRICS = ("map50", "map")
RESULT_COLUMNS = [
    "attention", "attention_kwargs", "params", "gflops", "latency_cpu_ms", "latency_cuda_ms", "seeds",
    "map50_mean", "map50_std", "map_mean", "map_std",
    *(f"{col}_{m}" for m in METRICS for col in ("d", "ci_low", "ci_high", "p", "p_holm", "sig", "mde")),
    "train_time_s",
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
    attention_kwargs: str = "{}"  # JSON of the module's constructor settings
    ci_low_map50: float = math.nan
    ci_high_map50: float = math.nan
    p_holm_map50: float = math.nan
    mde_map50: float = math.nan
    ci_low_map: float = math.nan
    ci_high_map: float = math.nan
    p_holm_map: float = math.nan
    mde_map: float = math.nan


def build_rows(
    outcomes: Sequence[RunOutcome],
    attentions: Sequence[str],
    baseline: str | None,
    params: Mapping[str, int],
    gflops: Mapping[str, float],
    latency_cpu: Mapping[str, float],
    latency_cuda: Mapping[str, float] | None = None,
    attention_kwargs: Mapping[str, Mapping] | None = None,
) -> list[ResultRow]:
    """Aggregate the runs of each attention and compare each with ``baseline`` (if given).

    Every (attention, metric) test of the table is Holm-corrected together; ``sig_*`` is the
    verdict on the adjusted p, ``p_*`` keeps the uncorrected one.
    """
    by_att: dict[str, list[RunOutcome]] = {a: [] for a in attentions}
    for o in outcomes:
        if o.attention not in by_att:
            raise ValueError(f"build_rows: run of {o.attention!r} is not among attentions {list(attentions)}")
        by_att[o.attention].append(o)
    base = by_att.get(baseline, []) if baseline else []
    tests: dict[tuple[str, str], Comparison] = {}
    for a in attentions:
        for m in METRICS:
            if base:
                tests[(a, m)] = welch([getattr(o, m) for o in by_att[a]], [getattr(o, m) for o in base])
    tested = [k for k in tests if k[0] != baseline]
    adjusted = dict(zip(tested, holm([tests[k].p for k in tested])))
    rows = []
    for a in attentions:
        runs = by_att[a]
        s50, s = summarize([o.map50 for o in runs]), summarize([o.map for o in runs])
        stat: dict = {}
        for m in METRICS:
            c = tests.get((a, m))
            own = a == baseline or c is None  # the baseline's row, or no baseline: no test
            stat[f"d_{m}"] = c.diff if c else math.nan
            stat[f"p_{m}"] = math.nan if own else c.p
            stat[f"p_holm_{m}"] = math.nan if own else adjusted[(a, m)]
            stat[f"sig_{m}"] = "" if own else verdict(adjusted[(a, m)])
            for col in ("ci_low", "ci_high", "mde"):
                stat[f"{col}_{m}"] = math.nan if own else getattr(c, col)
        rows.append(
            ResultRow(
                attention=a,
                attention_kwargs=json.dumps(dict((attention_kwargs or {}).get(a, {})), sort_keys=True),
                params=int(params[a]),
                gflops=float(gflops[a]),
                latency_cpu_ms=float(latency_cpu[a]),
                latency_cuda_ms=float(latency_cuda[a]) if latency_cuda else math.nan,
                seeds=len(runs),
                map50_mean=s50.mean,
                map50_std=s50.std,
                map_mean=s.mean,
                map_std=s.std,
                train_time_s=summarize([o.train_time_s for o in runs]).mean if runs else math.nan,
                **stat,
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


def _ci(lo: float, hi: float) -> str:
    return "" if math.isnan(lo) else f" [{lo:+.3f}, {hi:+.3f}]"


def _settings_text(rows: Sequence[ResultRow]) -> str:
    parts = []
    for r in rows:
        kw = json.loads(r.attention_kwargs or "{}")
        if kw:
            parts.append(f"{r.attention}(" + ", ".join(f"{k}={v}" for k, v in kw.items()) + ")")
    return ", ".join(parts)


def markdown_table(
    rows: Sequence[ResultRow], img_size: int, baseline: str | None, footer: Sequence[str] = ()
) -> str:
    """The table as GitHub Markdown, with the test, its correction and its rule in the footer."""
    cuda = any(not math.isnan(r.latency_cuda_ms) for r in rows)
    head = ["attention", "params (M)", f"GFLOPs @{img_size}", "CPU ms"] + (["CUDA ms"] if cuda else [])
    for label in ("mAP@0.5", "mAP@0.5:0.95"):
        head += [label, "Δ [95 % CI]", "p (Holm)", "> spread", "MDE"]
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
        for m in METRICS:
            cells += [_pm(getattr(r, f"{m}_mean"), getattr(r, f"{m}_std"))]
            if is_base:
                cells += ["baseline", "", "", ""]
                continue
            d = _num(getattr(r, f"d_{m}"), "+.3f") + _ci(getattr(r, f"ci_low_{m}"), getattr(r, f"ci_high_{m}"))
            cells += [d, _p(getattr(r, f"p_holm_{m}")), getattr(r, f"sig_{m}") or "–", _num(getattr(r, f"mde_{m}"), ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    n_att = sum(1 for r in rows if r.attention != baseline)
    n_tests = sum(1 for r in rows for m in METRICS if not math.isnan(getattr(r, f"p_holm_{m}")))
    settings = _settings_text(rows)
    notes = [
        f"mAP: last epoch, mean ± sample std (ddof=1) over seeds; baseline: {baseline or '(none)'}.",
        TEST_RULE.format(
            alpha=ALPHA, m=n_tests,
            what=f"{n_att} attention(s) x {len(METRICS)} metrics, tests that were possible",
        ),
        *([f"Module settings (else the zoo defaults): {settings}."] if settings else []),
        "Latency: batch 1, median over interleaved rounds after warm-up, all models in one process.",
        *footer,
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
