"""MLCA's kernels, one backend per module, all behind the same small protocol (``Backend``).

- ``torch``: PyTorch kernels, every device and dtype (what runs when nothing faster applies);
- ``c``: the fused CPU kernels of the optional C extension (float32/float64, NCHW or
  channels_last);
- ``triton``: the fused GPU kernels (CUDA float32/float16/bfloat16; CPU tensors under Triton's
  interpreter, for tests).

Which backend runs for an input is decided by the dispatch table (``..dispatch``); the one
autograd Function (``..function``) and the one custom op (``..op``) call whichever it names.
A backend is imported on first use, so a missing optional dependency (Triton) costs nothing
until asked for.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Optional, Protocol, Tuple

if TYPE_CHECKING:  # only for the annotations: this module must not bind the name of a backend
    import torch
    from torch import Tensor

__all__ = ["Backend", "BACKEND_NAMES", "get_backend"]

BACKEND_NAMES = ("torch", "c", "triton")


class Backend(Protocol):
    """What a backend module (or object) provides. Shapes: x, g (B, C, H, W); w_global, w_local
    (1, 1, k) conv weights; ``local_size`` ls, ``local_weight`` lw as in ``MLCA``."""

    #: the backend's name, as in ``MLCA(backend=...)``
    NAME: str
    #: True when ``backward`` cannot itself be differentiated (double backward raises)
    ONCE_DIFFERENTIABLE: bool

    def unsupported(self, x: Tensor, eager: bool = True) -> Optional[str]:
        """Why this backend cannot take x (a sentence naming what it got), or None when it can.
        ``eager``: also refuse what only eager mode can meet (tensor subclasses, ...)."""

    def forward(self, x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int,
                local_weight: float) -> Tuple[Tensor, Tensor]:
        """(out (B, C, H, W) in x's dtype and memory format, saved): ``saved`` is the one
        tensor the backward needs besides x and the weights (the (B, C, ls, ls) bin means)."""

    def saved_format(self, x: Tensor) -> torch.memory_format:
        """The memory format ``forward`` gives ``saved`` for x (what the compiler's fake kernel
        must state). Optional: a backend without it saves contiguous tensors."""

    def backward(self, g: Tensor, x: Tensor, saved: Tensor, w_global: Tensor, w_local: Tensor,
                 local_size: int, local_weight: float,
                 needs: Tuple[bool, bool, bool] = (True, True, True),
                 ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """Gradients of x, w_global, w_local (None where ``needs`` says so) from g."""


def get_backend(name: str) -> Backend:
    """The backend module called ``name`` (one of ``BACKEND_NAMES``), imported on first use.

    Raises ImportError when it cannot be imported (looked up in ``sys.modules`` on every call, so
    a module removed there reads as missing), ValueError for an unknown name.
    """
    if name not in BACKEND_NAMES:
        raise ValueError(f"MLCA backend must be one of {BACKEND_NAMES}, got {name!r}")
    full = f"{__name__}.{name}"
    module = sys.modules.get(full)
    if module is None:
        module = importlib.import_module(full)
    return module  # type: ignore[return-value]
