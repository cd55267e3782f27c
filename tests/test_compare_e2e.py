"""`mlca compare` end to end with the real trainer on a tiny slice of the embedded data."""

from __future__ import annotations

import csv

import pytest

from mlca.cli import main
from mlca.compare.report import RESULT_COLUMNS, RUN_COLUMNS

TINY = [
    "compare", "--data", "embedded", "--attentions", "none,mlca", "--seeds", "1", "--epochs", "1",
    "--img-size", "64", "--batch-size", "4", "--max-train-images", "8", "--max-val-images", "4",
    "--latency-rounds", "2",
]


@pytest.mark.slow  # two real (tiny) trainings, evaluation, latency, plots and EigenCAM: ~1 min
def test_tiny_compare_writes_everything_then_reuses_runs(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cmp"
    assert main(TINY + ["--out", str(out), "--cam", "--cam-images", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| **none** |" in printed and "| mlca |" in printed and "Welch" in printed

    for name in ("results.csv", "runs.csv", "results.md", "mAP-vs-latency.png", "mAP-vs-params.png",
                 "curves.png", "cam.png", "mlca-attention.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == RESULT_COLUMNS
    assert [r["attention"] for r in rows] == ["none", "mlca"]
    for r in rows:
        assert int(r["params"]) > 1_000_000 and float(r["gflops"]) > 0 and float(r["latency_cpu_ms"]) > 0
        assert 0.0 <= float(r["map50_mean"]) <= 1.0 and 0.0 <= float(r["map_mean"]) <= float(r["map50_mean"])
        assert r["seeds"] == "1" and r["map50_std"] == ""  # one seed: no spread
    assert rows[1]["sig_map50"] == "n/a" and rows[1]["p_map50"] == ""  # one seed: no test
    assert int(rows[1]["params"]) > int(rows[0]["params"])  # MLCA's two 1-D convs
    with open(out / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert list(runs[0]) == RUN_COLUMNS and len(runs) == 2
    for r in runs:
        assert (out / "runs" / f"{r['attention']}-seed0" / "weights" / "last.pt").is_file()
    assert "Welch" in (out / "results.md").read_text()

    # a second call trains nothing: every run is read back from its marker
    def no_training(cfg):
        raise AssertionError(f"retrained {cfg.attention} seed {cfg.seed}")

    monkeypatch.setattr("mlca.engine.train.train", no_training)
    assert main(TINY + ["--out", str(out)]) == 0
    assert "2 finished run(s) reused" in capsys.readouterr().out
    with open(out / "runs.csv") as f:
        assert [r["reused"] for r in csv.DictReader(f)] == ["True", "True"]
