"""mlca's MAY (each head) against ultralytics YOLO11n on the same data and budget.

Every run trains from scratch in a fresh subprocess with the same thread setting, one run at
a time, and every model's final weights are scored by the SAME evaluator: mlca's COCO mAP
(101-point, ``mlca.engine.metrics.coco_map``) on the same validation records. For YOLO11n the
detections come from ultralytics' own predictor (its letterbox and NMS, conf 0.001, IoU 0.7,
300 per image) in original-image pixels; its own ``val`` numbers are kept as a column too.
MAY is scored by ``mlca.evaluate`` on the EMA weights of the last epoch (``last.pt``), the
YOLO11n on ultralytics' ``last.pt`` (also the EMA weights), so both are "what training ends
with", not the best epoch picked on the validation set.

Time to accuracy: every run also keeps its learning curve, ``curve = [[t, mAP50, mAP50-95],
...]``, one point per epoch, ``t`` the seconds from the run's start (in its process) to the end
of that epoch (MAY: its per-epoch validation, the same evaluator on the EMA weights; ultralytics:
its own per-epoch validation). The table's "to YOLO11n's mAP" column is, for a MAY run, the
first ``t`` at which MAY's mAP50-95 reaches YOLO11n's final mAP50-95 of the same set and budget
(by the common evaluator; mean over YOLO11n's seeds), next to YOLO11n's own training time: the
answer to "does MAY reach what YOLO11n ends with, in no more wall time?". A MAY epoch's
``t`` counts everything up to that epoch's validation (setup, autoanchor, training, the
validations and checkpoints of the epochs before), so it errs on MAY's side of late.

    python benchmarks/bench_recipe.py                           # both sets, short budget, seed 0
    python benchmarks/bench_recipe.py --budgets short,long --seeds 0,1,2
    python benchmarks/bench_recipe.py --table                   # the table of what is measured
    python benchmarks/bench_recipe.py --models may-yolov5 --change optimizer=sgd --change lr0=0.01
                                                                # one change to MAY's defaults

Budgets (epochs, image size, batch): ``short`` 8 / 128 / 16 (mlca compare's), ``long``
20 / 160 / 16 (what a 2-core CPU affords for six runs within an hour: ~4x the short budget;
60 epochs at 256 px would be ~30x), or ``EPOCHS:SIZE:BATCH``. Results go to
``benchmarks/results/recipe/results.json`` (a finished run is never repeated) and the table is
printed as markdown. ultralytics is an optional dependency (AGPL-3.0; only imported).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

BUDGETS = {"short": (8, 128, 16), "long": (20, 160, 16)}
MODELS = ("may-yolov5", "may-yolov8", "yolo11n")
SETS = ("embedded", "embedded-dense")
OUT = Path(__file__).resolve().parent / "results" / "recipe"


def budget_of(name: str) -> tuple[int, int, int]:
    if name in BUDGETS:
        return BUDGETS[name]
    try:
        e, s, b = (int(v) for v in name.split(":"))
    except ValueError:
        raise SystemExit(f"bench_recipe: budget {name!r} is not one of {sorted(BUDGETS)} or EPOCHS:SIZE:BATCH") from None
    return e, s, b


def run_key(data: str, budget: str, model: str, seed: int, attention: str, changes: tuple[str, ...] = ()) -> str:
    key = f"{data}|{budget}|{model}|{attention}|seed{seed}"
    return f"{key}|{','.join(changes)}" if changes else key


# MAY's batch-norm settings are constants of mlca.models.layers (YOLOv5's), not training
# options: a change to one is applied in the run's own process before the model is built.
BN_CHANGES = {"bn_momentum": "BN_MOMENTUM", "bn_eps": "BN_EPS"}


def parse_changes(items: list[str]) -> dict:
    """``KEY=VALUE`` strings -> TrainConfig values; keys that are not TrainConfig fields are
    augmentation / loss settings (``hyp``), which TrainConfig checks by name, except the
    batch-norm ones of :data:`BN_CHANGES` (``bn``: constant name -> value)."""
    import dataclasses

    import yaml

    from mlca.engine.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    out: dict = {"hyp": {}}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"bench_recipe: --change {item!r} is not KEY=VALUE")
        if key in BN_CHANGES:
            out.setdefault("bn", {})[BN_CHANGES[key]] = float(yaml.safe_load(value))
        else:
            (out if key in fields else out["hyp"])[key] = yaml.safe_load(value)
    return out


# ----------------------------------------------------------------------------- in the child


def _val_set(data: str):
    """(validation records, class names) of a dataset."""
    from mlca.data import load_dataset_config, read_records

    config = load_dataset_config(data)
    return read_records(config, "val"), list(config.names)


def ultralytics_dets(results) -> list:
    """ultralytics ``Results`` (one per image) -> mlca ``ImageDets`` (xyxy pixels, scores, labels)."""
    import numpy as np

    from mlca.engine.metrics import ImageDets

    out = []
    for r in results:
        b = r.boxes
        out.append(ImageDets(b.xyxy.cpu().numpy().astype(np.float64).reshape(-1, 4),
                             b.conf.cpu().numpy().astype(np.float64).reshape(-1),
                             b.cls.cpu().numpy().astype(np.int64).reshape(-1)))  # fmt: skip
    return out


def _epoch_ends(t_train: float, durations: list[float]) -> list[float]:
    """Seconds from the run's start to the end of each epoch, from the time training returned
    (``t_train``) and the epochs' durations: epoch k ended at t_train minus the durations of the
    epochs after it. What a run does between epochs (checkpoints) counts to the epoch before, so
    each end is, if anything, late."""
    ends, later = [], 0.0
    for d in reversed(durations):
        ends.append(t_train - later)
        later += d
    return ends[::-1]


def may_curve(csv_path: Path, t_train: float) -> list[list[float]]:
    """[[t, mAP50, mAP50-95], ...] per validated epoch of an mlca run's results.csv."""
    import csv

    rows = list(csv.DictReader(csv_path.open()))
    ends = _epoch_ends(t_train, [float(r["time_s"]) for r in rows])
    return [[t, float(r["map50"]), float(r["map"])] for t, r in zip(ends, rows) if r["map"] not in ("", "nan")]


