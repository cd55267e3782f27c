"""CPU forward time of every attention module, side by side, with params and FLOPs.

    python benchmarks/bench_attention.py                      # C=256, 40x40, batch 1, 1 thread
    python benchmarks/bench_attention.py --batch 8 --hw 80 --channels 64 --backward

Modules run interleaved (one call of each per round, in a rotated order) on a few rotating
inputs, so a slow moment of a shared machine hits all of them alike; the table reports the
median over rounds (and the 25-75 % spread), the ratio to the fastest module other than 'none',
and the ratio to 'none' (the identity: the cost of calling a module at all). Params, FLOPs
(torch.utils.flop_counter) and elementwise ops come from mlca.attention_cost.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch

from mlca.attention import create_attention, list_attentions
from mlca.attention.cost import attention_cost


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--hw", type=int, default=40)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backward", action="store_true", help="time forward + backward instead of forward")
    ap.add_argument("--names", default=",".join(list_attentions()))
    ap.add_argument("--device", default="cpu", help="cpu or cuda (CUDA times are synchronised per call)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    dev = torch.device(args.device)
    modules = {n: create_attention(n, args.channels).train(args.backward).to(dev) for n in names}
    inputs = [torch.randn(args.batch, args.channels, args.hw, args.hw, device=dev) for _ in range(4)]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {n: [] for n in names}

    def run(name: str, x: torch.Tensor) -> float:
        if args.backward:
            x = x.detach().requires_grad_(True)
            sync()
            t0 = time.perf_counter()
            modules[name](x).sum().backward()
            sync()
            return time.perf_counter() - t0
        with torch.no_grad():
            sync()
            t0 = time.perf_counter()
            modules[name](x)
            sync()
            return time.perf_counter() - t0

    for r in range(args.warmup + args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
        for n in order:
            t = run(n, inputs[r % len(inputs)])
            if r >= args.warmup:
                times[n].append(t * 1e3)

    med = {n: statistics.median(ts) for n, ts in times.items()}
    real = [n for n in names if n != "none"] or names
    fastest = min(med[n] for n in real)
    mode = "forward+backward" if args.backward else "forward"
    print(
        f"# attention {mode} on {dev.type}, B={args.batch} C={args.channels} {args.hw}x{args.hw}, {args.threads} thread(s), "
        f"median of {args.rounds} rounds\n# {_cpu_name()}, torch {torch.__version__}, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n"
    )
    print("| name | params | FLOPs (FlopCounterMode) | elementwise ops | time ms (median) | 25-75 % | x fastest | x none |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in sorted(names, key=lambda n: med[n]):
        cost = attention_cost(n, args.channels, args.hw)
        scale = args.batch  # attention_cost is per image
        x_none = f"{med[n] / med['none']:.0f}" if "none" in med and med["none"] > 0 else "-"
        print(
            f"| {n} | {cost.params:,} | {cost.flops * scale / 1e6:.3f} M | {cost.elementwise * scale / 1e6:.3f} M | "
            f"{med[n]:.3f} | {_quantile(times[n], 0.25):.3f}-{_quantile(times[n], 0.75):.3f} | "
            f"{med[n] / fastest:.2f} | {x_none} |"
        )


if __name__ == "__main__":
    main()
