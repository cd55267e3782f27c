"""How mlca's YOLO layers are written into checkpoints, so that loading needs no manual import.

A pickled :class:`~mlca.ultralytics.layer.AttentionLayer` is rebuilt by
``rebuild(payload)``, and ``rebuild`` is itself written into the checkpoint as the expression
``next(filter(None, [pydoc.locate("mlca.ultralytics.checkpoint.rebuild"), itemgetter(MESSAGE)]))``
(evaluated once per file, pickle memoises it):

* with mlca installed, ``pydoc.locate`` imports ``mlca.ultralytics`` (which registers the layers
  with ultralytics) and yields ``rebuild``; no ``import mlca.ultralytics`` by hand is needed;
* without mlca, ``pydoc.locate`` returns None and the stand-in ``itemgetter(MESSAGE)(payload)``
  raises ``KeyError(MESSAGE)``, which tells the user to ``pip install mlca``. A plain reference
  to a class in ``mlca`` would raise ``ModuleNotFoundError: mlca`` instead, on which
  ultralytics' ``torch_safe_load`` runs ``check_requirements("mlca")``: an automatic
  ``pip install`` of whatever package the registry holds under that name.

The layer's state follows the rebuild, so nothing of mlca is unpickled before that check.

Restricted loading (``ULTRALYTICS_SAFE_LOAD=1``, ``torch.load(weights_only=True)``) allows only
listed globals; :func:`allow_safe_load` (run by ``mlca.ultralytics.register()``) lists the few
harmless builtins of the expression, the layer classes, and an alias under the name
``pydoc.locate`` that resolves nothing but ``rebuild``.
"""

from __future__ import annotations

import importlib
import operator
import pickle
import pydoc
from typing import Any

import torch

__all__ = ["REBUILD", "MESSAGE", "rebuild", "payload", "allow_safe_load"]

REBUILD_PATH = "mlca.ultralytics.checkpoint.rebuild"
MESSAGE = (
    "this checkpoint holds mlca attention layers, but mlca.ultralytics could not be imported; "
    "install mlca with `pip install mlca` (the ultralytics layers: `pip install 'mlca[ultralytics]'`) "
    "in this environment, then load it again"
)


def payload(layer) -> dict[str, Any]:
    """The plain dict ``rebuild`` gets: which layer class, and where a third-party attention lives."""
    from mlca.attention.registry import get_attention_class

    try:
        source = get_attention_class(layer.attention_name).__module__
    except KeyError:
        source = None
    return {
        "mlca": "mlca.ultralytics",
        "class": type(layer).__name__,
        "attention": layer.attention_name,
        "module": source,
    }


def rebuild(info: dict[str, Any]):
    """An empty layer of the class ``info`` names; pickle then restores its state.

    A third-party attention whose name is not registered yet is registered by importing the
    module that defined it (``info["module"]``).
    """
    from mlca.attention.registry import list_attentions

    from .layer import Attention, layer_class
    from .register import register

    register()
    name = info["attention"]
    module = info.get("module")
    if name not in list_attentions() and module:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ImportError(
                f"this checkpoint has the attention {name!r}, registered by the module {module!r}, "
                f"which cannot be imported here: {e}"
            ) from e
        register()
    if name not in list_attentions():
        raise KeyError(
            f"this checkpoint has the attention {name!r}, which is not registered; import the "
            f"module that registers it (mlca.register_attention) before loading"
        )
    cls = Attention if info.get("class") == "Attention" else layer_class(name)
    return cls.__new__(cls)


class _Call:
    """A call pickle records as an expression, evaluated when the checkpoint is loaded."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class _Rebuild:
    """``rebuild`` in this process (deepcopy calls it); the guarded expression in a pickle."""

    def __call__(self, info: dict[str, Any]):
        return rebuild(info)

    def __reduce__(self):
        candidates = [_Call(pydoc.locate, REBUILD_PATH), operator.itemgetter(MESSAGE)]
        return next, (_Call(filter, None, candidates),)


REBUILD = _Rebuild()


def _locate_rebuild(path: str):
    """``pydoc.locate`` as restricted loading sees it: it resolves ``rebuild`` and nothing else."""
    if path != REBUILD_PATH:
        raise pickle.UnpicklingError(
            f"restricted load: pydoc.locate({path!r}) blocked (mlca allows only {REBUILD_PATH!r})"
        )
    return rebuild


def allow_safe_load(classes) -> None:
    """Let ``torch.load(weights_only=True)`` rebuild mlca's layers (``classes``) and their state."""
    torch.serialization.add_safe_globals(
        [next, filter, operator.itemgetter, (_locate_rebuild, "pydoc.locate"), rebuild, *classes]
    )
