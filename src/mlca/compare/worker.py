"""Child process of a GPU-spread comparison: trains one (attention, seed) run.

``python -m mlca.compare.worker CONFIG.json ATTENTION SEED``; the parent
(:func:`mlca.compare.runner.run_all`) sets ``CUDA_VISIBLE_DEVICES`` to one GPU, which is
``cuda:0`` here. The run's ``compare_done.json`` marker is how the parent reads the result.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from .config import CompareConfig
from .runner import RunSpec, run_one


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m mlca.compare.worker CONFIG.json ATTENTION SEED", file=sys.stderr)
        return 2
    cfg_path, attention, seed = argv
    cfg = CompareConfig(**json.loads(Path(cfg_path).read_text()))
    import torch

    device = "cuda" if torch.cuda.is_available() else cfg.device
    out = run_one(cfg, RunSpec(attention, int(seed)), device=device)
    print(json.dumps(dataclasses.asdict(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
