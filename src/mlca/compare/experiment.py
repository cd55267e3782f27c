"""``mlca compare`` end to end: train every (attention, seed), measure, test, report, plot."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .config import CompareConfig
from .cost import count_params, gflops
from .detectors import build_model, is_ultralytics
from .latency import available_devices, measure_latency
from .report import ResultRow, build_rows, markdown_table, write_results_csv, write_runs_csv
from .runner import RunOutcome, run_all

__all__ = ["CompareResult", "run_compare", "OUTPUT_FILES"]

OUTPUT_FILES = ("results.csv", "runs.csv", "results.md", "mAP-vs-latency.png", "mAP-vs-params.png", "curves.png")


@dataclass
class CompareResult:
    rows: list[ResultRow]
    runs: list[RunOutcome]
    table: str  # the Markdown table, as written to results.md
    files: dict[str, Path]
    seconds: float


def check_attentions(names: list[str], attention_kwargs: dict | None = None) -> None:
    """Every name is registered and takes its settings: fails before any training.

    Raises KeyError (unknown name, listing the known ones), TypeError (a setting the module
    does not take, listing the ones it does) or ValueError (a bad value).
    """
    import mlca.attention  # noqa: F401  (registers the zoo)
    from mlca.attention.registry import create_attention, get_attention_class

    for n in names:
        get_attention_class(n)  # KeyError listing the known names
        kwargs = (attention_kwargs or {}).get(n)
        if kwargs:
            create_attention(n, 64, **kwargs)


def _num_classes(data: str) -> int:
    from mlca.data.config import load_dataset_config

    return len(load_dataset_config(data).names)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (
        f"{platform.system()} {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads){gpu}"
    )


def run_compare(cfg: CompareConfig, train_fn: Callable | None = None, log: Callable[[str], None] = print) -> CompareResult:
    """Run the whole experiment described by ``cfg``; files land in ``cfg.out``.

    ``train_fn`` replaces :func:`mlca.engine.train.train` (for tests of the orchestration).
    """
    t0 = time.perf_counter()
    check_attentions(cfg.attentions, cfg.attention_kwargs)
    nc = _num_classes(cfg.data)  # a bad --data fails here, before hours of training
    if is_ultralytics(cfg.detector):
        from .ultralytics_run import import_ultralytics

        import_ultralytics()  # missing: the error names the extra to install, before any run
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    runs = run_all(cfg, train_fn=train_fn, log=log)

    models = {a: build_model(cfg, a, nc) for a in cfg.attentions}
    params = {a: count_params(m) for a, m in models.items()}
    flops = {a: gflops(m, cfg.img_size) for a, m in models.items()}
    log(f"compare: timing batch-1 inference of {len(models)} models on {', '.join(available_devices())}")
    lat_cpu = measure_latency(models, cfg.img_size, "cpu", rounds=cfg.latency_rounds)
    lat_cuda = measure_latency(models, cfg.img_size, "cuda", rounds=cfg.latency_rounds) if torch.cuda.is_available() else None

    rows = build_rows(runs, cfg.attentions, cfg.baseline, params, flops, lat_cpu, lat_cuda, cfg.attention_kwargs)
    files = {
        "results.csv": write_results_csv(rows, out / "results.csv"),
        "runs.csv": write_runs_csv(runs, out / "runs.csv"),
    }
    seconds = time.perf_counter() - t0
    trained = [r for r in runs if not r.reused]
    footer = [
        f"Settings: {f'preset={cfg.preset}, ' if cfg.preset else ''}data={cfg.data}, epochs={cfg.epochs}, img_size={cfg.img_size}, batch_size={cfg.batch_size}, "
        f"seeds={cfg.seeds}, "
        + (f"detector={cfg.detector} (trained and validated by ultralytics, attention where={cfg.where})"
           if is_ultralytics(cfg.detector) else f"width={cfg.width}, head={cfg.head}")
        + (f", max_train_images={cfg.max_train_images}" if cfg.max_train_images else "")
        + (f", max_val_images={cfg.max_val_images}" if cfg.max_val_images else "")
        + ".",
        f"Machine: {_machine()}.",
        f"This call: {len(trained)} run(s) trained, {len(runs) - len(trained)} reused; {seconds / 60:.1f} min in all.",
    ]
    table = markdown_table(rows, cfg.img_size, cfg.baseline, footer)
    (out / "results.md").write_text(f"# mlca compare: {cfg.data}\n\n{table}")
    files["results.md"] = out / "results.md"

    from .plots import plot_curves, plot_map_vs

    name = cfg.detector if is_ultralytics(cfg.detector) else "MAY"

    files["mAP-vs-latency.png"] = plot_map_vs(rows, "latency", out / "mAP-vs-latency.png", title=f"{name} on {cfg.data} @ {cfg.img_size}")
    files["mAP-vs-params.png"] = plot_map_vs(rows, "params", out / "mAP-vs-params.png", title=f"{name} on {cfg.data} @ {cfg.img_size}")
    files["curves.png"] = plot_curves(runs, cfg.attentions, out / "curves.png")

    if cfg.cam:
        from .cam import write_cams

        files.update(write_cams(cfg, runs, log=log))

    log("\n" + table)
    log("compare: wrote " + ", ".join(str(p) for p in files.values()))
    return CompareResult(rows=rows, runs=runs, table=table, files=files, seconds=time.perf_counter() - t0)
