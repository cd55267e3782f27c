"""Named sets of attention modules with their constructor settings (``mlca compare --preset``).

``paper`` is the MLCA paper's comparison (Wan et al. 2023, MAY on VOC/SIMD) with exactly the
settings of the authors' repository (wandahangFY/MLCA, ``models/common.py``, the
``MblNetV3_Blk*`` blocks of its ``mobilenetv3-*.yaml`` models), where the zoo's defaults follow
each module's own paper instead:

========  =====================================================  ===============================
module    official repository                                    zoo default (module's paper)
========  =====================================================  ===============================
none      ``mobilenetv3-SEOFF.yaml``: every SE slot off           the same (identity, 0 params)
se        ``SELayer(C, reduction=4)``: ``C // 4``, ReLU,           r = C/4 rounded to a multiple
          hard-sigmoid                                           of 8 (MobileNetV3/torchvision)
eca       ``ECA``: gamma 2, b 1                                   the same (ECA-Net)
cbam      ``CBAM``: ratio 16, 7x7 spatial kernel                  the same (CBAM)
ca        ``CA(C, C, 16)``: reduction 16, min 8, h-swish          reduction 32 (Hou et al.)
mlca      ``MLCA(C)``: local_size 5, gamma 2, b 1,               the same
          local_weight 0.5
========  =====================================================  ===============================

Every setting is spelled out, also where it equals the zoo default, so ``results.csv`` records
the full settings of each module. The official CA and CBAM convolutions have no biases, the
zoo's have (the formula of the modules' papers); that is not a constructor setting of the zoo
modules and stays as it is (docs/compare.md gives the parameter difference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["Preset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """A named comparison: which attentions, built with which constructor settings."""

    name: str
    description: str
    attentions: tuple[str, ...]
    attention_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def kwargs_for(self, attentions: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """The settings of ``attentions`` (each must be in the preset), as plain dicts."""
        unknown = [a for a in attentions if a not in self.attentions]
        if unknown:
            raise ValueError(
                f"compare: --preset {self.name} has no {unknown}; its attentions are {list(self.attentions)}"
            )
        return {a: dict(self.attention_kwargs.get(a, {})) for a in attentions}


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        description="the MLCA paper's six modules with the official repository's settings",
        attentions=("none", "se", "eca", "cbam", "ca", "mlca"),
        attention_kwargs={
            "none": {},
            # SELayer(channel, reduction=4): Linear(C, C // 4) with bias, ReLU, Linear, Hardsigmoid;
            # no rounding of the squeeze width to a multiple of 8 (60 stays 60, not 64)
            "se": {"rd_ratio": 0.25, "rd_divisor": 1},
            "eca": {"gamma": 2, "b": 1},
            "cbam": {"reduction": 16, "kernel_size": 7},
            # CA(hidden, hidden, 16): mip = max(8, C // 16)
            "ca": {"reduction": 16, "min_mid": 8},
            "mlca": {"local_size": 5, "gamma": 2, "b": 1, "local_weight": 0.5},
        },
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a ``ValueError`` listing the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"compare: unknown --preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
