"""The tuning switches of the Triton backend as one immutable settings object.

MLCA runs with ``DEFAULT_SETTINGS``. Benchmarks and tests that compare kernel variants build
their own (``DEFAULT_SETTINGS.replace(algo="flat")``, ``.with_tile("scale_nchw", (...))``) and
pass it to ``mlca_triton(..., settings=...)`` or to the launchers; nothing is changed in place,
so one variant can never leak into another run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

__all__ = ["TritonSettings", "DEFAULT_SETTINGS"]

ALGOS = ("rows", "flat")


def _frozen(d: dict) -> Mapping:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class TritonSettings:
    """How the Triton kernels are tiled and which variants run.

    algo: "rows": the (channel, column)-tile kernels; "flat": the flat-pixel kernels, kept for
        the benchmark's comparison.
    fused_middle: the (B, C, L, L) middle as one Triton kernel (``_triton_middle``) per
        direction: forward 3 launches in all, backward 3, instead of ~12 and ~30 PyTorch ops that
        left the GPU waiting on the host at the YOLO shapes (docs/triton.md). False: the PyTorch
        middle, for the benchmark's comparison.
    nchw_cols: NCHW scale: upsample the small maps along W first (tiny (B, C, L, W) tensors), so
        that the kernel's attention loads are contiguous instead of one gather per element and
        bin. That bought 2% of copy bandwidth in the scale kernel alone at 32x256x160x160 on an
        H100, for ~5 more host ops per pass; off by default since the middle is fused (the host
        ops cost more than that).
    fit_w: NCHW: pick BLOCK_W to pad W least, widening BLOCK_C instead, so no lanes sit masked.
    tuning: tile shapes and warps of the row kernels, per kernel and layout of the big tensor.
        "reduce": (BLOCK_C, BLOCK_W, num_warps); "scale": (BLOCK_C, BLOCK_W, ROWS, num_warps).
        For NCHW, BLOCK_W shrinks to the next power of two of W and BLOCK_C grows to keep the
        tile. Values picked by ``benchmarks/bench_mlca_gpu.py --tune`` on an H100.
    middle_tile: elements of the (channels, bins) tile one middle program holds, per direction.
        The backward mode gathers about (KL + 1)**2 + (KG + 1)**2 such tiles (the neighbours'
        conv gradients are recomputed): at 1024 elements and 4 warps ptxas needed all 255
        registers and spilled 0.4-2.9 KiB per thread for 5 and 7 taps (sm_90); 256 elements
        spill nothing up to 7 taps (<= 150 registers), and neither does the forward at 1024
        (<= 141). tests/test_mlca_triton.py checks ptxas' report.
    """

    algo: str = "rows"
    fused_middle: bool = True
    nchw_cols: bool = False
    fit_w: bool = True
    tuning: Mapping[str, tuple] = field(default_factory=lambda: _frozen({
        "reduce_nchw": (4, 128, 4),
        "reduce_cl": (64, 16, 4),
        "scale_nchw": (4, 256, 8, 4),
        "scale_cl": (128, 16, 2, 8),
    }))
    middle_tile: Mapping[str, int] = field(
        default_factory=lambda: _frozen({"forward": 1024, "backward": 256}))

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"TritonSettings.algo must be one of {ALGOS}, got {self.algo!r}")
        if set(self.tuning) != {"reduce_nchw", "reduce_cl", "scale_nchw", "scale_cl"}:
            raise ValueError(f"TritonSettings.tuning needs reduce_/scale_ x nchw/cl tiles, got "
                             f"{sorted(self.tuning)}")
        # read-only copies: a caller's dict changed later cannot change these settings
        object.__setattr__(self, "tuning", _frozen(self.tuning))
        object.__setattr__(self, "middle_tile", _frozen(self.middle_tile))

    def replace(self, **changes) -> "TritonSettings":
        """A copy with ``changes`` (field names as keywords)."""
        return dataclasses.replace(self, **changes)

    def with_tile(self, key: str, tile: tuple) -> "TritonSettings":
        """A copy whose ``tuning[key]`` is ``tile``."""
        if key not in self.tuning:
            raise ValueError(f"unknown tile {key!r}; one of {sorted(self.tuning)}")
        return self.replace(tuning={**self.tuning, key: tuple(tile)})


DEFAULT_SETTINGS = TritonSettings()
