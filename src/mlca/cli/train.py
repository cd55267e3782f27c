"""``mlca train``: train MAY (one process, or N under ``torchrun --nproc_per_node N -m mlca train``).

The options are built from :class:`mlca.engine.train.TrainConfig`'s fields (name, type,
default, choices and help text), so every field is an option and the two cannot drift apart.
``--recipe NAME`` starts from a named set of values (:mod:`mlca.engine.recipes`); options given
explicitly win over it. To tell those apart, an option left out holds its default wrapped in
:class:`_Default` (shown as the plain value in ``--help``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
import warnings

import yaml


def _kv(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), yaml.safe_load(v)


def _scalar_type(hint: object) -> type:
    """``int`` for ``int``, ``int | None`` and the like; the type argparse converts with."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint  # type: ignore[return-value]


class _Default:
    """A default value, marked as not given on the command line (``str`` shows the value)."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return str(self.value)

    __repr__ = __str__


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` unless the help text already says what the default is, or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default.value if isinstance(action.default, _Default) else action.default
        if "(default" in (action.help or "") or default in (None, [], "", argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field (see ``TrainConfig``'s field metadata)."""
    from mlca.engine.train import TrainConfig, flag_name

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        # the field's own default (building a TrainConfig would import the whole training stack)
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        flag, meta = flag_name(f), f.metadata
        kw: dict = {"dest": f.name, "help": meta.get("help") or None}
        if "metavar" in meta:
            kw["metavar"] = meta["metavar"]
        if f.name == "attention_kwargs":
            p.add_argument(flag, type=_kv, action="append", default=[], **kw)
        elif f.name == "hyp":
            p.add_argument(flag, action="append", default=[], **kw)
        elif f.name == "resume":
            p.add_argument(flag, nargs="?", const=True, default=_Default(False), **kw)
        elif f.name == "verbose":  # --quiet; no default shown: "(default: True)" would read as quiet by default
            p.add_argument(flag, action="store_false", default=argparse.SUPPRESS, **kw)
        elif hints[f.name] is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=_Default(default), **kw)
        else:
            p.add_argument(flag, type=_scalar_type(hints[f.name]), default=_Default(default),
                           choices=meta.get("choices"), **kw)


def add_parser(subparsers, name: str = "train", help: str | None = None) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        name, help=help, description="Train MAY. Writes weights/last.pt, weights/best.pt, results.csv, "
        "loss.png, map.png and args.yaml into --out.",
        formatter_class=_HelpFormatter,
    )
    add_config_arguments(p)
    from mlca.engine.recipes import RECIPES

    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="start from a named set of values; options given explicitly win. paper: the MLCA "
                        "paper's YOLOv5 6.1 hyp.scratch-low setting (SGD lr0 0.01, lrf 0.01, momentum 0.937, "
                        "weight decay 5e-4, 3 warmup epochs, warmup bias lr 0.1, mosaic 1.0, 300 epochs at "
                        "640 px, batch 40, head yolov5)")
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the parsed options describe (``--hyp`` files read and merged in order)."""
    from mlca.engine.hyp import parse_hyp_items
    from mlca.engine.train import TrainConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    values["attention_kwargs"] = dict(values["attention_kwargs"])
    values["hyp"] = parse_hyp_items(values["hyp"])
    recipe = getattr(args, "recipe", None)
    if recipe:
        from mlca.engine.recipes import apply_recipe

        given = {k: v for k, v in values.items() if not isinstance(v, _Default)}
        values = {**values, **apply_recipe(recipe, given)}
    return TrainConfig(**{k: v.value if isinstance(v, _Default) else v for k, v in values.items()})


def run(args: argparse.Namespace) -> int:
    from mlca.engine.train import TrainingDivergedError, TrainingWarning, train

    def show(message, category, *rest, **kw):  # one plain line, not the warnings module's file:line form
        print(f"mlca train: warning: {message}", file=sys.stderr, flush=True)

    try:
        cfg = config_from_args(args)
        with warnings.catch_warnings():
            warnings.simplefilter("always", TrainingWarning)
            warnings.showwarning = show
            result = train(cfg)
    except (TrainingDivergedError, FileNotFoundError, ValueError) as e:
        print(f"mlca train: error: {e}", file=sys.stderr)
        return 1
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun every rank returns here; one report is enough
    if rank0 and result.metrics and cfg.verbose and result.last.exists():
        m = {k: round(v, 4) for k, v in result.metrics.items() if k in ("map50", "map", "best_fitness")}
        print(f"done: {result.run_dir}  last {json.dumps(m)}  best weights {result.best}")
    return 0
