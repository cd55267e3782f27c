"""``mlca bench``: MAY latency per attention in eager, torch.compile and onnxruntime."""

from __future__ import annotations

import argparse
import csv
import datetime
import sys


def add_parser(subparsers, name: str = "bench", help: str | None = None) -> argparse.ArgumentParser:
    from mlca.deploy.bench import BACKENDS, DEFAULT_BACKENDS  # the command imports torch anyway

    p = subparsers.add_parser(
        name, help=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Time MAY's forward pass (CPU, eval, no grad) for each attention, side by side in one "
        "process: interleaved repetitions after warm-up, median reported.",
    )
    p.add_argument("--attentions", default=None, help="comma-separated names (default: all registered)")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                   help=f"comma-separated subset of {', '.join(BACKENDS)} "
                        "(onnxruntime: a static export per batch and size; onnxruntime-dynamic: one "
                        "`mlca export --dynamic` model for all; onnxruntime-dense: the same with `--mlca dense`; "
                        "with --detector, onnxruntime and onnxruntime-dense are static exports by ultralytics' "
                        "TorchScript-based exporter, MLCA exact or dense)")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--sizes", default="320,640", help="comma-separated image sizes")
    p.add_argument("--reps", type=int, default=10, help="timed repetitions (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's setting)")
    p.add_argument("--clock", choices=("wall", "process"), default="wall",
                   help="process: CPU time of this process with 1 thread (robust on a shared, loaded machine)")
    p.add_argument("--width", type=float, default=1.0, help="MAY width multiplier")
    p.add_argument("--head", choices=("yolov5", "yolov8"), default="yolov5",
                   help="detection head: yolov5 = the paper's anchor-based head, yolov8 = anchor-free decoupled")
    p.add_argument("--detector", default="may",
                   help='may, or an ultralytics model (yolo11n, yolov8n, ..., a model YAML; needs pip install "mlca[ultralytics]"): '
                        "each attention placed in it by mlca.ultralytics.yaml_with_attention, conv+BN fused as ultralytics infers")
    p.add_argument("--where", choices=("backbone", "neck"), default="backbone",
                   help="ultralytics detectors: after each backbone C3k2/C2f stage, or on each Detect input")
    p.add_argument("--baseline", default="eca", help="attention the eager column is compared with")
    p.add_argument("--quick", action="store_true",
                   help="none, eca, mlca at 320 and batch 1, 5 repetitions (a minute or two)")
    p.add_argument("--csv", default=None, help="also write the results to this CSV file")
    p.set_defaults(func=run)
    return p


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _cost_table(args: argparse.Namespace, attentions: list[str]) -> str:
    """Parameters and GFLOPs (torch.utils.flop_counter, batch 1) of each benchmarked model."""
    from mlca.compare.cost import count_params, gflops
    from mlca.deploy.detectors import build_detector

    size = _ints(args.sizes)[0] if not args.quick else 320
    fused = ", conv+BN fused" if args.detector != "may" else ""
    lines = ["", f"| attention | params{fused} | GFLOPs @{size} |", "|---|---:|---:|"]
    for att in attentions:
        m = build_detector(args.detector, att, where=args.where, width=args.width, head=args.head)
        lines.append(f"| {att} | {count_params(m):,} | {gflops(m, size):.3f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from mlca.attention import list_attentions
    from mlca.deploy.bench import bench_may, format_table, machine_info, results_as_dicts

    attentions = args.attentions.split(",") if args.attentions else None
    batches, sizes, reps = _ints(args.batches), _ints(args.sizes), args.reps
    if args.quick:
        attentions = attentions or [a for a in ("none", "eca", "mlca") if a in list_attentions()]
        batches, sizes, reps = [1], [320], min(reps, 5)
    try:
        results = bench_may(
            attentions, batches, sizes, [b.strip() for b in args.backends.split(",") if b.strip()],
            reps=reps, warmup=args.warmup, width=args.width, threads=args.threads, clock=args.clock,
            head=args.head, detector=args.detector, where=args.where,
            log=lambda s: print(s, file=sys.stderr),
        )
    except (KeyError, ValueError, ImportError) as e:
        print(f"mlca bench: error: {e}", file=sys.stderr)
        return 1
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    what = "MAY" if args.detector == "may" else f"{args.detector} (attention: {args.where})"
    print(f"{what} latency ({args.clock} clock), median of {reps} after {args.warmup} warm-up, {now}")
    print(f"machine: {machine_info()}")
    print(format_table(results, args.baseline))
    print(_cost_table(args, sorted({r.attention for r in results}, key=[r.attention for r in results].index)))
    if args.csv:
        rows = results_as_dicts(results)
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0
