"""``mlca check``: read a dataset the way training will and report every problem at once."""

from __future__ import annotations

import argparse


def add_parser(subparsers, name: str = "check", help: str | None = None) -> argparse.ArgumentParser:
    from mlca.data import check

    p = subparsers.add_parser(
        name, help=help,
        description="Read each split of a dataset with bad files skipped, so one run lists every problem "
        "(file and line), then print images, objects per class and box sizes per split, and what was fixed "
        "rather than refused (clipped and dropped boxes, restored JPEGs). Exit status 1 if any file is bad, "
        "2 if the config or a split cannot be read.",
    )  # fmt: skip
    check.add_arguments(p)
    p.set_defaults(func=check.run)
    return p
