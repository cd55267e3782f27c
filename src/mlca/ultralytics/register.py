"""``register()``: make every registered attention nameable in ultralytics model YAMLs.

ultralytics' ``parse_model`` resolves a YAML module name through the globals of
``ultralytics.nn.tasks``; setting attributes on that module is the only hook it has (nothing on
disk is touched). Each attention gets its :func:`~mlca.ultralytics.layer.yaml_name` (``MLCA``,
``SE``, ``SE_RESNET``, ``ECA``, ``CBAM``, ``CA``, ``SIMAM``, ``EMA``, ``NONE``, ...) and
``Attention`` takes any registry name as its first argument. A name ultralytics already uses
for something else is left alone (a warning says which); ``Attention`` still reaches it.
"""

from __future__ import annotations

import warnings

from mlca.attention import list_attentions

from .checkpoint import allow_safe_load
from .layer import Attention, AttentionLayer, layer_class, yaml_name

__all__ = ["register", "registered_names", "SUPPORTED_ULTRALYTICS"]

SUPPORTED_ULTRALYTICS = ">=8.4.190,<8.5"  # the range declared in pyproject's [ultralytics] extra

_warned: set[str] = set()


def _tasks():
    try:
        import ultralytics.nn.tasks as tasks
    except ImportError as e:
        raise ImportError(
            "mlca.ultralytics needs ultralytics: pip install 'mlca[ultralytics]' "
            f"(tested: ultralytics{SUPPORTED_ULTRALYTICS}); importing it failed: {e}"
        ) from e
    return tasks


def register() -> dict[str, type]:
    """Put every registered attention into ``ultralytics.nn.tasks``; returns ``{yaml name: class}``.

    Idempotent: running it again adds the attentions registered since (third-party
    ``register_attention`` calls) and changes nothing else.
    """
    tasks = _tasks()
    done: dict[str, type] = {}
    entries = [("Attention", Attention)] + [(yaml_name(n), layer_class(n)) for n in list_attentions()]
    for name, cls in entries:
        current = getattr(tasks, name, None)
        if current is not None and current is not cls:
            if not (isinstance(current, type) and issubclass(current, AttentionLayer)):
                if name not in _warned:
                    _warned.add(name)
                    warnings.warn(
                        f"ultralytics.nn.tasks already defines {name!r}; mlca leaves it alone: write "
                        f"[-1, 1, Attention, [{getattr(cls, 'attention', name)}]] in the YAML instead",
                        stacklevel=2,
                    )
                continue
        setattr(tasks, name, cls)
        done[name] = cls
    allow_safe_load(done.values())
    return done


def registered_names() -> list[str]:
    """The YAML names mlca has put into ``ultralytics.nn.tasks`` (after :func:`register`)."""
    tasks = _tasks()
    return sorted(
        n for n, v in vars(tasks).items() if isinstance(v, type) and issubclass(v, AttentionLayer)
    )
