"""mlca: Mixed Local Channel Attention, an attention zoo, and the MAY detector.

The public API is small and loaded lazily, so ``import mlca`` stays cheap::

    import mlca
    layer = mlca.MLCA(256)
    se = mlca.create_attention("se", 64)
    model = mlca.build_may(attention="mlca", num_classes=20)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    # attention
    "MLCA": "mlca.attention.mlca",
    "set_default_backend": "mlca.attention.mlca",
    "create_attention": "mlca.attention.registry",
    "list_attentions": "mlca.attention.registry",
    "register_attention": "mlca.attention.registry",
    "attention_cost": "mlca.attention.cost",
    "replace_attention": "mlca.attention.surgery",
    "insert_attention": "mlca.attention.surgery",
    # models
    "MAY": "mlca.models.may",
    "build_may": "mlca.models.may",
    "build_may_from_yaml": "mlca.models.may",
    "model_info": "mlca.models.info",
    # data
    "load_dataset_config": "mlca.data.config",
    "DetectionDataset": "mlca.data.dataset",
    # engine
    "TrainConfig": "mlca.engine.train",
    "train": "mlca.engine.train",
    "evaluate": "mlca.engine.evaluate",
    "load_model": "mlca.engine.checkpoint",
    "predict_images": "mlca.engine.predict",
    # experiment and deployment
    "CompareConfig": "mlca.compare.config",
    "run_compare": "mlca.compare.experiment",
    "export_onnx": "mlca.deploy.export",
    "export_torchscript": "mlca.deploy.export",
    "OnnxBackend": "mlca.deploy.onnxrt",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name in _API:
        # importing mlca.attention registers the whole zoo before any lookup
        importlib.import_module("mlca.attention")
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mlca' has no attribute {name!r}")


def __dir__():
    return __all__
