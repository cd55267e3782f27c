"""MLCA's fused CPU kernels (backend "c"): the loader of the optional C extension, when its
kernels apply, and the calls.

The sources are in this folder (``_mlca_c.c``, ``_mlca_c_kernels.h``); the extension module is
``mlca.attention._mlca_c``, built by ``pip install`` where a C compiler is present
(``setup.py``); without it everything runs on the PyTorch kernels (``..torch``). It covers contiguous
NCHW and channels_last float32/float64 CPU tensors -- every size, local_size and channel count
(channels_last through NHWC variants of the kernels, output in the input's layout) -- and computes
the same function as the PyTorch path (same adaptive-pooling bins, sums over bin members only,
so NaN/Inf stay where adaptive pooling puts them).

One call each way. Forward: pool x to ls x ls, the gate convs and sigmoids, x times the attention
rebuilt on the fly. Backward: ``U^T(g * x)``, the gates recomputed from the saved pooled map, the
gate and 1-D conv chain, ``g * U(mix) + P^T(dlocal)``. Each big step is one pass over its
tensors, parallel over planes on PyTorch's thread count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

try:  # imported after torch: the extension's OpenMP runtime is the one torch loaded
    from mlca.attention import _mlca_c
except ImportError:  # not built (no compiler at install time): the PyTorch kernels run instead
    _mlca_c = None

__all__ = [
    "NAME", "ONCE_DIFFERENTIABLE", "STREAM_MIN_BYTES", "native_available", "unsupported", "forward",
    "backward", "saved_format", "configured",
]

NAME = "c"
ONCE_DIFFERENTIABLE = False

_DTYPES = (torch.float32, torch.float64)

# Outputs from this size on are written with non-temporal (streaming) stores: a plain store to a
# line not in cache first reads the line from memory: on the development machine the forward at
# MLCA's YOLO shapes took 1.2-1.5x as long without streaming, and a 1x1 conv reading the output
# right after was not slower with it, even at 0.4 MB (measure yours: bench_mlca.py --stream-ab).
# Below this size the output may well stay in a larger cache for the next layer, so it is written
# normally. The default of ``forward``/``backward``'s ``stream_min_bytes``; ``configured(0)`` is
# the backend that always streams, ``configured(2**62)`` the one that never does.
STREAM_MIN_BYTES = 4 << 20


def native_available() -> bool:
    """True when the C extension was built and imports."""
    return _mlca_c is not None


_is_functorch_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", lambda t: False)


def unsupported(x: Tensor, eager: bool = True) -> Optional[str]:
    """Why the C kernels cannot take ``x`` (a sentence), or None when they can.

    ``eager``: also refuse what only eager mode can meet: tensor subclasses and tensors wrapped by
    torch.func transforms. (Under torch.compile these checks are not traced; the custom op's
    inputs are plain tensors.) Active ``TorchDispatchMode``s are the dispatcher's business.
    """
    if _mlca_c is None:
        return ("the C extension mlca.attention._mlca_c is not built "
                "(reinstall mlca with a C compiler)")
    if x.device.type != "cpu":
        return f"the C kernels run on the CPU, got a tensor on {x.device}"
    if x.dtype not in _DTYPES:
        return f"the C kernels take float32 or float64, got {x.dtype}"
    if x.layout != torch.strided:
        return f"the C kernels take dense tensors, got layout {x.layout}"
    if eager:
        if type(x) is not torch.Tensor and type(x) is not torch.nn.Parameter:
            return f"the C kernels take plain tensors, got a {type(x).__name__}"
        if _is_functorch_wrapped(x):
            return "the input is wrapped by a torch.func transform (vmap, grad, ...)"
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return ("the C kernels take contiguous NCHW or channels_last tensors, got strides "
                f"{tuple(x.stride())} for shape {tuple(x.shape)}")
    return None


def _nhwc(x: Tensor) -> bool:
    """x is channels_last and not also NCHW-contiguous (C == 1 or H*W == 1 are both)."""
    return not x.is_contiguous()


def saved_format(x: Tensor) -> torch.memory_format:
    """The memory format of the bin means ``forward`` saves for x: channels_last (bin-major,
    (B, ls, ls, C) in memory, the order the NHWC kernels' gate sequence has) for a channels_last
    x, else contiguous."""
    return torch.channels_last if _nhwc(x) else torch.contiguous_format


def _flat(w: Tensor, dtype: torch.dtype) -> Tensor:
    """A conv weight (1, 1, k) as k contiguous values of ``dtype``: w itself when it already is
    (only its data pointer is read), else a converted copy."""
    if w.dtype != dtype or not w.is_contiguous():
        w = w.detach().to(dtype).contiguous()
    return w


def forward(
    x: Tensor, w_global: Tensor, w_local: Tensor, ls: int, lw: float,
    stream_min_bytes: int = STREAM_MIN_BYTES,
) -> Tuple[Tensor, Tensor]:
    """x (B, C, H, W) float32/64 on the CPU, NCHW or channels_last -> (out (B, C, H, W) in x's
    layout, local (B, C, ls, ls) in :func:`saved_format`). Outputs of ``stream_min_bytes`` or
    more are written with non-temporal stores."""
    b, c, h, w = x.shape
    fmt = saved_format(x)
    if x.numel() == 0:
        return torch.empty_like(x), torch.zeros(b, c, ls, ls, dtype=x.dtype).contiguous(memory_format=fmt)
    wg, wl = _flat(w_global, x.dtype), _flat(w_local, x.dtype)
    out = torch.empty_like(x)  # keeps x's memory format
    local = torch.empty(b, c, ls, ls, dtype=x.dtype, memory_format=fmt)
    _mlca_c.forward(x.dtype == torch.float64, x.data_ptr(), out.data_ptr(), local.data_ptr(),
                    wg.data_ptr(), wl.data_ptr(), b, c, h, w, ls, wg.numel(), lw,
                    torch.get_num_threads(), out.nbytes >= stream_min_bytes, _nhwc(x))
    return out, local


def backward(
    g: Tensor, x: Tensor, local: Tensor, w_global: Tensor, w_local: Tensor, ls: int, lw: float,
    needs: Tuple[bool, bool, bool] = (True, True, True), stream_min_bytes: int = STREAM_MIN_BYTES,
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Grads of x, w_global, w_local (None where not needed) from g (B, C, H, W); grad_x is
    written with non-temporal stores when x has ``stream_min_bytes`` or more."""
    b, c, h, w = x.shape
    if x.numel() == 0:
        return (torch.zeros_like(x) if needs[0] else None,
                torch.zeros_like(w_global) if needs[1] else None,
                torch.zeros_like(w_local) if needs[2] else None)
    nhwc = _nhwc(x)
    g = g.to(x.dtype).contiguous(memory_format=torch.channels_last if nhwc else
                                 torch.contiguous_format)  # the kernels read g in x's layout
    local = local.contiguous(memory_format=saved_format(x))  # as forward made it: no copy
    wg, wl = _flat(w_global, x.dtype), _flat(w_local, x.dtype)
    k = wg.numel()
    gx = torch.empty_like(x) if needs[0] else None
    gwg = torch.empty(k, dtype=x.dtype)
    gwl = torch.empty(k, dtype=x.dtype)
    _mlca_c.backward(x.dtype == torch.float64, g.data_ptr(), x.data_ptr(), local.data_ptr(),
                     wg.data_ptr(), wl.data_ptr(), lw, b, c, h, w, ls, k,
                     0 if gx is None else gx.data_ptr(), gwg.data_ptr(), gwl.data_ptr(),
                     torch.get_num_threads(), x.nbytes >= stream_min_bytes, nhwc)
    g_wg = gwg.view(w_global.shape).to(w_global.dtype) if needs[1] else None
    g_wl = gwl.view(w_local.shape).to(w_local.dtype) if needs[2] else None
    return gx, g_wg, g_wl


@dataclass(frozen=True)
class _Configured:
    """The C backend with another streaming threshold (same protocol as the module)."""

    stream_min_bytes: int
    NAME: str = NAME
    ONCE_DIFFERENTIABLE: bool = ONCE_DIFFERENTIABLE

    def unsupported(self, x: Tensor, eager: bool = True) -> Optional[str]:
        return unsupported(x, eager)

    def saved_format(self, x: Tensor) -> torch.memory_format:
        return saved_format(x)

    def forward(self, x, w_global, w_local, ls, lw):
        """As the module's ``forward``: x (B, C, H, W) -> (out, local (B, C, ls, ls))."""
        return forward(x, w_global, w_local, ls, lw, self.stream_min_bytes)

    def backward(self, g, x, local, w_global, w_local, ls, lw, needs=(True, True, True)):
        """As the module's ``backward``: grads of x, w_global, w_local."""
        return backward(g, x, local, w_global, w_local, ls, lw, needs, self.stream_min_bytes)


def configured(stream_min_bytes: int) -> _Configured:
    """The C backend writing outputs of ``stream_min_bytes`` or more with non-temporal stores
    (0: always, a huge value: never), for ``function.mlca_function(..., backend=...)``: what
    ``bench_mlca.py --stream-ab`` and the streaming test compare."""
    return _Configured(int(stream_min_bytes))
