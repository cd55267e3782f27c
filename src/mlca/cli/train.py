"""``mlca train``: train MAY (one process, or N under ``torchrun --nproc_per_node N -m mlca train``)."""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml

_DEFAULTS = None


def _defaults():
    global _DEFAULTS
    if _DEFAULTS is None:
        from mlca.engine.train import TrainConfig

        _DEFAULTS = TrainConfig()
    return _DEFAULTS


def _kv(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), yaml.safe_load(v)


def add_parser(subparsers, name: str = "train", help: str | None = None) -> argparse.ArgumentParser:
    d = _defaults()
    p = subparsers.add_parser(
        name, help=help, description="Train MAY. Writes weights/last.pt, weights/best.pt, results.csv, "
        "loss.png, map.png and args.yaml into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default=d.data, help='dataset YAML, or "embedded" for the built-in dataset')
    p.add_argument("--attention", default=d.attention, help="attention module name (see mlca.list_attentions())")
    p.add_argument("--attention-kw", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the attention module (repeatable), e.g. local_size=3")
    p.add_argument("--width", type=float, default=d.width, help="channel width multiplier")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--img-size", type=int, default=d.img_size, help="square training/validation size (multiple of 32)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size (split over DDP ranks)")
    p.add_argument("--max-train-images", type=int, default=None, help="use only the first N training images")
    p.add_argument("--max-val-images", type=int, default=None, help="use only the first N validation images")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default=d.optimizer)
    p.add_argument("--lr0", type=float, default=d.lr0, help="initial learning rate")
    p.add_argument("--lrf", type=float, default=d.lrf, help="final learning rate as a fraction of lr0 (cosine)")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (0: off)")
    p.add_argument("--ema-tau", type=float, default=d.ema_tau,
                   help="EMA ramp length in updates (default: a fifth of the run, at most 2000)")
    p.add_argument("--amp", choices=("auto", "fp16", "bf16", "off"), default=d.amp,
                   help="mixed precision: auto = fp16 on CUDA, off on CPU")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under multi-GPU DDP")
    p.add_argument("--close-mosaic", type=int, default=d.close_mosaic, help="no mosaic in the last N epochs")
    p.add_argument("--no-autoanchor", action="store_true", help="keep the default anchors")
    p.add_argument("--hyp", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="loss gain or augmentation setting (repeatable), e.g. obj=0.7 mosaic=0.5")
    p.add_argument("--val-interval", type=int, default=d.val_interval, help="validate every N epochs")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out, help="run folder (exp -> exp2... if it already holds a run)")
    p.add_argument("--exist-ok", action="store_true", help="write into --out even if it holds a run")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="LAST_PT",
                   help="continue the interrupted run in --out (or the given last.pt) with its own settings")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1 or 1 (default: CUDA if available)")
    p.add_argument("--workers", type=int, default=d.workers, help="data-loading worker processes")
    p.add_argument("--skip-bad", action="store_true", help="skip bad images/labels (reported) instead of failing")
    p.add_argument("--quiet", action="store_true", help="only errors")
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace):
    from mlca.engine.train import TrainConfig

    return TrainConfig(
        data=args.data, attention=args.attention, attention_kwargs=dict(args.attention_kw), width=args.width,
        epochs=args.epochs, img_size=args.img_size, batch_size=args.batch_size,
        max_train_images=args.max_train_images, max_val_images=args.max_val_images, optimizer=args.optimizer,
        lr0=args.lr0, lrf=args.lrf, momentum=args.momentum, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, grad_clip=args.grad_clip, ema_tau=args.ema_tau, amp=args.amp,
        sync_bn=args.sync_bn, close_mosaic=args.close_mosaic, autoanchor=not args.no_autoanchor,
        hyp=dict(args.hyp), val_interval=args.val_interval, seed=args.seed, out=args.out,
        exist_ok=args.exist_ok, resume=args.resume, device=args.device, workers=args.workers,
        skip_bad=args.skip_bad, verbose=not args.quiet,
    )


def run(args: argparse.Namespace) -> int:
    from mlca.engine.train import TrainingDivergedError, train

    try:
        cfg = config_from_args(args)
        result = train(cfg)
    except (TrainingDivergedError, FileNotFoundError, ValueError) as e:
        print(f"mlca train: error: {e}", file=sys.stderr)
        return 1
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun every rank returns here; one report is enough
    if rank0 and result.metrics and not args.quiet and result.last.exists():
        m = {k: round(v, 4) for k, v in result.metrics.items() if k in ("map50", "map", "best_fitness")}
        print(f"done: {result.run_dir}  last {json.dumps(m)}  best weights {result.best}")
    return 0
