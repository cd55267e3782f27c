"""Model surgery: put a zoo attention into an existing torchvision or timm model.

* :func:`replace_attention` swaps every squeeze-excitation block for the chosen attention.
* :func:`insert_attention` adds one after each module that matches a predicate.

Both edit the model in place, keep each new module on the device, dtype and train/eval mode of
the module it replaces or follows, and return how many places they changed.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterator

import torch
from torch import nn

from .registry import create_attention

__all__ = ["replace_attention", "insert_attention", "is_squeeze_excitation", "AttentionAfter"]


def _se_classes() -> tuple[type, ...]:
    """Classes treated as squeeze-excitation blocks.

    torchvision's, the zoo's own, and timm's where timm is already imported (a timm model means
    timm is in ``sys.modules``; we never import it ourselves).
    """
    from torchvision.ops import SqueezeExcitation

    from .se import SqueezeExcite

    classes: list[type] = [SqueezeExcitation, SqueezeExcite]
    if "timm" in sys.modules:
        try:
            from timm.layers.squeeze_excite import EffectiveSEModule, SEModule
            from timm.layers.squeeze_excite import SqueezeExcite as TimmSqueezeExcite

            classes += [SEModule, EffectiveSEModule, TimmSqueezeExcite]
        except ImportError:  # older timm: timm.models.layers
            pass
        try:
            from timm.models._efficientnet_blocks import SqueezeExcite as TimmEffNetSE

            classes.append(TimmEffNetSE)
        except ImportError:
            pass
    return tuple(classes)


def is_squeeze_excitation(module: nn.Module) -> bool:
    """True for torchvision's ``SqueezeExcitation``, the zoo's ``se``/``se-resnet`` and timm's SE
    blocks (``SEModule``, ``EffectiveSEModule``, ``SqueezeExcite``, EfficientNet's ``SqueezeExcite``)."""
    return isinstance(module, _se_classes())


def _se_channels(module: nn.Module) -> int:
    """Channel count of an SE block: its first conv's ``in_channels`` (torchvision ``fc1``, timm
    ``fc1``/``conv_reduce``/``fc``) or first linear's ``in_features``."""
    channels = getattr(module, "channels", None)
    if isinstance(channels, int):
        return channels
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
        if isinstance(m, nn.Linear):
            return m.in_features
    raise ValueError(f"cannot read the channel count of {type(module).__name__}: it has no Conv2d or Linear")


def _like(new: nn.Module, old: nn.Module) -> nn.Module:
    """Move ``new`` to ``old``'s device and floating dtype, and copy its train/eval mode."""
    ref = next(old.parameters(), None)
    if ref is None:
        ref = next(old.buffers(), None)
    if ref is not None:
        new = new.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
    return new.train(old.training)


def _named_matches(model: nn.Module, predicate: Callable[[nn.Module], bool]) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, child) for every matching module, outermost first, not descending
    into a match (an SE inside an SE, or a block inside a matched block, is left alone)."""
    # _modules, not named_children(): a block shared by two parents must be found under both
    for attr, child in list(model._modules.items()):
        if child is None:
            continue
        if predicate(child):
            yield model, attr, child
        else:
            yield from _named_matches(child, predicate)


def replace_attention(
    model: nn.Module,
    name: str,
    *,
    match: Callable[[nn.Module], bool] | None = None,
    **kwargs,
) -> int:
    """Replace every squeeze-excitation block of ``model`` by ``create_attention(name, C, **kwargs)``.

    C is read from each block (the ``in_channels`` of its first conv, e.g. torchvision's
    ``fc1.in_channels``). A block shared by several parents is replaced by one shared module.

    Args:
        model: edited in place (also the root itself cannot be replaced: pass its parent).
        name: a registered attention name (``mlca.list_attentions()``).
        match: which modules to replace; default :func:`is_squeeze_excitation`.
        **kwargs: options of the new attention.

    Returns:
        How many places were replaced (0 when the model has no SE block).
    """
    match = match or is_squeeze_excitation
    replaced: dict[int, nn.Module] = {}
    count = 0
    for parent, attr, old in list(_named_matches(model, match)):
        if id(old) not in replaced:
            replaced[id(old)] = _like(create_attention(name, _se_channels(old), **kwargs), old)
        setattr(parent, attr, replaced[id(old)])
        count += 1
    return count


class AttentionAfter(nn.Module):
    """``block`` followed by ``attention``: what :func:`insert_attention` puts in a block's place.

    The block's parameters move under ``<path>.block.``; the attention's are ``<path>.attention.``.
    """

    def __init__(self, block: nn.Module, attention: nn.Module):
        super().__init__()
        self.block = block
        self.attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: the block's input -> attention(block(x)), (B, C, H, W) with C the block's out channels."""
        return self.attention(self.block(x))


