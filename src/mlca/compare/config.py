"""Settings of one comparison experiment (what ``mlca compare`` parses into)."""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CompareConfig", "DEFAULT_ATTENTIONS", "PAPER_ATTENTIONS", "non_default_kwargs"]

# The paper's table (Wan et al. 2023, MAY on VOC/SIMD).
PAPER_ATTENTIONS = ("none", "se", "eca", "cbam", "ca", "mlca")
# The no-argument default: what fits ~15 minutes on a shared 2-core CPU (docs/compare.md says why).
DEFAULT_ATTENTIONS = ("none", "mlca")


@dataclass
class CompareConfig:
    """One experiment: every attention in ``attentions`` trained with seeds ``0..seeds-1``.

    The fields that shape a run (``RUN_KEYS``) are recorded next to each finished run, so a
    later call with other settings into the same ``out`` fails clearly instead of mixing
    runs trained differently into one table.
    """

    data: str = "embedded"
    attentions: list[str] = field(default_factory=lambda: list(DEFAULT_ATTENTIONS))
    seeds: int = 3
    epochs: int = 8
    img_size: int = 128
    batch_size: int = 16
    workers: int = 0
    device: str = ""
    out: Path = Path("runs/compare")
    baseline: str = "none"
    width: float = 1.0
    head: str = "yolov5"  # MAY's detection head: yolov5 (the paper's) or yolov8 (anchor-free)
    # the detector the attentions go into: "may", an ultralytics model (yolo11n, yolov8n...) or its YAML
    detector: str = "may"
    where: str = "backbone"  # ultralytics detectors: after each backbone stage, or "neck" (each Detect input)
    max_train_images: int | None = None
    max_val_images: int | None = None
    cam: bool = False
    cam_images: int = 4
    latency_rounds: int = 20
    gpus: list[int] | None = None  # None: every visible GPU when device is CUDA
    # constructor settings per attention name ({} or absent: the zoo defaults), e.g. {"ca": {"reduction": 16}}
    attention_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    preset: str | None = None  # the --preset these attentions and settings came from (a record only)

    RUN_KEYS = ("data", "epochs", "img_size", "batch_size", "width", "head", "max_train_images", "max_val_images")

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.attentions = [a.strip() for a in self.attentions if a.strip()]
        if not self.attentions:
            raise ValueError("compare: --attentions is empty")
        if len(set(self.attentions)) != len(self.attentions):
            raise ValueError(f"compare: --attentions has duplicates: {self.attentions}")
        if self.baseline and self.baseline not in self.attentions:
            raise ValueError(
                f"compare: baseline {self.baseline!r} is not among --attentions {self.attentions}; "
                "add it or pick another --baseline"
            )
        if self.seeds < 1:
            raise ValueError(f"compare: --seeds must be >= 1, got {self.seeds}")
        if self.epochs < 1:
            raise ValueError(f"compare: --epochs must be >= 1, got {self.epochs}")
        if self.head not in ("yolov5", "yolov8"):
            raise ValueError(f"compare: --head must be yolov5 or yolov8, got {self.head!r}")
        from .detectors import check_detector

        check_detector(self)
        if self.img_size < 32 or self.img_size % 32:
            raise ValueError(f"compare: --img-size must be a multiple of 32 (MAY's largest stride), got {self.img_size}")
        self.attention_kwargs = {k: dict(v) for k, v in (self.attention_kwargs or {}).items()}
        stray = sorted(set(self.attention_kwargs) - set(self.attentions))
        if stray:
            raise ValueError(f"compare: settings given for {stray}, which are not among --attentions {self.attentions}")

    @classmethod
    def from_preset(cls, name: str, attentions: list[str] | None = None, **overrides: Any) -> "CompareConfig":
        """The preset's attentions (or the subset ``attentions``) with its module settings;
        ``overrides`` set the other fields (``attention_kwargs`` entries update the preset's)."""
        from .presets import get_preset

        preset = get_preset(name)
        chosen = list(attentions) if attentions else list(preset.attentions)
        kwargs = preset.kwargs_for(chosen)
        for att, extra in (overrides.pop("attention_kwargs", None) or {}).items():
            kwargs.setdefault(att, {}).update(extra)
        return cls(attentions=chosen, attention_kwargs=kwargs, preset=name, **overrides)

    def kwargs_of(self, attention: str) -> dict[str, Any]:
        """The constructor settings of ``attention`` in this experiment ({}: the zoo defaults)."""
        return dict(self.attention_kwargs.get(attention, {}))

    def run_settings(self, attention: str | None = None) -> dict:
        """The settings that make two runs of the same (attention, seed) the same run.

        With ``attention``, its module settings that differ from the module's defaults are
        included (as ``attention_kwargs``), so a run of ``ca`` with reduction 16 is never
        reused for reduction 32, while spelling out a default changes nothing.
        """
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items() if k in self.RUN_KEYS}
        if out.get("head") == "yolov5":
            del out["head"]  # the paper's head, as every run recorded before the head was a choice
        if self.detector != "may":
            from .detectors import detector_identity

            out.pop("head", None)
            out.update(detector_identity(self))
        if attention is not None:
            changed = non_default_kwargs(attention, self.kwargs_of(attention))
            if changed:
                out["attention_kwargs"] = changed
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        return d


def non_default_kwargs(attention: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` without the entries equal to the attention class's own defaults."""
    if not kwargs:
        return {}
    import mlca.attention  # noqa: F401  (registers the zoo)
    from mlca.attention.registry import get_attention_class

    params = inspect.signature(get_attention_class(attention)).parameters
    return {k: v for k, v in sorted(kwargs.items()) if k not in params or params[k].default != v}
