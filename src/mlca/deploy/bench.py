"""MAY latency per attention, in PyTorch eager, torch.compile and onnxruntime, side by side.

onnxruntime runs one static export per input shape, as a fixed-size deployment does (MLCA is
then a reshape-mean and a resize in the graph); the dynamic exports can be timed as well.

All (attention, backend) pairs of one input shape are timed in the same process, interleaved:
every repetition runs each pair once, in a fresh random order, so load from other programs
and thermal drift hit all pairs alike. After warm-up calls (which also trigger compilation),
the median of the repetitions is reported.
"""

from __future__ import annotations

import platform
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

__all__ = ["BenchResult", "bench_may", "format_table", "machine_info"]

# "onnxruntime": one static export per (image size, batch), as a fixed-size deployment runs.
# "onnxruntime-dynamic": one export with dynamic batch and size for every shape (MLCA as exact
# gathers); "onnxruntime-dense": the same with MLCA as averaging-matrix products
# (export_onnx(mlca="dense")). Not in the default set of `mlca bench`: ask with --backends.
BACKENDS = ("eager", "compile", "onnxruntime", "onnxruntime-dynamic", "onnxruntime-dense")
DEFAULT_BACKENDS = BACKENDS[:3]
_PER_SHAPE = ("onnxruntime",)  # backends prepared again for each input shape


@dataclass
class BenchResult:
    attention: str
    backend: str
    img_size: int
    batch: int
    median_ms: float
    min_ms: float
    reps: int


def machine_info() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"Python {platform.python_version()}, {platform.system()}")


def _runner(model: torch.nn.Module, backend: str, attention: str, tmp: Path, threads: int,
            shape: tuple[int, int] = (1, 320)) -> Callable:
    """A callable for ``backend``; static exports are made for ``shape`` = (batch, image size)."""
    if backend == "eager":
        return model
    if backend == "compile":
        # dynamic: one graph serves every image size instead of one compilation per size
        return torch.compile(model, dynamic=True)
    if backend in ("onnxruntime", "onnxruntime-dynamic", "onnxruntime-dense"):
        from .export import export_onnx
        from .onnxrt import OnnxBackend

        batch, size = shape
        path = tmp / f"may-{attention}-{backend}-{batch}x{size}.onnx"
        from .detectors import export_detector_onnx, is_ultralytics_model

        if is_ultralytics_model(model):
            if backend == "onnxruntime-dynamic":
                raise ValueError(f"{backend}: MAY only; ultralytics detectors are timed with static exports "
                                 "(onnxruntime, onnxruntime-dense)")
            export_detector_onnx(model, path, size, batch, mlca="dense" if backend == "onnxruntime-dense" else "exact")
        elif backend == "onnxruntime":
            export_onnx(model, path, size, batch=batch)
        else:
            mlca = "dense" if backend == "onnxruntime-dense" else "exact"
            export_onnx(model, path, 320, dynamic=True, mlca=mlca)
        # No spinning: onnxruntime's idle workers would busy-wait after each run and take the
        # cores from the eager / compiled calls timed next (measured: +/-30 % swings on 2 cores).
        return OnnxBackend(path, providers=["CPUExecutionProvider"], num_threads=threads, spin=False)
    raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")