def ultralytics_curve(csv_path: Path, t_train: float) -> list[list[float]]:
    """[[t, mAP50, mAP50-95], ...] per epoch of an ultralytics results.csv (its own validation;
    its ``time`` column is cumulative)."""
    import csv

    rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(csv_path.open())]
    cum = [float(r["time"]) for r in rows]
    ends = [t_train - (cum[-1] - c) for c in cum]
    return [[t, float(r["metrics/mAP50(B)"]), float(r["metrics/mAP50-95(B)"])] for t, r in zip(ends, rows)]


def time_to_reach(curve: list[list[float]], target: float) -> float | None:
    """The first t of ``curve`` whose mAP50-95 is at least ``target``, or None."""
    return next((t for t, _, m in curve if m >= target), None)


def _train_may(spec: dict, run_dir: Path, t0: float) -> dict:
    import mlca
    import mlca.models.layers
    from mlca.data import DetectionDataset
    from mlca.engine.train import TrainConfig, train

    head = spec["model"].split("-", 1)[1]
    changes = parse_changes(spec.get("changes", []))
    for name, value in changes.pop("bn", {}).items():
        setattr(mlca.models.layers, name, value)
    cfg = TrainConfig(**{**dict(data=spec["data"], attention=spec["attention"], head=head, epochs=spec["epochs"],
                                img_size=spec["img_size"], batch_size=spec["batch"], seed=spec["seed"],
                                out=run_dir, exist_ok=True), **changes})  # fmt: skip
    res = train(cfg)
    t_train = time.perf_counter() - t0
    curve = may_curve(res.run_dir / "results.csv", t_train)
    model = mlca.load_model(res.last)
    val = DetectionDataset(_val_set(spec["data"])[0], cfg.img_size, augment=False)  # a changed size too
    m = mlca.evaluate(model, val)
    return {"map50": m.map50, "map": m.map, "own_map50": res.metrics.get("map50"), "own_map": res.metrics.get("map"),
            "params": sum(p.numel() for p in model.parameters()), "curve": curve,
            "train_wall_s": t_train}  # fmt: skip


