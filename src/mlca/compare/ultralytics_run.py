"""One (attention, seed) run of an ultralytics detector, trained and validated by ultralytics.

The model YAML comes from :func:`mlca.compare.detectors.model_yaml`, the data YAML from
:func:`~mlca.compare.detectors.yolo_data_yaml`; ultralytics trains from scratch with its own
defaults (optimizer, schedule, augmentation, loss, validation every epoch on the EMA weights)
except what the comparison sets: epochs, image size, batch, seed, workers, device. Its
``results.csv`` (per epoch ``metrics/mAP50(B)``, ``metrics/mAP50-95(B)``) lands in the run
folder, where the runner reads it as it reads mlca's. Network access is switched off first
(:func:`mlca.ultralytics.offline`): no font, weight or dataset download is attempted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import CompareConfig
    from .runner import RunSpec

__all__ = ["import_ultralytics", "train_run", "UltralyticsRun"]


@dataclass
class UltralyticsRun:
    run_dir: Path  # holds ultralytics' weights/ and results.csv


def import_ultralytics() -> None:
    """ultralytics, offline, with mlca's attentions registered; a clear error if it is missing."""
    from mlca.extras import require_ultralytics

    require_ultralytics("mlca compare --detector")


def _device(device: str) -> str | None:
    """mlca's device spelling -> ultralytics' ("cuda:1" -> "1"); None lets ultralytics choose."""
    if not device:
        return None
    if device.startswith("cuda"):
        return device.partition(":")[2] or "0"
    return device


def train_run(cfg: CompareConfig, spec: RunSpec, run_dir: Path, resume: bool, device: str = "") -> UltralyticsRun:
    """Train (or, after an interruption, continue) one run into ``run_dir``."""
    import_ultralytics()
    from ultralytics import YOLO

    from .detectors import model_yaml, yolo_data_yaml

    run_dir = Path(run_dir).absolute()
    last = run_dir / "weights" / "last.pt"
    if resume and last.is_file():
        # ultralytics continues from its own checkpoint, with the arguments saved in it
        YOLO(str(last)).train(resume=True)
        return UltralyticsRun(run_dir)
    data = yolo_data_yaml(cfg)
    model = YOLO(model_yaml(cfg, spec.attention, cfg.out / "models"))
    kwargs = dict(
        data=str(data), epochs=cfg.epochs, imgsz=cfg.img_size, batch=cfg.batch_size, seed=spec.seed,
        workers=cfg.workers, project=str(run_dir.parent), name=run_dir.name, exist_ok=True,
        pretrained=False, verbose=False,
    )  # fmt: skip
    dev = _device(device)
    if dev is not None:
        kwargs["device"] = dev
    model.train(**kwargs)
    return UltralyticsRun(run_dir)
