"""``mlca val``: mAP and per-class AP of a checkpoint (or ONNX file) on a dataset.

Three protocols (``--metric``): COCO (101-point AP at IoU 0.5:0.95, faster-coco-eval, with
COCO's 12 summary numbers), and the VOC devkit's AP at IoU 0.5, 11-point (``voc07``, the
number VOC2007-test papers report) or all-point (``voc12``). ``--save-json`` writes a COCO
results file (with the dataset's own image and category ids for COCO data, and for other
data a COCO ground-truth file beside it that the results refer to).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers, name: str = "val", help: str | None = None) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        name, help=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Evaluate weights on a dataset split in original-image coordinates, with a per-class "
        "table: COCO mAP (faster-coco-eval, 101-point, IoU 0.5:0.95) or the VOC devkit's mAP@0.5 "
        "(11-point VOC2007 or all-point VOC2012). Difficult (VOC) and crowd (COCO) objects are ignored.",
    )
    p.add_argument("--weights", required=True, help="a .pt checkpoint from `mlca train`, or an .onnx export")
    p.add_argument("--data", default=None,
                   help='dataset YAML or "embedded" (default: the dataset the checkpoint was trained on)')
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument("--img-size", type=int, default=None,
                   help="input size (default: the training size, or a fixed-size ONNX input, else 640)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--conf", type=float, default=0.001, help="NMS confidence threshold (low for mAP)")
    p.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="detections kept per image")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 or 1 (default: CUDA if available)")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--skip-bad", action="store_true", help="skip bad images/labels (reported) instead of failing")
    p.add_argument("--metric", default="coco", choices=("coco", "voc07", "voc12"),
                   help="coco: COCOeval's AP50 and AP50-95 (101-point); voc07: the VOC devkit's 11-point "
                   "AP@0.5 (VOC2007 test, the paper's mAP@0.5); voc12: its all-point AP@0.5 (VOC2010-2012)")
    p.add_argument("--save-json", metavar="PATH", default=None,
                   help="write every detection as a COCO results file (pycocotools' COCO.loadRes reads it); "
                   "for COCO data with the file's own image and category ids, for other data with the "
                   "COCO ground truth it refers to in PATH_gt.json")
    p.add_argument("--save-metrics", metavar="PATH", default=None,
                   help="write the metrics (mAP, per-class AP, COCO's 12 stats, speed) to this JSON file")
    p.set_defaults(func=run)
    return p


def _train_config(weights: Path) -> dict[str, Any]:
    """What the checkpoint remembers of its training run (empty for ONNX files)."""
    if weights.suffix.lower() not in (".pt", ".pth"):
        return {}
    from mlca.engine.checkpoint import load_checkpoint

    return dict(load_checkpoint(weights).get("train_config") or {})


def format_table(res, names: list[str]) -> str:
    """The per-class table: class, boxes, AP50 (and AP50-95 for COCO), with the 'all' row first.

    ``boxes`` counts the ground truth that is scored (ignored objects are not counted).
    """
    coco = res.metric == "coco"
    width = max([len("class"), len("all")] + [len(n) for n in names])

    def num(x: float, w: int) -> str:
        return f"{'-':>{w}}" if math.isnan(x) else f"{x:>{w}.3f}"

    head = f"{'class':<{width}}  {'images':>6}  {'boxes':>6}  {'AP50':>6}" + (f"  {'AP50-95':>7}" if coco else "")
    lines = [head, f"{'all':<{width}}  {res.n_images:>6}  {res.n_gt:>6}  {num(res.map50, 6)}"
             + (f"  {num(res.map, 7)}" if coco else "")]
    for n in names:
        c = res.per_class[n]
        ap = c["ap50"] if c["n_gt"] else math.nan
        lines.append(f"{n:<{width}}  {'':>6}  {c['n_gt']:>6}  {num(ap, 6)}"
                     + (f"  {num(c['ap'] if c['n_gt'] else math.nan, 7)}" if coco else ""))
    return "\n".join(lines)


METRIC_TITLES = {
    "coco": "COCO 101-point AP",
    "voc07": "VOC2007 devkit 11-point AP@0.5",
    "voc12": "VOC2012 devkit all-point AP@0.5",
}


def format_coco_stats(stats: list[float]) -> str:
    """COCOeval's 12 summary numbers, one per line, named as COCOeval prints them."""
    from mlca.engine.metrics import COCO_STAT_NAMES

    return "\n".join(f"  {n:<10} {v:.4f}" if v > -1 else f"  {n:<10} -" for n, v in zip(COCO_STAT_NAMES, stats))


