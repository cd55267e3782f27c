"""``mlca bench --detector``: each attention's latency inside an ultralytics YOLO, side by side.

The parameter count of each benchmarked model is checked against an independent count: the
fused base model's parameters plus the attention's own parameters at the channels of the
stages it follows. No speed is asserted.
"""

from __future__ import annotations

import csv

import pytest

from _may_counts import eca_kernel

ultralytics = pytest.importorskip("_ultralytics_env").ultralytics


def test_bench_yolo11n_writes_a_row_per_attention_backend_and_batch(tmp_path, capsys, monkeypatch):
    from mlca.cli import main
    from mlca.ultralytics.offline import OFFLINE_ENV

    for key, value in OFFLINE_ENV.items():  # what offline() sets, undone after the test
        monkeypatch.setenv(key, value)

    out = tmp_path / "bench.csv"
    rc = main(["bench", "--detector", "yolo11n", "--attentions", "none,mlca", "--backends", "eager,onnxruntime,onnxruntime-dense",
               "--batches", "1,2", "--sizes", "64", "--reps", "1", "--warmup", "1", "--threads", "1", "--csv", str(out)])  # fmt: skip
    assert rc == 0
    rows = list(csv.DictReader(open(out)))
    # the static exports are made again for each batch: a batch-1 export would reject batch 2
    assert sorted((r["attention"], r["backend"], r["batch"]) for r in rows) == sorted(
        (a, b, n) for a in ("mlca", "none") for b in ("eager", "onnxruntime", "onnxruntime-dense") for n in "12")
    assert all(float(r["median_ms"]) > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "yolo11n (attention: backbone) latency" in printed

    # parameters: the fused YOLO11n (80 classes) plus one MLCA (two ECA-sized 1-D kernels) after
    # each of its four backbone C3k2 stages, whose outputs at scale n are 64, 128, 128, 256 channels
    from ultralytics.nn.tasks import DetectionModel

    base = sum(p.numel() for p in DetectionModel("yolo11n.yaml", nc=80, verbose=False).fuse(verbose=False).parameters())
    expected = {"none": base, "mlca": base + sum(2 * eca_kernel(c) for c in (64, 128, 128, 256))}
    for att, n in expected.items():
        assert f"| {att} | {n:,} |" in printed, (att, n, printed[-400:])


def test_an_unknown_detector_is_a_clear_error(capsys):
    from mlca.cli import main

    assert main(["bench", "--detector", "yolo99z", "--attentions", "none", "--backends", "eager",
                 "--batches", "1", "--sizes", "64", "--reps", "1"]) == 1  # fmt: skip
    assert "yolo99z" in capsys.readouterr().err


@pytest.mark.parametrize("formulation", ["exact", "dense"])
def test_detector_export_of_either_mlca_formulation_matches_pytorch(formulation, tmp_path):
    """The static export ``mlca bench`` times (ultralytics' TorchScript-based exporter) equals the
    PyTorch model in onnxruntime, with MLCA's exact or dense formulation, at 96 px: feature maps
    of 24, 12, 6, 3 px, none a multiple of local_size 5."""
    import numpy as np
    import torch

    ort = pytest.importorskip("onnxruntime")
    from mlca.deploy.detectors import build_detector, export_detector_onnx

    torch.manual_seed(0)
    model = build_detector("yolo11n", "mlca", num_classes=3, where="backbone")
    path = export_detector_onnx(model, tmp_path / "m.onnx", 96, batch=2, mlca=formulation)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = model(x)
    expected = (expected[0] if isinstance(expected, (tuple, list)) else expected).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
