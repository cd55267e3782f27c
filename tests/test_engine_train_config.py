"""The trainer's settings: the CLI built from TrainConfig, hyp files split into typed settings,
fitness and unwrap as single functions, the bias warmup per optimizer, loader workers and the
data-wait warning (device abstracted), scipy's kmeans seeding."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import numpy as np
import pytest
import torch
from torch import nn

import mlca.engine.train as T
from mlca.cli.train import add_parser, config_from_args
from mlca.data.transforms import AugmentSettings, resolve_hyp
from mlca.engine.dataload import DataWaitMonitor, default_workers
from mlca.engine.distributed import DistInfo
from mlca.engine.fitness import fitness
from mlca.engine.hyp import HypError, parse_hyp_items, read_hyp_file, split_hyp
from mlca.engine.loss import LossGains
from mlca.engine.schedule import warmup_bias_lr_for
from mlca.engine.unwrap import unwrap


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlca")
    add_parser(p.add_subparsers())
    return p


# --- the CLI is TrainConfig ------------------------------------------------------------------------

# a non-default value for every field, as the command line spells it, and the value it must give
NON_DEFAULT = {
    "data": (["--data", "my.yaml"], "my.yaml"),
    "attention": (["--attention", "eca"], "eca"),
    "attention_kwargs": (["--attention-kw", "local_size=3", "--attention-kw", "local_weight=0.25"],
                         {"local_size": 3, "local_weight": 0.25}),
    "width": (["--width", "0.5"], 0.5),
    "epochs": (["--epochs", "3"], 3),
    "img_size": (["--img-size", "64"], 64),
    "batch_size": (["--batch-size", "5"], 5),
    "max_train_images": (["--max-train-images", "7"], 7),
    "max_val_images": (["--max-val-images", "6"], 6),
    "optimizer": (["--optimizer", "sgd"], "sgd"),
    "lr0": (["--lr0", "0.02"], 0.02),
    "lrf": (["--lrf", "0.5"], 0.5),
    "momentum": (["--momentum", "0.9"], 0.9),
    "weight_decay": (["--weight-decay", "0.001"], 0.001),
    "warmup_epochs": (["--warmup-epochs", "1.5"], 1.5),
    "warmup_min_iters": (["--warmup-min-iters", "7"], 7),
    "warmup_momentum": (["--warmup-momentum", "0.5"], 0.5),
    "warmup_bias_lr": (["--warmup-bias-lr", "0.03"], 0.03),
    "grad_clip": (["--grad-clip", "0"], 0.0),
    "ema_decay": (["--ema-decay", "0.99"], 0.99),
    "ema_tau": (["--ema-tau", "100"], 100.0),
    "amp": (["--amp", "bf16"], "bf16"),
    "sync_bn": (["--sync-bn"], True),
    "channels_last": (["--channels-last", "off"], "off"),
    "cache_images": (["--cache-images", "ram"], "ram"),
    "head": (["--head", "yolov8"], "yolov8"),
    "hyp": (["--hyp", "obj=0.7", "--hyp", "mosaic=0"], {"obj": 0.7, "mosaic": 0}),
    "close_mosaic": (["--close-mosaic", "0"], 0),
    "autoanchor": (["--no-autoanchor"], False),
    "val_interval": (["--val-interval", "2"], 2),
    "conf_thres": (["--conf-thres", "0.01"], 0.01),
    "iou_thres": (["--iou-thres", "0.5"], 0.5),
    "seed": (["--seed", "3"], 3),
    "out": (["--out", "runs/x"], "runs/x"),
    "exist_ok": (["--exist-ok"], True),
    "resume": (["--resume", "a/weights/last.pt"], "a/weights/last.pt"),
    "device": (["--device", "cpu"], "cpu"),
    "workers": (["--workers", "2"], 2),
    "skip_bad": (["--skip-bad"], True),
    "verbose": (["--quiet"], False),
}


def test_every_trainconfig_field_is_an_option_that_reaches_the_config():
    fields = {f.name for f in dataclasses.fields(T.TrainConfig)}
    assert set(NON_DEFAULT) == fields  # a new field needs an entry here (and gets its option for free)
    defaults = T.TrainConfig()
    for name, (argv, want) in NON_DEFAULT.items():
        assert getattr(defaults, name) != want, name  # the value really is not the default
        cfg = config_from_args(_parser().parse_args(["train", *argv]))
        assert getattr(cfg, name) == want, name
        others = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(defaults, f.name)}
        assert others == {name}, (name, others)
    assert config_from_args(_parser().parse_args(["train"])) == defaults
    assert config_from_args(_parser().parse_args(["train", "--resume"])).resume is True


def test_help_shows_every_field_and_the_hyp_forms(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(T.TrainConfig):
        assert T.flag_name(f) in text, f.name
        assert f.metadata["help"].split()[0] in text, f.name
    assert "--hyp FILE.yaml|KEY=VALUE" in text and "--hyp hyp.yaml --hyp obj=0.7" in text
    assert "{adamw,sgd}" in text


# --- hyp: one flat mapping split into LossGains and AugmentSettings -------------------------------

def test_settings_defaults_are_the_previous_values():
    # the values the two DEFAULT_HYP dicts held, written out by hand
    assert LossGains().to_dict() == {"box": 0.05, "obj": 1.0, "cls": 0.5, "anchor_t": 4.0, "label_smoothing": 0.0,
                                     "cls_pw": 1.0, "obj_pw": 1.0,
                                     # the anchor-free head's loss and assignment
                                     "box_af": 7.5, "cls_af": 0.5, "dfl": 1.5, "tal_topk": 10.0,
                                     "tal_alpha": 0.5, "tal_beta": 6.0,
                                     # the anchor-based head's assignment: YOLOv5's
                                     "assign_tal": 0.0}
    assert AugmentSettings().to_dict() == {"hsv_h": 0.0, "hsv_s": 0.5, "hsv_v": 0.3, "degrees": 0.0, "translate": 0.1,
                                           "scale": 0.5, "shear": 0.0, "fliplr": 0.5, "flipud": 0.0, "mosaic": 0.5,
                                           "min_size": 2.0, "min_visible": 0.2}
    assert not set(LossGains.keys()) & set(AugmentSettings.keys())  # every key belongs to one side
    assert resolve_hyp(AugmentSettings(mosaic=0.25)) == {**AugmentSettings().to_dict(), "mosaic": 0.25}


def test_hyp_file_with_both_kinds_is_split(tmp_path):
    f = tmp_path / "hyp.yaml"
    f.write_text("# loss\nobj: 0.7\nlabel_smoothing: 0.1\n# augmentation\nmosaic: 0.0\nfliplr: 0.25\n")
    hyp = read_hyp_file(f)
    gains, aug = split_hyp(hyp)
    assert gains == LossGains(obj=0.7, label_smoothing=0.1)
    assert aug == AugmentSettings(mosaic=0.0, fliplr=0.25)
    # later arguments win, in the order given
    assert parse_hyp_items([str(f), "obj=0.9"]) == {**hyp, "obj": 0.9}
    assert parse_hyp_items(["obj=0.9", str(f)])["obj"] == 0.7
    # the CLI and TrainConfig take it, and the trainer gets the same split
    cfg = config_from_args(_parser().parse_args(["train", "--hyp", str(f), "--hyp", "box=0.1"]))
    assert cfg.hyp == {**hyp, "box": 0.1}
    trainer = T.Trainer(cfg, DistInfo(), torch.device("cpu"))
    assert trainer.gains == LossGains(obj=0.7, label_smoothing=0.1, box=0.1) and trainer.augment == aug


def test_bad_hyp_names_the_key_and_the_file(tmp_path):
    f = tmp_path / "my_hyp.yaml"
    f.write_text("obj: 0.7\nmosiac: 0.5\n")
    with pytest.raises(HypError, match=r"my_hyp\.yaml.*unknown hyp keys \['mosiac'\]"):
        read_hyp_file(f)
    f.write_text("lr0: 0.01\n")
    with pytest.raises(HypError, match=r"my_hyp\.yaml.*'lr0' is a training option: use --lr0"):
        read_hyp_file(f)
    f.write_text("mosaic: 1.5\n")
    with pytest.raises(HypError, match=r"my_hyp\.yaml.*hyp\['mosaic'\] must be .* \[0, 1\]"):
        read_hyp_file(f)
    f.write_text("- obj\n")
    with pytest.raises(HypError, match="my_hyp.yaml.*mapping"):
        read_hyp_file(f)
    with pytest.raises(HypError, match="no such file"):
        parse_hyp_items([str(tmp_path / "missing.yaml")])
    with pytest.raises(HypError, match=r"--hyp oj=1.*\['oj'\]"):
        parse_hyp_items(["oj=1"])
    with pytest.raises(ValueError, match=r"TrainConfig.hyp.*\['mosiac'\]"):
        T.TrainConfig(hyp={"mosiac": 0.5})
    with pytest.raises(ValueError, match="'obj' must be a number"):
        T.TrainConfig(hyp={"obj": "high"})
    assert "error" in _cli_error(["train", "--hyp", "oj=1"], tmp_path)


def _cli_error(argv, tmp_path) -> str:
    import contextlib
    import io

    from mlca.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main([*argv, "--out", str(tmp_path / "never")]) == 1
    assert not (tmp_path / "never").exists()
    return err.getvalue()


# --- one fitness, one unwrap ------------------------------------------------------------------------

def test_one_fitness():
    from mlca.engine.evaluate import EvalResult

    assert fitness(0.5, 0.25) == pytest.approx(0.1 * 0.5 + 0.9 * 0.25)
    assert T.fitness is fitness
    r = EvalResult(map50=0.6, map=0.3, per_class={})
    assert r.fitness == pytest.approx(0.06 + 0.27)


def test_unwrap_peels_every_wrapper():
    from mlca.engine.ema import ModelEMA

    net = nn.Sequential(nn.Linear(3, 2))
    compiled = torch.compile(net)  # wrapping compiles nothing until the first call
    assert compiled is not net
    for wrapped in (net, nn.DataParallel(net), compiled, nn.DataParallel(compiled)):
        assert unwrap(wrapped) is net
    ema = ModelEMA(net, tau=10)
    assert unwrap(ema) is ema.ema
    fn = lambda x: x  # noqa: E731  an ONNX backend is a plain callable
    assert unwrap(fn) is fn


# --- bias warmup per optimizer ------------------------------------------------------------------

@pytest.mark.parametrize("optimizer, lr0, explicit, want", [
    ("adamw", 0.004, None, 0.0),  # with the weights, not at 25x lr0
    ("sgd", 0.01, None, 0.1),  # YOLOv5's
    ("adamw", 0.004, 0.1, 0.1),  # an explicit value is kept
])
def test_bias_warmup_start_per_optimizer(optimizer, lr0, explicit, want):
    cfg = T.TrainConfig(optimizer=optimizer, lr0=lr0, warmup_bias_lr=explicit, epochs=10)
    opt = T.Trainer(cfg, DistInfo(), torch.device("cpu")).build_optimisation(nn.Linear(4, 2), nb=20)
    assert opt.schedule.warmup_iters == 40
    w, _, b = opt.schedule.lrs(0)
    assert w == 0 and b == pytest.approx(want)
    # halfway through the warmup the bias lr is halfway between its start and the cosine value
    assert opt.schedule.lrs(20)[2] == pytest.approx((want + opt.schedule.cosine(20)) / 2)
    with pytest.raises(ValueError, match="optimizer"):
        warmup_bias_lr_for("lbfgs", 0.1)


# --- loader workers and the data-wait warning (no GPU needed) -------------------------------------

def test_default_workers_from_the_cpu_count():
    assert default_workers("cuda", 16, 1) == 8
    assert default_workers("cuda", 16, 4) == 4
    assert default_workers("cuda", 6, 4) == 1
    assert default_workers("cuda", 2, 4) == 0
    assert default_workers("cuda", None, 1) == 0
    assert default_workers("cpu", 64, 1) == 0
    assert default_workers("mps", 8, 1) == 0


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # sized for the mocked CPU count
def test_trainer_picks_workers_for_the_device(tmp_path, monkeypatch):
    from test_engine_train import write_tiny_yolo

    data = str(write_tiny_yolo(tmp_path, n_train=2, n_val=1))
    monkeypatch.setattr(T.os, "cpu_count", lambda: 12)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    cfg = T.TrainConfig(data=data, img_size=64, out=str(tmp_path / "run"))
    # the loaders are only built here, not iterated: a "cuda" device needs no GPU for that
    built = T.Trainer(cfg, DistInfo(), torch.device("cuda")).build_data()
    assert built.workers == built.train_loader.num_workers == built.val_loader.num_workers == 6
    assert built.train_loader.pin_memory
    assert T.Trainer(cfg, DistInfo(), torch.device("cpu")).build_data().workers == 0
    explicit = T.Trainer(dataclasses.replace(cfg, workers=3), DistInfo(), torch.device("cuda")).build_data()
    assert explicit.workers == 3


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_image_cache_where_the_main_process_loads_and_the_images_fit(tmp_path, monkeypatch):
    from test_engine_train import write_tiny_yolo

    data = str(write_tiny_yolo(tmp_path, n_train=3, n_val=2))
    cfg = T.TrainConfig(data=data, img_size=64, out=str(tmp_path / "run"))

    def caches(device: str, **kw) -> tuple[bool, bool]:
        built = T.Trainer(dataclasses.replace(cfg, **kw), DistInfo(), torch.device(device)).build_data()
        return built.train_loader.dataset.cache, built.val_loader.dataset.cache

    assert caches("cpu") == (True, True)  # auto, workers 0
    assert caches("cuda") == (False, False)  # auto, worker processes
    assert caches("cuda", cache_images="ram") == (True, True)
    assert caches("cpu", cache_images="off") == (False, False)
    # the limit counts the images as cached: resized so the long side is img_size (64 here)
    from mlca.data import load_dataset_config, read_records

    records = [r for split in ("train", "val") for r in read_records(load_dataset_config(data), split)]
    fitted = sum(3 * round(r.width * 64 / max(r.width, r.height)) * round(r.height * 64 / max(r.width, r.height))
                 for r in records)  # fmt: skip
    assert fitted < sum(3 * r.width * r.height for r in records)
    monkeypatch.setattr(T, "IMAGE_CACHE_AUTO_BYTES", fitted)
    assert caches("cpu") == (True, True)
    monkeypatch.setattr(T, "IMAGE_CACHE_AUTO_BYTES", fitted - 1)
    assert caches("cpu") == (False, False)
    with pytest.raises(ValueError, match="cache_images"):
        T.TrainConfig(cache_images="disk")


def test_a_cached_dataset_gives_the_same_samples(tmp_path):
    from test_engine_train import write_tiny_yolo

    from mlca.data import DetectionDataset, load_dataset_config, read_records

    records = read_records(load_dataset_config(str(write_tiny_yolo(tmp_path, n_train=4, n_val=1))), "train")
    for hyp in ({"mosaic": 1.0}, {"mosaic": 0.0}):
        plain = DetectionDataset(records, 64, augment=True, hyp=hyp)
        cached = DetectionDataset(records, 64, augment=True, hyp=hyp, cache=True)
        for epoch in range(2):  # the second pass reads the cache
            for i in range(len(records)):
                torch.manual_seed(100 * epoch + i)
                a = plain[i]
                torch.manual_seed(100 * epoch + i)
                b = cached[i]
                assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert len(cached._cache) == len(records) and not plain._cache
        # what the cache holds: the image resized to the network size, not the stored one
        assert all(max(img.shape[-2:]) == 64 for img in cached._cache.values())


@pytest.mark.parametrize("size", [64, 160])  # down- and upscaled: the tiny images are 60-99 px
def test_samples_match_letterbox_and_mosaic_of_the_stored_image(tmp_path, size):
    """The dataset resizes each image once (then only pads / tiles it); its samples equal
    letterbox / mosaic4 / TrainAugment applied to the image as stored, under the same RNG."""
    from test_engine_train import write_tiny_yolo

    from mlca.data import DetectionDataset, load_dataset_config, read_records
    from mlca.data.dataset import boxes_to_targets
    from mlca.data.mosaic import mosaic4
    from mlca.data.transforms import letterbox

    records = read_records(load_dataset_config(str(write_tiny_yolo(tmp_path, n_train=5, n_val=1))), "train")
    for augment, mosaic in ((False, 0.0), (True, 0.0), (True, 1.0)):
        ds = DetectionDataset(records, size, augment=augment, hyp={"mosaic": mosaic}, cache=True)
        for i in range(len(records)):
            torch.manual_seed(i)
            img, targets, _ = ds[i]
            torch.manual_seed(i)
            if mosaic:
                assert torch.rand(()).item() < mosaic
                others = torch.randint(0, len(ds), (3,)).tolist()
                ref, bb, lab = mosaic4([ds.load(j) for j in [i, *others]], size)
            else:
                image, boxes, lab = ds.load(i)
                ref, bb, _, _ = letterbox(image, boxes, size)
                lab = torch.as_tensor(lab)
            if augment:
                ref, bb, lab = ds._augment(ref, bb, lab, size)
            ref = ref.as_subclass(torch.Tensor).float().div_(255.0)
            assert torch.equal(img, ref)
            assert torch.equal(targets, boxes_to_targets(bb.as_subclass(torch.Tensor), torch.as_tensor(lab), size))


def test_channels_last_on_the_cpu_by_default(tmp_path):
    cfg = T.TrainConfig(out=str(tmp_path / "run"))
    fmt = {(d, cl): T.Trainer(dataclasses.replace(cfg, channels_last=cl), DistInfo(), torch.device(d)).memory_format
           for d in ("cpu", "cuda") for cl in ("auto", "on", "off")}  # fmt: skip
    assert fmt == {("cpu", "auto"): torch.channels_last, ("cpu", "on"): torch.channels_last,
                   ("cpu", "off"): torch.contiguous_format, ("cuda", "auto"): torch.contiguous_format,
                   ("cuda", "on"): torch.channels_last, ("cuda", "off"): torch.contiguous_format}  # fmt: skip
    with pytest.raises(ValueError, match="channels_last"):
        T.TrainConfig(channels_last="yes")


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _epoch(monitor: DataWaitMonitor, clock: FakeClock, waits: list[float], compute: float) -> None:
    monitor.start_epoch()
    for w in waits:
        clock.t += w
        monitor.batch_ready()
        clock.t += compute
        monitor.step_done()


def test_data_wait_monitor_measures_and_warns_once():
    clock = FakeClock()
    m = DataWaitMonitor(enabled=True, threshold=0.2, skip=2, clock=clock)
    # the two skipped steps wait long (workers starting); the rest wait 0.1 s of 0.5 s steps
    _epoch(m, clock, [5.0, 5.0] + [0.1] * 8, compute=0.4)
    assert m.fraction == pytest.approx(0.1 / 0.5)
    assert m.end_epoch(0, workers=4) is None  # 20 % is not above 20 %
    _epoch(m, clock, [1.0] * 2 + [0.3] * 8, compute=0.2)
    assert m.fraction == pytest.approx(0.6)
    msg = m.end_epoch(1, workers=4)
    assert msg and "60%" in msg and "epoch 2" in msg and "workers: 4" in msg and "--workers" in msg
    _epoch(m, clock, [0.9] * 10, compute=0.1)
    assert m.end_epoch(2, workers=4) is None  # once per run
    off = DataWaitMonitor(enabled=False, clock=clock)
    _epoch(off, clock, [1.0] * 10, compute=0.1)
    assert off.fraction is None and off.end_epoch(0, 0) is None


# --- scipy's kmeans: rng= from 1.15, seed= before -------------------------------------------------

def test_kmeans_seeding_works_with_scipy_before_and_after_1_15(monkeypatch):
    import scipy.cluster.vq as vq

    from mlca.engine.autoanchor import kmean_anchors

    real = vq.kmeans
    assert "rng" in inspect.signature(real).parameters  # this environment's scipy

    def old_kmeans(obs, k_or_guess, iter=20, thresh=1e-05, check_finite=True, *, seed=None):
        """scipy < 1.15's signature: the generator is called ``seed``."""
        return real(obs, k_or_guess, iter=iter, thresh=thresh, check_finite=check_finite, rng=seed)

    wh = np.random.default_rng(1).uniform(4, 60, size=(200, 2))
    new_anchors = kmean_anchors(wh, n=6, img_size=128, gen=20, seed=3)
    monkeypatch.setattr(vq, "kmeans", old_kmeans)
    np.testing.assert_array_equal(kmean_anchors(wh, n=6, img_size=128, gen=20, seed=3), new_anchors)