def _gt_path(results: Path) -> Path:
    return results.with_name(f"{results.stem}_gt.json")


def _no_nan(x: Any) -> Any:
    """NaN -> None, so the JSON is standard (AP of a class without ground truth)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    return x


def run(args: argparse.Namespace) -> int:
    from mlca.data.coco import coco_category_ids, coco_split
    from mlca.data.config import load_dataset_config
    from mlca.data.dataset import DetectionDataset
    from mlca.data.errors import DataError
    from mlca.data.records import read_records
    from mlca.engine.checkpoint import CheckpointError
    from mlca.engine.distributed import select_device
    from mlca.engine.evaluate import evaluate
    from mlca.engine.metrics import COCO_STAT_NAMES
    from mlca.engine.predict import load_backend

    weights = Path(args.weights)
    try:
        trained = _train_config(weights)
        data = args.data or trained.get("data")
        if not data:
            raise ValueError(f"{weights} does not record its dataset; pass --data")
        device = select_device(args.device)
        config = load_dataset_config(data)
        backend = load_backend(weights, device=device)
        img_size = int(args.img_size or trained.get("img_size") or getattr(backend, "img_size", None) or 640)
        model = getattr(backend, "model", backend)  # evaluate the nn.Module itself for .pt weights
        nc = getattr(model, "num_classes", None)
        if nc is not None and nc != len(config.names):
            raise ValueError(f"{weights} predicts {nc} classes but dataset {config.name!r} has "
                             f"{len(config.names)} ({', '.join(config.names)})")
        records = read_records(config, args.split, skip_bad=args.skip_bad)
        # COCO data: results carry the file's own category ids (and, through the records, image ids)
        category_ids = coco_category_ids(config, args.split) if config.format == "coco" else None
        dataset = DetectionDataset(records, img_size, augment=False)
        print(f"mlca val: {weights} on {config.name} {args.split} ({len(records)} images, {img_size} px, {device}, "
              f"{METRIC_TITLES[args.metric]})")
        res = evaluate(model, dataset, conf_thres=args.conf, iou_thres=args.iou, max_det=args.max_det,
                       batch_size=args.batch_size, device=device, names=config.names, workers=args.workers,
                       progress=True, keep_detections=bool(args.save_json), metric=args.metric,
                       category_ids=category_ids)
    except (FileNotFoundError, ValueError, DataError, CheckpointError, RuntimeError) as e:
        print(f"mlca val: error: {e}", file=sys.stderr)
        return 1
    print(format_table(res, list(config.names)))
    print(f"speed: {res.speed['inference']:.1f} ms inference, {res.speed['nms']:.1f} ms NMS per image")
    if args.metric == "coco":
        print("COCOeval summary (area ranges use the annotations' own area):")
        print(format_coco_stats(res.stats))
        print(f"mAP50 {res.map50:.4f}  mAP50-95 {res.map:.4f}")
    else:
        print(f"mAP50 {res.map50:.4f}  ({METRIC_TITLES[args.metric]})")
    if args.save_json:
        out = Path(args.save_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res.detections))
        if config.format == "coco":
            print(f"saved {out} ({len(res.detections)} detections; ground truth: "
                  f"{coco_split(config.root, config.split(args.split), config.source)[0]})")
        else:
            gt = _gt_path(out)
            gt.write_text(json.dumps(res.ground_truth))
            print(f"saved {out} ({len(res.detections)} detections) and its ground truth {gt}")
    if args.save_metrics:
        out = Path(args.save_metrics)
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"weights": str(weights), "data": str(data), "split": args.split, "img_size": img_size,
                   "metric": args.metric, "map50": _no_nan(res.map50), "map": _no_nan(res.map),
                   "per_class": _no_nan(res.per_class), "coco_stats": dict(zip(COCO_STAT_NAMES, res.stats)),
                   "n_images": res.n_images, "n_gt": res.n_gt, "speed_ms": res.speed}
        out.write_text(json.dumps(payload, indent=1))
        print(f"saved {out}")
    return 0
