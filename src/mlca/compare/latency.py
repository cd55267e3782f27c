"""Batch-1 inference latency of several models, measured side by side in one process.

Timing models one after another lets drift in the machine's load (other processes, CPU
frequency, thermal state) land on one model and not the others. Here every round times
each model once, in a rotating order, after a warm-up of every model, and the reported
number is the median over rounds, which ignores the occasional round hit by a hiccup.
"""

from __future__ import annotations

import statistics
import time
from typing import Mapping

import torch
from torch import nn

__all__ = ["measure_latency", "available_devices"]


def available_devices() -> list[str]:
    """``['cpu']``, plus ``'cuda'`` when a CUDA device is present."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(
    models: Mapping[str, nn.Module],
    img_size: int,
    device: str | torch.device = "cpu",
    warmup: int = 3,
    rounds: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """Median batch-1 forward time in milliseconds for each model, measured interleaved.

    Args:
        models: name -> model taking ``(1, 3, img_size, img_size)``. Each is put in eval mode
            and moved to ``device`` (in place; pass copies if that matters to you).
        img_size: square input side in pixels.
        device: ``'cpu'`` or ``'cuda'`` (``'cuda:i'``).
        warmup: untimed forwards per model before timing (lazy init, allocator, caches).
        rounds: timed rounds; each round times every model once, in an order rotated by
            one each round so no model always runs right after the same neighbour.
        seed: seed of the random input image (the same image for every model).

    Returns:
        name -> median latency in ms over ``rounds`` (wall clock, device synchronised).
    """
    if not models:
        raise ValueError("measure_latency: no models given")
    if rounds < 1 or warmup < 0:
        raise ValueError(f"measure_latency: need rounds >= 1 and warmup >= 0, got {rounds}, {warmup}")
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, img_size, img_size, generator=gen).to(dev)
    names = list(models)
    for name in names:
        models[name].eval().to(dev)
    for _ in range(warmup):
        for name in names:
            models[name](x)
    _sync(dev)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            model = models[name]
            _sync(dev)
            t0 = time.perf_counter()
            model(x)
            _sync(dev)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}
