"""``mlca compare``: the paper's experiment (MAY with each attention, over seeds) in one command."""

from __future__ import annotations

import argparse

from mlca.compare.config import DEFAULT_ATTENTIONS, CompareConfig
from mlca.compare.presets import PRESETS

_EPILOG = f"""\
With no arguments it trains MAY with {', '.join(DEFAULT_ATTENTIONS)} on the embedded data
({CompareConfig.seeds} seeds, {CompareConfig.epochs} epochs, {CompareConfig.img_size} px), about 15 minutes on a 2-core CPU.
The paper's comparison: --preset paper ({', '.join(PRESETS['paper'].attentions)} with the official
repository's module settings, e.g. Coordinate Attention reduction 16; docs/compare.md lists them).
Finished runs under --out are reused; an interrupted run resumes. See docs/compare.md.
"""


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _attention_arg(text: str) -> tuple[str, str, object]:
    """``NAME:KEY=VALUE`` -> (name, key, value); the value is read as YAML (16, 0.5, true, relu)."""
    import yaml

    name, sep, rest = text.partition(":")
    key, eq, value = rest.partition("=")
    if not (sep and eq and name.strip() and key.strip()):
        raise argparse.ArgumentTypeError(f"expected NAME:KEY=VALUE (e.g. ca:reduction=16), got {text!r}")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    return name.strip(), key.strip(), parsed


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def add_parser(subparsers, name: str = "compare", help: str = "") -> argparse.ArgumentParser:
    d = CompareConfig
    p = subparsers.add_parser(
        name, help=help, description=__doc__, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=d.data, help="dataset config YAML, or 'embedded' (default)")
    p.add_argument("--attentions", type=_csv_list, default=None,
                   help=f"comma-separated attention names (default {','.join(DEFAULT_ATTENTIONS)}; "
                        "with --preset: a subset of the preset's)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a named comparison: " + "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()))
    p.add_argument("--attention-arg", type=_attention_arg, action="append", default=[], metavar="NAME:KEY=VALUE",
                   help="a module constructor setting, e.g. ca:reduction=16 (repeatable; over the preset's)")
    p.add_argument("--seeds", type=_positive_int, default=d.seeds, help="runs per attention, seeds 0..N-1 (default %(default)s)")
    p.add_argument("--epochs", type=_positive_int, default=d.epochs, help="epochs per run (default %(default)s)")
    p.add_argument("--img-size", type=_positive_int, default=d.img_size, help="square image size, multiple of 32 (default %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="(default %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, help="data-loader workers per run (default %(default)s)")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1 ... (default: the trainer's choice)")
    p.add_argument("--gpus", type=lambda s: [int(x) for x in _csv_list(s)], default=None,
                   help="GPU ids to spread runs over, one process each (default: all visible when on CUDA)")
    p.add_argument("--out", default=str(d.out), help="output folder (default %(default)s)")
    p.add_argument("--baseline", default=d.baseline, help="attention the others are tested against (default %(default)s)")
    p.add_argument("--width", type=float, default=d.width, help="MAY width multiplier (default %(default)s)")
    p.add_argument("--detector", default=d.detector,
                   help="may (default), an ultralytics model (yolo11n, yolov8n, yolo11s, ...) or an ultralytics "
                        "model YAML: the attentions go into it and ultralytics trains and validates it "
                        '(needs pip install "mlca[ultralytics]")')
    p.add_argument("--where", choices=("backbone", "neck"), default=d.where,
                   help="ultralytics detectors: the attention after each backbone C3k2/C2f stage, or on each "
                        "Detect input (default %(default)s)")
    p.add_argument("--head", choices=("yolov5", "yolov8"), default=d.head,
                   help="MAY's detection head: yolov5 = the paper's anchor-based head, yolov8 = anchor-free (default %(default)s)")
    p.add_argument("--max-train-images", type=_positive_int, default=None, help="train on the first N training images only")
    p.add_argument("--max-val-images", type=_positive_int, default=None, help="evaluate on the first N validation images only")
    p.add_argument("--cam", action="store_true", help="also write EigenCAM heatmaps and MLCA attention maps")
    p.add_argument("--cam-images", type=_positive_int, default=d.cam_images, help="validation images in the CAM grids (default %(default)s)")
    p.add_argument("--latency-rounds", type=_positive_int, default=d.latency_rounds, help="timed rounds per model (default %(default)s)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from mlca.compare.experiment import check_attentions, run_compare

    kwargs: dict[str, dict] = {}
    for name, key, value in args.attention_arg:
        kwargs.setdefault(name, {})[key] = value
    fields = dict(
        data=args.data, seeds=args.seeds, epochs=args.epochs,
        img_size=args.img_size, batch_size=args.batch_size, workers=args.workers, device=args.device,
        out=args.out, baseline=args.baseline, width=args.width, head=args.head, detector=args.detector, where=args.where, max_train_images=args.max_train_images,
        max_val_images=args.max_val_images, cam=args.cam, cam_images=args.cam_images,
        latency_rounds=args.latency_rounds, gpus=args.gpus,
    )
    try:
        if args.preset:
            cfg = CompareConfig.from_preset(args.preset, args.attentions, attention_kwargs=kwargs, **fields)
        else:
            attentions = args.attentions if args.attentions is not None else list(DEFAULT_ATTENTIONS)
            cfg = CompareConfig(attentions=attentions, attention_kwargs=kwargs, **fields)
        check_attentions(cfg.attentions, cfg.attention_kwargs)
        if cfg.detector != "may":
            from mlca.compare.ultralytics_run import import_ultralytics

            import_ultralytics()
    except (ValueError, KeyError, TypeError, ImportError) as e:
        print(f"mlca compare: error: {e.args[0] if e.args else e}")
        return 2
    run_compare(cfg)
    return 0
