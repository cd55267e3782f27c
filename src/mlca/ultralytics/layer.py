"""The ultralytics-facing attention layer: built lazily for the channel count it receives.

ultralytics' ``parse_model`` passes an unknown module its YAML arguments literally and never
tells it its input width (only its own ``base_modules`` get ``c1`` and the width multiplier).
So the layer reads the channel count from the first tensor it sees. ultralytics runs one forward
while building every detection model (to measure the strides), so by the time ``YOLO(yaml)``
returns every attention has its parameters and the optimizer sees them.

YAML arguments of a named layer (``MLCA``, ``SE``, ...)::

    [-1, 1, MLCA, []]                       # channels inferred
    [-1, 1, MLCA, [{local_size: 3}]]        # keyword arguments as a mapping
    [-1, 1, MLCA, [256]]                    # a literal channel count: checked, never trusted
    [-1, 1, ECA, [null, 5]]                 # null channels, then positional arguments

and of the generic ``Attention`` the registry name first: ``[-1, 1, Attention, [mlca, {local_size: 3}]]``.
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
from torch import nn

from mlca.attention.registry import create_attention, get_attention_class

__all__ = ["AttentionLayer", "Attention", "layer_class", "yaml_name"]


def yaml_name(attention: str) -> str:
    """The name an attention gets in model YAMLs: ``mlca`` -> ``MLCA``, ``se-resnet`` -> ``SE_RESNET``."""
    return attention.strip().upper().replace("-", "_")


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class AttentionLayer(nn.Module):
    """A registered attention, created at the first forward for the input's channel count.

    ``attention`` is the registry name; the named subclasses fix it, the generic
    :class:`Attention` takes it as its first YAML argument.

    After the first forward ``self.attn`` is the attention module and ``self.channels`` its
    channel count; later inputs with another channel count raise.
    """

    attention: str | None = None  # set by the named subclasses of layer_class()

    def __init__(self, *args: Any) -> None:
        super().__init__()
        args = list(args)
        if type(self).attention is None:
            if not args or not isinstance(args[0], str):
                raise ValueError(
                    "Attention needs the registry name as its first YAML argument, e.g. "
                    f"[-1, 1, Attention, [mlca, {{local_size: 3}}]]; got arguments {args!r}"
                )
            name = args.pop(0)
        else:
            name = type(self).attention
        get_attention_class(name)  # unknown name: KeyError listing the known ones, at parse time
        kwargs: dict[str, Any] = {}
        if args and isinstance(args[-1], dict):
            kwargs = dict(args.pop())
        expected = None
        if args:
            first = args.pop(0)
            if first is not None:
                try:
                    if isinstance(first, bool):
                        raise TypeError
                    expected = operator.index(first)
                except TypeError:
                    raise ValueError(
                        f"attention {name!r}: the first YAML argument after the name is the channel "
                        f"count (an int, or null to infer it), got {first!r}"
                    ) from None
        self.attention_name = _normalise(name)
        self.expected_channels = expected
        self.attention_args = tuple(args)
        self.attention_kwargs = kwargs
        self.channels: int | None = None
        self.add_module("attn", None)

    # -- building ----------------------------------------------------------------------------
    def _where(self) -> str:
        index = getattr(self, "i", None)
        at = f" at model layer {index}" if index is not None else ""
        return f"attention {self.attention_name!r}{at}"

    def _keyword_arguments(self) -> dict[str, Any]:
        """The YAML's positional arguments after the channel count, named by the class signature."""
        kwargs = dict(self.attention_kwargs)
        if self.attention_args:
            cls = get_attention_class(self.attention_name)
            names = [
                p.name for i, p in enumerate(inspect.signature(cls).parameters.values())
                if i > 0 and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            if len(self.attention_args) > len(names):
                raise TypeError(
                    f"{self._where()}: {len(self.attention_args)} positional YAML arguments after the "
                    f"channel count, but it takes at most {len(names)} ({', '.join(names) or 'none'})"
                )
            for key, value in zip(names, self.attention_args):
                if key in kwargs:
                    raise TypeError(f"{self._where()}: {key!r} given both by position and by name")
                kwargs[key] = value
        return kwargs

    def _create(self, channels: int) -> nn.Module:
        try:
            return create_attention(self.attention_name, channels, **self._keyword_arguments())
        except (ValueError, TypeError) as e:
            raise type(e)(f"{self._where()} with {channels} input channels: {e}") from e

    def _build(self, x: torch.Tensor) -> None:
        c = int(x.shape[1])
        if self.expected_channels is not None and self.expected_channels != c:
            raise ValueError(
                f"{self._where()}: the model YAML gives {self.expected_channels} channels but the "
                f"layer's input has {c} channels (after the width multiplier); leave the channel "
                "count out of the YAML arguments (e.g. []) and mlca infers it"
            )
        attn = self._create(c).to(device=x.device)
        if x.is_floating_point() and x.dtype != torch.float32:
            attn = attn.to(dtype=x.dtype)
        attn.train(self.training)
        self.attn = attn
        self.channels = c
        if hasattr(self, "np"):  # ultralytics' parameter column, printed as 0 before the build
            self.np = sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W); C is fixed by the first call."""
        if self.attn is not None and torch.jit.is_tracing():
            return self.attn(x)  # a traced graph has one C; a Python check would only warn
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{self._where()} takes one input tensor; its 'from' must name a single layer, "
                f"got {type(x).__name__}"
            )
        if x.dim() != 4:
            raise ValueError(f"{self._where()} expects (B, C, H, W), got shape {list(x.shape)}")
        if self.attn is None:
            self._build(x)
        elif x.shape[1] != self.channels:
            raise ValueError(
                f"{self._where()} was built for {self.channels} channels, got an input with "
                f"{int(x.shape[1])} channels (shape {list(x.shape)})"
            )
        return self.attn(x)

    def extra_repr(self) -> str:
        if self.attn is None:
            return f"{self.attention_name!r}, channels inferred at the first forward"
        return ""

    # -- pickling (checkpoints, deepcopy) ------------------------------------------------------
    def __reduce_ex__(self, protocol: int):
        from .checkpoint import REBUILD, payload

        return REBUILD, (payload(self),), self.__getstate__()

    def __getstate__(self) -> dict[str, Any]:
        # The inner module travels as (registry name, channels, arguments, state_dict), not as a
        # pickled class: checkpoints then name no internal mlca path and survive refactors.
        state = self.__dict__.copy()
        modules = dict(state["_modules"])
        attn = modules.pop("attn", None)
        state["_modules"] = modules
        state["_mlca_attn"] = None if attn is None else {
            "state_dict": attn.state_dict(),
            "training": attn.training,
        }
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        saved = state.pop("_mlca_attn", None)
        super().__setstate__(state)
        self._modules["attn"] = None
        if saved is not None:
            attn = self._create(self.channels)
            attn.load_state_dict(saved["state_dict"], assign=True)
            attn.train(saved["training"])
            self.attn = attn


class Attention(AttentionLayer):
    """Any registered attention, the registry name first: ``[-1, 1, Attention, [cbam, {reduction: 8}]]``."""


_CLASSES: dict[str, type[AttentionLayer]] = {}


def layer_class(attention: str) -> type[AttentionLayer]:
    """The named layer class of a registry name (``MLCA`` for ``mlca``), made once and cached.

    Its ``__module__`` is this module and its name :func:`yaml_name`, which is also what
    ultralytics prints in its model table.
    """
    key = _normalise(attention)
    cls = _CLASSES.get(key)
    if cls is None:
        name = yaml_name(key)
        cls = type(name, (AttentionLayer,), {
            "attention": key,
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"The registered attention {key!r} as an ultralytics YAML layer; see AttentionLayer.",
        })
        _CLASSES[key] = cls
    return cls
