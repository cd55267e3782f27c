"""``offline()``: run ultralytics without any network access or automatic install.

What ultralytics 8.4 reaches for, and what stops it:

* its online check (a DNS query at import) and the downloads gated on it: ``YOLO_OFFLINE=1``;
* the label font: ``check_det_dataset`` calls ``check_font("Arial.ttf")`` on every train/val,
  which sends a HEAD request to GitHub unless the font is in ultralytics' config folder or in
  matplotlib's font list, whatever ``plots`` is. ``offline()`` puts matplotlib's DejaVu Sans there
  under the names ultralytics looks for (labels in plots are then drawn in DejaVu Sans);
* automatic ``pip install`` of missing requirements: ``ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS=1``
  (read at each check) and ``YOLO_AUTOINSTALL=False`` (read at import);
* event analytics: the ``sync`` setting, turned off.

Not covered here: the AMP check on CUDA loads ``yolo26n.pt`` (downloads it once into the
``weights_dir`` setting); offline, put that file there or train with ``amp=False``. Datasets
named by a URL or a shipped name (``coco8.yaml``) are downloaded: pass a local data YAML.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["offline", "OFFLINE_ENV", "FONTS"]

OFFLINE_ENV = {
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "False",
    "ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS": "1",
}
FONTS = ("Arial.ttf", "Arial.Unicode.ttf")  # the names ultralytics' check_font asks for


def offline(config_dir: str | Path | None = None) -> Path:
    """Make this process's ultralytics offline; returns ultralytics' config folder.

    Sets :data:`OFFLINE_ENV` (call it before ``import ultralytics`` for the import-time ones;
    the font and the settings work either way), ``YOLO_CONFIG_DIR=config_dir`` if given, copies
    the fonts and turns ``sync`` off in ultralytics' settings.
    """
    os.environ.update(OFFLINE_ENV)
    if config_dir is not None:
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    from matplotlib import font_manager

    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    folder = Path(USER_CONFIG_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    source = Path(font_manager.findfont("DejaVu Sans", fallback_to_default=True))
    for name in FONTS:
        target = folder / name
        if not target.exists():
            shutil.copyfile(source, target)
    if SETTINGS.get("sync", False):
        SETTINGS.update(sync=False)
    return folder
