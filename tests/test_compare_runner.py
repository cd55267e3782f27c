"""Orchestration of compare: resumability, the table and the plots.

Training is replaced here by a recording function that writes what the real trainer
writes (results.csv, weights/last.pt), so these tests check only the bookkeeping; the
end-to-end test in test_compare_e2e.py uses the real training.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from mlca.compare.config import CompareConfig
from mlca.compare.plots import plot_curves, plot_map_vs
from mlca.compare.report import RESULT_COLUMNS, RUN_COLUMNS, build_rows, markdown_table, write_results_csv, write_runs_csv
from mlca.compare.runner import DONE_FILE, RunSpec, run_all, run_dir
from mlca.compare.stats import welch
from mlca.engine.train import TrainResult

# per (attention, seed): mAP@0.5 of each of 2 epochs (the last is what the table uses)
FAKE_MAP50 = {
    ("none", 0): [0.10, 0.30], ("none", 1): [0.12, 0.34], ("none", 2): [0.11, 0.32],
    ("mlca", 0): [0.15, 0.40], ("mlca", 1): [0.20, 0.44], ("mlca", 2): [0.18, 0.41],
}


class RecordingTrain:
    """Stands in for mlca.engine.train.train: records each config, writes a run folder."""

    def __init__(self, fail_on: tuple[str, int] | None = None):
        self.calls = []
        self.fail_on = fail_on

    def __call__(self, cfg):
        self.calls.append(cfg)
        out = Path(cfg.out)
        (out / "weights").mkdir(parents=True, exist_ok=True)
        (out / "weights" / "last.pt").write_bytes(b"checkpoint")
        if self.fail_on == (cfg.attention, cfg.seed):
            raise KeyboardInterrupt  # killed mid-run: last.pt exists, no marker
        maps = FAKE_MAP50[(cfg.attention, cfg.seed)]
        with open(out / "results.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "box_loss", "obj_loss", "cls_loss", "lr", "map50", "map", "fitness", "time_s"])
            for e, m in enumerate(maps):
                w.writerow([e + 1, 0.1 / (e + 1), 0.2 / (e + 1), 0.05, 0.01, m, m / 2, 0.1 * m + 0.45 * m, 1.0])
        return TrainResult(run_dir=out, best=out / "weights" / "best.pt", last=out / "weights" / "last.pt", metrics={})


def _cfg(tmp_path: Path, **kw) -> CompareConfig:
    base = dict(attentions=["none", "mlca"], seeds=3, epochs=2, img_size=64, out=tmp_path / "cmp")
    base.update(kw)
    return CompareConfig(**base)


def test_each_run_trained_once_then_reused(tmp_path):
    cfg = _cfg(tmp_path)
    train = RecordingTrain()
    outs = run_all(cfg, train_fn=train, log=lambda s: None)
    assert len(train.calls) == 6
    assert {(c.attention, c.seed) for c in train.calls} == set(FAKE_MAP50)
    assert all(c.resume is False and c.epochs == 2 and c.img_size == 64 for c in train.calls)
    assert all(Path(c.out) == run_dir(cfg, RunSpec(c.attention, c.seed)) for c in train.calls)
    assert not any(o.reused for o in outs)
    o = next(o for o in outs if (o.attention, o.seed) == ("mlca", 1))
    assert o.map50 == pytest.approx(0.44) and o.map == pytest.approx(0.22)  # last epoch
    assert o.best_map50 == pytest.approx(0.44) and o.epochs == 2

    again = RecordingTrain()
    outs2 = run_all(cfg, train_fn=again, log=lambda s: None)
    assert again.calls == []
    assert all(o.reused for o in outs2)
    assert [(o.attention, o.seed, o.map50) for o in outs2] == [(o.attention, o.seed, o.map50) for o in outs]


def test_interrupted_run_resumes_and_finished_ones_are_skipped(tmp_path):
    cfg = _cfg(tmp_path)
    first = RecordingTrain(fail_on=("mlca", 1))
    with pytest.raises(KeyboardInterrupt):
        run_all(cfg, train_fn=first, log=lambda s: None)
    # seed-major order: none-0, mlca-0, none-1 finished, mlca-1 interrupted
    assert [(c.attention, c.seed) for c in first.calls] == [("none", 0), ("mlca", 0), ("none", 1), ("mlca", 1)]
    interrupted = run_dir(cfg, RunSpec("mlca", 1))
    assert (interrupted / "weights" / "last.pt").is_file() and not (interrupted / DONE_FILE).exists()

    second = RecordingTrain()
    outs = run_all(cfg, train_fn=second, log=lambda s: None)
    assert [(c.attention, c.seed, c.resume) for c in second.calls] == [
        ("mlca", 1, True), ("none", 2, False), ("mlca", 2, False)
    ]
    assert len(outs) == 6
    assert {(o.attention, o.seed) for o in outs if o.reused} == {("none", 0), ("mlca", 0), ("none", 1)}


def test_other_settings_into_the_same_out_fail_clearly(tmp_path):
    run_all(_cfg(tmp_path, seeds=1), train_fn=RecordingTrain(), log=lambda s: None)
    train = RecordingTrain()
    with pytest.raises(RuntimeError, match="epochs.*use another --out"):
        run_all(_cfg(tmp_path, seeds=2, epochs=5), train_fn=train, log=lambda s: None)
    assert train.calls == []  # refused before training the new seed


def test_config_errors():
    with pytest.raises(ValueError, match="baseline"):
        CompareConfig(attentions=["se", "mlca"], baseline="none")
    with pytest.raises(ValueError, match="multiple of 32"):
        CompareConfig(img_size=100)
    with pytest.raises(ValueError, match="duplicates"):
        CompareConfig(attentions=["none", "none"])


def test_rows_csv_markdown_and_plots(tmp_path):
    cfg = _cfg(tmp_path)
    outs = run_all(cfg, train_fn=RecordingTrain(), log=lambda s: None)
    params, flops = {"none": 1_000_000, "mlca": 1_000_100}, {"none": 1.5, "mlca": 1.6}
    lat = {"none": 10.0, "mlca": 11.0}
    rows = build_rows(outs, cfg.attentions, "none", params, flops, lat)
    none, mlca = rows
    m_none = [FAKE_MAP50[("none", s)][-1] for s in range(3)]
    m_mlca = [FAKE_MAP50[("mlca", s)][-1] for s in range(3)]
    assert mlca.map50_mean == pytest.approx(sum(m_mlca) / 3)
    assert mlca.map50_std == pytest.approx(math.sqrt(sum((x - sum(m_mlca) / 3) ** 2 for x in m_mlca) / 2))
    assert mlca.d_map50 == pytest.approx(sum(m_mlca) / 3 - sum(m_none) / 3)
    assert mlca.p_map50 == pytest.approx(welch(m_mlca, m_none).p)
    # Holm over the table's 2 tests (mlca x 2 metrics): the larger p is kept, the smaller doubled
    p_both = sorted([welch(m_mlca, m_none).p, mlca.p_map])
    assert sorted([mlca.p_holm_map50, mlca.p_holm_map]) == pytest.approx([min(1, 2 * p_both[0]), min(1, max(2 * p_both[0], p_both[1]))])
    assert mlca.sig_map50 == ("yes" if mlca.p_holm_map50 < 0.05 else "no")
    lo, hi = mlca.ci_low_map50, mlca.ci_high_map50
    assert lo < mlca.d_map50 < hi and mlca.mde_map50 > 0
    assert none.d_map50 == 0.0 and math.isnan(none.p_map50) and none.sig_map50 == ""
    assert math.isnan(mlca.latency_cuda_ms)

    write_results_csv(rows, tmp_path / "results.csv")
    write_runs_csv(outs, tmp_path / "runs.csv")
    with open(tmp_path / "results.csv") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == RESULT_COLUMNS and [r["attention"] for r in got] == ["none", "mlca"]
    assert got[1]["latency_cuda_ms"] == "" and float(got[1]["p_map50"]) == pytest.approx(mlca.p_map50)
    with open(tmp_path / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert list(runs[0]) == RUN_COLUMNS and len(runs) == 6

    md = markdown_table(rows, 64, "none")
    assert "Welch" in md and "p < 0.05" in md and "| mlca |" in md and "**none**" in md
    assert "Holm-adjusted over all 2 tests" in md and "MDE" in md and "[95 % CI]" in md
    assert md.count("\n|") == 3  # header, rule, 2 rows -> 3 line starts after the first

    for path in (
        plot_map_vs(rows, "latency", tmp_path / "a.png"),
        plot_map_vs(rows, "params", tmp_path / "b.png"),
        plot_curves(outs, cfg.attentions, tmp_path / "c.png"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_seed_table_says_no_test(tmp_path):
    cfg = _cfg(tmp_path, seeds=1)
    outs = run_all(cfg, train_fn=RecordingTrain(), log=lambda s: None)
    rows = build_rows(outs, cfg.attentions, "none", {"none": 1, "mlca": 2}, {"none": 1.0, "mlca": 1.0}, {"none": 1.0, "mlca": 1.0})
    assert rows[1].sig_map50 == "n/a" and math.isnan(rows[1].p_map50) and math.isnan(rows[1].map50_std)
    assert "| n/a |" in markdown_table(rows, 64, "none")


def test_runs_spread_one_process_per_gpu(tmp_path, monkeypatch):
    """The GPU scheduler: each pending run gets one child process with one visible GPU,
    never more children than GPUs at once. The child is simulated in-process."""
    import mlca.compare.runner as runner

    cfg = _cfg(tmp_path, seeds=2, gpus=[3, 5])
    train = RecordingTrain()
    spawned, running, peak = [], set(), [0]

    class FakeChild:
        def __init__(self, cmd, env, stdout, stderr):
            cfg_json, att, seed = cmd[-3:]
            assert cmd[1:3] == ["-m", "mlca.compare.worker"] and Path(cfg_json).is_file()
            spawned.append((att, int(seed), env["CUDA_VISIBLE_DEVICES"]))
            running.add(env["CUDA_VISIBLE_DEVICES"])
            peak[0] = max(peak[0], len(running))
            self.gpu, self.spec, self.polls, self.returncode = env["CUDA_VISIBLE_DEVICES"], RunSpec(att, int(seed)), 0, None

        def poll(self):
            self.polls += 1
            if self.polls < 2:
                return None
            runner.run_one(cfg, self.spec, train_fn=train)  # what the child process does
            running.discard(self.gpu)
            self.returncode = 0
            return 0

    monkeypatch.setattr(runner.subprocess, "Popen", FakeChild)
    monkeypatch.setattr(runner.time, "sleep", lambda s: None)
    outs = run_all(cfg, log=lambda s: None)
    assert sorted((a, s) for a, s, _ in spawned) == sorted((o.attention, o.seed) for o in outs)
    assert len(spawned) == 4 and {g for _, _, g in spawned} == {"3", "5"} and peak[0] == 2
    assert len(train.calls) == 4 and not any(o.reused for o in outs)


def test_which_gpus_runs_spread_over(tmp_path):
    from mlca.compare.runner import _visible_gpus

    assert _visible_gpus(_cfg(tmp_path, device="cpu")) == []
    assert _visible_gpus(_cfg(tmp_path, device="cuda:1")) == []  # one named GPU: no spreading
    assert _visible_gpus(_cfg(tmp_path, gpus=[0, 2])) == [0, 2]


def test_module_settings_reach_the_trainer_and_name_the_run(tmp_path):
    train = RecordingTrain()
    cfg = _cfg(tmp_path, seeds=1, attention_kwargs={"mlca": {"local_size": 3}})
    run_all(cfg, train_fn=train, log=lambda s: None)
    got = {c.attention: c.attention_kwargs for c in train.calls}
    assert got == {"none": {}, "mlca": {"local_size": 3}}
    # the same experiment with the spelled-out default (local_size 5) is another model: refused
    with pytest.raises(RuntimeError, match="local_size"):
        run_all(_cfg(tmp_path, seeds=1, attention_kwargs={"mlca": {"local_size": 5}}), train_fn=train, log=lambda s: None)
    # while spelling out a default of an untouched module changes nothing: reused, not retrained
    other = _cfg(tmp_path / "b", seeds=1)
    run_all(other, train_fn=train, log=lambda s: None)
    n = len(train.calls)
    again = _cfg(tmp_path / "b", seeds=1, attention_kwargs={"mlca": {"local_size": 5, "local_weight": 0.5}})
    assert all(o.reused for o in run_all(again, train_fn=train, log=lambda s: None))
    assert len(train.calls) == n
