"""``mlca val``: mAP@0.5, mAP@0.5:0.95 and per-class AP of a checkpoint (or ONNX file) on a dataset."""

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
        description="Evaluate weights on a dataset split: COCO-style mAP (faster-coco-eval, 101-point) "
        "in original-image coordinates, with a per-class table.",
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
    p.add_argument("--save-json", metavar="PATH", default=None,
                   help="write the metrics and every detection (original-image pixels) to this JSON file")
    p.set_defaults(func=run)
    return p


def _train_config(weights: Path) -> dict[str, Any]:
    """What the checkpoint remembers of its training run (empty for ONNX files)."""
    if weights.suffix.lower() not in (".pt", ".pth"):
        return {}
    from mlca.engine.checkpoint import load_checkpoint

    return dict(load_checkpoint(weights).get("train_config") or {})


def format_table(res, names: list[str]) -> str:
    """The per-class table: class, boxes, AP50, AP50-95, with the 'all' row first."""
    width = max([len("class"), len("all")] + [len(n) for n in names])
    lines = [f"{'class':<{width}}  {'images':>6}  {'boxes':>6}  {'AP50':>6}  {'AP50-95':>7}",
             f"{'all':<{width}}  {res.n_images:>6}  {res.n_gt:>6}  {res.map50:>6.3f}  {res.map:>7.3f}"]
    for n in names:
        c = res.per_class[n]
        if c["n_gt"]:
            lines.append(f"{n:<{width}}  {'':>6}  {c['n_gt']:>6}  {c['ap50']:>6.3f}  {c['ap']:>7.3f}")
        else:
            lines.append(f"{n:<{width}}  {'':>6}  {0:>6}  {'-':>6}  {'-':>7}")
    return "\n".join(lines)


def _no_nan(x: Any) -> Any:
    """NaN -> None, so the JSON is standard (AP of a class without ground truth)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    return x


def run(args: argparse.Namespace) -> int:
    from mlca.data.config import load_dataset_config
    from mlca.data.dataset import DetectionDataset
    from mlca.data.errors import DataError
    from mlca.data.records import read_records
    from mlca.engine.checkpoint import CheckpointError
    from mlca.engine.distributed import select_device
    from mlca.engine.evaluate import evaluate
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
        dataset = DetectionDataset(records, img_size, augment=False)
        print(f"mlca val: {weights} on {config.name} {args.split} ({len(records)} images, {img_size} px, {device})")
        res = evaluate(model, dataset, conf_thres=args.conf, iou_thres=args.iou, max_det=args.max_det,
                       batch_size=args.batch_size, device=device, names=config.names, workers=args.workers,
                       progress=True, keep_detections=bool(args.save_json))
    except (FileNotFoundError, ValueError, DataError, CheckpointError, RuntimeError) as e:
        print(f"mlca val: error: {e}", file=sys.stderr)
        return 1
    print(format_table(res, list(config.names)))
    print(f"speed: {res.speed['inference']:.1f} ms inference, {res.speed['nms']:.1f} ms NMS per image")
    print(f"mAP50 {res.map50:.4f}  mAP50-95 {res.map:.4f}")
    if args.save_json:
        out = Path(args.save_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"weights": str(weights), "data": str(data), "split": args.split, "img_size": img_size,
                   "map50": res.map50, "map": res.map, "per_class": _no_nan(res.per_class),
                   "n_images": res.n_images, "n_gt": res.n_gt, "speed_ms": res.speed, "detections": res.detections}
        out.write_text(json.dumps(payload, indent=1))
        print(f"saved {out}")
    return 0
