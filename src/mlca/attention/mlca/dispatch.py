"""Which formulation or backend runs an MLCA call: the forced choice and one dispatch table.

The forced choice is the module's ``backend`` argument; ``"auto"`` there defers to
``set_default_backend(...)``, then to ``$MLCA_BACKEND``, then means automatic choice.

The table maps (mode, device, dtype, layout, forced) to what runs. Rows are read top to bottom,
the first match answers; ``*`` matches anything, ``a/b`` either value. An answer of several
backends means the first one that can take the input (its ``unsupported(x)`` is None)::

    mode            device dtype                    layout             forced   -> runs
    script          *      *                        *                  *        -> reference
    export          *      *                        *                  *        -> reference
    func            *      *                        *                  c/triton -> error
    func            *      *                        *                  *        -> reference
    observed        *      *                        *                  *        -> torch
    eager/compile   *      *                        *                  torch    -> torch
    eager/compile   *      *                        *                  c        -> c
    eager/compile   *      *                        *                  triton   -> triton
    eager/compile   cuda   float32/float16/bfloat16 *                  auto     -> triton, torch
    eager/compile   cpu    float32/float64          nchw/channels_last auto     -> c, torch
    eager/compile   *      *                        *                  auto     -> torch

Modes: ``script`` inside ``torch.jit.script`` (the scripted forward calls the reference itself:
no Python dispatch in TorchScript); ``export`` inside ``jit.trace``, ``torch.export`` or the ONNX
exporter (one graph valid for every size, standard ops only); ``compile`` under
``torch.compile`` (the backend runs inside the opaque custom op, ``op.py``); ``func`` when the
input or a weight is wrapped by a torch.func transform (vmap, grad, jvp: the Function and the
kernels, which read raw data pointers, cannot run under them); ``observed`` under a
``TorchDispatchMode`` (a FLOP counter, ``attention_cost``): such a mode must see every op and
would see none of the C or Triton kernels'; ``eager`` otherwise. ``reference`` is the plain
formulation (``reference.py``).

Layout is ``nchw`` (contiguous), ``channels_last`` or ``strided`` (anything else); it is read for
CPU inputs only (only the CPU rows look at it), so under torch.compile no other input gains a
guard on its strides.

Forced backends: a forced ``"c"`` that cannot take x raises a ValueError naming why, in the
eager, observed and compile modes (checked before the table, so also where the table then runs
the PyTorch kernels); a forced ``"triton"`` is imported in the eager and compile modes (an
ImportError where Triton's module is missing) and otherwise left to its kernels' own checks.
"""

from __future__ import annotations

import os
from typing import Dict, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .backends import BACKEND_NAMES, get_backend

__all__ = [
    "BACKENDS", "MODES", "TABLE", "Rule", "lookup", "select", "set_default_backend",
    "get_default_backend",
]

BACKENDS = ("auto",) + BACKEND_NAMES
MODES = ("eager", "compile", "export", "script", "func", "observed")
REFERENCE = "reference"
ERROR = "error"

_default_backend: Optional[str] = None  # set_default_backend(); None -> $MLCA_BACKEND or "auto"


def set_default_backend(name: Optional[str]) -> None:
    """Force the backend of every MLCA whose ``backend`` is ``"auto"``.

    ``None`` restores the default (``$MLCA_BACKEND`` if set, else automatic choice).
    """
    global _default_backend
    if name is not None and name not in BACKENDS:
        raise ValueError(f"MLCA backend must be one of {BACKENDS}, got {name!r}")
    _default_backend = name


def get_default_backend() -> str:
    """The global backend: ``set_default_backend``'s value, else ``$MLCA_BACKEND``, else "auto"."""
    if _default_backend is not None:
        return _default_backend
    env = os.environ.get("MLCA_BACKEND", "auto").strip().lower() or "auto"
    if env not in BACKENDS:
        raise ValueError(f"MLCA_BACKEND must be one of {BACKENDS}, got {env!r}")
    return env


class Rule(NamedTuple):
    """One row of the table: each field a set of accepted values (None: any)."""

    mode: Optional[frozenset]
    device: Optional[frozenset]
    dtype: Optional[frozenset]
    layout: Optional[frozenset]
    forced: Optional[frozenset]
    runs: Tuple[str, ...]

    def matches(self, key: Tuple[str, str, str, str, str]) -> bool:
        fields = (self.mode, self.device, self.dtype, self.layout, self.forced)
        return all(f is None or k in f for f, k in zip(fields, key))


def _rule(mode: str, device: str, dtype: str, layout: str, forced: str, runs: str) -> Rule:
    """A row written as in the docstring's table: ``*`` any, ``a/b`` either, runs ``a, b``."""

    def field(text: str) -> Optional[frozenset]:
        return None if text == "*" else frozenset(text.split("/"))

    return Rule(field(mode), field(device), field(dtype), field(layout), field(forced),
                tuple(r.strip() for r in runs.split(",")))


