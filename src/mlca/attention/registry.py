"""Name -> attention-module registry.

Every attention module in the zoo is registered under a short name, so that models
say ``attention="eca"`` and never import a concrete class. Third-party code adds its
own with the same decorator::

    @register_attention("my-attn")
    class MyAttention(nn.Module):
        def __init__(self, channels: int, **kwargs): ...

A registered class must take the channel count as its first positional argument and
map ``(B, C, H, W)`` to ``(B, C, H, W)``.
"""

from __future__ import annotations

import inspect
from typing import Callable, TypeVar

from torch import nn

__all__ = ["register_attention", "create_attention", "list_attentions", "get_attention_class"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
T = TypeVar("T", bound=Callable[..., nn.Module])


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register_attention(name: str, *, override: bool = False) -> Callable[[T], T]:
    """Class decorator that registers an attention module under ``name``.

    Args:
        name: short, case-insensitive name (``_`` and ``-`` are equivalent).
        override: replace an existing entry instead of raising.
    """
    key = _normalise(name)

    def decorator(cls: T) -> T:
        if key in _REGISTRY and not override and _REGISTRY[key] is not cls:
            raise ValueError(
                f"attention {key!r} is already registered to {_REGISTRY[key]!r}; "
                "pass override=True to replace it"
            )
        _REGISTRY[key] = cls
        return cls

    return decorator


def list_attentions() -> list[str]:
    """Sorted names of every registered attention module."""
    return sorted(_REGISTRY)


def get_attention_class(name: str) -> Callable[..., nn.Module]:
    """The class registered under ``name``; ``KeyError`` listing the known names otherwise."""
    key = _normalise(name)
    try:
        return _REGISTRY[key]
    except KeyError:
        raise KeyError(
            f"unknown attention {name!r}; known: {', '.join(list_attentions())}"
        ) from None


def create_attention(name: str, channels: int, **kwargs) -> nn.Module:
    """Build the attention module registered under ``name`` for ``channels`` channels.

    Raises:
        KeyError: unknown name (the message lists the known ones).
        TypeError: a keyword the module does not take (the message names it and lists
            the ones it does take).
    """
    cls = get_attention_class(name)
    if kwargs:
        params = inspect.signature(cls).parameters
        takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if not takes_var_kw:
            accepted = [p for i, p in enumerate(params) if i > 0]
            unknown = sorted(set(kwargs) - set(accepted))
            if unknown:
                raise TypeError(
                    f"attention {name!r} got unexpected keyword argument(s) {unknown}; "
                    f"it accepts: {accepted or 'no keyword arguments'}"
                )
    return cls(channels, **kwargs)
