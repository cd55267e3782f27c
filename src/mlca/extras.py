"""Optional dependencies, imported only when a feature asks for them, with a clear message.

``require_ultralytics()`` imports ultralytics for ``mlca compare --detector`` and ``mlca bench
--detector``: offline (the environment of :data:`mlca.ultralytics.offline.OFFLINE_ENV` is set
*before* the first import, since ultralytics checks for a network at import time), with
mlca's attentions registered.
"""

from __future__ import annotations

import importlib.util
import os

__all__ = ["require_ultralytics", "ULTRALYTICS_OFFLINE_ENV"]

# the import-time part of mlca.ultralytics.offline.OFFLINE_ENV (a test keeps the two equal);
# written out here because importing mlca.ultralytics imports ultralytics
ULTRALYTICS_OFFLINE_ENV = {
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "False",
    "ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS": "1",
}


def require_ultralytics(feature: str = "this") -> None:
    """Import ultralytics offline and register mlca's attentions in it; ImportError naming the extra."""
    if importlib.util.find_spec("ultralytics") is None:
        raise ImportError(f'{feature} needs ultralytics: pip install "mlca[ultralytics]"')
    for key, value in ULTRALYTICS_OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    from mlca.ultralytics import offline, register

    offline()
    register()
