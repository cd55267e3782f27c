"""``mlca export``: a trained MAY checkpoint to ONNX or TorchScript, checked against PyTorch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers, name: str = "export", help: str | None = None) -> argparse.ArgumentParser:
    from mlca.attention.mlca import EXPORT_FORMULATIONS  # the command imports torch anyway

    p = subparsers.add_parser(
        name, help=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Export a checkpoint from `mlca train` to ONNX (dynamo exporter) or TorchScript. "
        "The file is checked (onnx.checker, then onnxruntime / torch.jit.load against PyTorch on real "
        "images at several sizes) and written only if every check passes.",
    )
    p.add_argument("--weights", required=True, help="a .pt checkpoint from `mlca train`")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--img-size", type=int, default=640, help="input size (a multiple of 32)")
    p.add_argument("--dynamic", action="store_true", help="ONNX: dynamic batch, height and width")
    p.add_argument("--batch", type=int, default=1,
                   help="ONNX: the fixed batch of a static export (default 1; not with --dynamic)")
    p.add_argument("--half", action="store_true", help="float16 weights and arithmetic (float32 in/out)")
    p.add_argument("--nms", action="store_true",
                   help="ONNX: class-aware NMS in the graph; output (K, 7) [image, x1, y1, x2, y2, score, class]")
    p.add_argument("--conf", type=float, default=0.25, help="with --nms: score threshold")
    p.add_argument("--iou", type=float, default=0.45, help="with --nms: IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="with --nms: detections per image")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18)")
    p.add_argument("--mlca", choices=EXPORT_FORMULATIONS, default="exact",
                   help="ONNX: MLCA layers at symbolic (--dynamic) sizes, or sizes that are not multiples "
                        "of local_size, as exact gathers (default; the seed's function for any input) or "
                        "dense averaging-matrix products (faster in onnxruntime; equal for finite inputs, a "
                        "NaN/Inf spreads over its channel plane). Static multiples of local_size (320/640 "
                        "px) are exact and fast either way")
    p.add_argument("--out", default=None, help="output file (default: next to the weights, .onnx / .torchscript)")
    p.add_argument("--check-images", nargs="*", default=None,
                   help="images for the check against PyTorch (default: a real Pascal VOC photo)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from mlca.deploy.export import ExportError, export_onnx, export_torchscript
    from mlca.engine.checkpoint import CheckpointError, load_model

    weights = Path(args.weights)
    suffix = ".onnx" if args.format == "onnx" else ".torchscript"
    out = Path(args.out) if args.out else weights.with_suffix(suffix)
    try:
        model = load_model(weights)
        if args.format == "onnx":
            report = export_onnx(model, out, args.img_size, dynamic=args.dynamic, batch=args.batch,
                                 half=args.half, opset=args.opset, check_images=args.check_images, nms=args.nms,
                                 conf=args.conf, iou=args.iou, max_det=args.max_det, mlca=args.mlca)
        else:
            if args.nms or args.dynamic or args.batch != 1:
                raise ValueError("--nms, --dynamic and --batch are ONNX options (a TorchScript trace "
                                 "follows the input size)")
            report = export_torchscript(model, out, args.img_size, half=args.half, check_images=args.check_images)
    except (ExportError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"mlca export: error: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0