def _yolo_data(data: str) -> Path:
    """The set as a YOLO-format dataset (written once) for ultralytics."""
    from mlca.data.yolo_export import export_yolo

    folder = OUT / "data" / data
    if not (folder / "data.yaml").is_file():
        export_yolo(data, folder, overwrite=True)
    return folder / "data.yaml"


def _train_ultralytics(spec: dict, run_dir: Path, t0: float) -> dict:
    from mlca.extras import require_ultralytics

    require_ultralytics("bench_recipe.py")  # offline before ultralytics' first import
    import ultralytics.utils.torch_utils as ultralytics_torch_utils
    from ultralytics import YOLO

    # ultralytics' CPU training resets torch to min(8, cpu_count - 1) threads (1 on 2 cores);
    # every run of the table gets the same thread count instead
    ultralytics_torch_utils.NUM_THREADS = spec["threads"]

    from mlca.engine.metrics import ImageGT, coco_map

    data_yaml = _yolo_data(spec["data"])
    model = YOLO(f"{spec['model']}.yaml")
    model.train(data=str(data_yaml), epochs=spec["epochs"], imgsz=spec["img_size"], batch=spec["batch"],
                seed=spec["seed"], device="cpu", project=str(run_dir.parent), name=run_dir.name, exist_ok=True,
                pretrained=False, plots=False, verbose=False, amp=False)  # fmt: skip
    t_train = time.perf_counter() - t0
    curve = ultralytics_curve(run_dir / "results.csv", t_train)
    own = model.trainer.metrics if model.trainer is not None else {}
    last = YOLO(str(run_dir / "weights" / "last.pt"))
    records, names = _val_set(spec["data"])
    results = []
    for i in range(0, len(records), 16):
        results += last.predict([str(r.image) for r in records[i : i + 16]], imgsz=spec["img_size"], conf=0.001,
                                iou=0.7, max_det=300, device="cpu", verbose=False)  # fmt: skip
    gts = [ImageGT(r.boxes, r.labels, r.width, r.height, r.ignore, r.area) for r in records]
    m = coco_map(gts, ultralytics_dets(results), names)
    return {"map50": m.map50, "map": m.map, "own_map50": float(own.get("metrics/mAP50(B)", float("nan"))),
            "own_map": float(own.get("metrics/mAP50-95(B)", float("nan"))),
            "params": sum(p.numel() for p in last.model.parameters()), "curve": curve,
            "train_wall_s": t_train}  # fmt: skip


def child(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    run_dir = OUT / "runs" / spec["key"].replace("|", "_")
    t0 = time.perf_counter()
    fn = _train_may if spec["model"].startswith("may-") else _train_ultralytics
    out = fn(spec, run_dir, t0)
    out["train_eval_wall_s"] = time.perf_counter() - t0
    print("RESULT " + json.dumps(out), flush=True)


# ----------------------------------------------------------------------------- the parent


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, path)


def run_one(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in proc.stdout.splitlines()[::-1] if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"run {spec['key']} failed (exit {proc.returncode}):\n{tail}")
    out = json.loads(line[len("RESULT "):])
    out.update(wall_s=wall, cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))
    return out


