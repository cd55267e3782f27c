"""The plain model inside the wrappers training puts around it.

A model may sit inside ``DistributedDataParallel``/``DataParallel`` (``.module``), a
``torch.compile`` wrapper (``._orig_mod``), a :class:`~mlca.engine.ema.ModelEMA` (``.ema``),
or several of these at once (a compiled model under DDP). State dicts, anchors, the loss's
view of the model and checkpoints all want the innermost ``nn.Module``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["unwrap"]


def unwrap(model: Any) -> Any:
    """Peel DDP/DataParallel, ``torch.compile`` and EMA wrappers until none is left.

    Anything else (a plain module, an ONNX backend callable) is returned as it is.
    """
    for _ in range(16):  # wrappers nest a few levels at most; the bound guards against cycles
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(model, nn.Module) and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch._dynamo's OptimizedModule
        elif not isinstance(model, nn.Module) and isinstance(getattr(model, "ema", None), nn.Module):
            model = model.ema  # ModelEMA holds its averaged copy in .ema
        else:
            return model
    raise ValueError(f"unwrap: more than 16 nested wrappers around {type(model).__name__}")
