"""torchrun / DistributedDataParallel helpers, and per-rank seeding.

``torchrun --nproc_per_node N -m mlca train ...`` sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; :func:`setup` reads them, picks NCCL on CUDA and gloo on the CPU, and binds
each process to its GPU. A plain ``mlca train`` is a world of one and never touches
``torch.distributed``.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["DistInfo", "setup", "cleanup", "select_device", "barrier", "seed_everything", "make_sampler",
           "all_reduce_min", "assert_same_across_ranks", "rng_state", "set_rng_state"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, evaluates, plots and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(device: str | None, local_rank: int = 0) -> torch.device:
    """``''``/``None``/``'auto'``: this rank's GPU if CUDA is available, else the CPU."""
    device = (device or "auto").strip().lower()
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.isdigit():
        device = f"cuda:{device}"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device!r} asks for CUDA, but torch.cuda.is_available() is False here; use --device cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def setup(device: str | None = None) -> tuple[DistInfo, torch.device]:
    """Read torchrun's environment, init the process group if needed, pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world)
    dev = select_device(device, info.local_rank)
    if info.distributed and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
    return info, dev


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_min(value: float, device: torch.device) -> float:
    """The minimum of ``value`` over ranks (used so every rank stops together on a bad loss)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t.item())


def assert_same_across_ranks(model: torch.nn.Module, device: torch.device) -> None:
    """Raise if any parameter differs between ranks (DDP must keep the replicas equal).

    Compares float64 checksums per parameter (sum and sum of squares) gathered from every
    rank. Buffers are left out on purpose: BN running statistics come from each rank's own
    batches after the last forward, and DDP re-broadcasts rank 0's at every forward anyway.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    named = [(k, p) for k, p in model.named_parameters()]
    local = torch.stack([torch.stack((p.detach().double().sum(), p.detach().double().square().sum()))
                         for _, p in named]).to(device)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    for r, g in enumerate(gathered[1:], start=1):
        bad = (g != gathered[0]).any(dim=1).nonzero().flatten().tolist()
        if bad:
            raise RuntimeError(f"DDP replicas diverged: rank {r} differs from rank 0 in {[named[i][0] for i in bad[:5]]}")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one integer."""
    seed = int(seed) % (2**32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_sampler(dataset: Dataset, info: DistInfo, shuffle: bool, seed: int) -> DistributedSampler:
    """A sampler whose order depends only on ``(seed, epoch)``: call ``set_epoch`` each epoch.

    Used for a world of one too, so that data order is a pure function of the epoch — which
    is what lets ``--resume`` replay exactly what an uninterrupted run would have seen.
    """
    return DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle,
                              seed=seed, drop_last=False)


# --- RNG state as plain Python data (checkpoints load with weights_only=True) ---------------

def rng_state() -> dict:
    """python, numpy and torch RNG states as tensors/lists/ints only."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [str(np_name), np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`."""
    v, s, g = state["python"]
    random.setstate((v, tuple(s), g))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])
