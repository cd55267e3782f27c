"""The MAY training loop: config, data, model, optimisation, validation, checkpoints.

``train(TrainConfig(...))`` runs on one CPU/GPU, or on N processes under
``torchrun --nproc_per_node N -m mlca train ...`` (DDP, DistributedSampler; rank 0 alone
evaluates, plots and writes files). A run folder holds::

    weights/last.pt  weights/best.pt  results.csv  loss.png  map.png  args.yaml

:class:`Trainer` does one step per method, in the order :meth:`Trainer.run` calls them: run
folder, data, model, optimisation, (resume), then per epoch the training pass, validation and
the checkpoint.

Reproducibility: data order is a pure function of ``(seed, epoch)`` (the sampler is re-seeded
every epoch) and python/numpy/torch RNGs are re-seeded from ``(seed, epoch, rank)`` at the
start of every epoch, so augmentation does not depend on what ran before (validation,
autoanchor, a resume). With the model, EMA, optimizer and scaler state in ``last.pt``, a run
killed after epoch k and resumed reaches the same weights as an uninterrupted one (on the CPU;
CUDA kernels are not all deterministic).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from mlca.engine import distributed as D
from mlca.engine.checkpoint import copy_checkpoint, load_checkpoint, save_checkpoint
from mlca.engine.dataload import DataWaitMonitor, default_workers, local_world_size
from mlca.engine.ema import ModelEMA
from mlca.engine.fitness import fitness
from mlca.engine.schedule import WarmupCosine, build_optimizer, warmup_bias_lr_for
from mlca.engine.unwrap import unwrap

__all__ = ["TrainConfig", "TrainResult", "TrainingDivergedError", "TrainingWarning", "Trainer", "train",
           "fitness", "flag_name"]

PLOT_EVERY = 10
RESULT_COLUMNS = ("epoch", "box_loss", "obj_loss", "cls_loss", "lr", "map50", "map", "fitness", "time_s")


def _opt(default: Any = dataclasses.MISSING, help: str = "", factory: Callable | None = None, **cli: Any):
    """A TrainConfig field with its command-line help (``mlca train`` builds its parser from these).

    ``cli`` keys: ``choices`` (allowed values), ``flag`` (the option's name when it is not
    ``--field-name``), ``metavar``.
    """
    meta = {"help": help, **cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a run depends on (written to ``args.yaml`` and into every checkpoint).

    The defaults are tuned for small datasets trained from scratch on a CPU; see
    docs/training.md for the measurements behind them. Every field is an ``mlca train`` option
    (``--field-name``, except where ``flag`` says otherwise); the help texts are the metadata.
    """

    # what to train
    data: str = _opt("embedded", 'dataset YAML, or "embedded" for the built-in dataset')
    attention: str = _opt("mlca", "attention module name (see mlca.list_attentions())")
    attention_kwargs: dict = _opt(factory=dict, flag="--attention-kw", metavar="KEY=VALUE",
                                  help="keyword argument for the attention module (repeatable), e.g. local_size=3")
    width: float = _opt(1.0, "channel width multiplier")
    head: str = _opt("yolov5", "detection head: yolov5 = the paper's anchor-based coupled head; yolov8 = "
                               "anchor-free decoupled head (DFL boxes, task-aligned assignment)",
                     choices=("yolov5", "yolov8"))
    # budget
    epochs: int = _opt(30, "training epochs")
    img_size: int = _opt(256, "square training/validation size (multiple of 32)")
    batch_size: int = _opt(16, "global batch size (split over DDP ranks)")
    max_train_images: int | None = _opt(None, "use only the first N training images (quick slices)")
    max_val_images: int | None = _opt(None, "use only the first N validation images")
    # optimisation
    # AdamW learns several times faster than SGD in short from-scratch runs (docs/training.md)
    optimizer: str = _opt("adamw", "AdamW, or SGD with Nesterov momentum (use --lr0 0.01)", choices=("adamw", "sgd"))
    lr0: float = _opt(0.004, "initial learning rate")
    lrf: float = _opt(0.01, "final learning rate as a fraction of lr0 (cosine)")
    momentum: float = _opt(0.937, "SGD momentum / AdamW beta1")
    weight_decay: float = _opt(5e-4, "weight decay (conv/linear weights only)")
    warmup_epochs: float = _opt(3.0, "linear warmup length in epochs (0: none)")
    warmup_min_iters: int = _opt(50, "warmup lasts at least this many iterations (at most a fifth of the run)")
    warmup_momentum: float = _opt(0.8, "momentum / beta1 at the start of the warmup")
    warmup_bias_lr: float | None = _opt(None, "bias learning rate at the start of the warmup "
                                              "(default: per optimizer, 0.1 for SGD, 0 for AdamW: with the weights)")
    grad_clip: float = _opt(10.0, "max gradient norm (0: off)")
    ema_decay: float = _opt(0.9999, "asymptotic decay of the weights' EMA")
    ema_tau: float | None = _opt(None, "EMA ramp length in updates (default: a fifth of the run, at most 2000)")
    amp: str = _opt("auto", "mixed precision: auto = fp16 on CUDA, off on the CPU",
                    choices=("auto", "fp16", "bf16", "off"))
    channels_last: str = _opt("auto", "memory format of the model and the batches: auto = channels-last on the "
                                      "CPU (MobileNet's depthwise convolutions: a training step a quarter faster), "
                                      "NCHW on CUDA", choices=("auto", "on", "off"))
    sync_bn: bool = _opt(False, "SyncBatchNorm under multi-GPU DDP (small per-GPU batches)")
    # loss gains and augmentation settings (split into LossGains and AugmentSettings)
    hyp: dict = _opt(factory=dict, metavar="FILE.yaml|KEY=VALUE",
                     help="loss gains and augmentation settings: a YAML file of key: value, or KEY=VALUE "
                          "(repeatable, later ones win), e.g. --hyp hyp.yaml --hyp obj=0.7 --hyp mosaic=0.5")
    close_mosaic: int = _opt(2, "no mosaic in the last N epochs (0: mosaic until the end)")
    autoanchor: bool = _opt(True, "refit the anchors to the training boxes when they fit badly")
    # validation
    val_interval: int = _opt(1, "validate every N epochs (and after the last)")
    conf_thres: float = _opt(0.001, "validation NMS confidence threshold")
    iou_thres: float = _opt(0.6, "validation NMS IoU threshold")
    # run
    seed: int = _opt(0, "seed of the model init, data order and augmentation")
    out: str = _opt("runs/train/exp", "run folder (exp -> exp2... if it already holds a run)")
    exist_ok: bool = _opt(False, "write into --out even if it holds a run")
    resume: bool | str = _opt(False, "continue the interrupted run in --out, or the run of the given "
                                     "last.pt (written into that run's folder), with its own settings; "
                                     "other options than --device, --workers, --cache-images, --quiet are ignored, "
                                     "each named in a warning", metavar="LAST_PT")
    device: str = _opt("", "cpu, cuda, cuda:1 or 1 (default: CUDA if available)")
    workers: int | None = _opt(None, "data-loading worker processes (default: on CUDA min(8, CPUs per "
                                     "local rank), on the CPU 0)")
    cache_images: str = _opt("auto", "keep images in memory after their first read, decoded and resized to "
                                     "--img-size: auto = when loading in this process (workers 0, the CPU "
                                     "default) and they take at most 1 GiB; ram = always (one copy per worker)",
                             choices=("auto", "ram", "off"))
    skip_bad: bool = _opt(False, "skip bad images/labels (reported) instead of failing")
    verbose: bool = _opt(True, "only errors and warnings", flag="--quiet")

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.img_size >= 32 and self.img_size % 32 == 0, f"img_size must be a positive multiple of 32, got {self.img_size}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr0 > 0, f"lr0 must be > 0, got {self.lr0}"),
            (0 < self.lrf <= 1, f"lrf must be in (0, 1], got {self.lrf}"),
            (self.workers is None or self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.amp in ("auto", "fp16", "bf16", "off"), f"amp must be auto|fp16|bf16|off, got {self.amp!r}"),
            (self.cache_images in ("auto", "ram", "off"),
             f"cache_images must be auto|ram|off, got {self.cache_images!r}"),
            (self.channels_last in ("auto", "on", "off"),
             f"channels_last must be auto|on|off, got {self.channels_last!r}"),
            (self.optimizer.lower() in ("sgd", "adamw"), f"optimizer must be sgd|adamw, got {self.optimizer!r}"),
            (self.close_mosaic >= 0, f"close_mosaic must be >= 0, got {self.close_mosaic}"),
            (self.val_interval >= 1, f"val_interval must be >= 1, got {self.val_interval}"),
            (self.head in ("yolov5", "yolov8"), f"head must be yolov5|yolov8, got {self.head!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")
        self.out = str(self.out)
        if not isinstance(self.resume, bool):
            self.resume = str(self.resume)
        from mlca.engine.hyp import split_hyp  # imported here: it pulls in torchvision, which --help does not need

        split_hyp(self.hyp, "TrainConfig.hyp")  # unknown keys and bad values fail here, before any work

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (YAML and ``weights_only`` checkpoints)."""
        return dataclasses.asdict(self)


def flag_name(f: dataclasses.Field) -> str:
    """The ``mlca train`` option of a TrainConfig field, e.g. ``--img-size``."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


