"""Before/after comparison of two source trees of mlca with ``bench_mlca.py``, interleaved.

Usage::

    python benchmarks/bench_mlca_ab.py --before /tmp/mlca_before/src            # after: ./src
    python benchmarks/bench_mlca_ab.py --before OLD/src --after NEW/src --rounds 4 \\
        -- --shapes 16x256x20x20 --reps 20             # arguments after -- go to bench_mlca.py

Each round runs ``bench_mlca.py`` (this folder's copy, which imports only ``MLCA`` from the tree
under test) once per tree, each in its own subprocess with ``PYTHONPATH`` set to that tree, the
order alternating every round (before, after; after, before; ...), so that a burst of load from
other processes or a drift of the machine hits both trees alike. Printed per shape and contender:
the median over rounds of each tree's fwd and fwd+bwd times, the ratio after / before (below 1:
the after tree is faster), and the range of the per-round ratios (the noise to judge it by).

Defaults for ``bench_mlca.py``: ``--no-compile --only "mlca eager" "mlca torch-kernels"``, and
with ``--steady-alloc`` glibc told not to ``mmap`` or trim (see bench_mlca.py's docstring).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_BENCH_ARGS = ["--no-compile", "--only", "mlca eager", "mlca torch-kernels"]
STEADY = ("glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296")


def run_tree(src: Path, bench_args: list[str], steady: bool) -> list[dict]:
    """One bench_mlca.py run against the tree ``src`` (a folder holding the ``mlca`` package)."""
    env = dict(os.environ, PYTHONPATH=str(src))
    if steady:
        env["GLIBC_TUNABLES"] = STEADY
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(HERE / "bench_mlca.py"), *bench_args, "--json", str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"bench_mlca.py failed for {src}:\n{proc.stdout}\n{proc.stderr}")
        return json.loads(out.read_text())


def _check_tree(src: Path) -> None:
    if not (src / "mlca" / "__init__.py").is_file():
        raise SystemExit(f"{src}: no mlca package there (pass the folder that holds mlca/)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    bench_args = None
    if "--" in argv:
        i = argv.index("--")
        argv, bench_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="the old tree's src folder")
    p.add_argument("--after", type=Path, default=HERE.parent / "src", help="default: ./src")
    p.add_argument("--rounds", type=int, default=3, help="runs per tree (default 3)")
    p.add_argument("--steady-alloc", action="store_true",
                   help="GLIBC_TUNABLES: no mmap/trim (the steady state of bench_mlca.py's docs)")
    args = p.parse_args(argv)
    bench_args = DEFAULT_BENCH_ARGS if bench_args is None else bench_args
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    for src in trees.values():
        _check_tree(src)

    times: dict[tuple, dict[str, list[tuple[float, float]]]] = {}
    order = ["before", "after"]
    for r in range(args.rounds):
        for side in order:
            print(f"round {r + 1}/{args.rounds}: {side} ({trees[side]})", file=sys.stderr,
                  flush=True)
            for row in run_tree(trees[side], bench_args, args.steady_alloc):
                key = (tuple(row["shape"]), row["name"])
                times.setdefault(key, {"before": [], "after": []})[side].append(
                    (row["fwd_ms"], row["fwdbwd_ms"]))
        order.reverse()

    print(f"# bench_mlca.py {' '.join(bench_args)}; {args.rounds} interleaved rounds per tree"
          + ("; steady-state allocator" if args.steady_alloc else ""))
    print("| shape (B,C,H,W) | implementation | fwd ms before | fwd ms after | fwd after/before "
          "(range) | fwd+bwd ms before | fwd+bwd ms after | fwd+bwd after/before (range) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (shape, name), sides in times.items():
        cells = []
        for j in (0, 1):
            b = [t[j] for t in sides["before"]]
            a = [t[j] for t in sides["after"]]
            ratios = [x / y for x, y in zip(a, b)]
            cells.append(f"{statistics.median(b):.2f} | {statistics.median(a):.2f} | "
                         f"{statistics.median(a) / statistics.median(b):.2f} "
                         f"({min(ratios):.2f}-{max(ratios):.2f})")
        print(f"| {shape} | {name} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
