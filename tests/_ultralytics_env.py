"""Shared setup of the ultralytics tests: offline, settings in a temporary folder, skip if absent.

Set before ultralytics is first imported: ``YOLO_OFFLINE=1`` (its online check answers "no"
without a DNS query) and ``YOLO_CONFIG_DIR`` (its settings file and fonts live there, not in
the user's home).
"""

from __future__ import annotations

import math
import os
import tempfile

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="mlca-yolo-cfg-"))
os.environ.setdefault("YOLO_VERBOSE", "False")

ultralytics = pytest.importorskip(
    "ultralytics", reason="ultralytics is not installed (pip install 'mlca[ultralytics]'); CI installs it"
)


def stage_channels(c2: int, width: float, max_channels: int) -> int:
    """A layer's output width at a scale: ``ceil(min(c2, max_channels) * width / 8) * 8``."""
    return math.ceil(min(c2, max_channels) * width / 8) * 8