@dataclass
class TrainResult:
    run_dir: Path
    best: Path
    last: Path
    metrics: dict[str, float]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/inf; the message says where and what to try."""


class TrainingWarning(UserWarning):
    """Something about the run the user should know: an ignored option, a GPU starved of data."""


# --- resume -----------------------------------------------------------------------------------

# what may change when a run continues: where and how it runs, not what it computes
RESUME_MAY_CHANGE = ("resume", "device", "workers", "cache_images", "verbose", "out")


def _resume_checkpoint(cfg: TrainConfig) -> Path:
    p = Path(cfg.out) / "weights" / "last.pt" if cfg.resume is True else Path(str(cfg.resume))
    if p.is_dir():
        p = p / "weights" / "last.pt"
    if not p.is_file():
        raise FileNotFoundError(
            f"--resume: no checkpoint at {p}. Give the run folder of an interrupted run with --out "
            "(it must hold weights/last.pt), or the path of a last.pt."
        )
    return p


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder of a checkpoint: the parent of its ``weights/`` folder, else its own folder."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "weights" else checkpoint.parent


def resumed_config(cfg: TrainConfig, saved: dict[str, Any], run_dir: Path) -> tuple[TrainConfig, list[str]]:
    """The config a resumed run continues with, and the options of ``cfg`` it ignores.

    The run keeps its saved settings; only :data:`RESUME_MAY_CHANGE` come from ``cfg`` (``out``
    becomes ``run_dir``). An option counts as given when it differs from TrainConfig's default,
    and as ignored when it also differs from the saved value. Fields the checkpoint lacks
    (added after it was written) take ``cfg``'s value; keys it has that no field has any more
    are dropped.
    """
    defaults, names = TrainConfig(), {f.name for f in dataclasses.fields(TrainConfig)}
    ignored = []
    for f in dataclasses.fields(TrainConfig):
        given = getattr(cfg, f.name)
        if f.name == "out":
            if cfg.resume is not True and given != defaults.out and Path(given) != Path(run_dir):
                ignored.append(f"{flag_name(f)} {given} (the run's folder is {run_dir})")
        elif f.name not in RESUME_MAY_CHANGE and f.name in saved and given != getattr(defaults, f.name) \
                and given != saved[f.name]:
            ignored.append(f"{flag_name(f)} {given!r} (the run has {saved[f.name]!r})")
    kept = {k: v for k, v in saved.items() if k in names}
    merged = {**cfg.to_dict(), **kept,
              **{k: getattr(cfg, k) for k in RESUME_MAY_CHANGE}, "out": str(run_dir)}
    return TrainConfig(**merged), ignored


# --- small helpers ------------------------------------------------------------------------------

def _log(info: D.DistInfo, cfg: TrainConfig, msg: str) -> None:
    if info.is_main and cfg.verbose:
        print(msg, flush=True)


def _increment_run_dir(out: Path, exist_ok: bool) -> Path:
    """``out`` if it is new or holds no run, else ``out2``, ``out3``... (never overwrite a run)."""
    def used(p: Path) -> bool:
        return (p / "results.csv").exists() or (p / "weights").exists()

    if exist_ok or not used(out):
        return out
    n = 2
    while used(out.with_name(f"{out.name}{n}")):
        n += 1
    return out.with_name(f"{out.name}{n}")


def _autocast(device: torch.device, amp: str):
    """(context factory, GradScaler or None) for the requested mixed precision."""
    mode = amp
    if mode == "auto":
        mode = "fp16" if device.type == "cuda" else "off"
    if mode == "off":
        return (lambda: nullcontext()), None
    if mode == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs CUDA; on the CPU use amp='bf16' or 'off'")
    dtype = torch.float16 if mode == "fp16" else torch.bfloat16
    # bf16 has fp32's exponent range: no loss scaling needed
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


IMAGE_CACHE_AUTO_BYTES = 1 << 30  # cache_images="auto" keeps decoded images up to this size


def _use_image_cache(mode: str, workers: int, records: list, img_size: int) -> bool:
    """Whether the datasets keep their images in memory (decoded, resized to ``img_size``).
    "auto": only when the main process loads (worker processes are restarted every epoch and
    would lose their copies) and those uint8 images fit in :data:`IMAGE_CACHE_AUTO_BYTES`.
    Letterbox and mosaic of a cached image give the same samples as of the stored one."""
    if mode != "auto":
        return mode == "ram"
    from mlca.data.transforms import letterbox_params

    def nbytes(r: Any) -> int:
        _, w, h, _, _ = letterbox_params(r.width, r.height, img_size)
        return 3 * w * h

    return workers == 0 and sum(map(nbytes, records)) <= IMAGE_CACHE_AUTO_BYTES


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    # distinct per (epoch, rank), identical between an uninterrupted and a resumed run
    return (seed * 1_000_003 + epoch * 1009 + rank) % (2**32)


def _write_results_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in RESULT_COLUMNS})
    os.replace(tmp, path)


def _write_args_yaml(path: Path, cfg: TrainConfig, extra: dict) -> None:
    import yaml

    path.write_text(yaml.safe_dump({**cfg.to_dict(), **extra}, sort_keys=False))


def _set_mosaic(dataset: Any, enabled: bool) -> None:
    """Turn mosaic off for the last epochs (real-looking images before validation)."""
    if hasattr(dataset, "mosaic"):
        if not enabled:
            dataset.mosaic = 0.0
    elif isinstance(getattr(dataset, "hyp", None), dict) and "mosaic" in dataset.hyp and not enabled:
        dataset.hyp["mosaic"] = 0.0


def _anchors_of(model: nn.Module) -> list | None:
    """The anchor-based head's anchors (pixels, nested lists), None for the anchor-free head."""
    anchors = getattr(model.detect, "anchors", None)
    return anchors.tolist() if anchors is not None else None


