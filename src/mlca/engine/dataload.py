"""Feeding the device: how many loader workers, and whether the GPU waits for data.

On the CPU the model and the loader share the same cores: extra worker processes only
compete with the training threads, so the loader stays in the main process (0 workers). On
CUDA the CPU is otherwise idle during a step, and decoding + augmenting a batch of images in
one process takes longer than a MAY step on a GPU, so workers are spread over the CPUs of this
node, shared by its ranks (:func:`default_workers`).

:class:`DataWaitMonitor` measures the fraction of each step's wall time spent waiting for the
next batch. The trainer reads the loss with ``.item()`` every step, which waits for the device,
so a step's host time is also its device time and the fraction is the share of time the GPU sat
idle for want of data. Above :data:`WAIT_WARN_FRACTION` the trainer warns, once per run.
"""

from __future__ import annotations

import os
import time
from typing import Callable

__all__ = ["MAX_WORKERS", "WAIT_WARN_FRACTION", "default_workers", "local_world_size", "DataWaitMonitor"]

MAX_WORKERS = 8  # beyond this, more processes mostly add memory (each holds a dataset copy)
WAIT_WARN_FRACTION = 0.2  # a GPU idle a fifth of the time for data is worth a warning


def local_world_size(world_size: int = 1) -> int:
    """Processes on this node: torchrun's ``LOCAL_WORLD_SIZE``, else the world size."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))


def default_workers(device_type: str, cpu_count: int | None, local_world_size: int = 1) -> int:
    """Loader worker processes per rank: ``min(8, cpus // local ranks)`` on CUDA, 0 elsewhere.

    Args:
        device_type: ``torch.device.type`` of the rank (``"cuda"``, ``"cpu"``, ...).
        cpu_count: the node's CPUs (``os.cpu_count()``; ``None`` when unknown gives 0).
        local_world_size: ranks on this node, which share its CPUs.
    """
    if device_type != "cuda" or not cpu_count:
        return 0
    return max(0, min(MAX_WORKERS, cpu_count // max(1, local_world_size)))


class DataWaitMonitor:
    """Share of step time spent waiting for the loader, per epoch; one warning per run above a threshold.

    Call :meth:`start_epoch` before iterating the loader, :meth:`batch_ready` as each batch
    arrives and :meth:`step_done` after its optimizer step, then :meth:`end_epoch`. The first
    ``skip`` steps of an epoch are left out: workers starting up (and cuDNN choosing kernels)
    make them slow for reasons that do not last.

    Args:
        enabled: measure at all (the trainer enables it on CUDA, on rank 0).
        threshold: warn when the waiting share of an epoch is above this.
        skip: steps left out at the start of each epoch.
        clock: seconds, monotonic (a fake one in tests).
    """

    def __init__(self, enabled: bool, threshold: float = WAIT_WARN_FRACTION, skip: int = 5,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.enabled, self.threshold, self.skip, self.clock = enabled, threshold, skip, clock
        self.warned = False
        self.wait = self.total = 0.0
        self._mark = 0.0
        self._steps = 0

    def start_epoch(self) -> None:
        self.wait = self.total = 0.0
        self._steps = 0
        self._mark = self.clock() if self.enabled else 0.0

    def batch_ready(self) -> None:
        if self.enabled and self._steps >= self.skip:
            self.wait += self.clock() - self._mark

    def step_done(self) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if self._steps >= self.skip:
            self.total += now - self._mark
        self._mark = now
        self._steps += 1

    @property
    def fraction(self) -> float | None:
        """Waiting share of the measured steps of this epoch, or ``None`` if none was measured."""
        return self.wait / self.total if self.enabled and self.total > 0 else None

    def end_epoch(self, epoch: int, workers: int) -> str | None:
        """The warning for this epoch, if it is the run's first above the threshold; else ``None``."""
        f = self.fraction
        if f is None or f <= self.threshold or self.warned:
            return None
        self.warned = True
        return (f"the GPU waited for data {100 * f:.0f}% of the step time in epoch {epoch + 1} "
                f"(loader workers: {workers}, CPUs: {os.cpu_count()}); more --workers, a smaller --img-size, "
                f"or images on a faster disk would keep it busy")
