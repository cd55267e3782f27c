"""Settings of one comparison experiment (what ``mlca compare`` parses into)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["CompareConfig", "DEFAULT_ATTENTIONS", "PAPER_ATTENTIONS"]

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
    max_train_images: int | None = None
    max_val_images: int | None = None
    cam: bool = False
    cam_images: int = 4
    latency_rounds: int = 20
    gpus: list[int] | None = None  # None: every visible GPU when device is CUDA

    RUN_KEYS = ("data", "epochs", "img_size", "batch_size", "width", "max_train_images", "max_val_images")

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
        if self.img_size < 32 or self.img_size % 32:
            raise ValueError(f"compare: --img-size must be a multiple of 32 (MAY's largest stride), got {self.img_size}")

    def run_settings(self) -> dict:
        """The settings that make two runs of the same (attention, seed) the same run."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items() if k in self.RUN_KEYS}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        return d
