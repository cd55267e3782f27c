"""mlca's attentions inside ultralytics YOLO models (optional: ``pip install 'mlca[ultralytics]'``).

Importing this package runs :func:`register`, after which a model YAML can name any registered
attention, with the channel count taken from the layer's input::

    import mlca.ultralytics
    from ultralytics import YOLO
    model = YOLO(mlca.ultralytics.yaml_with_attention("yolo11n.yaml", "mlca"))

ultralytics is AGPL-3.0; mlca only imports it.
"""

from __future__ import annotations

from .offline import offline
from .layer import Attention, AttentionLayer, layer_class, yaml_name
from .register import SUPPORTED_ULTRALYTICS, register, registered_names
from .yaml_edit import model_dict_with_attention, shipped_yaml, yaml_with_attention

__all__ = [
    "Attention", "AttentionLayer", "SUPPORTED_ULTRALYTICS", "layer_class", "model_dict_with_attention", "offline", "register",
    "registered_names", "shipped_yaml", "yaml_name", "yaml_with_attention",
]

register()