def table(results: dict) -> str:
    """Markdown: one block per (set, budget), one row per model (mean ± std over seeds)."""
    import statistics

    groups: dict[tuple, dict[str, list[dict]]] = {}
    for key, r in results.items():
        data, budget, model, attention, _, *changes = key.split("|")
        name = f"{model} ({attention}{', ' + changes[0] if changes else ''})" if model.startswith("may") else model
        groups.setdefault((data, budget), {}).setdefault(name, []).append(r)

    def ms(vals: list[float], digits: int = 3) -> str:
        if len(vals) == 1:
            return f"{vals[0]:.{digits}f}"
        return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"

    def reach(name: str, rs: list[dict], yolo: list[dict] | None) -> str:
        """MAY: seconds to YOLO11n's final mAP50-95 (s of its runs that got there); YOLO11n: its
        own training time."""
        if name == "yolo11n":
            times = [r["train_wall_s"] for r in rs if r.get("train_wall_s") is not None]
            return f"{ms(times, 0)} s (its training)" if times else "-"
        if not name.startswith("may") or not yolo or any("curve" not in r for r in rs):
            return "-"
        target = statistics.mean(r["map"] for r in yolo)
        if target <= 0:
            return "- (YOLO11n learnt nothing)"
        times = [t for t in (time_to_reach(r["curve"], target) for r in rs) if t is not None]
        if not times:
            return "not reached"
        return f"{ms(times, 0)} s" + (f" ({len(times)} of {len(rs)} runs)" if len(times) < len(rs) else "")

    lines = []
    for (data, budget), models in sorted(groups.items()):
        e, s, b = budget_of(budget)
        lines += [f"\n**{data}, {budget}** ({e} epochs, {s} px, batch {b})\n",
                  "| model | seeds | params | mAP50 | mAP50-95 | own val mAP50 / mAP50-95 | wall s | CPU s "
                  "| to YOLO11n's mAP50-95 |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for name, rs in sorted(models.items()):
            lines.append(
                f"| {name} | {len(rs)} | {rs[0]['params'] / 1e6:.2f} M | {ms([r['map50'] for r in rs])} | {ms([r['map'] for r in rs])} "
                f"| {ms([r['own_map50'] for r in rs])} / {ms([r['own_map'] for r in rs])} "
                f"| {ms([r['wall_s'] for r in rs], 0)} | {ms([r['cpu_s'] for r in rs], 0)} | {reach(name, rs, models.get('yolo11n'))} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--budgets", default="short", help=f"comma-separated: {', '.join(BUDGETS)} or EPOCHS:SIZE:BATCH")
    p.add_argument("--models", default=",".join(MODELS), help="may-yolov5, may-yolov8, yolo11n, yolov8n")
    p.add_argument("--seeds", default="0")
    p.add_argument("--attention", default="mlca", help="MAY's attention")
    p.add_argument("--change", action="append", default=[], metavar="KEY=VALUE",
                   help="a change to MAY's training defaults (a TrainConfig field or a hyp key), repeatable; "
                        "ultralytics models are run with their own defaults")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every run")
    p.add_argument("--results", default=str(OUT / "results.json"))
    p.add_argument("--table", action="store_true", help="print the table of what is measured and stop")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    path = Path(args.results)
    results = _load(path)
    if args.table:
        print(table(results))
        return 0
    plan = [(s, b, m, int(seed)) for b in args.budgets.split(",") for seed in args.seeds.split(",")
            for s in args.sets.split(",") for m in args.models.split(",")]  # fmt: skip
    parse_changes(args.change)  # a bad change fails here, before any run
    for data, budget, model, seed in plan:
        changes = tuple(args.change) if model.startswith("may-") else ()
        key = run_key(data, budget, model, seed, args.attention, changes)
        if key in results:
            continue
        e, s, b = budget_of(budget)
        spec = dict(key=key, data=data, model=model, seed=seed, attention=args.attention, epochs=e, img_size=s,
                    batch=b, threads=args.threads, changes=list(changes))  # fmt: skip
        print(f"{time.strftime('%H:%M:%S')} {key} ...", flush=True)
        results[key] = run_one(spec) | {"finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        _save(path, results)
        r = results[key]
        print(f"  mAP50 {r['map50']:.3f}  mAP50-95 {r['map']:.3f}  wall {r['wall_s']:.0f} s  CPU {r['cpu_s']:.0f} s", flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
