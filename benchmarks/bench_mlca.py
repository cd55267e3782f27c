"""Benchmark of the MLCA layer: naive formulation vs mlca, eager and compiled, fwd and fwd+bwd.

Usage::

    python benchmarks/bench_mlca.py                 # CPU, YOLO feature shapes
    python benchmarks/bench_mlca.py --quick         # a short smoke run
    python benchmarks/bench_mlca.py --device cuda   # also on a GPU (adds CUDA peak memory)
    python benchmarks/bench_mlca.py --may --channels-last   # MAY's training maps, as it trains

For every shape and contender it prints the median time of the forward and of forward+backward
(over repeated runs cycling through several different inputs, so that no run reuses a warm
cache line of the previous one), the activation memory the forward keeps for backward (bytes of
the distinct tensors autograd saves, measured with ``saved_tensors_hooks``; on CUDA also the
peak allocated memory of a forward+backward), and the ratios to the naive eager formulation and
to the naive compiled one.

On Linux/glibc, large CPU tensors (above glibc's 32 MB mmap ceiling, or after heap trimming)
are fresh mmaps whose pages fault in on first write, ~20 ms per 50 MB on the development machine:
at (8, 256, 80, 80) that is more than half of every forward, for the naive module (two fresh maps)
and for mlca (one, its output) alike. For the steady state of a process that reuses its memory
(what jemalloc or tcmalloc give, as PyTorch's CPU performance guide recommends), run with::

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296 \
        python benchmarks/bench_mlca.py

Contenders are entries of ``CONTENDERS``; other back-ends (the Triton path) append theirs with
``CONTENDERS.append(Contender(...))`` or by adding to the list below.

``--json PATH`` also writes the rows as JSON (what ``bench_mlca_ab.py`` reads to compare two
source trees).
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlca.attention.mlca import MLCA

# perf_counter (wall) by default; --clock process measures this process's CPU time, which on a
# shared, oversubscribed machine is far more stable (it does not count time spent descheduled).
_CLOCK: Callable[[], float] = time.perf_counter

YOLO_SHAPES = [(16, 64, 80, 80), (16, 128, 40, 40), (16, 256, 20, 20), (8, 256, 80, 80)]
# YOLO maps at 416 px: sizes that are not multiples of local_size (the dense-matrix path).
UNEVEN_SHAPES = [(16, 128, 52, 52), (16, 256, 13, 13)]
QUICK_SHAPES = [(4, 64, 40, 40), (4, 128, 20, 20)]
# MLCA in MAY's nine SE slots (MobileNetV3-small) at 128 px, batch 16: `mlca compare`'s training
# shapes, where the maps are smaller than the 5 x 5 grid or barely larger.
MAY128_SHAPES = [(16, 16, 32, 32), (16, 96, 8, 8), (16, 240, 8, 8), (16, 120, 8, 8),
                 (16, 144, 8, 8), (16, 288, 4, 4), (16, 576, 4, 4)]


class NaiveMLCA(nn.Module):
    """The straightforward formulation with adaptive pooling (the seed's computation, re-written).

    x: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, in_size: int, local_size: int = 5, local_weight: float = 0.5) -> None:
        super().__init__()
        k = int(abs(math.log2(in_size) + 1) / 2)
        k = k if k % 2 else k + 1
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)
        self.conv_local = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)
        self.local_size, self.local_weight = local_size, local_weight

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        ls = self.local_size
        local = F.adaptive_avg_pool2d(x, ls)
        glob = F.adaptive_avg_pool2d(local, 1).reshape(b, 1, c)
        seq = local.reshape(b, c, ls * ls).transpose(1, 2).reshape(b, 1, ls * ls * c)
        att_local = self.conv_local(seq).sigmoid().reshape(b, ls * ls, c).transpose(1, 2)
        att_local = att_local.reshape(b, c, ls, ls)
        att_global = self.conv(glob).sigmoid().reshape(b, c, 1, 1)
        mix = att_global * (1 - self.local_weight) + att_local * self.local_weight
        return x * F.adaptive_avg_pool2d(mix, (h, w))


