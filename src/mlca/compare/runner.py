"""The (attention, seed) training runs of a comparison: resumable, optionally spread over GPUs.

Layout under ``cfg.out``::

    runs/<attention>-seed<k>/          the trainer's run folder (weights/, results.csv, ...)
    runs/<attention>-seed<k>/compare_done.json   written last, atomically: the run is finished

A run whose ``compare_done.json`` exists is never trained again. A run folder with
``weights/last.pt`` but no marker was interrupted and continues through the trainer's
resume. With several CUDA devices the runs are spread one subprocess per GPU
(``CUDA_VISIBLE_DEVICES``); otherwise they run one after another in this process.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .columns import map_columns
from .config import CompareConfig
from .detectors import is_ultralytics

__all__ = ["RunSpec", "RunOutcome", "run_dir", "run_one", "run_all", "plan_runs", "DONE_FILE"]

DONE_FILE = "compare_done.json"


@dataclass(frozen=True)
class RunSpec:
    attention: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.attention}-seed{self.seed}"


@dataclass
class RunOutcome:
    """What the comparison keeps of one finished run."""

    attention: str
    seed: int
    run_dir: str
    map50: float
    map: float
    best_map50: float
    best_map: float
    epochs: int
    train_time_s: float
    settings: dict
    reused: bool = False  # True when found finished on disk rather than trained by this call


def plan_runs(cfg: CompareConfig) -> list[RunSpec]:
    """Seed-major order, so a stopped experiment has every attention at seed 0 first."""
    return [RunSpec(a, s) for s in range(cfg.seeds) for a in cfg.attentions]


def run_dir(cfg: CompareConfig, spec: RunSpec) -> Path:
    return cfg.out / "runs" / spec.name


def _train_config(cfg: CompareConfig, spec: RunSpec, resume: bool, device: str):
    """The trainer's config for one run; optional trainer fields are set only if it has them."""
    from mlca.engine.train import TrainConfig

    wanted = dict(
        data=cfg.data,
        attention=spec.attention,
        attention_kwargs=cfg.kwargs_of(spec.attention),
        width=cfg.width,
        head=cfg.head,
        epochs=cfg.epochs,
        img_size=cfg.img_size,
        batch_size=cfg.batch_size,
        seed=spec.seed,
        out=run_dir(cfg, spec),
        resume=resume,
        exist_ok=True,  # train in exactly this folder (never the trainer's out2, out3...)
        device=device,
        workers=cfg.workers,
        max_train_images=cfg.max_train_images,
        max_val_images=cfg.max_val_images,
    )
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    missing = [k for k in ("max_train_images", "max_val_images") if wanted[k] is not None and k not in names]
    if missing:
        raise TypeError(f"compare: this trainer (mlca.engine.train.TrainConfig) has no {missing}")
    kwargs = {k: v for k, v in wanted.items() if k in names and not (v is None and k.startswith("max_"))}
    if "device" in kwargs and not kwargs["device"]:
        kwargs.pop("device")  # let the trainer pick its default
    return TrainConfig(**kwargs)


def _read_epoch_maps(csv_path: Path) -> list[tuple[float, float]]:
    """(map50, map) per epoch from the trainer's results.csv; [] if it is missing."""
    if not csv_path.is_file():
        return []
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        row = {k.strip(): v for k, v in row.items() if k}
        k50, k = map_columns(row)
        if k50 and k:
            out.append((float(row[k50]), float(row[k])))
    return out


def _atomic_write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _load_done(cfg: CompareConfig, spec: RunSpec, marker: Path) -> RunOutcome:
    data = json.loads(marker.read_text())
    if data.get("settings") != cfg.run_settings(spec.attention):
        raise RuntimeError(
            f"compare: {marker.parent} was trained with {data.get('settings')}, but this call asks for "
            f"{cfg.run_settings(spec.attention)}; use another --out, or delete that folder to train it again"
        )
    data["reused"] = True
    return RunOutcome(**data)


