"""Host time of the Triton MLCA path: mlca's own Python per call, with the kernel launches stubbed.

Usage::

    python benchmarks/bench_mlca_triton_host.py            # CPU only: no GPU needed
    python benchmarks/bench_mlca_triton_host.py --reps 2000

Why: on an H100 the Triton path was limited by the host at the YOLO shapes (docs/triton.md):
the GPU finished the kernels before the CPU had issued the next launch. This measures the part
of that host time which is mlca's own code (argument checks, tile choice, allocations, the
PyTorch ops that remain, the autograd node), on any machine: every kernel launch is replaced by
a no-op, so Triton's own launcher cost (binding the arguments, looking the kernel up) and any
GPU time are *not* included. Tensors are CPU tensors; the stubbed kernels leave outputs
unwritten, so only timing is meaningful. (The unfused PyTorch middle is not a contender here:
on CPU tensors its ops would compute, not just launch, which is not what they cost on a GPU.)
On the CPU, allocating the big outputs costs more than with CUDA's caching allocator, so these
figures are an upper bound of mlca's share.

Contenders, measured round-robin in one run (the order reversed every round):

* ``mlca``: the default (3 launches forward, 3 backward, fused middle);
* ``triton int helpers``: the same, but with ``triton.cdiv`` / ``triton.next_power_of_2`` for
  the host-side tile and grid arithmetic, as before 2026-11-29 (``ConstexprFunction`` objects
  since Triton 3.x, ~5 us a call; mlca uses plain Python helpers and caches the tiles).

Reported: median microseconds per call, forward without grad and forward+backward
(``torch.autograd.grad`` w.r.t. x and both weights), and the ratio to ``mlca``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from typing import Callable, Iterator

import torch

SHAPES = [(16, 64, 80, 80), (16, 128, 40, 40), (16, 256, 20, 20), (8, 256, 80, 80)]


class _NoLaunch:
    """Stands in for a compiled kernel: ``kernel[grid](*args, **meta)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def _setting(mt, **values) -> Iterator[None]:
    saved = {k: getattr(mt, k) for k in values}
    for k, v in values.items():
        setattr(mt, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(mt, k, v)


def contenders(mt) -> dict[str, dict]:
    import triton

    def uncached(fn):
        return getattr(fn, "__wrapped__", fn)

    return {
        "mlca": {},
        "triton int helpers": {"_cdiv": triton.cdiv, "_next_pow2": triton.next_power_of_2,
                               "_row_tile_for": uncached(mt._row_tile_for),
                               "_middle_tile": uncached(mt._middle_tile)},
    }


def time_calls(fn: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=300, help="timed calls per contender and round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--shapes", default=None, help="e.g. 16x256x20x20,8x256x80x80")
    args = p.parse_args(argv)
    try:
        from mlca.attention.mlca.backends.triton import launch as mt
    except ImportError as e:  # pragma: no cover - depends on the torch build
        print(f"bench_mlca_triton_host.py: {e}", file=sys.stderr)
        return 2
    if not mt.HAS_TRITON:
        print("bench_mlca_triton_host.py: Triton is not installed (it ships with CUDA builds of "
              "torch)", file=sys.stderr)
        return 2
    shapes = SHAPES if args.shapes is None else [
        tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    saved_env, saved_threads = os.environ.get("TRITON_INTERPRET"), torch.get_num_threads()
    os.environ["TRITON_INTERPRET"] = "1"  # lets CPU tensors through the device check
    torch.set_num_threads(1)  # host time of one thread, as in a launch loop
    try:
        run(mt, shapes, args.reps, args.rounds)
    finally:
        torch.set_num_threads(saved_threads)
        if saved_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved_env
    return 0


def run(mt, shapes, reps: int, rounds: int) -> None:
    """``mt``: the Triton backend's launch module, whose helpers the contenders swap."""
    from mlca.attention.mlca.backends.triton import mlca_triton
    from mlca.attention.mlca.backends.triton.kernels import triton

    cons = contenders(mt)
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"triton {triton.__version__}, kernel launches stubbed, "
          f"median us per call over {rounds} rounds x {reps} calls")
    print("| shape | contender | fwd (no grad) us | fwd+bwd us | fwd ratio | fwd+bwd ratio |")
    print("|---|---|---:|---:|---:|---:|")
    with _setting(mt, _kernel=lambda fn, interpret: _NoLaunch()):
        for shape in shapes:
            x = torch.randn(shape, requires_grad=True)
            wg = torch.randn(1, 1, 5, requires_grad=True)
            wl = torch.randn(1, 1, 5, requires_grad=True)
            g = torch.randn(shape)

            def fwd() -> None:
                with torch.no_grad():
                    mlca_triton(x, wg, wl, 5, 0.5)

            def fwdbwd() -> None:
                torch.autograd.grad(mlca_triton(x, wg, wl, 5, 0.5), (x, wg, wl), g)

            times: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in cons}
            names = list(cons)
            for r in range(rounds):
                for name in (names if r % 2 == 0 else names[::-1]):
                    with _setting(mt, **cons[name]):
                        time_calls(fwd, 20)
                        times[name][0].extend(time_calls(fwd, reps))
                        time_calls(fwdbwd, 20)
                        times[name][1].extend(time_calls(fwdbwd, reps))
            base = [statistics.median(t) for t in times["mlca"]]
            for name in names:
                f, fb = (statistics.median(t) for t in times[name])
                print(f"| {'x'.join(map(str, shape))} | {name} | {f:.1f} | {fb:.1f} | "
                      f"{f / base[0]:.2f}x | {fb / base[1]:.2f}x |", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
