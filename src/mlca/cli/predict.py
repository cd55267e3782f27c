"""``mlca predict``: draw the detections of a .pt or .onnx model on images and write PNG/JPG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers, name: str = "predict", help: str | None = None) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        name, help=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Detect objects in images (files, folders, globs) and write copies with boxes, "
        "class names and scores drawn.",
    )
    p.add_argument("--weights", required=True, help="a .pt checkpoint from `mlca train`, or an .onnx export")
    p.add_argument("--source", required=True, nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", default="runs/predict", help="folder for the drawn images")
    p.add_argument("--img-size", type=int, default=None,
                   help="input size (default: the training size, or a fixed-size ONNX input, else 640)")
    p.add_argument("--conf", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="detections kept per image")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 or 1 (default: CUDA if available)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from mlca.cli.val import _train_config
    from mlca.data.errors import DataError
    from mlca.engine.checkpoint import CheckpointError
    from mlca.engine.distributed import select_device
    from mlca.engine.predict import load_backend, predict_images

    weights = Path(args.weights)
    try:
        device = select_device(args.device)
        backend = load_backend(weights, device=device)
        img_size = int(args.img_size or _train_config(weights).get("img_size") or getattr(backend, "img_size", None)
                       or 640)
        paths, dets = predict_images(backend, args.source, img_size=img_size, conf=args.conf, iou=args.iou,
                                     out_dir=args.out, device=device, max_det=args.max_det, progress=True)
    except (FileNotFoundError, ValueError, DataError, CheckpointError, RuntimeError) as e:
        print(f"mlca predict: error: {e}", file=sys.stderr)
        return 1
    names = getattr(backend, "names", None)
    for path, det in zip(paths, dets):
        counts: dict[str, int] = {}
        for c in det[:, 5].long().tolist():
            key = names[c] if names and c < len(names) else str(c)
            counts[key] = counts.get(key, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no detections"
        print(f"{path}: {summary}")
    print(f"{len(paths)} images, {sum(len(d) for d in dets)} detections -> {args.out}")
    return 0