TABLE: Tuple[Rule, ...] = (
    _rule("script", "*", "*", "*", "*", "reference"),
    _rule("export", "*", "*", "*", "*", "reference"),
    _rule("func", "*", "*", "*", "c/triton", "error"),
    _rule("func", "*", "*", "*", "*", "reference"),
    _rule("observed", "*", "*", "*", "*", "torch"),
    _rule("eager/compile", "*", "*", "*", "torch", "torch"),
    _rule("eager/compile", "*", "*", "*", "c", "c"),
    _rule("eager/compile", "*", "*", "*", "triton", "triton"),
    _rule("eager/compile", "cuda", "float32/float16/bfloat16", "*", "auto", "triton, torch"),
    _rule("eager/compile", "cpu", "float32/float64", "nchw/channels_last", "auto", "c, torch"),
    _rule("eager/compile", "*", "*", "*", "auto", "torch"),
)

_MEMO: Dict[Tuple[str, str, str, str, str], Tuple[str, ...]] = {}


def _scan(key: Tuple[str, str, str, str, str]) -> Tuple[str, ...]:
    for rule in TABLE:
        if rule.matches(key):
            return rule.runs
    # the last rows cover every mode and forced value MLCA accepts
    raise ValueError(f"MLCA dispatch: no rule for {key}")


def lookup(mode: str, device: str, dtype: str, layout: str, forced: str) -> Tuple[str, ...]:
    """The table's answer for one key: backend names in order of preference, ``("reference",)``
    or ``("error",)``. ``dtype`` without the ``torch.`` prefix (``"float32"``).

    Memoised in eager mode (the scan is a few microseconds per call); under torch.compile the
    table is read directly, since a guard on the memo's contents would recompile the graph
    whenever an eager call fills it.
    """
    key = (mode, device, dtype, layout, forced)
    if torch.compiler.is_compiling():
        return _scan(key)
    hit = _MEMO.get(key)
    if hit is None:
        hit = _scan(key)
        if len(_MEMO) < 1024:
            _MEMO[key] = hit
    return hit


_is_functorch_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", lambda t: False)


def functorch_wrapped(*tensors: Tensor) -> bool:
    """Whether any of ``tensors`` is wrapped by a torch.func transform (vmap, grad, jvp, ...)."""
    return any(_is_functorch_wrapped(t) for t in tensors)


def dispatch_mode_active() -> bool:
    """True under a ``TorchDispatchMode`` (``FlopCounterMode``, ``attention_cost``'s counter, ...)."""
    return torch._C._len_torch_dispatch_stack() > 0


def exporting() -> bool:
    """True inside jit.trace, torch.export or ONNX export: graphs that must hold for all sizes."""
    return (
        torch.jit.is_tracing()
        or torch.compiler.is_exporting()
        or torch.onnx.is_in_onnx_export()
    )


def mode_of(x: Tensor, w_global: Tensor, w_local: Tensor) -> str:
    """The dispatch mode of a call outside TorchScript (see the module docstring)."""
    if exporting():
        return "export"
    if torch.compiler.is_compiling():
        return "compile"
    if functorch_wrapped(x, w_global, w_local):
        return "func"
    if dispatch_mode_active():
        return "observed"
    return "eager"


def layout_of(x: Tensor) -> str:
    """``nchw``, ``channels_last`` or ``strided``, as the table's layout column."""
    if x.layout != torch.strided:
        return "strided"
    if x.is_contiguous():
        return "nchw"
    if x.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "strided"


def select(x: Tensor, w_global: Tensor, w_local: Tensor, forced: str) -> Tuple[str, str]:
    """(mode, what runs) for this call: a backend name or ``"reference"``; raises where the
    forced backend cannot run (see the module docstring)."""
    mode = mode_of(x, w_global, w_local)
    if forced == "c" and mode in ("eager", "observed", "compile"):
        why = get_backend("c").unsupported(x, eager=mode != "compile")
        if why is not None:
            raise ValueError(f"MLCA backend 'c' cannot run this input: {why}")
    elif forced == "triton" and mode in ("eager", "compile"):
        get_backend("triton")  # ImportError where it is missing
    device = x.device.type
    layout = layout_of(x) if device == "cpu" else "*"
    runs = lookup(mode, device, str(x.dtype)[6:], layout, forced)
    if runs[0] == ERROR:
        raise ValueError(
            f"MLCA backend {forced!r} cannot run under a torch.func transform (vmap, grad, ...): "
            "its kernels read raw data pointers; use backend='auto' or 'torch'"
        )
    if len(runs) == 1:
        return mode, runs[0]
    eager = mode != "compile"
    for name in runs[:-1]:
        try:
            backend = get_backend(name)
        except ImportError:
            continue
        if backend.unsupported(x, eager) is None:
            return mode, name
    return mode, runs[-1]