@dataclass
class Contender:
    """One implementation under test. ``build(channels, device)`` returns a callable module."""

    name: str
    build: Callable[[int, torch.device], Callable[[Tensor], Tensor]]
    devices: tuple[str, ...] = ("cpu", "cuda")
    compiled: bool = False


def _naive(c: int, dev: torch.device) -> nn.Module:
    return NaiveMLCA(c).to(dev)


def _mlca(c: int, dev: torch.device) -> nn.Module:
    """The default: backend "auto" (on the CPU the C kernels when built, else PyTorch's)."""
    return MLCA(c).to(dev)


def _mlca_torch(c: int, dev: torch.device) -> nn.Module:
    """The PyTorch kernels (what "auto" runs where the C extension is not built)."""
    return MLCA(c, backend="torch").to(dev)


def _compiled(build: Callable[[int, torch.device], nn.Module]):
    def make(c: int, dev: torch.device):
        return torch.compile(build(c, dev))

    return make


CONTENDERS: list[Contender] = [
    Contender("naive eager", _naive),
    Contender("naive compiled", _compiled(_naive), compiled=True),
    Contender("mlca eager", _mlca),
    Contender("mlca compiled", _compiled(_mlca), compiled=True),
    Contender("mlca torch-kernels", _mlca_torch, devices=("cpu",)),
]


