"""The attention zoo: one module per file, all reachable by name through the registry.

Importing this package registers every built-in module.
"""

from .registry import create_attention, get_attention_class, list_attentions, register_attention

# Each import below registers its module(s) with the registry.
from . import identity  # noqa: F401  (registers "none")
from . import mlca  # noqa: F401
from . import se, eca, cbam, coord, simam, ema  # noqa: F401,E401  (se, se-resnet, eca, cbam, ca, simam, ema)

__all__ = ["create_attention", "get_attention_class", "list_attentions", "register_attention"]
