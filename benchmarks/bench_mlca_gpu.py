"""GPU benchmark of the fused Triton MLCA path (backend "triton") against the seed, eager and compiled.

Usage::

    python benchmarks/bench_mlca_gpu.py                       # CUDA, YOLO shapes + 32x256x160x160
    python benchmarks/bench_mlca_gpu.py --dtype bfloat16 --channels-last
    python benchmarks/bench_mlca_gpu.py --interpret-check     # CPU: exercise the code, no timing value

Columns, per shape and implementation: median time of the forward (no grad) and of
forward+backward (forward with grad, then ``backward`` of a fixed upstream gradient), the
effective bandwidth of each, the share of a device-to-device copy's bandwidth, and the speedups
over the seed eager and over ``torch.compile`` of the seed.

How bytes are counted (the *minimal* traffic of an exact MLCA that cannot keep x on chip,
``|x|`` = bytes of x): forward = 3|x| (read x to pool it, read x to scale it, write out);
forward+backward = 3|x| + 4|x| = 7|x| (backward: read g and x for the per-bin reductions, read g
again and write grad_x). The tiny (B, C, L, L) maps are not counted. The same byte count is used
for every implementation, so GB/s is "effective" bandwidth: a contender that moves more bytes
shows a lower number. The copy reference is ``dst.copy_(src)`` of a 1 GiB buffer, counted as
2 x 1 GiB (read + write); "% copy" = effective GB/s / copy GB/s. Timing: CUDA events around
each call, the L2 cache flushed (a 256 MiB write) before every timed call, several inputs
cycled, median over ``--reps``.

``--interpret-check`` runs every code path except the CUDA timing on the CPU through Triton's
interpreter at a tiny shape (its "timings" are interpreter timings and mean nothing): use it to
check the script where there is no GPU. Without CUDA and without that flag the script exits
with status 2 and says why.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

YOLO_SHAPES = [(16, 64, 80, 80), (16, 128, 40, 40), (16, 256, 20, 20), (8, 256, 80, 80)]
LARGE_SHAPES = [(32, 256, 160, 160)]
INTERPRET_SHAPES = [(2, 6, 9, 11)]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class SeedMLCA(nn.Module):
    """The seed's MLCA (``/work/shared/seed``), same operations in the same order.

    x: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, in_size: int, local_size: int = 5, gamma: float = 2, b: float = 1,
                 local_weight: float = 0.5) -> None:
        super().__init__()
        t = int(abs(math.log(in_size, 2) + b) / gamma)
        k = t if t % 2 else t + 1
        self.local_size = local_size
        self.local_weight = local_weight
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.conv_local = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        ls = self.local_size
        local = F.adaptive_avg_pool2d(x, ls)
        glob = F.adaptive_avg_pool2d(local, 1)
        b, c, m, n = x.shape
        temp_local = local.view(b, c, -1).transpose(-1, -2).reshape(b, 1, -1)
        temp_global = glob.view(b, c, -1).transpose(-1, -2)
        y_local = self.conv_local(temp_local)
        y_global = self.conv(temp_global)
        y_local_t = y_local.reshape(b, ls * ls, c).transpose(-1, -2).view(b, c, ls, ls)
        y_global_t = y_global.transpose(-1, -2).unsqueeze(-1)
        att_local = y_local_t.sigmoid()
        att_global = F.adaptive_avg_pool2d(y_global_t.sigmoid(), [ls, ls])
        att_all = F.adaptive_avg_pool2d(
            att_global * (1 - self.local_weight) + att_local * self.local_weight, [m, n]
        )
        return x * att_all


@dataclass
class Contender:
    name: str
    build: Callable[[int], nn.Module]  # channels -> module on the device (seed state loaded)


def _settings_mlca(in_size: int, settings) -> nn.Module:
    """MLCA (same parameters and state_dict keys) whose forward runs the Triton kernels with
    ``settings`` (a ``TritonSettings``), passed explicitly to ``mlca_triton``."""
    from mlca.attention.mlca import MLCA
    from mlca.attention.mlca.backends.triton import mlca_triton

    class SettingsMLCA(MLCA):
        def forward(self, x: Tensor) -> Tensor:
            """x: (B, C, H, W) -> (B, C, H, W), as MLCA with the Triton backend."""
            return mlca_triton(x, self.conv.weight, self.conv_local.weight, self.local_size,
                               self.local_weight, settings=settings)

    return SettingsMLCA(in_size, backend="triton")