def bench_may(
    attentions: Sequence[str] | None = None,
    batches: Sequence[int] = (1, 8),
    sizes: Sequence[int] = (320, 640),
    backends: Sequence[str] = DEFAULT_BACKENDS,
    reps: int = 10,
    warmup: int = 2,
    num_classes: int | None = None,
    width: float = 1.0,
    threads: int | None = None,
    head: str = "yolov5",
    detector: str = "may",
    where: str = "backbone",
    seed: int = 0,
    clock: str = "wall",
    log: Callable[[str], None] = print,
) -> list[BenchResult]:
    """Median forward latency (ms, no grad, eval mode, CPU) of MAY per attention, backend and shape.

    Args:
        attentions: names (default: every registered attention).
        batches, sizes: input shapes ``(batch, 3, size, size)``.
        backends: any of ``"eager"``, ``"compile"``, ``"onnxruntime"`` (a static export per
            batch and size), ``"onnxruntime-dynamic"`` (one dynamic export) and
            ``"onnxruntime-dense"`` (one dynamic export, MLCA with ``mlca="dense"``).
        reps: timed repetitions per pair (the median is reported); warmup: untimed calls first.
        head: MAY's detection head, ``"yolov5"`` (the paper's) or ``"yolov8"`` (anchor-free).
        detector: ``"may"`` or an ultralytics model (``"yolo11n"``, ``"yolov8n"``, a model YAML)
            with the attention placed ``where`` (:mod:`mlca.deploy.detectors`).
        threads: torch and onnxruntime intra-op threads (default: torch's current setting).
        clock: ``"wall"`` (perf_counter) or ``"process"`` (this process's CPU time; needs one
            thread, and then ignores time lost to other programs on a shared machine).
    """
    from mlca.attention import list_attentions

    from .detectors import build_detector, default_num_classes, is_ultralytics_model

    attentions = list(attentions or list_attentions())
    nc = default_num_classes(detector) if num_classes is None else num_classes
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise ValueError(f"unknown backend(s) {sorted(unknown)}; choose from {BACKENDS}")
    if clock not in ("wall", "process"):
        raise ValueError(f"clock must be 'wall' or 'process', got {clock!r}")
    if clock == "process":
        threads = 1  # CPU time equals latency only when one thread does all the work
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    timer = time.process_time if clock == "process" else time.perf_counter
    rng = random.Random(seed)
    results: list[BenchResult] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        runners: dict[tuple[str, str], Callable] = {}
        models = {}

        def per_shape(att: str, backend: str) -> bool:
            # ultralytics detectors are only exported statically: one export per input shape
            return backend in _PER_SHAPE or (backend.startswith("onnxruntime") and is_ultralytics_model(models[att]))

        def prepare(att: str, backend: str, shape: tuple[int, int] = (1, 320)) -> None:
            t0 = time.perf_counter()
            runners[att, backend] = _runner(models[att], backend, att, Path(tmpdir), threads, shape)
            if backend != "eager":
                at = f" for {shape[0]}x3x{shape[1]}x{shape[1]}" if per_shape(att, backend) else ""
                log(f"  prepared {att:>10} {backend:<12}{at} in {time.perf_counter() - t0:.0f} s")

        for att in attentions:
            torch.manual_seed(seed)
            models[att] = build_detector(detector, att, nc, where, width=width, head=head)
            for backend in backends:
                if not per_shape(att, backend):
                    prepare(att, backend)
        for size in sizes:
            for batch in batches:
                for att in attentions:
                    for backend in backends:
                        if per_shape(att, backend):
                            prepare(att, backend, (batch, size))
                x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
                pairs = list(runners)
                times: dict[tuple[str, str], list[float]] = {p: [] for p in pairs}
                with torch.inference_mode():
                    for p in pairs:  # warm-up (compiles for this shape)
                        for _ in range(warmup):
                            runners[p](x)
                    for _ in range(reps):
                        rng.shuffle(pairs)
                        for p in pairs:
                            t0 = timer()
                            runners[p](x)
                            times[p].append((timer() - t0) * 1e3)
                for (att, backend), ts in times.items():
                    results.append(BenchResult(att, backend, size, batch, statistics.median(ts), min(ts), reps))
                log(f"  done {size}x{size} batch {batch}")
    return results


def format_table(results: Sequence[BenchResult], baseline: str = "eca") -> str:
    """Markdown: one row per (size, batch, attention), one column per backend, plus eager vs baseline."""
    backends = [b for b in BACKENDS if any(r.backend == b for r in results)]
    by = {(r.img_size, r.batch, r.attention, r.backend): r.median_ms for r in results}
    shapes = sorted({(r.img_size, r.batch) for r in results})
    atts = list(dict.fromkeys(r.attention for r in results))
    head = ["size", "batch", "attention"] + [f"{b} ms" for b in backends]
    has_base = "eager" in backends and baseline in atts
    if has_base:
        head.append(f"eager vs {baseline}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for size, batch in shapes:
        for att in atts:
            row = [str(size), str(batch), att]
            row += [f"{by[size, batch, att, b]:.1f}" if (size, batch, att, b) in by else "-" for b in backends]
            if has_base:
                rel = by[size, batch, att, "eager"] / by[size, batch, baseline, "eager"] - 1
                row.append(f"{rel * 100:+.1f}%")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def results_as_dicts(results: Sequence[BenchResult]) -> list[dict]:
    return [asdict(r) for r in results]
