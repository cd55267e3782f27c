"""Checkpoints: written atomically, read back with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and plain Python types (no pickled classes), so it
loads with the safe unpickler and never runs code from the file. Keys written by the trainer:
``model_config, model, ema, ema_updates, optimizer, scaler, epoch, best_fitness, names,
train_config, rng, results``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch

__all__ = ["save_checkpoint", "copy_checkpoint", "load_checkpoint", "load_model", "CheckpointError"]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not an mlca checkpoint."""


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` only once the block has written it completely.

    The data goes to a temporary file in the same folder (``os.replace`` is only atomic within
    one filesystem), is flushed and fsynced when the block ends, then swapped in. If the block
    raises, the temporary file is removed and whatever was at ``path`` stays as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically.

    The data goes to a temporary file in the same folder, is flushed and fsynced, then
    ``os.replace`` swaps it in. A crash or a failed write (full disk, kill -9, an object that
    cannot be serialised) therefore leaves the previous file at ``path`` intact, and a reader
    never sees a half-written checkpoint.

    Returns:
        The path written.
    """
    path = Path(path)
    with _atomic_file(path) as f:
        torch.save(state, f)
    return path


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the checkpoint file ``src`` to ``dst`` atomically (as :func:`save_checkpoint` writes),
    byte for byte: cheaper than serialising the same state a second time.

    Returns:
        The path written.
    """
    dst = Path(dst)
    with open(src, "rb") as source, _atomic_file(dst) as f:
        shutil.copyfileobj(source, f, 16 << 20)
    return dst


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with the safe unpickler (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, truncated, or holds something other than a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types (UnpicklingError, RuntimeError, EOFError)
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not an mlca checkpoint (holds a {type(ckpt).__name__}, expected a dict)")
    return ckpt


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", ema: bool = True):
    """Rebuild the MAY model stored in an mlca checkpoint, in eval mode.

    The architecture comes from ``ckpt["model_config"]`` (the arguments of ``build_may``), the
    weights from the EMA copy when present (``ema=True``, the weights validation used) or else
    the raw model; anchors are a buffer, so the fitted anchors come back too.

    Args:
        path: a ``.pt`` file written by ``mlca train``.
        device: where to put the model.
        ema: prefer the EMA weights.

    Returns:
        ``MAY`` in eval mode on ``device`` with ``names`` set.
    """
    from mlca.models.may import build_may  # models sit below engine; imported lazily to keep this cheap

    ckpt = load_checkpoint(path)
    if "model_config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(
            f"{path} has no 'model_config'/'model' entries; keys are {sorted(ckpt)}. "
            "Was it written by `mlca train`?"
        )
    model = build_may(**ckpt["model_config"])
    state = ckpt["ema"] if ema and ckpt.get("ema") is not None else ckpt["model"]
    model.load_state_dict(state, strict=True)
    model.names = list(ckpt["names"]) if ckpt.get("names") is not None else None
    return model.to(device).eval()