def _as_predicate(after: Callable[[nn.Module], bool] | type | tuple[type, ...]) -> Callable[[nn.Module], bool]:
    if isinstance(after, type) or (isinstance(after, tuple) and all(isinstance(t, type) for t in after)):
        return lambda m: isinstance(m, after)
    if not callable(after):
        raise TypeError(f"after must be a predicate module -> bool or a class, got {after!r}")
    return after


def _readable_out_channels(module: nn.Module) -> int | None:
    for attr in ("out_channels", "num_features", "channels"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


def _dry_run_channels(model: nn.Module, targets: list[nn.Module], example_input: torch.Tensor | None) -> dict[int, int]:
    """Channel count of each target's output, seen by forward hooks during one eval-mode pass."""
    if example_input is None:
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first_conv is None:
            raise ValueError(
                "insert_attention cannot read the out channels of the matched modules and the model has no "
                "Conv2d to guess an input from: pass channels= or example_input="
            )
        ref = first_conv.weight
        example_input = torch.zeros(1, first_conv.in_channels, 64, 64, device=ref.device, dtype=ref.dtype)
    seen: dict[int, int] = {}

    def hook(module: nn.Module, _inputs: object, output: object) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"insert_attention: {type(module).__name__} returns {shape}, not a (B, C, H, W) tensor; "
                "an attention cannot follow it"
            )
        seen[id(module)] = output.shape[1]

    handles = [t.register_forward_hook(hook) for t in targets]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [type(t).__name__ for t in targets if id(t) not in seen]
    if missing:
        raise ValueError(f"insert_attention: the dry run never reached {missing}; pass channels=")
    return seen


def insert_attention(
    model: nn.Module,
    after: Callable[[nn.Module], bool] | type | tuple[type, ...],
    name: str,
    *,
    channels: int | None = None,
    example_input: torch.Tensor | None = None,
    **kwargs,
) -> int:
    """Put ``create_attention(name, C, **kwargs)`` after every module that matches ``after``.

    Each matching module ``m`` is replaced in its parent by ``AttentionAfter(m, attention)``
    (so its parameter names gain a ``.block`` level; load pretrained weights before the surgery).
    Matches are not searched inside other matches.

    The channel count C of each match is, in this order: ``channels`` if given; the module's
    ``out_channels`` / ``num_features`` / ``channels`` attribute if it has one (Conv2d, BatchNorm2d,
    zoo modules); otherwise the channel dimension of its output in one dry run of the whole model
    in eval mode under ``no_grad``, with forward hooks on the matches. The dry run feeds
    ``example_input`` or, by default, zeros of shape ``(1, C_in, 64, 64)`` with ``C_in`` the
    ``in_channels`` of the model's first Conv2d (fine for torchvision and timm classifiers;
    pass ``example_input`` for models that need other sizes).

    Args:
        model: edited in place.
        after: predicate ``module -> bool``, or a class / tuple of classes (isinstance).
        name: a registered attention name.
        channels: force C for every match.
        example_input: input for the dry run.
        **kwargs: options of the new attention.

    Returns:
        How many attention modules were inserted.
    """
    predicate = _as_predicate(after)
    matches = list(_named_matches(model, predicate))
    if not matches:
        return 0
    chans: dict[int, int] = {}
    if channels is None:
        unknown = []
        for _, _, m in matches:
            c = _readable_out_channels(m)
            if c is None:
                unknown.append(m)
            else:
                chans[id(m)] = c
        if unknown:
            chans.update(_dry_run_channels(model, unknown, example_input))
    for parent, attr, m in matches:
        c = channels if channels is not None else chans[id(m)]
        setattr(parent, attr, AttentionAfter(m, _like(create_attention(name, c, **kwargs), m)))
    return len(matches)