def run_one(cfg: CompareConfig, spec: RunSpec, train_fn: Callable | None = None, device: str | None = None) -> RunOutcome:
    """Train one (attention, seed) unless it is already finished; returns its outcome.

    ``train_fn`` defaults to :func:`mlca.engine.train.train` (tests pass a recording wrapper).
    The reported mAP is the LAST epoch's (the weights a user would ship after a fixed budget);
    the best epoch's is kept too, but picking the max over epochs on the validation set that
    also scores it flatters noisy runs, so the table does not use it.
    """
    d = run_dir(cfg, spec)
    marker = d / DONE_FILE
    if marker.is_file():
        return _load_done(cfg, spec, marker)
    resume = (d / "weights" / "last.pt").is_file()
    d.mkdir(parents=True, exist_ok=True)
    dev = cfg.device if device is None else device
    t0 = time.perf_counter()
    if train_fn is None and is_ultralytics(cfg.detector):
        from .ultralytics_run import train_run

        result = train_run(cfg, spec, d, resume=resume, device=dev)
    else:
        if train_fn is None:
            from mlca.engine.train import train as train_fn
        result = train_fn(_train_config(cfg, spec, resume=resume, device=dev))
    elapsed = time.perf_counter() - t0
    maps = _read_epoch_maps(Path(result.run_dir) / "results.csv")
    if not maps:
        raise RuntimeError(f"compare: {result.run_dir}/results.csv holds no per-epoch map50/map columns")
    scored = [m for m in maps if not math.isnan(m[0])] or maps  # epochs skipped by val_interval hold NaN
    best = max(scored, key=lambda m: (0.1 * m[0] + 0.9 * m[1]))  # YOLOv5's fitness
    outcome = RunOutcome(
        attention=spec.attention,
        seed=spec.seed,
        run_dir=str(d),
        map50=maps[-1][0],
        map=maps[-1][1],
        best_map50=best[0],
        best_map=best[1],
        epochs=len(maps),
        train_time_s=elapsed,
        settings=cfg.run_settings(spec.attention),
    )
    payload = dataclasses.asdict(outcome)
    payload.pop("reused")
    _atomic_write_json(marker, payload)
    return outcome


def _visible_gpus(cfg: CompareConfig) -> list[int]:
    if cfg.gpus is not None:
        return list(cfg.gpus)
    if cfg.device not in ("", "cuda"):
        return []  # the CPU, or one named GPU ("cuda:1"): the user chose where to run
    import torch

    return list(range(torch.cuda.device_count()))


def _spawn(cfg: CompareConfig, spec: RunSpec, gpu: int, log_dir: Path) -> subprocess.Popen:
    """One child process trains one run on one GPU (it sees only that GPU, as cuda:0)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = log_dir / f"{spec.name}.config.json"
    cfg_path.write_text(json.dumps(cfg.to_dict()))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu))
    cmd = [sys.executable, "-m", "mlca.compare.worker", str(cfg_path), spec.attention, str(spec.seed)]
    with open(log_dir / f"{spec.name}.log", "w") as log:  # the child keeps its own handle
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def run_all(
    cfg: CompareConfig,
    specs: Iterable[RunSpec] | None = None,
    train_fn: Callable | None = None,
    log: Callable[[str], None] = print,
) -> list[RunOutcome]:
    """Every run of ``cfg`` (finished ones are read back, not retrained), in plan order."""
    specs = list(plan_runs(cfg) if specs is None else specs)
    gpus = _visible_gpus(cfg) if train_fn is None else []
    todo = []
    for s in specs:
        marker = run_dir(cfg, s) / DONE_FILE
        if marker.is_file():
            _load_done(cfg, s, marker)  # other settings into the same --out: fail before training
        else:
            todo.append(s)
    if len(gpus) > 1 and len(todo) > 1:
        _run_on_gpus(cfg, todo, gpus, log)
    else:
        for i, spec in enumerate(todo):
            log(f"compare: run {i + 1}/{len(todo)}: {spec.name}")
            run_one(cfg, spec, train_fn=train_fn)
    skipped = len(specs) - len(todo)
    if skipped:
        log(f"compare: {skipped} finished run(s) reused from {cfg.out / 'runs'}")
    outs = [run_one(cfg, s, train_fn=train_fn) for s in specs]  # all finished now: reads markers
    done_now = {s.name for s in todo}
    for o in outs:
        o.reused = RunSpec(o.attention, o.seed).name not in done_now
    return outs


def _run_on_gpus(cfg: CompareConfig, todo: list[RunSpec], gpus: list[int], log: Callable[[str], None]) -> None:
    queue = list(todo)
    busy: dict[int, tuple[RunSpec, subprocess.Popen]] = {}
    failed: list[str] = []
    log_dir = cfg.out / "logs"
    while queue or busy:
        for gpu in gpus:
            if gpu not in busy and queue:
                spec = queue.pop(0)
                log(f"compare: {spec.name} on GPU {gpu} (log: {log_dir / (spec.name + '.log')})")
                busy[gpu] = (spec, _spawn(cfg, spec, gpu, log_dir))
        for gpu, (spec, proc) in list(busy.items()):
            if proc.poll() is not None:
                del busy[gpu]
                if proc.returncode != 0:
                    failed.append(f"{spec.name} (exit {proc.returncode}, see {log_dir / (spec.name + '.log')})")
        time.sleep(0.5)
    if failed:
        raise RuntimeError("compare: runs failed: " + "; ".join(failed))