class _StreamedMLCA(MLCA):
    """MLCA on the C kernels with outputs of ``min_bytes`` or more written with non-temporal
    stores: 0 = always, huge = never (``--stream-ab``); the threshold is passed to the C backend
    (``backends.c.configured``), not set in it."""

    def __init__(self, channels: int, min_bytes: int) -> None:
        super().__init__(channels, backend="c")
        from mlca.attention.mlca.backends import c

        self.c_backend = c.configured(min_bytes)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W), as MLCA."""
        from mlca.attention.mlca.function import mlca_function

        return mlca_function(x, self.conv.weight, self.conv_local.weight, self.local_size,
                             self.local_weight, self.c_backend)


def _stream_variant(min_bytes: int):
    def build(c: int, dev: torch.device) -> nn.Module:
        return _StreamedMLCA(c, min_bytes).to(dev)

    return build


STREAM_AB = [
    Contender("mlca c streamed", _stream_variant(0), devices=("cpu",)),
    Contender("mlca c cached", _stream_variant(2**62), devices=("cpu",)),
]


# --- The fused Triton path, CUDA only. Its effective GB/s, % of device-to-device copy
# bandwidth and the 32x256x160x160 shape are in benchmarks/bench_mlca_gpu.py (docs/triton.md).
def _mlca_triton(c: int, dev: torch.device) -> nn.Module:
    return MLCA(c, backend="triton").to(dev)


CONTENDERS.append(Contender("mlca triton", _mlca_triton, devices=("cuda",)))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _interleaved_medians(fns: list[Callable[[int], None]], reps: int, warmup: int,
                         dev: torch.device, block: int = 1) -> list[float]:
    """Median seconds of each fn, timed round-robin in blocks of ``block`` consecutive calls
    (A A A, B B B, C C C, A A A, ...) until each has ``reps`` timings.

    Round-robin makes the ratios robust on a shared machine: a burst of load from other
    processes hits every contender alike instead of whichever happened to run then. The order
    reverses every round (A B C, C B A, ...), so no contender always runs first. Blocks
    let each contender run in the allocator state it leaves itself, as a layer called in a
    loop does: with block 1, large outputs freed by one contender are returned to the OS and
    the next contender's fresh outputs page-fault back in (on glibc, ~20 ms per 50 MB).
    """
    for fn in fns:
        for i in range(warmup):
            fn(i)
    times: list[list[float]] = [[] for _ in fns]
    i = 0
    order = list(range(len(fns)))
    while len(times[0]) < reps:
        # alternate the order every round: a contender's first calls find the inputs in the state
        # the previous one left them (in cache or not); no contender should always come first
        for k in order:
            fn = fns[k]
            for j in range(min(block, reps - len(times[k]))):
                _sync(dev)
                t0 = _CLOCK()
                fn(i + j)
                _sync(dev)
                times[k].append(_CLOCK() - t0)
        i += block
        order.reverse()
    return [statistics.median(t) for t in times]


def _saved_bytes(mod: Callable[[Tensor], Tensor], x: Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps from the forward for the backward.

    Under torch.compile the saved activations are those of the compiled graph's backward.
    """
    seen: dict[tuple[int, int], int] = {}

    def pack(t: Tensor) -> Tensor:
        if t.numel() and not isinstance(t, nn.Parameter) and t.data_ptr() != x.data_ptr():
            seen[(t.untyped_storage().data_ptr(), t.dtype.itemsize)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mod(x).sum().backward()
    return sum(seen.values())


@dataclass
class Row:
    shape: tuple[int, int, int, int]
    name: str
    fwd_ms: float
    fwdbwd_ms: float
    saved_mb: float
    peak_mb: float | None = None
    extra: dict = field(default_factory=dict)


def bench_shape(shape, contenders, dev, reps, warmup, n_inputs=3, block=1,
                memory_format=torch.contiguous_format) -> list[Row]:
    b, c, h, w = shape
    gen = torch.Generator(device="cpu").manual_seed(0)
    xs = [torch.randn(shape, generator=gen).to(dev).contiguous(memory_format=memory_format)
          for _ in range(n_inputs)]
    xs_g = [x.clone().requires_grad_(True) for x in xs]
    gs = [torch.randn(shape, generator=gen).to(dev).contiguous(memory_format=memory_format)
          for _ in range(n_inputs)]
    ref_state = None
    mods = []
    for con in contenders:
        if dev.type not in con.devices:
            continue
        torch.manual_seed(0)
        mod = con.build(c, dev)
        base = getattr(mod, "_orig_mod", mod)
        if ref_state is None:
            ref_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
        else:
            base.load_state_dict(ref_state)
        mods.append((con, mod))

    def fwd(mod):
        def run(i: int) -> None:
            with torch.no_grad():
                mod(xs[i % n_inputs])
        return run

    def fwdbwd(mod):
        def run(i: int) -> None:
            x = xs_g[i % n_inputs]
            x.grad = None
            mod(x).backward(gs[i % n_inputs])
        return run

    t_f = _interleaved_medians([fwd(m) for _, m in mods], reps, warmup, dev, block)
    t_fb = _interleaved_medians([fwdbwd(m) for _, m in mods], reps, warmup, dev, block)
    rows = []
    for (con, mod), tf, tfb in zip(mods, t_f, t_fb):
        saved = _saved_bytes(mod, xs[0].clone().requires_grad_(True))
        peak = None
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            start = torch.cuda.memory_allocated(dev)
            fwdbwd(mod)(0)
            _sync(dev)
            peak = (torch.cuda.max_memory_allocated(dev) - start) / 2**20
        rows.append(Row(shape, con.name, tf * 1e3, tfb * 1e3, saved / 2**20, peak))
        print(f"  {con.name:<16} fwd {tf * 1e3:8.2f} ms  fwd+bwd {tfb * 1e3:8.2f} ms  "
              f"saved {saved / 2**20:7.1f} MiB", flush=True)
    return rows


def markdown_table(rows: list[Row], dev: torch.device) -> str:
    """Table with the ratios to the naive eager and naive compiled rows of the same shape."""
    out = [
        "| shape (B,C,H,W) | implementation | fwd ms | fwd+bwd ms | saved for bwd MiB"
        + (" | peak MiB" if dev.type == "cuda" else "")
        + " | fwd speedup vs naive eager / compiled | fwd+bwd speedup vs naive eager / compiled |",
        "|---|---|---:|---:|---:|" + ("---:|" if dev.type == "cuda" else "") + "---:|---:|",
    ]
    by_shape: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        by_shape.setdefault(r.shape, {})[r.name] = r
    for shape, named in by_shape.items():
        ne, nc = named.get("naive eager"), named.get("naive compiled")
        for r in named.values():
            def ratio(base: Row | None, attr: str) -> str:
                return f"{getattr(base, attr) / getattr(r, attr):.2f}x" if base else "-"

            peak = f" | {r.peak_mb:.1f}" if r.peak_mb is not None else ""
            out.append(
                f"| {shape} | {r.name} | {r.fwd_ms:.2f} | {r.fwdbwd_ms:.2f} | {r.saved_mb:.1f}{peak} | "
                f"{ratio(ne, 'fwd_ms')} / {ratio(nc, 'fwd_ms')} | "
                f"{ratio(ne, 'fwdbwd_ms')} / {ratio(nc, 'fwdbwd_ms')} |"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--quick", action="store_true", help="small shapes, few repetitions")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 15, quick 5)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the CPU")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile contenders")
    p.add_argument("--clock", choices=("wall", "process"), default="wall",
                   help="wall time, or CPU time of this process (stable under load; CPU only)")
    p.add_argument("--only", nargs="*", default=None, help="contender names to run")
    p.add_argument("--block", type=int, default=5,
                   help="consecutive calls per contender in each round-robin turn (default 5; "
                        "1 alternates every call, see _interleaved_medians)")
    p.add_argument("--no-uneven", action="store_true",
                   help="skip the 416-px shapes whose sizes are not multiples of local_size")
    p.add_argument("--shapes", nargs="*", default=None, metavar="BxCxHxW",
                   help="shapes to run instead of the default list, e.g. 16x256x20x20")
    p.add_argument("--stream-ab", action="store_true",
                   help="add the C kernels with outputs always / never written by non-temporal "
                        "stores (the choice the C backend makes by size, STREAM_MIN_BYTES)")
    p.add_argument("--may", action="store_true",
                   help="MAY's MLCA shapes at 128 px, batch 16 (mlca compare's training maps)")
    p.add_argument("--channels-last", action="store_true",
                   help="inputs and gradients channels_last (what MAY trains with on the CPU)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    args = p.parse_args(argv)

    dev = torch.device(args.device)
    global _CLOCK
    _CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else YOLO_SHAPES + ([] if args.no_uneven else UNEVEN_SHAPES)
    if args.may:
        shapes = MAY128_SHAPES
    if args.shapes:
        try:
            shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
        except ValueError:
            p.error(f"--shapes takes BxCxHxW, e.g. 16x256x20x20, got {args.shapes}")
        if any(len(s) != 4 or min(s) < 1 for s in shapes):
            p.error(f"--shapes takes four positive sizes BxCxHxW, got {args.shapes}")
    reps = args.reps or (5 if args.quick else 15)
    warmup = 2 if args.quick else 3
    contenders = [c for c in CONTENDERS if not (args.no_compile and c.compiled)]
    if args.stream_ab:
        contenders += STREAM_AB
    if args.only:
        contenders = [c for c in contenders if c.name in args.only]

    machine = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
          f"{dev.type} ({machine}), {torch.get_num_threads()} threads, median of {reps}, "
          f"{args.clock} clock, blocks of {args.block} calls"
          f"{', channels_last' if args.channels_last else ''}")
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    rows: list[Row] = []
    for shape in shapes:
        print(f"shape {shape}", flush=True)
        rows += bench_shape(shape, contenders, dev, reps, warmup, block=args.block, memory_format=fmt)
    print()
    print(markdown_table(rows, dev))
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump([{"shape": list(r.shape), "name": r.name, "fwd_ms": r.fwd_ms,
                        "fwdbwd_ms": r.fwdbwd_ms, "saved_mb": r.saved_mb} for r in rows], f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