def _diverged_message(epoch: int, i: int, nb: int, items: torch.Tensor, last: Path, cfg: TrainConfig,
                      names: tuple[str, ...] = ("box", "obj", "cls")) -> str:
    parts = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, items.tolist()))
    kept = f"The last good checkpoint, {last}, is untouched." if last.exists() else "No checkpoint was written yet."
    return (
        f"training stopped: the loss became non-finite at epoch {epoch + 1}/{cfg.epochs}, "
        f"iteration {i + 1}/{nb} ({parts}). {kept} Try: a lower learning rate (--lr0 {cfg.lr0 / 10:g}), "
        f"a longer warmup (--warmup-epochs), gradient clipping (--grad-clip 10), --amp off, "
        f"or check the labels (--skip-bad reports bad boxes); then continue with --resume."
    )


# --- the steps ------------------------------------------------------------------------------------

@dataclass
class _Data:
    names: list[str]
    train_set: Any
    n_val: int
    sampler: Any
    train_loader: DataLoader
    val_loader: DataLoader | None
    workers: int

    @property
    def nb(self) -> int:
        return len(self.train_loader)


@dataclass
class _Optimisation:
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosine
    autocast: Callable
    scaler: Any
    ema: ModelEMA | None


@dataclass
class _Progress:
    start_epoch: int = 0
    best_fitness: float = -1.0
    rows: list[dict] = field(default_factory=list)


