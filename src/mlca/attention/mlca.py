"""MLCA: Mixed Local Channel Attention (Wan et al., Eng. Appl. of AI 123, 106442, 2023).

Computes exactly the function of the paper's reference code (the "seed"):

1. ``local  = adaptive_avg_pool2d(x, local_size)``                     (B, C, ls, ls)
2. ``global = adaptive_avg_pool2d(local, 1)``: the mean of the ls*ls local bins, which is not the
   mean of x when bins overlap or are uneven                         (B, C)
3. ECA-style 1-D convolutions: ``conv`` over the C global values, ``conv_local`` over the
   sequence of length ls*ls*C laid out bin-major ``(bin, channel)`` -- so its kernel crosses from
   the last channel of one bin into the first channel of the next, with zero padding only at the
   two ends of the whole sequence; then sigmoid.
4. ``mix = att_global * (1 - local_weight) + att_local * local_weight``  (B, C, ls, ls)
5. ``att = adaptive_avg_pool2d(mix, (H, W))`` -- "unpooling" by adaptive pooling, itself a fixed
   averaging map -- and ``y = x * att``.

Adaptive pooling is never called: steps 1 and 5 are plain reshapes when H and W are multiples of
``local_size``, products with tiny cached averaging matrices otherwise (eager), and exact banded
gathers built from the sizes (``_pooling.py``) when tracing/exporting or when a value is
non-finite. In eager mode a
``torch.autograd.Function`` (``_mlca_function.py``) runs the whole layer with a hand-written
backward that recomputes the H x W map instead of storing it; ``torch.compile`` runs the same
code through an opaque custom op (``_mlca_op.py``). Scripting, tracing and export (ONNX,
``torch.export``) use the plain differentiable formulation (``mlca_plain``), which has no Python
branches on sizes; so do torch.func transforms (vmap, grad, jvp), which the Functions and the
fused kernels cannot run under.

Backends: ``backend="auto" | "torch" | "c" | "triton"`` per module, or globally with
``set_default_backend(...)`` / the ``MLCA_BACKEND`` environment variable. "c" is the fused CPU
kernels of the C extension built at install time (``_native.py``; float32/float64 CPU tensors,
NCHW or channels_last), "triton" the GPU kernels of issue 7, "torch" the PyTorch kernels;
"auto" takes Triton for CUDA float tensors, C for the CPU tensors it covers, PyTorch for
everything else.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._mlca_function import mlca_forward_core, mlca_function
from ._native import dispatch_mode_active, functorch_wrapped, native_unsupported
from ._pooling import adaptive_mean, matrix_grow, matrix_shrink, pool_matrix
from .registry import register_attention

__all__ = [
    "MLCA", "mlca_plain", "mlca_plain_dense", "eca_kernel_size", "set_default_backend",
    "get_default_backend", "export_formulation", "EXPORT_FORMULATIONS",
]

_BACKENDS = ("auto", "torch", "c", "triton")
_default_backend: Optional[str] = None  # set_default_backend(); None -> $MLCA_BACKEND or "auto"


def set_default_backend(name: Optional[str]) -> None:
    """Force the backend of every MLCA whose ``backend`` is ``"auto"``.

    ``None`` restores the default (``$MLCA_BACKEND`` if set, else automatic choice).
    """
    global _default_backend
    if name is not None and name not in _BACKENDS:
        raise ValueError(f"MLCA backend must be one of {_BACKENDS}, got {name!r}")
    _default_backend = name


def get_default_backend() -> str:
    """The global backend: ``set_default_backend``'s value, else ``$MLCA_BACKEND``, else "auto"."""
    if _default_backend is not None:
        return _default_backend
    env = os.environ.get("MLCA_BACKEND", "auto").strip().lower() or "auto"
    if env not in _BACKENDS:
        raise ValueError(f"MLCA_BACKEND must be one of {_BACKENDS}, got {env!r}")
    return env


def eca_kernel_size(in_size: int, gamma: float = 2, b: float = 1) -> int:
    """The ECA rule the seed uses: ``t = int(|log2(C) + b| / gamma)``, made odd upwards."""
    t = int(abs(math.log(in_size, 2) + b) / gamma)
    return t if t % 2 else t + 1


