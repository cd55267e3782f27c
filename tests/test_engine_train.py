"""The training loop end to end: run folder, resume equivalence, seeding, NaN stop, CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import mlca.attention  # noqa: F401  (registers the attention zoo)
import mlca.engine.train as T
from mlca.engine.checkpoint import load_checkpoint, load_model

COLOURS = [(220, 40, 40), (40, 220, 40), (40, 40, 220)]


def write_tiny_yolo(root: Path, n_train: int = 8, n_val: int = 4, seed: int = 0) -> Path:
    """A tiny YOLO-format dataset (coloured boxes on noise); returns its data YAML.

    Independent of the embedded set, so the loop's own properties are tested in isolation
    and each epoch takes about a second.
    """
    g = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = int(g.integers(60, 100)), int(g.integers(60, 100))
            img = (g.random((h, w, 3)) * 60 + 40).astype(np.uint8)
            lines = []
            for _ in range(int(g.integers(1, 4))):
                c = int(g.integers(0, 3))
                bw, bh = g.uniform(12, 40), g.uniform(12, 40)
                x0, y0 = g.uniform(0, w - bw), g.uniform(0, h - bh)
                img[int(y0): int(y0 + bh), int(x0): int(x0 + bw)] = COLOURS[c]
                lines.append(f"{c} {(x0 + bw / 2) / w:.6f} {(y0 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
            Image.fromarray(img).save(root / "images" / split / f"{i:03d}.png")
            (root / "labels" / split / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    yaml_path = root / "data.yaml"
    yaml_path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [red, green, blue]\n")
    return yaml_path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    return str(write_tiny_yolo(tmp_path_factory.mktemp("tiny")))


def _cfg(data: str, out: Path, **kw) -> T.TrainConfig:
    base = dict(data=data, attention="eca", width=0.25, epochs=2, img_size=64, batch_size=4, out=str(out),
                workers=0, verbose=False, seed=0, close_mosaic=1)  # epoch 1 with mosaic, epoch 2 without
    return T.TrainConfig(**{**base, **kw})


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for k, v in a["state"][i].items():
            assert torch.equal(v, b["state"][i][k]) if torch.is_tensor(v) else v == b["state"][i][k]


@pytest.mark.slow
def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    straight = T.train(_cfg(tiny_data, tmp_path / "straight"))

    # kill the second run at the start of its second epoch (after epoch 1's checkpoint is written)
    real_seed = T._epoch_seed

    def killed(seed, epoch, rank):
        if epoch == 1:
            raise KeyboardInterrupt("killed")
        return real_seed(seed, epoch, rank)

    monkeypatch.setattr(T, "_epoch_seed", killed)
    with pytest.raises(KeyboardInterrupt):
        T.train(_cfg(tiny_data, tmp_path / "killed"))
    assert load_checkpoint(tmp_path / "killed" / "weights" / "last.pt")["epoch"] == 0
    monkeypatch.setattr(T, "_epoch_seed", real_seed)
    # the resumed run takes its settings from the checkpoint, not from these (different) arguments
    with pytest.warns(T.TrainingWarning, match=r"ignored: --epochs 7 \(the run has 2\), --lr0 1.0 \(the run has 0.004\)"):
        resumed = T.train(_cfg(tiny_data, tmp_path / "killed", resume=True, epochs=7, lr0=1.0))

    a, b = load_checkpoint(straight.last), load_checkpoint(resumed.last)
    assert a["epoch"] == b["epoch"] == 1
    _assert_same_state(a["model"], b["model"])
    _assert_same_state(a["ema"], b["ema"])
    assert a["ema_updates"] == b["ema_updates"]
    _assert_same_optimizer(a["optimizer"], b["optimizer"])
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in a["results"]]
    assert strip == [{k: v for k, v in r.items() if k != "time_s"} for r in b["results"]]


@pytest.mark.slow
def test_same_seed_same_weights_other_seed_differs(tiny_data, tmp_path):
    a = T.train(_cfg(tiny_data, tmp_path / "a", epochs=1, autoanchor=False))
    b = T.train(_cfg(tiny_data, tmp_path / "b", epochs=1, autoanchor=False))
    c = T.train(_cfg(tiny_data, tmp_path / "c", epochs=1, autoanchor=False, seed=1))
    sa, sb, sc = (load_checkpoint(r.last)["model"] for r in (a, b, c))
    _assert_same_state(sa, sb)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].dtype.is_floating_point)


@pytest.mark.parametrize("head", ["yolov5", "yolov8"])
def test_channels_last_gives_the_same_loss_and_gradients_as_nchw(head):
    """The memory format changes the kernels' summation order, nothing else: MAY's loss and every
    gradient of one training step agree in float64 (to rounding) in either format."""
    import copy

    from mlca.engine.criterion import build_loss
    from mlca.models import build_may

    torch.manual_seed(0)
    nchw = build_may("mlca", num_classes=3, width=0.25, head=head).double().train()
    cl = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    imgs = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 2, 0.3, 0.6, 0.2, 0.2]], dtype=torch.float64)
    losses = []
    for model, x in ((nchw, imgs), (cl, imgs.contiguous(memory_format=torch.channels_last))):
        loss, _ = build_loss(model, img_size=64)(model(x), targets)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-10, atol=1e-12)
    for (name, a), b in zip(nchw.named_parameters(), cl.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-10, msg=name)


def test_a_channels_last_run_saves_a_checkpoint_that_loads_as_usual(tiny_data, tmp_path):
    r = T.train(_cfg(tiny_data, tmp_path / "on", epochs=1, autoanchor=False, channels_last="on"))
    state = load_checkpoint(r.last)["model"]
    convs = [k for k, v in state.items() if v.dim() == 4 and v.shape[2] * v.shape[3] > 1]
    assert convs and all(state[k].is_contiguous(memory_format=torch.channels_last) for k in convs)
    model = load_model(r.last, ema=False)  # a fresh NCHW model: load_state_dict copies the values
    fresh = {k: v for k, v in model.state_dict().items()}
    for k, v in state.items():
        assert torch.equal(fresh[k], v), k


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tiny_data, tmp_path, monkeypatch):
    import mlca.engine.loss as L

    calls = {"n": 0}
    real_call = L.YoloLoss.__call__

    def nan_on_fourth(self, raw, targets):
        calls["n"] += 1
        loss, items = real_call(self, raw, targets)
        if calls["n"] == 4:  # 2 iterations per epoch: epoch 2, iteration 2
            loss = loss * float("nan")
        return loss, items

    monkeypatch.setattr(L.YoloLoss, "__call__", nan_on_fourth)
    out = tmp_path / "nan"
    with pytest.raises(T.TrainingDivergedError) as e:
        T.train(_cfg(tiny_data, out, autoanchor=False))
    msg = str(e.value)
    assert "epoch 2/2" in msg and "iteration 2/2" in msg and "--lr0" in msg and "--resume" in msg
    assert str(out / "weights" / "last.pt") in msg
    ckpt = load_checkpoint(out / "weights" / "last.pt")  # still the good epoch-1 checkpoint
    assert ckpt["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.dtype.is_floating_point)


@pytest.mark.slow
def test_run_folder_contents_and_load_model(tiny_data, tmp_path):
    r = T.train(_cfg(tiny_data, tmp_path / "exp", epochs=2))
    assert r.run_dir == tmp_path / "exp"
    for name in ("weights/last.pt", "weights/best.pt", "results.csv", "loss.png", "map.png", "args.yaml"):
        assert (r.run_dir / name).is_file(), name
    with open(r.run_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(x["epoch"]) for x in rows] == [1, 2]
    assert set(T.RESULT_COLUMNS) <= set(rows[0])
    for row in rows:
        m50, m = float(row["map50"]), float(row["map"])
        assert 0 <= m <= m50 <= 1
        assert float(row["fitness"]) == pytest.approx(0.1 * m50 + 0.9 * m, abs=1e-5)
        assert all(math.isfinite(float(row[k])) for k in ("box_loss", "obj_loss", "cls_loss", "lr"))
    best = load_checkpoint(r.best)
    assert best["best_fitness"] == pytest.approx(max(float(x["fitness"]) for x in rows), abs=1e-5)
    args = yaml.safe_load((r.run_dir / "args.yaml").read_text())
    assert args["epochs"] == 2 and args["img_size"] == 64 and args["names"] == ["red", "green", "blue"]

    model = load_model(r.best)
    ckpt = load_checkpoint(r.best)
    assert model.names == ["red", "green", "blue"] and not model.training
    assert torch.equal(model.detect.anchors, ckpt["ema"]["detect.anchors"])  # fitted anchors come back
    _assert_same_state(model.state_dict(), ckpt["ema"])
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.shape[0] == 1 and out.shape[-1] == 5 + 3

    # a second run into the same folder does not overwrite it
    r2 = T.train(_cfg(tiny_data, tmp_path / "exp", epochs=1, autoanchor=False))
    assert r2.run_dir == tmp_path / "exp2"
    # resuming a finished run trains nothing and reports the final metrics
    before = (r.run_dir / "weights" / "last.pt").read_bytes()
    again = T.train(_cfg(tiny_data, r.run_dir, resume=True))
    assert (r.run_dir / "weights" / "last.pt").read_bytes() == before
    assert again.metrics["map50"] == pytest.approx(float(rows[-1]["map50"]), abs=1e-5)


def test_bad_config_and_hyp_errors(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        T.TrainConfig(img_size=100)
    with pytest.raises(ValueError, match="amp"):
        T.TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="unknown hyp keys.*'mosiac'"):
        T.train(_cfg(tiny_data, tmp_path / "h", hyp={"mosiac": 0.5}))
    with pytest.raises(FileNotFoundError, match="--resume"):
        T.train(_cfg(tiny_data, tmp_path / "nothing", resume=True))
    with pytest.raises(ValueError, match="fp16.* needs CUDA"):
        T.train(_cfg(tiny_data, tmp_path / "amp", amp="fp16", device="cpu"))


@pytest.mark.slow
def test_bf16_autocast_on_cpu_trains(tiny_data, tmp_path):
    r = T.train(_cfg(tiny_data, tmp_path / "bf16", epochs=1, amp="bf16", autoanchor=False))
    ckpt = load_checkpoint(r.last)
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.dtype.is_floating_point)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.dtype.is_floating_point)


def test_cli_trains_on_a_slice_of_the_embedded_dataset(tmp_path, capsys):
    from mlca.cli import main

    out = tmp_path / "cli"
    rc = main(["train", "--data", "embedded", "--attention", "mlca", "--epochs", "1", "--img-size", "64",
               "--batch-size", "4", "--width", "0.25", "--max-train-images", "8", "--max-val-images", "4",
               "--seed", "0", "--out", str(out), "--workers", "0"])
    assert rc == 0
    assert (out / "weights" / "best.pt").is_file() and (out / "results.csv").is_file()
    assert "done:" in capsys.readouterr().out
    model = load_model(out / "weights" / "best.pt")
    assert model.config["attention"] == "mlca"
    # resuming (a finished run: nothing to train) with options it cannot honour names each of them
    rc = main(["train", "--resume", str(out / "weights" / "last.pt"), "--lr0", "0.5", "--epochs", "4",
               "--img-size", "64", "--workers", "0", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0 and "mlca train: warning:" in err
    assert "--lr0 0.5" in err and "--epochs 4" in err and "--workers" not in err and "--quiet" not in err
    assert "--img-size" not in err  # the run's own value: nothing lost


# --- resume: the checkpoint's run folder, and every ignored option named --------------------------

def test_resumed_config_keeps_the_run_and_names_what_it_ignores(tmp_path):
    saved = {**T.TrainConfig(epochs=2, lr0=0.004, out="a/exp").to_dict(), "gone_field": 1}
    del saved["ema_decay"]  # a field the checkpoint predates
    cfg = T.TrainConfig(resume=str(tmp_path / "exp" / "weights" / "last.pt"), epochs=2, lr0=1.0, attention="eca",
                        device="cpu", workers=2, verbose=False, ema_decay=0.99, out="somewhere/else")
    new, ignored = T.resumed_config(cfg, saved, tmp_path / "exp")
    assert (new.epochs, new.lr0, new.attention) == (2, 0.004, "mlca")  # the run's own settings
    assert (new.device, new.workers, new.verbose, new.out) == ("cpu", 2, False, str(tmp_path / "exp"))
    assert new.ema_decay == 0.99  # not in the checkpoint: the given value
    text = " ".join(ignored)
    assert "--lr0 1.0 (the run has 0.004)" in text and "--attention 'eca'" in text and "--out somewhere/else" in text
    assert not any(k in text for k in ("--epochs", "--device", "--workers", "--quiet", "--ema-decay"))
    # resume=True finds the run through --out, which is then not ignored
    _, ignored = T.resumed_config(T.TrainConfig(resume=True, out=str(tmp_path / "exp")), saved, tmp_path / "exp")
    assert ignored == []
    assert T.run_dir_of(tmp_path / "exp" / "weights" / "last.pt") == tmp_path / "exp"
    assert T.run_dir_of(tmp_path / "copy" / "last.pt") == tmp_path / "copy"


def test_resume_writes_into_the_checkpoints_run_folder_and_warns(tiny_data, tmp_path, monkeypatch):
    import warnings

    from mlca.engine.checkpoint import save_checkpoint
    from mlca.engine.dataload import DataWaitMonitor

    # the data-wait warning, with the device abstracted: a monitor that measures on the CPU and
    # warns above 0 % must warn once in a two-epoch run, not once per epoch
    monkeypatch.setattr(T, "DataWaitMonitor", lambda enabled: DataWaitMonitor(True, threshold=0.0, skip=0))
    with pytest.warns(T.TrainingWarning, match="waited for data") as record:
        r = T.train(_cfg(tiny_data, tmp_path / "runs" / "exp", epochs=2, autoanchor=False))
    assert sum("waited for data" in str(w.message) for w in record) == 1
    monkeypatch.undo()

    # resuming by the path of weights/last.pt stays in that run (a finished one: nothing to train)
    with warnings.catch_warnings():
        warnings.simplefilter("error", T.TrainingWarning)  # only where-it-runs options: no warning
        again = T.train(T.TrainConfig(data=tiny_data, resume=str(r.last), device="cpu", workers=0, verbose=False))
    assert again.run_dir == r.run_dir and sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["exp"]

    # a last.pt outside a weights/ folder, in the checkpoint format of the trainer before the bias
    # warmup and the workers could be left to the defaults (explicit 0.1 and 0 saved)
    ckpt = load_checkpoint(r.last)
    ckpt["train_config"] = {**ckpt["train_config"], "warmup_bias_lr": 0.1, "workers": 0, "epochs": 3}
    moved = tmp_path / "moved" / "copy"
    save_checkpoint(moved / "last.pt", ckpt)
    with pytest.warns(T.TrainingWarning) as record:
        res = T.train(T.TrainConfig(data=tiny_data, resume=str(moved / "last.pt"), lr0=1.0, epochs=9,
                                    out=str(tmp_path / "elsewhere"), verbose=False))
    text = " ".join(str(w.message) for w in record)
    assert "--lr0 1.0" in text and "--epochs 9" in text and "--out" in text and "elsewhere" in text
    assert res.run_dir == moved and res.last == moved / "weights" / "last.pt"
    assert sorted(p.name for p in (tmp_path / "moved").iterdir()) == ["copy"]  # never the parent
    assert not (tmp_path / "elsewhere").exists()
    out = load_checkpoint(res.last)
    assert out["epoch"] == 2 and len(out["results"]) == 3
    assert out["train_config"]["warmup_bias_lr"] == 0.1 and out["train_config"]["lr0"] == 0.004
    assert out["train_config"]["out"] == str(moved)