# hyp.scratch-low of YOLOv5 6.1 and its train.py, as the MLCA paper's official code trains
PAPER = {"optimizer": "sgd", "lr0": 0.01, "lrf": 0.01, "momentum": 0.937, "weight_decay": 5e-4,
         "warmup_epochs": 3.0, "warmup_bias_lr": 0.1, "warmup_momentum": 0.8, "warmup_min_iters": 100,
         "ema_tau": 2000.0, "close_mosaic": 0, "epochs": 300, "img_size": 640, "batch_size": 40,
         "head": "yolov5", "hyp": {"mosaic": 1.0, "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4}}


def test_paper_recipe_sets_exactly_its_values():
    cfg = config_from_args(_parser().parse_args(["train", "--recipe", "paper"]))
    defaults = T.TrainConfig()
    changed = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(defaults, f.name)}
    # the recipe's values that equal mlca's defaults do not show as changes
    assert changed == {k for k, v in PAPER.items() if getattr(defaults, k) != v}
    for k, v in PAPER.items():
        assert getattr(cfg, k) == v, k


def test_explicit_options_win_over_the_recipe_even_when_they_equal_the_default():
    cfg = config_from_args(_parser().parse_args(
        ["train", "--recipe", "paper", "--lr0", "0.02", "--optimizer", "adamw", "--hyp", "mosaic=0.5"]))
    assert cfg.lr0 == 0.02 and cfg.optimizer == "adamw"  # adamw is mlca's default, given explicitly
    assert cfg.hyp == {**PAPER["hyp"], "mosaic": 0.5} and cfg.epochs == 300 and cfg.batch_size == 40
    # order on the command line does not matter
    cfg2 = config_from_args(_parser().parse_args(["train", "--epochs", "5", "--recipe", "paper"]))
    assert cfg2.epochs == 5 and cfg2.img_size == 640
    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "--recipe", "nope"])
