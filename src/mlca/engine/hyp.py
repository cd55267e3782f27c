"""Hyperparameter overrides (``--hyp``, ``TrainConfig.hyp``) split into the loss's and the augmentation's settings.

One flat mapping of overrides, as YOLOv5's hyp files have, holds keys of two kinds:
:class:`~mlca.engine.loss.LossGains` (``box``, ``obj``, ``cls``...) and
:class:`~mlca.data.transforms.AugmentSettings` (``mosaic``, ``fliplr``...). The two key sets do
not overlap, so each key goes to exactly one of them; a key of neither kind is an error that
names it and where it came from (the loss and the dataset would otherwise ignore a typo).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from mlca.data.transforms import AugmentSettings
from mlca.engine.loss import LossGains

__all__ = ["HypError", "split_hyp", "check_hyp_keys", "read_hyp_file", "parse_hyp_items"]

# settings a YOLOv5 hyp file carries that are TrainConfig fields (flags) here
_TRAIN_FIELDS = ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr")


class HypError(ValueError):
    """A ``--hyp`` file or value that cannot be used; the message names the key and its source."""


def check_hyp_keys(hyp: Mapping[str, Any], source: str = "hyp") -> None:
    """Raise :class:`HypError` naming every key of ``hyp`` that is neither a loss nor an augmentation setting."""
    loss_keys, aug_keys = LossGains.keys(), AugmentSettings.keys()
    unknown = sorted(k for k in hyp if k not in loss_keys and k not in aug_keys)
    if unknown:
        hints = [f"{k!r} is a training option: use --{k.replace('_', '-')}" for k in unknown if k in _TRAIN_FIELDS]
        hints += ["'img_size' is a training option: use --img-size"] if "img_size" in unknown else []
        raise HypError(
            f"{source}: unknown hyp keys {unknown}; loss keys: {sorted(loss_keys)}, "
            f"augmentation keys: {sorted(aug_keys)}" + (f" ({'; '.join(hints)})" if hints else "")
        )


def split_hyp(hyp: Mapping[str, Any] | None, source: str = "hyp") -> tuple[LossGains, AugmentSettings]:
    """``(loss gains, augmentation settings)``: the defaults with ``hyp``'s overrides of each kind.

    Raises:
        HypError: an unknown key, or a value out of range (the message names ``source``).
    """
    hyp = dict(hyp or {})
    check_hyp_keys(hyp, source)
    try:
        return LossGains.from_mapping(hyp), AugmentSettings.from_mapping(hyp)
    except ValueError as e:
        raise HypError(f"{source}: {e}") from e


def read_hyp_file(path: str | Path) -> dict[str, Any]:
    """The overrides in a YAML hyp file (a flat mapping ``key: number``), keys checked.

    Raises:
        HypError: the file is missing, is not YAML, is not a flat mapping, or has an unknown key.
    """
    path = Path(path)
    if not path.is_file():
        raise HypError(f"--hyp {path}: no such file (give a YAML file, or KEY=VALUE)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise HypError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HypError(f"{path}: a hyp file must be a mapping of key: value, got a {type(data).__name__}")
    check_hyp_keys(data, str(path))
    split_hyp(data, str(path))  # values checked here, with the file's name in the message
    return dict(data)


def parse_hyp_items(items: Iterable[str]) -> dict[str, Any]:
    """Merge ``--hyp`` arguments, in order: a YAML file path, or ``KEY=VALUE``; later ones win."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" in item and not Path(item).is_file():
            k, v = item.split("=", 1)
            k = k.strip()
            value = yaml.safe_load(v)
            check_hyp_keys({k: value}, f"--hyp {item}")
            split_hyp({k: value}, f"--hyp {item}")
            out[k] = value
        else:
            out.update(read_hyp_file(item))
    return out