class Trainer:
    """One training run, a method per step; :func:`train` is ``Trainer(...).run()`` inside the process group.

    Args:
        cfg: the run's settings (for a resumed run, the saved ones).
        info, device: this process's rank and device (:func:`mlca.engine.distributed.setup`).
        ckpt: the checkpoint to continue from, or ``None`` for a new run.
    """

    def __init__(self, cfg: TrainConfig, info: D.DistInfo, device: torch.device, ckpt: dict | None = None) -> None:
        from mlca.engine.hyp import split_hyp

        self.cfg, self.info, self.device, self.ckpt = cfg, info, device, ckpt
        self.gains, self.augment = split_hyp(cfg.hyp, "TrainConfig.hyp")
        # the three logged loss terms; results.csv keeps its columns, and with the anchor-free
        # head its obj_loss column holds the DFL term
        self.loss_names: tuple[str, ...] = ("box", "obj", "cls")

    # --- run folder (decided by rank 0, shared with the others) -----------------------------------
    def make_run_dir(self) -> Path:
        """The folder this run writes into; created only when the first file is written, so a run
        that fails on bad settings or data leaves nothing behind that would push the next to exp2."""
        import torch.distributed as dist

        cfg = self.cfg
        run_dir = Path(cfg.out) if self.ckpt is not None else _increment_run_dir(Path(cfg.out), cfg.exist_ok)
        if self.info.distributed:
            obj = [str(run_dir)]
            dist.broadcast_object_list(obj, src=0)
            run_dir = Path(obj[0])
        self.cfg = dataclasses.replace(cfg, out=str(run_dir))  # checkpoints name the folder actually used
        self.run_dir = run_dir
        self.last_pt, self.best_pt = run_dir / "weights" / "last.pt", run_dir / "weights" / "best.pt"
        return run_dir

    # --- data -------------------------------------------------------------------------------------
    def build_data(self) -> _Data:
        from mlca.data.config import load_dataset_config
        from mlca.data.dataset import DetectionDataset, collate
        from mlca.data.records import read_records

        cfg, info, device = self.cfg, self.info, self.device
        D.seed_everything(cfg.seed)
        if info.distributed and not info.is_main:
            D.barrier()  # rank 0 first: it may generate the embedded dataset into the shared cache
        data_cfg = load_dataset_config(cfg.data)
        if info.distributed and info.is_main:
            D.barrier()
        train_records = read_records(data_cfg, "train", skip_bad=cfg.skip_bad)
        val_records = read_records(data_cfg, "val", skip_bad=cfg.skip_bad)
        if cfg.max_train_images is not None:
            train_records = train_records[: cfg.max_train_images]
        if cfg.max_val_images is not None:
            val_records = val_records[: cfg.max_val_images]
        if not train_records:
            raise ValueError(f"{cfg.data}: the train split holds no images")
        workers = cfg.workers if cfg.workers is not None else default_workers(
            device.type, os.cpu_count(), local_world_size(info.world_size))
        cache = _use_image_cache(cfg.cache_images, workers, [*train_records, *val_records], cfg.img_size)
        train_set = DetectionDataset(train_records, cfg.img_size, augment=True, hyp=self.augment, cache=cache)
        val_set = (DetectionDataset(val_records, cfg.img_size, augment=False, hyp=self.augment, cache=cache)
                   if val_records else None)  # fmt: skip
        local_bs = max(cfg.batch_size // info.world_size, 1)
        sampler = D.make_sampler(train_set, info, shuffle=True, seed=cfg.seed)
        train_loader = DataLoader(train_set, batch_size=local_bs, sampler=sampler, num_workers=workers,
                                  collate_fn=collate, pin_memory=device.type == "cuda", drop_last=False)
        val_loader = None
        if val_set is not None and info.is_main:
            val_loader = DataLoader(val_set, batch_size=max(local_bs, 8), shuffle=False, num_workers=workers,
                                    collate_fn=collate)
        return _Data(list(data_cfg.names), train_set, len(val_records), sampler, train_loader, val_loader, workers)

    # --- model --------------------------------------------------------------------------------------
    def build_model(self, data: _Data) -> tuple[nn.Module, dict]:
        """MAY on the device (for the anchor-based head, anchors refitted to the data on a new run), and
        the config that rebuilds it."""
        from mlca.models.may import build_may

        cfg = self.cfg
        model_config = dict(attention=cfg.attention, num_classes=len(data.names), width=cfg.width,
                            head=cfg.head, **cfg.attention_kwargs)
        model = build_may(**model_config)
        model.names = data.names
        model_config = dict(getattr(model, "config", model_config))
        if self.ckpt is None and cfg.autoanchor and self.info.is_main and cfg.head == "yolov5":
            from mlca.engine.autoanchor import check_anchors

            check_anchors(data.train_set, model, thr=self.gains.anchor_t, img_size=cfg.img_size, seed=cfg.seed,
                          verbose=cfg.verbose)
            model_config["anchors"] = model.detect.anchors.tolist()  # the config rebuilds the fitted model
        return model.to(self.device, memory_format=self.memory_format), model_config

    @property
    def memory_format(self) -> torch.memory_format:
        """channels-last where asked, or on the CPU by default (measured there: MAY's training step
        ~25% faster, YOLO11n's ~20%); CUDA keeps NCHW by default (not measured on a GPU)."""
        on = self.cfg.channels_last == "on" or (self.cfg.channels_last == "auto" and self.device.type == "cpu")
        return torch.channels_last if on else torch.contiguous_format

    # --- optimiser, schedule, mixed precision, EMA ---------------------------------------------------
    def build_optimisation(self, model: nn.Module, nb: int) -> _Optimisation:
        cfg = self.cfg
        optimizer = build_optimizer(model, cfg.optimizer, cfg.lr0, cfg.momentum, cfg.weight_decay)
        autocast, scaler = _autocast(self.device, cfg.amp)
        total_iters = cfg.epochs * nb
        # YOLOv5's tau=2000 assumes 300 epochs; on a 10-epoch run it would make the EMA a copy of
        # the raw model. A fifth of the run keeps the average over the last ~quarter of training.
        ema_tau = cfg.ema_tau if cfg.ema_tau is not None else float(min(2000, max(total_iters / 5, 10)))
        ema = ModelEMA(model, decay=cfg.ema_decay, tau=ema_tau) if self.info.is_main else None
        warmup_iters = max(round(cfg.warmup_epochs * nb), cfg.warmup_min_iters) if cfg.warmup_epochs > 0 else 0
        # never spend more than a fifth of a short run warming up
        warmup_iters = min(warmup_iters, max(total_iters // 5, 1)) if warmup_iters else 0
        bias_lr = cfg.warmup_bias_lr if cfg.warmup_bias_lr is not None else warmup_bias_lr_for(cfg.optimizer, cfg.lr0)
        schedule = WarmupCosine(lr0=cfg.lr0, lrf=cfg.lrf, total_iters=total_iters, warmup_iters=warmup_iters,
                                momentum=cfg.momentum, warmup_momentum=cfg.warmup_momentum,
                                warmup_bias_lr=bias_lr)
        return _Optimisation(optimizer, schedule, autocast, scaler, ema)

    def restore(self, model: nn.Module, opt: _Optimisation) -> _Progress:
        """Load a resumed run's state (model, optimizer, scaler, EMA, RNG, results so far)."""
        ckpt = self.ckpt
        if ckpt is None:
            return _Progress()
        model.load_state_dict(ckpt["model"])
        opt.optimizer.load_state_dict(ckpt["optimizer"])
        if opt.scaler is not None and ckpt.get("scaler"):
            opt.scaler.load_state_dict(ckpt["scaler"])
        if opt.ema is not None and ckpt.get("ema") is not None:
            opt.ema.load_state_dict(ckpt["ema"], ckpt["ema_updates"])
        progress = _Progress(int(ckpt["epoch"]) + 1, float(ckpt["best_fitness"]),
                             [dict(r) for r in ckpt.get("results", [])])
        rng = ckpt.get("rng")
        if rng:
            D.set_rng_state(rng[min(self.info.rank, len(rng) - 1)] if isinstance(rng, list) else rng)
        _log(self.info, self.cfg, f"resuming {self.run_dir} from epoch {progress.start_epoch + 1}/{self.cfg.epochs}")
        return progress

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP (and SyncBatchNorm when asked) across ranks; the model itself on one process."""
        if not self.info.distributed:
            return model
        if self.cfg.sync_bn and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # --- one epoch of training ------------------------------------------------------------------
    def train_epoch(self, epoch: int, model: nn.Module, data: _Data, opt: _Optimisation, compute_loss: Any,
                    monitor: DataWaitMonitor) -> torch.Tensor:
        """One pass over the training data; returns the mean ``[box, obj, cls]`` losses."""
        from tqdm import tqdm

        cfg, info, device, nb = self.cfg, self.info, self.device, data.nb
        model.train()
        data.sampler.set_epoch(epoch)
        D.seed_everything(_epoch_seed(cfg.seed, epoch, info.rank))
        if hasattr(data.train_set, "set_epoch"):
            data.train_set.set_epoch(epoch)
        _set_mosaic(data.train_set, enabled=not (cfg.close_mosaic and epoch >= cfg.epochs - cfg.close_mosaic))
        mloss = torch.zeros(3)
        bar = tqdm(data.train_loader, total=nb, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (info.is_main and cfg.verbose and sys.stderr.isatty()))
        monitor.start_epoch()
        for i, (imgs, targets, _) in enumerate(bar):
            monitor.batch_ready()
            it = epoch * nb + i
            opt.schedule.apply(opt.optimizer, it)
            imgs = imgs.to(device, non_blocking=True, memory_format=self.memory_format)
            targets = targets.to(device)
            with opt.autocast():
                raw = model(imgs)
            loss, items = compute_loss(raw, targets)
            if info.distributed:
                loss = loss * info.world_size  # DDP averages gradients over ranks; keep YOLOv5's sum scale
            # .item() waits for the device: the step's host time below is its device time too
            finite = D.all_reduce_min(float(torch.isfinite(loss).item()), device)
            if finite < 1:
                raise TrainingDivergedError(_diverged_message(epoch, i, nb, items.cpu(), self.last_pt, cfg,
                                                                   self.loss_names))
            if opt.scaler is not None:
                opt.scaler.scale(loss).backward()
                opt.scaler.unscale_(opt.optimizer)
            else:
                loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), max_norm=cfg.grad_clip)
            if opt.scaler is not None:
                opt.scaler.step(opt.optimizer)
                opt.scaler.update()
            else:
                opt.optimizer.step()
            opt.optimizer.zero_grad(set_to_none=True)
            if opt.ema is not None:
                opt.ema.update(model)
            mloss = (mloss * i + items.detach().cpu()) / (i + 1)
            bar.set_postfix({n: f"{v:.4f}" for n, v in zip(self.loss_names, mloss.tolist())})
            monitor.step_done()
        bar.close()
        return mloss

    # --- validation (rank 0, EMA weights) ---------------------------------------------------------
    def validate(self, epoch: int, data: _Data, opt: _Optimisation) -> tuple[float, float]:
        """``(mAP@0.5, mAP@0.5:0.95)`` of the EMA model, or NaNs on epochs without validation."""
        from mlca.engine.evaluate import evaluate

        cfg = self.cfg
        final = epoch == cfg.epochs - 1
        if data.val_loader is None or not ((epoch + 1) % cfg.val_interval == 0 or final):
            return float("nan"), float("nan")
        res = evaluate(opt.ema.ema, data.val_loader, conf_thres=cfg.conf_thres, iou_thres=cfg.iou_thres,
                       amp=opt.scaler is not None, names=data.names)
        return float(res.map50), float(res.map)

    # --- checkpoint, results.csv, plots (rank 0) -------------------------------------------------
    def save(self, epoch: int, model: nn.Module, model_config: dict, data: _Data, opt: _Optimisation,
             progress: _Progress, is_best: bool) -> None:
        state = {
            "model_config": model_config,
            "model": unwrap(model).state_dict(),
            "ema": opt.ema.state_dict(),
            "ema_updates": opt.ema.updates,
            "optimizer": opt.optimizer.state_dict(),
            "scaler": opt.scaler.state_dict() if opt.scaler is not None else None,
            "scheduler": {"iteration": (epoch + 1) * data.nb, "total_iters": opt.schedule.total_iters,
                          "warmup_iters": opt.schedule.warmup_iters},
            "epoch": epoch,
            "best_fitness": progress.best_fitness,
            "names": data.names,
            "train_config": self.cfg.to_dict(),
            "rng": D.rng_state(),
            "results": progress.rows,
        }
        save_checkpoint(self.last_pt, state)
        if is_best or not self.best_pt.exists():
            copy_checkpoint(self.last_pt, self.best_pt)  # the same bytes, not serialised twice
        _write_results_csv(self.run_dir / "results.csv", progress.rows)
        # drawing costs seconds on a busy CPU: every PLOT_EVERY epochs and at the end
        # (``mlca.engine.plots.plot_results(csv)`` redraws them from results.csv at any time)
        try:
            if epoch == self.cfg.epochs - 1 or (epoch + 1) % PLOT_EVERY == 0:
                from mlca.engine.plots import plot_results

                plot_results(self.run_dir / "results.csv")
        except Exception as e:  # a plotting problem must never cost a training run
            _log(self.info, self.cfg, f"warning: could not draw plots: {e}")

    def end_epoch(self, epoch: int, t0: float, mloss: torch.Tensor, model: nn.Module, model_config: dict,
                  data: _Data, opt: _Optimisation, progress: _Progress) -> dict:
        """Rank 0: validate, record the epoch's row, write checkpoints and files; returns the row."""
        map50, map_ = self.validate(epoch, data, opt)
        fit = fitness(map50, map_) if not math.isnan(map50) else float("nan")
        row = {"epoch": epoch + 1, "box_loss": float(mloss[0]), "obj_loss": float(mloss[1]),
               "cls_loss": float(mloss[2]), "lr": float(opt.optimizer.param_groups[0]["lr"]),
               "map50": map50, "map": map_, "fitness": fit, "time_s": time.time() - t0}
        progress.rows.append(row)
        is_best = not math.isnan(fit) and fit > progress.best_fitness
        if is_best:
            progress.best_fitness = fit
        self.save(epoch, model, model_config, data, opt, progress, is_best)
        n = self.loss_names
        _log(self.info, self.cfg, f"epoch {epoch + 1}/{self.cfg.epochs}  {n[0]} {row['box_loss']:.4f}  "
                                  f"{n[1]} {row['obj_loss']:.4f}  {n[2]} {row['cls_loss']:.4f}  mAP@0.5 {map50:.4f}  "
                                  f"mAP@0.5:0.95 {map_:.4f}  {row['time_s']:.1f}s{'  *best*' if is_best else ''}")
        return row

    # --- the whole run ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        from mlca.engine.criterion import build_loss, item_names

        info = self.info
        run_dir = self.make_run_dir()
        data = self.build_data()
        model, model_config = self.build_model(data)
        opt = self.build_optimisation(model, data.nb)
        progress = self.restore(model, opt)
        model = self.wrap(model)
        compute_loss = build_loss(model, self.gains, img_size=self.cfg.img_size)
        self.loss_names = item_names(compute_loss)
        cfg = self.cfg
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_args_yaml(run_dir / "args.yaml", cfg, {"run_dir": str(run_dir), "world_size": info.world_size,
                                                          "device": str(self.device), "names": data.names,
                                                          "anchors": _anchors_of(unwrap(model))})
            _log(info, cfg, f"training {cfg.attention} MAY ({cfg.head} head) on {cfg.data}: {len(data.train_set)} train / "
                            f"{data.n_val} val images, {len(data.names)} classes, {cfg.img_size} px, batch "
                            f"{cfg.batch_size} x {data.nb} it/epoch, {cfg.epochs} epochs on {self.device}"
                            f"{f' x {info.world_size} ranks' if info.distributed else ''} -> {run_dir}")
        monitor = DataWaitMonitor(enabled=self.device.type == "cuda" and info.is_main)

        metrics: dict[str, float] = progress.rows[-1] if progress.rows else {}
        for epoch in range(progress.start_epoch, cfg.epochs):
            t0 = time.time()
            mloss = self.train_epoch(epoch, model, data, opt, compute_loss, monitor)
            message = monitor.end_epoch(epoch, data.workers)
            if message:
                warnings.warn(message, TrainingWarning, stacklevel=2)
            if info.is_main:
                metrics = self.end_epoch(epoch, t0, mloss, model, model_config, data, opt, progress)
            D.barrier()

        if info.distributed:
            D.assert_same_across_ranks(unwrap(model), self.device)
        if not self.last_pt.exists() and info.is_main:
            raise RuntimeError(f"{run_dir}: training finished but wrote no checkpoint")
        out_metrics = {k: float(v) for k, v in metrics.items()} if metrics else {}
        out_metrics["best_fitness"] = float(progress.best_fitness)
        return TrainResult(run_dir=run_dir, best=self.best_pt, last=self.last_pt, metrics=out_metrics)


def train(cfg: TrainConfig) -> TrainResult:
    """Train MAY as ``cfg`` says; returns the run folder, checkpoints and final metrics.

    With ``cfg.resume`` the run continues with the settings saved in its checkpoint, in the
    checkpoint's run folder (:func:`run_dir_of`); options of ``cfg`` that this ignores are named
    in a :class:`TrainingWarning`.

    Raises:
        TrainingDivergedError: the loss became NaN/inf (``last.pt`` keeps the last good epoch).
        FileNotFoundError: ``resume`` names no checkpoint.
    """
    ckpt, ignored = None, []
    if cfg.resume:
        ckpt_path = _resume_checkpoint(cfg)
        ckpt = load_checkpoint(ckpt_path)
        cfg, ignored = resumed_config(cfg, dict(ckpt["train_config"]), run_dir_of(ckpt_path))

    info, device = D.setup(cfg.device)
    if ignored and info.is_main:
        warnings.warn(f"--resume continues {cfg.out} with the settings it was started with; ignored: "
                      + ", ".join(ignored), TrainingWarning, stacklevel=2)
    try:
        return Trainer(cfg, info, device, ckpt).run()
    finally:
        D.cleanup()
