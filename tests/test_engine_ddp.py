"""``torchrun --nproc_per_node 2 -m mlca train`` on the CPU (gloo): DDP with a DistributedSampler."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from mlca.engine.checkpoint import load_checkpoint
from test_engine_train import write_tiny_yolo


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path):
    data = write_tiny_yolo(tmp_path / "data", n_train=8, n_val=4)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           "-m", "mlca", "train", "--data", str(data), "--attention", "eca", "--width", "0.25", "--epochs", "1",
           "--img-size", "64", "--batch-size", "4", "--device", "cpu", "--seed", "0", "--out", str(out),
           "--no-autoanchor"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the run ends with a cross-rank check that raises if any parameter or buffer differs
    # between the replicas (mlca.engine.distributed.assert_same_across_ranks)

    ckpt = load_checkpoint(out / "weights" / "last.pt")
    args = yaml.safe_load((out / "args.yaml").read_text())
    assert args["world_size"] == 2
    # global batch 4 = 2 per rank; the DistributedSampler gives each rank 4 of the 8 images,
    # so one epoch is 2 optimizer steps (without the sampler split it would be 4)
    assert ckpt["ema_updates"] == 2
    assert len(ckpt["results"]) == 1 and 0 <= ckpt["results"][0]["map50"] <= 1
    # rank 0 alone wrote the run folder: exactly one set of files, no exp2 from a second rank
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "ddp"]
    assert (out / "results.csv").read_text().count("\n") == 2
