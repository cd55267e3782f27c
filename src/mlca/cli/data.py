"""``mlca data``: fetch a public dataset (``get``) or write a dataset in another format (``export``)."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers, name: str = "data", help: str | None = None) -> argparse.ArgumentParser:
    from mlca.data.download import CATALOGUE

    p = subparsers.add_parser(name, help=help, description="Fetch a public dataset (get) or write a dataset as a YOLO dataset (export).")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    g = sub.add_parser(
        "get", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="download, verify and unpack a public dataset and write its YAML",
        description="Download a dataset's official archives (resumed after a broken connection, checked "
        "against their size and checksum), unpack them into <home>/datasets/NAME and write "
        "<home>/datasets/NAME.yaml, so that `--data NAME` finds it. Known: "
        + "; ".join(f"{k}: {v.description}" for k, v in CATALOGUE.items()),
    )  # fmt: skip
    g.add_argument("name", help=f"one of: {', '.join(CATALOGUE)}")
    g.add_argument("--home", default=None, help="instead of $MLCA_HOME (default ~/.cache/mlca)")
    g.add_argument("--force", action="store_true", help="download and unpack again even if it is there")
    g.add_argument("--keep-archives", action="store_true", help="keep the archives in <home>/downloads")
    g.add_argument("--sha256", default=None, help="pin the archive's SHA-256 (sets with one archive)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.set_defaults(func=run_get)

    e = sub.add_parser(
        "export", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="write a dataset as a YOLO-format dataset with a data YAML (e.g. for Ultralytics)",
        description="Write a dataset that mlca reads (the embedded set, a YAML, a shipped or downloaded "
        "name) as images/{train,val}, labels/{train,val} and data.yaml, as YOLOv5/Ultralytics read them.",
    )  # fmt: skip
    e.add_argument("data", help='"embedded", a dataset YAML, or a dataset name')
    e.add_argument("--format", choices=("yolo",), default="yolo")
    e.add_argument("--out", required=True, help="the folder to write (must be new or empty)")
    e.add_argument("--splits", nargs="+", default=None, help="default: train, val (and test if the data has it)")
    e.add_argument("--link", action="store_true", help="hard-link the images instead of copying them")
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    e.set_defaults(func=run_export)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    return p


def run_get(args: argparse.Namespace) -> int:
    from mlca.data.download import DownloadError, get_dataset

    try:
        path = get_dataset(args.name, home=args.home, force=args.force, keep_archives=args.keep_archives,
                           quiet=args.quiet, sha256=args.sha256)  # fmt: skip
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from mlca.data.download import dataset_yaml

    found = dataset_yaml(args.name) == path  # the name reaches it without --home
    hint = f"--data {args.name}" if found else f"--data {path} (or set MLCA_HOME={args.home})"
    print(f"{args.name} is ready: use {hint}", file=sys.stderr)
    print(path)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from mlca.data.errors import DataError
    from mlca.data.yolo_export import export_yolo

    try:
        path = export_yolo(args.data, args.out, tuple(args.splits) if args.splits else None, args.link, args.overwrite)
    except (DataError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0
