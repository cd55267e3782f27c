"""The latency benchmark's plumbing (timings themselves are never asserted)."""

from __future__ import annotations

import pytest

from mlca.deploy.bench import BenchResult, bench_may, format_table


def test_format_table_compares_eager_with_the_baseline():
    rs = [
        BenchResult("eca", "eager", 320, 1, 10.0, 9.0, 5),
        BenchResult("mlca", "eager", 320, 1, 10.5, 9.5, 5),
        BenchResult("eca", "onnxruntime", 320, 1, 4.0, 3.9, 5),
        BenchResult("mlca", "onnxruntime", 320, 1, 4.2, 4.1, 5),
    ]
    lines = format_table(rs, "eca").splitlines()
    assert lines[0] == "| size | batch | attention | eager ms | onnxruntime ms | eager vs eca |"
    assert lines[2] == "| 320 | 1 | eca | 10.0 | 4.0 | +0.0% |"
    assert lines[3] == "| 320 | 1 | mlca | 10.5 | 4.2 | +5.0% |"


def test_bench_runs_every_pair_and_shape():
    rs = bench_may(["none", "eca"], batches=(1, 2), sizes=(64,), backends=("eager",), reps=2, warmup=1,
                   num_classes=2, width=0.25, log=lambda s: None)
    assert sorted((r.attention, r.batch) for r in rs) == [("eca", 1), ("eca", 2), ("none", 1), ("none", 2)]
    assert all(r.reps == 2 and 0 < r.min_ms <= r.median_ms for r in rs)


def test_bench_rejects_unknown_backends_and_attentions():
    with pytest.raises(ValueError, match="tensorrt"):
        bench_may(["none"], backends=("tensorrt",), log=lambda s: None)
    with pytest.raises(KeyError, match="known"):
        bench_may(["no-such-attention"], backends=("eager",), sizes=(64,), batches=(1,), log=lambda s: None)


@pytest.mark.slow
def test_bench_onnxruntime_exports_each_shape_statically():
    pytest.importorskip("onnxruntime")
    logs: list[str] = []
    rs = bench_may(["mlca"], batches=(1, 2), sizes=(64,), backends=("onnxruntime",), reps=1, warmup=1,
                   num_classes=2, width=0.25, log=logs.append)
    assert sorted((r.backend, r.batch) for r in rs) == [("onnxruntime", 1), ("onnxruntime", 2)]
    prepared = [line for line in logs if "prepared" in line]
    assert len(prepared) == 2 and "for 1x3x64x64" in prepared[0] and "for 2x3x64x64" in prepared[1]