def _compute_dtype(x: Tensor) -> torch.dtype:
    # Attention weights are computed in float64 for float64 inputs and in float32 otherwise
    # (float16/bfloat16 pooled sums and sigmoids lose too many digits).
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def conv1d_same(x: Tensor, w: Tensor) -> Tensor:
    """``F.conv1d(x, w, padding=(k-1)//2)`` for one channel and odd k, as k shifted multiply-adds.

    x: (B, 1, L), w: (1, 1, k) -> (B, 1, L). Why: oneDNN's convolution has a large fixed cost for
    a single-channel 1-D conv (milliseconds on CPU for ~10^5 elements), the shifted sum does not.
    """
    k = w.shape[-1]
    pad = (k - 1) // 2
    length = x.shape[-1]
    xp = F.pad(x, (pad, pad))
    y = xp[:, :, 0:length] * w[:, :, 0:1]
    for j in range(1, k):
        y = y + xp[:, :, j:j + length] * w[:, :, j:j + 1]
    return y


def mlca_mix(
    local: Tensor, w_global: Tensor, w_local: Tensor, local_weight: float,
    shifted_conv: bool = False,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Steps 2-4 on the small pooled map.

    local: (B, C, ls, ls); w_global, w_local: (1, 1, k) ->
    ``(mix (B, C, ls, ls), s_global (B, 1, C), s_local (B, 1, ls*ls*C), gvec (B, 1, C),
    seq (B, 1, ls*ls*C))`` where ``s_*`` are the sigmoids and ``gvec``/``seq`` the conv inputs
    (kept for the hand-written backward).
    """
    b, c, ls = local.shape[0], local.shape[1], local.shape[2]
    pad = (w_global.shape[-1] - 1) // 2
    gvec = local.mean(dim=(2, 3)).reshape(b, 1, c)
    # bin-major flattening, exactly as the seed: (B, C, ls*ls) -> (B, ls*ls, C) -> (B, 1, ls*ls*C)
    seq = local.reshape(b, c, ls * ls).transpose(1, 2).reshape(b, 1, ls * ls * c)
    if shifted_conv:
        s_global = torch.sigmoid(conv1d_same(gvec, w_global))
        s_local = torch.sigmoid(conv1d_same(seq, w_local))
    else:
        s_global = torch.sigmoid(F.conv1d(gvec, w_global, padding=pad))
        s_local = torch.sigmoid(F.conv1d(seq, w_local, padding=pad))
    att_local = s_local.reshape(b, ls * ls, c).transpose(1, 2).reshape(b, c, ls, ls)
    mix = s_global.reshape(b, c, 1, 1) * (1.0 - local_weight) + att_local * local_weight
    return mix, s_global, s_local, gvec, seq


def _static_blocks(h: int, w: int, local_size: int) -> bool:
    """True when H and W are concrete multiples of local_size in a graph that may specialise on
    them: not symbolic sizes (dynamic export) and not ``jit.trace`` (which would bake the branch
    into a graph later run at other sizes)."""
    if torch.jit.is_tracing():
        return False
    if not (isinstance(h, int) and isinstance(w, int)):
        return False  # torch.SymInt: a dynamic dimension of torch.export / the ONNX exporter
    return h % local_size == 0 and w % local_size == 0


def _mlca_blocks(
    x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float
) -> Tensor:
    """MLCA for H and W multiples of local_size: x (B, C, H, W) -> (B, C, H, W).

    Each bin is a (H/ls) x (W/ls) block: pooling is a mean over the two block axes of a
    (B, C, ls, kh, ls, kw) view. Exported graphs (ONNX) unpool with a nearest-neighbour resize
    by the integer factors kh, kw (exact: output pixel i reads i // kh) and run the 1-D convs as
    ``Conv`` nodes, the fewest and fastest onnxruntime nodes measured; a scripted module
    broadcasts the (B, C, ls, 1, ls, 1) map instead (no resize index arithmetic in float) and
    keeps the shifted-sum convs (oneDNN's single-channel conv is slow on long sequences).
    """
    b, c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    ls = local_size
    kh, kw = h // ls, w // ls
    local = x.to(w_global.dtype).reshape(b, c, ls, kh, ls, kw).mean(dim=[3, 5])
    scripted = torch.jit.is_scripting()
    mix = mlca_mix(local, w_global, w_local, local_weight, scripted)[0].to(x.dtype)
    if scripted:
        out = x.reshape(b, c, ls, kh, ls, kw) * mix.reshape(b, c, ls, 1, ls, 1)
        return out.reshape(b, c, h, w)
    return x * F.interpolate(mix, size=[h, w], mode="nearest")


def _mlca_gathers(
    x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float
) -> Tensor:
    """MLCA at any size with the exact banded gathers: x (B, C, H, W) -> (B, C, H, W).

    The weights are in the compute dtype already.
    """
    h, w = x.shape[2], x.shape[3]
    xc = x.to(w_global.dtype)
    # H first: gathering whole rows is the cheap direction; W then runs on the (ls x W) result.
    local = adaptive_mean(adaptive_mean(xc, 2, local_size), 3, local_size)
    mix = mlca_mix(local, w_global, w_local, local_weight, True)[0]
    att = adaptive_mean(adaptive_mean(mix, 3, w), 2, h)
    return x * att.to(x.dtype)


def _mlca_dense(
    x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float
) -> Tensor:
    """MLCA at any size with averaging matrices: x (B, C, H, W) -> (B, C, H, W).

    Pooling is ``Ph @ x @ Pw.T`` and unpooling ``Uh @ mix @ Uw.T`` with the matrices of
    ``pool_matrix`` built from the (symbolic) sizes, as GEMMs (``matrix_shrink`` /
    ``matrix_grow``, which the eager kernels use off the CPU). The weights are in the compute
    dtype already.
    """
    h, w = x.shape[2], x.shape[3]
    cdt = w_global.dtype
    ls = local_size
    ph, pw = pool_matrix(h, ls, x.device, cdt), pool_matrix(w, ls, x.device, cdt)
    uh, uw = pool_matrix(ls, h, x.device, cdt), pool_matrix(ls, w, x.device, cdt)
    local = matrix_shrink(x.to(cdt), ph, pw)
    mix = mlca_mix(local, w_global, w_local, local_weight, True)[0]
    return x * matrix_grow(mix, uh, uw).to(x.dtype)


def mlca_plain(
    x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float
) -> Tensor:
    """The differentiable formulation for TorchScript, tracing and export (ONNX, torch.export).

    x: (B, C, H, W); w_global, w_local: (1, 1, k) conv weights -> (B, C, H, W) in x's dtype.

    When H and W are multiples of ``local_size`` (the 320/640-px YOLO maps), pooling is a
    reshape and a mean over each bin and unpooling a nearest resize by the bin size (exported
    graphs) or a broadcast over the bins (scripted modules) (``_mlca_blocks``); otherwise the
    exact banded gathers of ``_pooling.py`` (``_mlca_gathers``). Both give the seed's values, non-finite ones included. The choice is
    made in Python on concrete sizes (a static export, a scripted module at run time);
    symbolic sizes (a dynamic export) and ``jit.trace`` (which would bake the branch into a
    graph later run at other sizes) always get the gathers. (A run-time ``torch.cond`` between
    the two exports to an ONNX ``If``, but torch.export then asserts the block reshape's
    divisibility for the whole graph: measured with torch 2.14, not used.)
    """
    h, w = x.shape[2], x.shape[3]
    cdt = _compute_dtype(x)
    wg, wl = w_global.to(cdt), w_local.to(cdt)
    if _static_blocks(h, w, local_size):
        return _mlca_blocks(x, wg, wl, local_size, local_weight)
    return _mlca_gathers(x, wg, wl, local_size, local_weight)


def mlca_plain_dense(
    x: Tensor, w_global: Tensor, w_local: Tensor, local_size: int, local_weight: float
) -> Tensor:
    """``mlca_plain`` with averaging matrices instead of gathers at sizes that are not
    multiples of local_size (export only): x (B, C, H, W) -> (B, C, H, W).

    Equal to ``mlca_plain`` for finite x; at those sizes a NaN/Inf in x spreads over its whole
    H x W plane (``0 * nan``), see ``export_formulation``.
    """
    if _static_blocks(x.shape[2], x.shape[3], local_size):
        return mlca_plain(x, w_global, w_local, local_size, local_weight)  # the block formulation
    cdt = _compute_dtype(x)
    return _mlca_dense(x, w_global.to(cdt), w_local.to(cdt), local_size, local_weight)


EXPORT_FORMULATIONS = ("exact", "dense")
_export_formulation = "exact"


@contextlib.contextmanager
def export_formulation(name: str):
    """How MLCA layers are written into graphs exported inside the ``with`` block, where a
    feature map's size is symbolic (dynamic export) or not a multiple of local_size; concrete
    multiples always get the block formulation (``_mlca_blocks``, exact and fast).

    ``"exact"`` (default): banded gathers (``mlca_plain``), the seed's function for every input,
    non-finite values included. ``"dense"``: products with averaging matrices
    (``mlca_plain_dense``) -- MAY-MLCA 1.1-1.8x MAY-ECA in onnxruntime instead of 1.5-2.2x
    (dynamic export, 320/640 px), the same values for finite inputs, but a NaN/Inf in a channel
    of x makes that channel's whole output plane (and the channels its 1-D convolutions reach)
    non-finite, where the seed keeps it in the bins that hold it. Used by
    ``export_onnx(..., mlca="dense")``.
    """
    global _export_formulation
    if name not in EXPORT_FORMULATIONS:
        raise ValueError(f"MLCA export formulation must be one of {EXPORT_FORMULATIONS}, got {name!r}")
    previous, _export_formulation = _export_formulation, name
    try:
        yield
    finally:
        _export_formulation = previous


def _exporting() -> bool:
    """True inside jit.trace, torch.export or ONNX export: graphs that must hold for all sizes."""
    return (
        torch.jit.is_tracing()
        or torch.compiler.is_exporting()
        or torch.onnx.is_in_onnx_export()
    )


def _as_int(value: object, name: str) -> int:
    """``value`` as an int >= 1 (numpy integers welcome), else a ValueError naming ``name``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"MLCA {name} must be an int >= 1, got {value!r}") from None
    if value < 1:
        raise ValueError(f"MLCA {name} must be an int >= 1, got {value!r}")
    return value


@register_attention("mlca")
class MLCA(nn.Module):
    """Mixed Local Channel Attention, the same function and parameters as the paper's code.

    Args:
        in_size: channel count; it only sets the ECA kernel size, any channel count is accepted
            at run time (as in the seed).
        local_size: side of the local pooling grid (ls x ls bins).
        gamma, b: ECA kernel-size rule, ``k = odd(int(|log2(in_size) + b| / gamma))``.
        local_weight: weight of the local attention against the global one, in [0, 1].
        backend: ``"auto"`` (Triton for CUDA float tensors when available, the C kernels for
            float32/float64 CPU tensors, NCHW or channels_last, when built, else PyTorch),
            ``"torch"``, ``"c"`` or ``"triton"``; ``"auto"`` defers to ``set_default_backend`` /
            ``$MLCA_BACKEND``. A forced backend that cannot take the input raises.

    Parameters are ``conv.weight`` and ``conv_local.weight`` (1, 1, k), as in the seed, so
    state_dicts load both ways with ``strict=True``.
    """

    def __init__(
        self,
        in_size: int,
        local_size: int = 5,
        gamma: float = 2,
        b: float = 1,
        local_weight: float = 0.5,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        in_size = _as_int(in_size, "in_size (channel count)")
        local_size = _as_int(local_size, "local_size")
        if not (0.0 <= float(local_weight) <= 1.0):
            raise ValueError(f"MLCA local_weight must be in [0, 1], got {local_weight!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"MLCA backend must be one of {_BACKENDS}, got {backend!r}")
        if gamma == 0:
            raise ValueError("MLCA gamma must be non-zero (it divides in the ECA kernel rule)")
        self.local_size = local_size
        self.gamma = gamma
        self.b = b
        self.local_weight = float(local_weight)
        self.backend = backend
        k = eca_kernel_size(in_size, gamma, b)
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.conv_local = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

    def extra_repr(self) -> str:
        return (
            f"local_size={self.local_size}, kernel_size={self.conv.kernel_size[0]}, "
            f"local_weight={self.local_weight}, backend={self.backend!r}"
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W), B >= 0, C >= 1, H, W >= 1 -> (B, C, H, W), x's dtype and layout."""
        if x.dim() != 4:
            raise ValueError(
                "MLCA expects a 4-D input (B, C, H, W), got shape " + str(list(x.shape))
            )
        if x.shape[1] < 1 or x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(
                "MLCA needs C, H and W >= 1, got shape " + str(list(x.shape))
            )
        if torch.jit.is_scripting():
            return mlca_plain(
                x, self.conv.weight, self.conv_local.weight, self.local_size, self.local_weight
            )
        return self._forward_eager(x)

    @torch.jit.unused
    def _forward_eager(self, x: Tensor) -> Tensor:
        # Attention weights in float32 even under autocast (output in x's dtype): the small-map
        # math must not be recast to float16/bfloat16 by autocast's op lists (mv, conv, ...).
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self._dispatch(x)
        return self._dispatch(x)

    @torch.jit.unused
    def _dispatch(self, x: Tensor) -> Tensor:
        wg, wl = self.conv.weight, self.conv_local.weight
        exporting = _exporting()
        traced = exporting or torch.compiler.is_compiling()
        backend = self.backend if self.backend != "auto" else get_default_backend()

        # --- torch.func transforms (vmap, grad, jacrev: per-sample gradients, ...) cannot run
        # the autograd.Functions nor kernels that read data pointers; the input, or only the
        # weights (grad with respect to the parameters), may be wrapped. They get the plain
        # differentiable formulation, which composes with every transform.
        if not traced and functorch_wrapped(x, wg, wl):
            if backend in ("c", "triton"):
                raise ValueError(
                    f"MLCA backend {backend!r} cannot run under a torch.func transform (vmap, "
                    "grad, ...): its kernels read raw data pointers; use backend='auto' or 'torch'"
                )
            return mlca_plain(x, wg, wl, self.local_size, self.local_weight)

        # --- Exporters get the branch-free formulation (one graph valid for every size, standard
        # ops only). torch.compile gets the fast kernels (Triton, C or PyTorch) through an opaque
        # custom op (one graph, no break); eager gets them directly (autograd.Functions with a
        # recomputing backward).
        if exporting:
            plain = mlca_plain_dense if _export_formulation == "dense" else mlca_plain
            return plain(x, wg, wl, self.local_size, self.local_weight)

        # --- Triton path (issue 7, mlca_triton.py). "auto" takes it for CUDA float tensors when
        # Triton works; "triton" forces it (the CPU interpreter in its tests). Under a
        # TorchDispatchMode (FLOP counters, fake tensors) neither does: the mode must see the
        # ops, and Triton launches are invisible to it (and need real data pointers). (Asked in
        # eager mode only: torch.compile would break the graph on the question.)
        use_triton = False
        if (traced or not dispatch_mode_active()) and (backend == "triton" or (
            backend == "auto"
            and x.is_cuda
            and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
        )):
            try:
                from .mlca_triton import mlca_triton, triton_available
            except ImportError:
                if backend == "triton":
                    raise
            else:
                use_triton = backend == "triton" or triton_available()
                if use_triton and not traced:
                    return mlca_triton(x, wg, wl, self.local_size, self.local_weight)

        native = False
        if not use_triton and backend in ("auto", "c"):
            why = native_unsupported(x, eager=not traced)
            if backend == "c" and why is not None:
                raise ValueError(f"MLCA backend 'c' cannot run this input: {why}")
            native = why is None and (traced or not dispatch_mode_active())
        if traced:
            from ._mlca_op import mlca_op

            return mlca_op(x, wg, wl, self.local_size, self.local_weight, native, use_triton)
        if not (torch.is_grad_enabled() and (x.requires_grad or wg.requires_grad
                                             or wl.requires_grad)):
            # inference: no autograd.Function to set up, nothing kept for a backward
            return mlca_forward_core(x, wg, wl, self.local_size, self.local_weight, native)[0]
        return mlca_function(x, wg, wl, self.local_size, self.local_weight, native)
