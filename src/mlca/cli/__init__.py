"""The ``mlca`` command line: one subcommand per module in this package.

Each subcommand module defines ``add_parser(subparsers)`` (registering its parser and
setting ``func`` to a callable taking the parsed namespace and returning an exit code).
Subcommand modules are imported only when their command runs, so ``mlca --help``
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module under mlca.cli, with a one-line help
COMMANDS = {
    "train": ("train", "train MAY on a dataset"),
    "val": ("val", "evaluate a checkpoint (mAP@0.5, mAP@0.5:0.95, per-class AP)"),
    "predict": ("predict", "draw detections of a .pt or .onnx model on images"),
    "compare": ("compare", "the paper's experiment: MAY with each attention, over seeds"),
    "export": ("export", "export MAY to ONNX or TorchScript, checked against PyTorch"),
    "bench": ("bench", "MAY latency per attention in eager, compiled and onnxruntime"),
    "check": ("check", "check a dataset: every bad file and line, class counts, box sizes"),
    "data": ("data", "download a public dataset (get) or write one as a YOLO dataset (export)"),
}


def _build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlca", description=__doc__.splitlines()[0])
    from mlca import __version__

    parser.add_argument("--version", action="version", version=f"mlca {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name == command:
            mod = importlib.import_module(f"mlca.cli.{module}")
            mod.add_parser(sub, name=name, help=help_text)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = _build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    return int(args.func(args) or 0)
