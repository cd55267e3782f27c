"""The detector a comparison puts its attentions into: MAY, or an ultralytics YOLO model.

``--detector may`` (the default) is the paper's MAY, trained by mlca's trainer.
``--detector yolo11n`` / ``yolov8n`` (any ultralytics model name: ``yolo11s``, ``yolov8m``...)
or the path of an ultralytics model YAML puts each attention into that model with
:func:`mlca.ultralytics.yaml_with_attention` (``where="backbone"``: after every C3k2/C2f
stage; ``"neck"``: on every Detect input; attention ``none`` is the base model unchanged),
and ultralytics trains and validates it with its own defaults. Parameters, GFLOPs and latency
are measured by mlca on the built ``nn.Module`` the same way for every detector.

ultralytics is imported only here and in :mod:`mlca.compare.ultralytics_run`, and only when
an ultralytics detector is asked for.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from .config import CompareConfig

__all__ = ["is_ultralytics", "check_detector", "detector_identity", "model_yaml", "build_model", "yolo_data_yaml",
           "WHERE"]  # fmt: skip

WHERE = ("backbone", "neck")
# ultralytics' detection models by name: its YAMLs resolve the scale letter from the name
_NAME = re.compile(r"^yolo(v8|v9|v10|11|12)[nsmlx]$")


def is_ultralytics(detector: str) -> bool:
    return detector != "may"


def _is_yaml(detector: str) -> bool:
    return detector.endswith((".yaml", ".yml"))


def check_detector(cfg: CompareConfig) -> None:
    """Fails before any training on a detector, placement or option that cannot work together."""
    d = cfg.detector
    if d == "may":
        return
    if _is_yaml(d):
        if not Path(d).is_file():
            raise ValueError(f"compare: --detector {d}: no such model YAML")
    elif not _NAME.match(d):
        raise ValueError(f"compare: --detector must be may, an ultralytics model name (yolo11n, yolov8n, ...) "
                         f"or a model YAML, got {d!r}")  # fmt: skip
    if cfg.where not in WHERE:
        raise ValueError(f"compare: --where must be one of {WHERE}, got {cfg.where!r}")
    if cfg.cam:
        raise ValueError("compare: --cam draws MAY's backbone maps; it is not available with --detector " + d)
    if cfg.head != "yolov5":
        raise ValueError(f"compare: --head chooses MAY's head; {d} has its own")
    if cfg.width != 1.0:
        raise ValueError(f"compare: --width scales MAY; for {d} pick the scale by name (e.g. yolo11s)")


def detector_identity(cfg: CompareConfig) -> dict:
    """What makes two runs of an ultralytics detector the same run (recorded with each run)."""
    out = {"detector": cfg.detector, "where": cfg.where}
    if _is_yaml(cfg.detector):
        out["detector_sha256"] = hashlib.sha256(Path(cfg.detector).read_bytes()).hexdigest()
    return out


def model_yaml(cfg: CompareConfig, attention: str, folder: Path) -> str:
    """The ultralytics model YAML of ``attention`` in this comparison: the base for ``none``."""
    from mlca.deploy.detectors import detector_yaml

    return detector_yaml(cfg.detector, attention, cfg.where, folder, **cfg.kwargs_of(attention))


def build_model(cfg: CompareConfig, attention: str, num_classes: int) -> nn.Module:
    """The model of ``attention`` as an ``nn.Module``, for params, FLOPs and latency."""
    if not is_ultralytics(cfg.detector):
        from mlca.models.may import build_may

        return build_may(attention=attention, num_classes=num_classes, width=cfg.width, head=cfg.head,
                         attention_kwargs=cfg.kwargs_of(attention))  # fmt: skip
    from .ultralytics_run import import_ultralytics

    import_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    # building runs one forward (ultralytics finds the strides), which builds mlca's lazy layers
    return DetectionModel(model_yaml(cfg, attention, cfg.out / "models"), nc=num_classes, verbose=False)


def yolo_data_yaml(cfg: CompareConfig) -> Path:
    """A YOLO-format data YAML for ultralytics: the user's own when it is one (and no image
    limit is asked for), else the data written once as a YOLO dataset under ``--out``."""
    from mlca.data.config import load_dataset_config

    data = load_dataset_config(cfg.data)
    limits = {k: v for k, v in (("train", cfg.max_train_images), ("val", cfg.max_val_images)) if v}
    given = Path(str(cfg.data))
    if data.format == "yolo" and given.suffix in (".yaml", ".yml") and given.is_file() and not limits:
        return given.absolute()
    tag = hashlib.sha256(repr((str(cfg.data), sorted(limits.items()))).encode()).hexdigest()[:10]
    folder = cfg.out / "data" / f"{Path(str(cfg.data)).stem}-{tag}"
    if not (folder / "data.yaml").is_file():  # written atomically: present means complete
        from mlca.data.yolo_export import export_yolo

        export_yolo(cfg.data, folder, splits=("train", "val"), overwrite=True, limits=limits)
    return folder / "data.yaml"
