"""The MAY training loop: config, data, model, optimisation, validation, checkpoints.

``train(TrainConfig(...))`` runs on one CPU/GPU, or on N processes under
``torchrun --nproc_per_node N -m mlca train ...`` (DDP, DistributedSampler; rank 0 alone
evaluates, plots and writes files). A run folder holds::

    weights/last.pt  weights/best.pt  results.csv  loss.png  map.png  args.yaml

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
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from mlca.engine import distributed as D
from mlca.engine.checkpoint import load_checkpoint, save_checkpoint
from mlca.engine.ema import ModelEMA, unwrap
from mlca.engine.schedule import WarmupCosine, build_optimizer, warmup_bias_lr_for

__all__ = ["TrainConfig", "TrainResult", "TrainingDivergedError", "train", "fitness"]

PLOT_EVERY = 10
RESULT_COLUMNS = ("epoch", "box_loss", "obj_loss", "cls_loss", "lr", "map50", "map", "fitness", "time_s")


def fitness(map50: float, map_: float) -> float:
    """YOLOv5's model-selection score: mostly mAP@0.5:0.95, a little mAP@0.5."""
    return 0.1 * map50 + 0.9 * map_


@dataclass
class TrainConfig:
    """Everything a run depends on (written to ``args.yaml`` and into every checkpoint).

    The defaults are tuned for small datasets trained from scratch on a CPU; see
    docs/training.md for the measurements behind them.
    """

    # what to train
    data: str = "embedded"  # dataset YAML path or "embedded"
    attention: str = "mlca"
    attention_kwargs: dict = field(default_factory=dict)
    width: float = 1.0
    # budget
    epochs: int = 30
    img_size: int = 256
    batch_size: int = 16  # global batch (split over DDP ranks)
    max_train_images: int | None = None  # train on the first N images only (quick slices)
    max_val_images: int | None = None
    # optimisation
    # AdamW learns several times faster than SGD in short from-scratch runs (docs/training.md)
    optimizer: str = "adamw"  # "adamw" or "sgd" (Nesterov; use lr0 0.01)
    lr0: float = 0.004
    lrf: float = 0.01  # final lr = lr0 * lrf (cosine)
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 3.0
    warmup_min_iters: int = 50
    warmup_momentum: float = 0.8
    warmup_bias_lr: float | None = None  # bias lr at warmup start; None: per optimizer (SGD 0.1, AdamW lr0)
    grad_clip: float = 10.0  # max grad norm; 0 disables
    ema_decay: float = 0.9999
    ema_tau: float | None = None  # EMA ramp in updates; None: total_iters / 5, at most 2000 (YOLOv5's)
    amp: str = "auto"  # "auto" (fp16 on CUDA, off on CPU) | "fp16" | "bf16" | "off"
    sync_bn: bool = False  # SyncBatchNorm under DDP (small per-GPU batches)
    # loss gains and augmentation knobs (passed to YoloLoss and DetectionDataset)
    hyp: dict = field(default_factory=dict)
    close_mosaic: int = 2  # turn mosaic off for the last N epochs (0: never)
    autoanchor: bool = True
    # validation
    val_interval: int = 1
    conf_thres: float = 0.001
    iou_thres: float = 0.6
    # run
    seed: int = 0
    out: str = "runs/train/exp"
    exist_ok: bool = False  # reuse a non-empty ``out`` instead of creating exp2, exp3...
    resume: bool | str = False  # True: continue ``out``; a path: continue that last.pt
    device: str = ""  # "" = CUDA if available, else CPU
    workers: int = 0
    skip_bad: bool = False
    verbose: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.img_size >= 32 and self.img_size % 32 == 0, f"img_size must be a positive multiple of 32, got {self.img_size}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr0 > 0, f"lr0 must be > 0, got {self.lr0}"),
            (0 < self.lrf <= 1, f"lrf must be in (0, 1], got {self.lrf}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.amp in ("auto", "fp16", "bf16", "off"), f"amp must be auto|fp16|bf16|off, got {self.amp!r}"),
            (self.optimizer.lower() in ("sgd", "adamw"), f"optimizer must be sgd|adamw, got {self.optimizer!r}"),
            (self.close_mosaic >= 0, f"close_mosaic must be >= 0, got {self.close_mosaic}"),
            (self.val_interval >= 1, f"val_interval must be >= 1, got {self.val_interval}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")
        self.out = str(self.out)
        if not isinstance(self.resume, bool):
            self.resume = str(self.resume)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (YAML and ``weights_only`` checkpoints)."""
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    run_dir: Path
    best: Path
    last: Path
    metrics: dict[str, float]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/inf; the message says where and what to try."""


# --------------------------------------------------------------------------------------------

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


def _diverged_message(epoch: int, i: int, nb: int, items: torch.Tensor, last: Path, cfg: TrainConfig) -> str:
    parts = ", ".join(f"{n}={v:.4g}" for n, v in zip(("box", "obj", "cls"), items.tolist()))
    kept = f"The last good checkpoint, {last}, is untouched." if last.exists() else "No checkpoint was written yet."
    return (
        f"training stopped: the loss became non-finite at epoch {epoch + 1}/{cfg.epochs}, "
        f"iteration {i + 1}/{nb} ({parts}). {kept} Try: a lower learning rate (--lr0 {cfg.lr0 / 10:g}), "
        f"a longer warmup (--warmup-epochs), gradient clipping (--grad-clip 10), --amp off, "
        f"or check the labels (--skip-bad reports bad boxes); then continue with --resume."
    )


# --------------------------------------------------------------------------------------------

def train(cfg: TrainConfig) -> TrainResult:
    """Train MAY as ``cfg`` says; returns the run folder, checkpoints and final metrics.

    Raises:
        TrainingDivergedError: the loss became NaN/inf (``last.pt`` keeps the last good epoch).
        FileNotFoundError: ``resume`` names no checkpoint.
    """
    ckpt = None
    if cfg.resume:
        ckpt_path = _resume_checkpoint(cfg)
        ckpt = load_checkpoint(ckpt_path)
        saved = dict(ckpt["train_config"])
        # the run continues with its own settings; only where it runs may change
        saved.update(resume=cfg.resume, device=cfg.device, workers=cfg.workers, verbose=cfg.verbose,
                     out=str(ckpt_path.parent.parent))
        cfg = TrainConfig(**saved)

    info, device = D.setup(cfg.device)
    try:
        return _train(cfg, info, device, ckpt)
    finally:
        D.cleanup()


def _train(cfg: TrainConfig, info: D.DistInfo, device: torch.device, ckpt: dict | None) -> TrainResult:
    import torch.distributed as dist

    from mlca.data.config import load_dataset_config
    from mlca.data.dataset import DetectionDataset, collate
    from mlca.data.records import read_records
    from mlca.engine.evaluate import evaluate
    from mlca.data.transforms import DEFAULT_HYP as AUG_HYP
    from mlca.engine.loss import DEFAULT_HYP as LOSS_HYP
    from mlca.engine.loss import YoloLoss
    from mlca.models.may import build_may

    # --- run folder (decided by rank 0, shared with the others) -------------------------------
    run_dir = Path(cfg.out) if ckpt is not None else _increment_run_dir(Path(cfg.out), cfg.exist_ok)
    if info.distributed:
        obj = [str(run_dir)]
        dist.broadcast_object_list(obj, src=0)
        run_dir = Path(obj[0])
    cfg = dataclasses.replace(cfg, out=str(run_dir))  # checkpoints name the folder actually used
    weights_dir = run_dir / "weights"
    last_pt, best_pt = weights_dir / "last.pt", weights_dir / "best.pt"
    # folders are created only when the first file is written, so a run that fails on bad
    # settings or data leaves nothing behind that would push the next run to exp2

    # --- data ---------------------------------------------------------------------------------
    D.seed_everything(cfg.seed)
    if info.distributed and not info.is_main:
        D.barrier()  # rank 0 first: it may generate the embedded dataset into the shared cache
    data_cfg = load_dataset_config(cfg.data)
    if info.distributed and info.is_main:
        D.barrier()
    names = list(data_cfg.names)
    train_records = read_records(data_cfg, "train", skip_bad=cfg.skip_bad)
    val_records = read_records(data_cfg, "val", skip_bad=cfg.skip_bad)
    if cfg.max_train_images is not None:
        train_records = train_records[: cfg.max_train_images]
    if cfg.max_val_images is not None:
        val_records = val_records[: cfg.max_val_images]
    if not train_records:
        raise ValueError(f"{cfg.data}: the train split holds no images")
    hyp = {**cfg.hyp, "img_size": cfg.img_size}
    loss_hyp = {**LOSS_HYP, **{k: v for k, v in hyp.items() if k in LOSS_HYP}}
    unknown = sorted(set(cfg.hyp) - set(LOSS_HYP) - set(AUG_HYP))
    if unknown:  # the loss and the dataset each ignore keys they do not know: a typo would go unnoticed
        raise ValueError(f"unknown hyp keys {unknown}; loss keys: {sorted(LOSS_HYP)}, augmentation keys: {sorted(AUG_HYP)}")
    train_set = DetectionDataset(train_records, cfg.img_size, augment=True, hyp=hyp)
    val_set = DetectionDataset(val_records, cfg.img_size, augment=False, hyp=hyp) if val_records else None

    local_bs = max(cfg.batch_size // info.world_size, 1)
    sampler = D.make_sampler(train_set, info, shuffle=True, seed=cfg.seed)
    train_loader = DataLoader(train_set, batch_size=local_bs, sampler=sampler, num_workers=cfg.workers,
                              collate_fn=collate, pin_memory=device.type == "cuda", drop_last=False)
    val_loader = None
    if val_set is not None and info.is_main:
        val_loader = DataLoader(val_set, batch_size=max(local_bs, 8), shuffle=False, num_workers=cfg.workers,
                                collate_fn=collate)
    nb = len(train_loader)

    # --- model ----------------------------------------------------------------------------------
    model_config = dict(attention=cfg.attention, num_classes=len(names), width=cfg.width, **cfg.attention_kwargs)
    model = build_may(**model_config)
    model.names = names
    model_config = dict(getattr(model, "config", model_config))
    if ckpt is None and cfg.autoanchor and info.is_main:
        from mlca.engine.autoanchor import check_anchors

        check_anchors(train_set, model, thr=float(loss_hyp["anchor_t"]), img_size=cfg.img_size, seed=cfg.seed,
                      verbose=cfg.verbose)
        model_config["anchors"] = model.detect.anchors.tolist()  # the config rebuilds the fitted model
    model.to(device)

    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr0, cfg.momentum, cfg.weight_decay)
    autocast, scaler = _autocast(device, cfg.amp)
    total_iters = cfg.epochs * nb
    # YOLOv5's tau=2000 assumes 300 epochs; on a 10-epoch run it would make the EMA a copy of
    # the raw model. A fifth of the run keeps the average over the last ~quarter of training.
    ema_tau = cfg.ema_tau if cfg.ema_tau is not None else float(min(2000, max(total_iters / 5, 10)))
    ema = ModelEMA(model, decay=cfg.ema_decay, tau=ema_tau) if info.is_main else None
    warmup_iters = max(round(cfg.warmup_epochs * nb), cfg.warmup_min_iters) if cfg.warmup_epochs > 0 else 0
    # never spend more than a fifth of a short run warming up
    warmup_iters = min(warmup_iters, max(total_iters // 5, 1)) if warmup_iters else 0
    schedule = WarmupCosine(lr0=cfg.lr0, lrf=cfg.lrf, total_iters=total_iters,
                            warmup_iters=warmup_iters,
                            momentum=cfg.momentum, warmup_momentum=cfg.warmup_momentum,
                            warmup_bias_lr=(cfg.warmup_bias_lr if cfg.warmup_bias_lr is not None
                                            else warmup_bias_lr_for(cfg.optimizer, cfg.lr0)))

    start_epoch, best_fitness, rows = 0, -1.0, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"], ckpt["ema_updates"])
        start_epoch = int(ckpt["epoch"]) + 1
        best_fitness = float(ckpt["best_fitness"])
        rows = [dict(r) for r in ckpt.get("results", [])]
        if ckpt.get("rng"):
            D.set_rng_state(ckpt["rng"][min(info.rank, len(ckpt["rng"]) - 1)] if isinstance(ckpt["rng"], list) else ckpt["rng"])
        _log(info, cfg, f"resuming {run_dir} from epoch {start_epoch + 1}/{cfg.epochs}")

    if info.distributed:
        if cfg.sync_bn and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    compute_loss = YoloLoss(model, hyp)

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_args_yaml(run_dir / "args.yaml", cfg, {"run_dir": str(run_dir), "world_size": info.world_size,
                                                      "device": str(device), "names": names,
                                                      "anchors": unwrap(model).detect.anchors.tolist()})
        _log(info, cfg, f"training {cfg.attention} MAY on {cfg.data}: {len(train_set)} train / "
                        f"{len(val_records)} val images, {len(names)} classes, {cfg.img_size} px, batch "
                        f"{cfg.batch_size} x {nb} it/epoch, {cfg.epochs} epochs on {device}"
                        f"{f' x {info.world_size} ranks' if info.distributed else ''} -> {run_dir}")

    from tqdm import tqdm

    metrics: dict[str, float] = rows[-1] if rows else {}
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        model.train()
        sampler.set_epoch(epoch)
        D.seed_everything(_epoch_seed(cfg.seed, epoch, info.rank))
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        _set_mosaic(train_set, enabled=not (cfg.close_mosaic and epoch >= cfg.epochs - cfg.close_mosaic))
        mloss = torch.zeros(3)
        bar = tqdm(train_loader, total=nb, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (info.is_main and cfg.verbose and sys.stderr.isatty()))
        for i, (imgs, targets, _) in enumerate(bar):
            it = epoch * nb + i
            schedule.apply(optimizer, it)
            imgs = imgs.to(device, non_blocking=True)
            targets = targets.to(device)
            with autocast():
                raw = model(imgs)
            loss, items = compute_loss(raw, targets)
            if info.distributed:
                loss = loss * info.world_size  # DDP averages gradients over ranks; keep YOLOv5's sum scale
            finite = D.all_reduce_min(float(torch.isfinite(loss).item()), device)
            if finite < 1:
                raise TrainingDivergedError(_diverged_message(epoch, i, nb, items.cpu(), last_pt, cfg))
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), max_norm=cfg.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            mloss = (mloss * i + items.detach().cpu()) / (i + 1)
            bar.set_postfix(box=f"{mloss[0]:.4f}", obj=f"{mloss[1]:.4f}", cls=f"{mloss[2]:.4f}")
        bar.close()

        # --- end of epoch: rank 0 validates the EMA weights and writes everything ---------------
        if info.is_main:
            final = epoch == cfg.epochs - 1
            map50 = map_ = float("nan")
            if val_loader is not None and ((epoch + 1) % cfg.val_interval == 0 or final):
                res = evaluate(ema.ema, val_loader, conf_thres=cfg.conf_thres, iou_thres=cfg.iou_thres,
                               amp=scaler is not None, names=names)
                map50, map_ = float(res.map50), float(res.map)
            fit = fitness(map50, map_) if not math.isnan(map50) else float("nan")
            row = {"epoch": epoch + 1, "box_loss": float(mloss[0]), "obj_loss": float(mloss[1]),
                   "cls_loss": float(mloss[2]), "lr": float(optimizer.param_groups[0]["lr"]),
                   "map50": map50, "map": map_, "fitness": fit, "time_s": time.time() - t0}
            rows.append(row)
            is_best = not math.isnan(fit) and fit > best_fitness
            if is_best:
                best_fitness = fit
            state = {
                "model_config": model_config,
                "model": unwrap(model).state_dict(),
                "ema": ema.state_dict(),
                "ema_updates": ema.updates,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "scheduler": {"iteration": (epoch + 1) * nb, "total_iters": schedule.total_iters,
                              "warmup_iters": schedule.warmup_iters},
                "epoch": epoch,
                "best_fitness": best_fitness,
                "names": names,
                "train_config": cfg.to_dict(),
                "rng": D.rng_state(),
                "results": rows,
            }
            save_checkpoint(last_pt, state)
            if is_best or not best_pt.exists():
                save_checkpoint(best_pt, state)
            _write_results_csv(run_dir / "results.csv", rows)
            # drawing costs seconds on a busy CPU: every PLOT_EVERY epochs and at the end
            # (``mlca.engine.plots.plot_results(csv)`` redraws them from results.csv at any time)
            try:
                if final or (epoch + 1) % PLOT_EVERY == 0:
                    from mlca.engine.plots import plot_results

                    plot_results(run_dir / "results.csv")
            except Exception as e:  # a plotting problem must never cost a training run
                _log(info, cfg, f"warning: could not draw plots: {e}")
            metrics = row
            _log(info, cfg, f"epoch {epoch + 1}/{cfg.epochs}  box {row['box_loss']:.4f}  obj {row['obj_loss']:.4f}  "
                            f"cls {row['cls_loss']:.4f}  mAP@0.5 {map50:.4f}  mAP@0.5:0.95 {map_:.4f}  "
                            f"{row['time_s']:.1f}s{'  *best*' if is_best else ''}")
        D.barrier()

    if info.distributed:
        D.assert_same_across_ranks(unwrap(model), device)
    if not last_pt.exists() and info.is_main:
        raise RuntimeError(f"{run_dir}: training finished but wrote no checkpoint")
    out_metrics = {k: float(v) for k, v in metrics.items()} if metrics else {}
    out_metrics["best_fitness"] = float(best_fitness)
    return TrainResult(run_dir=run_dir, best=best_pt, last=last_pt, metrics=out_metrics)