@dataclass
class Row:
    shape: tuple[int, int, int, int]
    name: str
    fwd_ms: float
    fwdbwd_ms: float
    fwd_gbs: float
    fwdbwd_gbs: float
    max_err: float
    out: Tensor | None = None  # the forward output until compared, then dropped


def minimal_bytes(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[int, int]:
    """(forward, forward+backward) minimal bytes: 3|x| and 7|x| (see the module docstring)."""
    x_bytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return 3 * x_bytes, 7 * x_bytes


class Timer:
    """Median wall time of a call: CUDA events with an L2 flush on GPU, perf_counter elsewhere."""

    def __init__(self, device: torch.device, reps: int, warmup: int) -> None:
        self.device, self.reps, self.warmup = device, reps, warmup
        self.cuda = device.type == "cuda"
        # Larger than any GPU's L2 (50 MiB on H100), so no timed call finds its input cached.
        self.flush = torch.empty(256 * 2**20 // 4, dtype=torch.float32, device=device) if self.cuda else None

    def median_ms(self, fn: Callable[[int], None]) -> float:
        for i in range(self.warmup):
            fn(i)
        times = []
        for i in range(self.reps):
            if self.cuda:
                self.flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(i)
                end.record()
                torch.cuda.synchronize(self.device)
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn(i)
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def copy_bandwidth_gbs(device: torch.device, timer: Timer, nbytes: int) -> float:
    """GB/s of ``dst.copy_(src)`` for an ``nbytes`` buffer, counted as read + write."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    ms = timer.median_ms(lambda i: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def make_contenders(device: torch.device, dtype: torch.dtype, compile_seed: bool,
                    triton_ok: bool, compare_middle: bool = True,
                    settings=None) -> list[Contender]:
    """The seed runs wholly in x's dtype (its conv1d needs weights of the input's dtype, as in a
    model converted with ``.half()``); MLCA keeps float32 parameters and computes its attention
    in float32 whatever x's dtype. ``settings``: the ``TritonSettings`` of the Triton contenders
    (None: the defaults)."""
    from mlca.attention.mlca.backends.triton import DEFAULT_SETTINGS
    from mlca.attention.mlca import MLCA

    def seed_f32(c: int) -> nn.Module:
        torch.manual_seed(0)
        return SeedMLCA(c).to(device)

    def seed(c: int) -> nn.Module:
        return seed_f32(c).to(dtype)

    def mlca(backend: str, triton_settings=None) -> Callable[[int], nn.Module]:
        def build(c: int) -> nn.Module:
            mod = (MLCA(c, backend=backend) if triton_settings is None
                   else _settings_mlca(c, triton_settings)).to(device)
            mod.load_state_dict(seed_f32(c).state_dict())  # same parameter names as the seed
            return mod

        return build

    out = [Contender("seed eager", seed)]
    if compile_seed:
        def compiled(c: int) -> nn.Module:
            # A fresh dynamo cache per shape: 4 shapes x (no_grad, grad) already reach dynamo's
            # recompile limit of 8, after which the 5th shape silently ran EAGER (seen on an H100).
            torch._dynamo.reset()
            return torch.compile(seed(c), dynamic=False)

        out.append(Contender("seed compiled", compiled))
    out.append(Contender("mlca torch", mlca("torch")))
    if triton_ok:
        base = settings or DEFAULT_SETTINGS
        out.append(Contender("mlca triton", mlca("triton", settings)))
        if compare_middle:
            # The middle as PyTorch ops (before it was fused): what the fusion buys, side by side.
            out.append(Contender("triton torch-mid",
                                 mlca("triton", base.replace(fused_middle=False))))
    return out


def bench_shape(shape, contenders, device, dtype, channels_last, timer, n_inputs=3) -> list[Row]:
    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def make() -> Tensor:
        return torch.randn(shape, generator=gen).to(device=device, dtype=dtype, memory_format=fmt)

    xs = [make() for _ in range(n_inputs)]
    xs_g = [x.clone().requires_grad_(True) for x in xs]
    gs = [make() for _ in range(n_inputs)]
    ref = None
    rows: list[Row] = []
    for con in contenders:
        rows.append(_bench_one(con, shape, xs, xs_g, gs, n_inputs, timer, dtype))
        ref = rows[0].out if ref is None else ref  # the first contender (seed eager): reference
        rows[-1].max_err = (rows[-1].out - ref).abs().max().item()
        rows[-1].out = None
        r = rows[-1]
        print(f"  {con.name:<16} fwd {r.fwd_ms:8.3f} ms {r.fwd_gbs:8.4g} GB/s   "
              f"fwd+bwd {r.fwdbwd_ms:8.3f} ms {r.fwdbwd_gbs:8.4g} GB/s   "
              f"max|err| vs seed {r.max_err:.2e}", flush=True)
    return rows


def _bench_one(con: Contender, shape, xs, xs_g, gs, n_inputs: int, timer: Timer, dtype) -> Row:
    """Forward and forward+backward medians of one contender; ``out`` is its forward output
    (float32), for the agreement check against the first contender."""
    mod = con.build(shape[1])
    with torch.no_grad():
        y = mod(xs[0]).float()

    def fwd(i: int) -> None:
        with torch.no_grad():
            mod(xs[i % n_inputs])

    def fwdbwd(i: int) -> None:
        x = xs_g[i % n_inputs]
        x.grad = None
        mod(x).backward(gs[i % n_inputs])

    t_f = timer.median_ms(fwd)
    t_fb = timer.median_ms(fwdbwd)
    fwd_bytes, fb_bytes = minimal_bytes(shape, dtype)
    return Row(shape, con.name, t_f, t_fb, fwd_bytes / (t_f * 1e-3) / 1e9,
               fb_bytes / (t_fb * 1e-3) / 1e9, float("nan"), y)


def markdown_table(rows: list[Row], copy_gbs: float) -> str:
    """One line per (shape, implementation) with bandwidth and the ratios to the seed rows."""
    head = ("| shape (B,C,H,W) | implementation | fwd ms | fwd GB/s | fwd % copy | fwd+bwd ms | "
            "fwd+bwd GB/s | fwd+bwd % copy | fwd speedup vs seed eager / compiled | "
            "fwd+bwd speedup vs seed eager / compiled |")
    out = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by_shape: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        by_shape.setdefault(r.shape, {})[r.name] = r
    for shape, named in by_shape.items():
        eager, comp = named.get("seed eager"), named.get("seed compiled")
        for r in named.values():
            def ratio(base: Row | None, attr: str) -> str:
                return f"{getattr(base, attr) / getattr(r, attr):.2f}x" if base else "-"

            out.append(
                f"| {shape} | {r.name} | {r.fwd_ms:.3f} | {r.fwd_gbs:.4g} | "
                f"{100 * r.fwd_gbs / copy_gbs:.0f}% | {r.fwdbwd_ms:.3f} | {r.fwdbwd_gbs:.4g} | "
                f"{100 * r.fwdbwd_gbs / copy_gbs:.0f}% | {ratio(eager, 'fwd_ms')} / {ratio(comp, 'fwd_ms')} | "
                f"{ratio(eager, 'fwdbwd_ms')} / {ratio(comp, 'fwdbwd_ms')} |"
            )
    return "\n".join(out)


def check_deterministic(device: torch.device, dtype: torch.dtype, shape) -> str:
    """Triton fwd+bwd under torch.use_deterministic_algorithms(True), twice: bit-identical?"""
    from mlca.attention.mlca import MLCA

    torch.manual_seed(0)
    mod = MLCA(shape[1], backend="triton").to(device)
    x = torch.randn(shape, device=device).to(dtype)
    g = torch.randn(shape, device=device).to(dtype)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            xi = x.clone().requires_grad_(True)
            mod.zero_grad(set_to_none=True)
            mod(xi).backward(g)
            grads.append([xi.grad, mod.conv.weight.grad, mod.conv_local.weight.grad])
    finally:
        torch.use_deterministic_algorithms(was)
    same = all(torch.equal(a, b) for a, b in zip(*grads))
    return "bit-identical" if same else "DIFFERENT (bug)"


# Candidate tiles for --tune: "reduce" (BLOCK_C, BLOCK_W, num_warps), "scale" (BLOCK_C,
# BLOCK_W, ROWS, num_warps), as in TritonSettings.tuning.
TUNE_CANDIDATES = {
    "reduce_nchw": [(4, 128, 4), (8, 128, 4), (2, 256, 4)],
    "reduce_cl": [(32, 16, 4), (64, 16, 4), (64, 32, 8)],
    "scale_nchw": [(1, 256, 8, 2), (2, 256, 4, 4), (4, 256, 8, 4), (4, 128, 4, 4), (8, 128, 8, 8)],
    "scale_cl": [(64, 16, 4, 4), (128, 16, 2, 8), (128, 16, 4, 8)],
}
TUNE_SHAPES = [(32, 256, 160, 160)]


def tune(dtype: torch.dtype, copy_gbs: float, settings=None) -> None:
    """Time the forward kernels alone for each candidate tile (and the flat kernels), print GB/s.

    reduce: reads |x|; scale: reads |x|, writes |x|. ``triton.testing.do_bench`` (median, L2
    flushed between calls)."""
    import triton.testing

    from mlca.attention.mlca.backends.triton import DEFAULT_SETTINGS
    from mlca.attention.mlca.backends.triton import launch as mt

    base = settings or DEFAULT_SETTINGS
    # The (B, C, L, L) middle: the fused Triton kernels (the default), the PyTorch ops it used
    # before (fused_middle=False), and the same ops on cuDNN's default (TF32) path.
    local = torch.randn(32, 256, 5, 5, device="cuda", requires_grad=True)
    wg = torch.randn(1, 1, 5, device="cuda", requires_grad=True)
    wl = torch.randn(1, 1, 5, device="cuda", requires_grad=True)

    def middle_conv() -> Tensor:
        B, C, L, _ = local.shape
        seq = local.reshape(B, C, L * L).transpose(1, 2).reshape(B, 1, L * L * C)
        y = F.conv1d(seq, wl, padding=2).reshape(B, L * L, C).transpose(1, 2).reshape(B, C, L, L)
        yg = F.conv1d(local.mean(dim=(2, 3)).unsqueeze(1), wg, padding=2).reshape(B, C, 1, 1)
        return yg.sigmoid() * 0.5 + y.sigmoid() * 0.5

    g = torch.randn(32, 256, 5, 5, device="cuda")

    loc_, wg_, wl_ = local.detach(), wg.detach(), wl.detach()

    def fused_fwd() -> Tensor:
        return mt._fused_middle(loc_, wg_, wl_, 0.5, torch.contiguous_format, False)

    def fused_fwdbwd() -> tuple:
        fused_fwd()
        return mt._fused_middle_backward(loc_, g, wg_, wl_, 0.5, torch.contiguous_format, 160, 160,
                                         False)

    middles = [("fused triton", fused_fwd, fused_fwdbwd)]
    for label, fn in (("pytorch ops", lambda: mt._middle(local, wg, wl, 0.5)),
                      ("default cudnn", middle_conv)):
        middles.append((label, lambda fn=fn: fn().detach(),
                        lambda fn=fn: torch.autograd.grad(fn(), (local, wg, wl), g)))
    for label, fwd, fwdbwd in middles:
        f_ms = triton.testing.do_bench(fwd, return_mode="median")
        fb_ms = triton.testing.do_bench(fwdbwd, return_mode="median")
        print(f"middle (32, 256, 5, 5) {label:<13} fwd {f_ms * 1e3:8.1f} us   fwd+bwd {fb_ms * 1e3:8.1f} us",
              flush=True)
    if os.environ.get("MLCA_TUNE_MIDDLE_ONLY"):
        return
    for shape in TUNE_SHAPES:
        for cl in (False, True):
            fmt = torch.channels_last if cl else torch.contiguous_format
            x = torch.randn(shape, device="cuda").to(dtype).contiguous(memory_format=fmt)
            small = torch.rand(shape[0], shape[1], 5, 5, device="cuda")
            nb = x.numel() * x.element_size()
            lay = "cl" if cl else "nchw"
            print(f"tune {shape} {lay} {dtype}", flush=True)
            results = []

            def kernel(kern: str, st) -> Callable[[], Tensor]:
                if kern == "reduce":
                    return lambda: mt._bin_reduce(x, None, 5, False, None, st)
                return lambda: mt._scale(x, small, None, x, False, None, st)

            flat = base.replace(algo="flat")
            for kern, nbytes in (("reduce", nb), ("scale", 2 * nb)):
                ms = triton.testing.do_bench(kernel(kern, flat), return_mode="median")
                results.append((kern, "flat", ms, nbytes / ms / 1e6))
            # NCHW: BLOCK_W fitted to W or not; the scale with and without W-upsampled maps.
            variants = [("reduce", nb, True, True), ("scale", 2 * nb, True, True)]
            if not cl:
                variants += [("reduce", nb, True, False), ("scale", 2 * nb, True, False),
                             ("scale", 2 * nb, False, True)]
            for kern, nbytes, cols, fit in variants:
                for cand in TUNE_CANDIDATES[f"{kern}_{lay}"]:
                    st = base.replace(algo="rows", nchw_cols=cols, fit_w=fit).with_tile(
                        f"{kern}_{lay}", cand)
                    try:
                        ms = triton.testing.do_bench(kernel(kern, st), return_mode="median")
                    except Exception as e:  # a tile that does not compile (resources)
                        print(f"  {kern} {cand}: failed {type(e).__name__}: {e}"[:200])
                        continue
                    label = str(cand) + ("" if cols else " gather") + ("" if fit else " pow2")
                    results.append((kern, label, ms, nbytes / ms / 1e6))
            for kern, cand, ms, gbs in results:
                print(f"  {kern:<6} {cand:<25} {ms * 1e3:9.1f} us {gbs:8.0f} GB/s "
                      f"{100 * gbs / copy_gbs:5.0f}% copy", flush=True)
            del x


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--channels-last", action="store_true", help="inputs in channels_last")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions (median)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the seed")
    p.add_argument("--no-large", action="store_true", help="skip the 32x256x160x160 shape")
    p.add_argument("--tune", action="store_true",
                   help="time the Triton kernels alone for several tile shapes, then exit")
    p.add_argument("--algo", choices=("rows", "flat"), default=None,
                   help="which Triton kernels run (default: TritonSettings().algo)")
    p.add_argument("--interpret-check", action="store_true",
                   help="no GPU: run all code paths on the CPU via TRITON_INTERPRET=1 (tiny shape)")
    args = p.parse_args(argv)
    dtype = DTYPES[args.dtype]

    if args.interpret_check:
        # The Triton path reads this at call time; it does not need to precede any import.
        os.environ["TRITON_INTERPRET"] = "1"
        device, shapes = torch.device("cpu"), INTERPRET_SHAPES
        reps, warmup, compile_seed, copy_nbytes = 1, 0, False, 2**20
    else:
        if not torch.cuda.is_available():
            print("bench_mlca_gpu.py: no CUDA device (torch.cuda.is_available() is False); this "
                  "benchmark times GPU kernels. Use --interpret-check to exercise it on the CPU.",
                  file=sys.stderr)
            return 2
        device = torch.device("cuda")
        shapes = YOLO_SHAPES + ([] if args.no_large else LARGE_SHAPES)
        reps, warmup, compile_seed, copy_nbytes = args.reps, args.warmup, not args.no_compile, 2**30

    from mlca.attention.mlca.backends.triton import DEFAULT_SETTINGS, triton_available
    from mlca.attention.mlca.backends.triton.kernels import triton

    settings = DEFAULT_SETTINGS if args.algo is None else DEFAULT_SETTINGS.replace(algo=args.algo)

    triton_ok = triton_available()
    if not triton_ok:
        print("warning: Triton is not available; timing the PyTorch contenders only", file=sys.stderr)
    timer = Timer(device, reps, warmup)
    copy_gbs = copy_bandwidth_gbs(device, timer, copy_nbytes)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else "CPU, Triton INTERPRETER (timings meaningless)")
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
          f"triton {triton.__version__ if triton else '-'}, kernels {settings.algo!r}, "
          f"{name}, {args.dtype}, {'channels_last' if args.channels_last else 'NCHW'}, median of {reps}; "
          f"copy reference {copy_gbs:.4g} GB/s")
    if args.tune:
        tune(dtype, copy_gbs, settings)
        return 0
    contenders = make_contenders(device, dtype, compile_seed, triton_ok, settings=settings)
    rows: list[Row] = []
    for shape in shapes:
        print(f"shape {shape}", flush=True)
        rows += bench_shape(shape, contenders, device, dtype, args.channels_last, timer)
    if triton_ok:
        print(f"deterministic mode, triton fwd+bwd twice: {check_deterministic(device, dtype, shapes[0])}")
    print()
    print(markdown_table(rows, copy_gbs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
