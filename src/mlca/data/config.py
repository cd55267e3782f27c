"""Dataset configs: one YAML file names the format, the paths, the classes and the splits.

The format is YOLOv5's data YAML, extended with a ``format`` key, so a YOLOv5 data YAML
loads as-is (its format is inferred as ``yolo``)::

    format: voc                 # voc | yolo | coco | embedded (default: yolo)
    path: /data/VOCdevkit       # the dataset root (a relative one: see resolve_root)
    train: [VOC2007/trainval, VOC2012/trainval]
    val: VOC2007/test
    names: [aeroplane, bicycle, ...]   # a list, or a dict {0: aeroplane, 1: ...}

What a split (``train``/``val``/``test``) may be depends on the format; see ``docs/data.md``.
"""

from __future__ import annotations

import json
import os
import platform
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .dataset_config import DatasetConfig, check_root
from .errors import DataError
from .registry import BUILTIN_FORMATS, known_formats

__all__ = ["DatasetConfig", "load_dataset_config", "resolve_root", "ultralytics_datasets_dir", "FORMATS", "VOC_NAMES"]

# the built-in formats (a reader registered with mlca.data.registry adds its own)
FORMATS = BUILTIN_FORMATS

# Pascal VOC's 20 classes in their usual order (the default names of a VOC config)
VOC_NAMES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip

_KNOWN_KEYS = {"name", "format", "path", "root", "train", "val", "test", "names", "nc", "download"}


def _names(value: Any, source: Path) -> list[str]:
    if isinstance(value, dict):
        try:
            keys = sorted(int(k) for k in value)
        except (TypeError, ValueError):
            raise DataError(source, f"'names' dict keys must be class indices, got {list(value)[:5]}") from None
        if keys != list(range(len(keys))):
            raise DataError(source, f"'names' dict keys must be 0..{len(keys) - 1}, got {keys}")
        value = [{int(k): v for k, v in value.items()}[i] for i in keys]
    if not isinstance(value, (list, tuple)):
        raise DataError(source, f"'names' must be a list or a dict, got {type(value).__name__}")
    names = [str(n) for n in value]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DataError(source, f"duplicate class names {dup}")
    return names


def _find(spec: str | Path) -> tuple[Path, Path | None]:
    """The YAML file for ``spec``, and the folder its relative ``path`` is first read against.

    That folder is ``None`` for a config shipped with mlca: the package directory holds no
    data, so its relative paths are read from the current directory on.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path, path.parent.resolve()
    if path.suffix == "" and len(path.parts) == 1:
        from .download import dataset_yaml  # a set fetched by `mlca data get NAME` comes first

        if dataset_yaml(path.name).is_file():
            return dataset_yaml(path.name), dataset_yaml(path.name).parent
        shipped = resources.files("mlca") / "configs" / f"{path.name}.yaml"
        if shipped.is_file():
            return Path(str(shipped)), None
    raise DataError(path, "dataset config not found (expected a YAML file, a shipped config name, or 'embedded')")


def ultralytics_datasets_dir() -> Path | None:
    """The ``datasets_dir`` of ultralytics' settings file, if this machine has one.

    ultralytics keeps it in ``settings.json`` (``settings.yaml`` before 8.1) in its user
    config folder: ``$YOLO_CONFIG_DIR``, else ``~/.config/Ultralytics`` (Linux),
    ``~/Library/Application Support/Ultralytics`` (macOS), ``~/AppData/Roaming/Ultralytics``
    (Windows). Only read, never written; an unreadable file counts as none.
    """
    env = os.environ.get("YOLO_CONFIG_DIR")
    if env:
        folder = Path(env).expanduser()
    else:
        home = Path.home()
        folder = {
            "Windows": home / "AppData" / "Roaming",
            "Darwin": home / "Library" / "Application Support",
        }.get(platform.system(), home / ".config") / "Ultralytics"
    for name in ("settings.json", "settings.yaml"):
        f = folder / name
        try:
            data = json.loads(f.read_text()) if f.suffix == ".json" else yaml.safe_load(f.read_text())
        except (OSError, ValueError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and data.get("datasets_dir"):
            return Path(str(data["datasets_dir"])).expanduser()
    return None


def resolve_root(
    value: Any, yaml_dir: Path | None, cwd: Path | None = None, datasets_dir: Path | None = None
) -> tuple[Path, tuple[tuple[Path, str], ...]]:
    """The dataset root of a config's ``path:`` and the readings of it that were tried.

    - absent or empty: the YAML file's folder (as ultralytics does; for a config shipped with
      mlca, which holds no data, the current directory);
    - absolute (after ``~`` and ``$VAR`` expansion): itself;
    - relative: read, in this order, relative to (1) the YAML file's folder (mlca's rule,
      independent of where a command runs), (2) the current directory (YOLOv5 reads it
      relative to its repository folder, the directory its scripts run from; ultralytics
      first tries it as given, i.e. from the current directory), (3) ultralytics'
      ``datasets_dir`` setting, when a settings file names one (ultralytics' second try).
      The first reading that exists wins, so a YOLOv5 ``path: ../datasets/coco128`` is found
      from the folder YOLOv5 ran in. When several exist the YAML's folder wins (ultralytics
      would take the current directory): write an absolute ``path`` to make both agree.
      When none exists the first reading is returned, and reading a split reports every one.

    Returns:
        ``(root, tried)``, ``tried`` being ``(path, how it was read)`` per distinct reading
        (empty for an absent or absolute ``path``).
    """
    cwd = Path.cwd() if cwd is None else cwd
    if value in (None, ""):
        return (yaml_dir if yaml_dir is not None else cwd), ()
    p = Path(os.path.expandvars(str(value))).expanduser()
    if p.is_absolute():
        return p, ()
    readings = []
    if yaml_dir is not None:
        readings.append((yaml_dir / p, "relative to the YAML file's folder"))
    readings.append((cwd / p, "relative to the current directory"))
    if datasets_dir is not None:
        readings.append((datasets_dir / p, "relative to ultralytics' datasets_dir setting"))
    tried, seen = [], set()
    for q, how in readings:
        key = q.resolve()
        if key not in seen:
            seen.add(key)
            tried.append((q, how))
    found = next((q for q, _ in tried if q.exists()), tried[0][0])
    return found, tuple(tried)


def load_dataset_config(spec: str | Path | DatasetConfig) -> DatasetConfig:
    """Load a dataset config.

    Args:
        spec: a YAML path (a YOLOv5 data YAML works as-is), the name of a config shipped in
            ``mlca/configs`` (e.g. ``"voc"``), ``"embedded"`` for the built-in synthetic set
            (generated on first use), ``"embedded-dense"`` for its aerial-like variant, or an already loaded :class:`DatasetConfig`.

    Raises:
        DataError: the file is missing, is not valid YAML (with the line), or lacks a key.
    """
    if isinstance(spec, DatasetConfig):
        return spec
    if str(spec) in ("embedded", "embedded-dense"):
        from .embedded import embedded_config

        return embedded_config(variant=str(spec))
    path, yaml_dir = _find(spec)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark is not None else None
        raise DataError(path, f"invalid YAML: {e.problem}", line) from None
    except yaml.YAMLError as e:
        raise DataError(path, f"invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise DataError(path, f"a dataset config must be a mapping, got {type(data).__name__}")

    fmt = str(data.get("format", "yolo")).lower()
    if fmt not in known_formats():
        raise DataError(path, f"unknown dataset format {fmt!r}; expected one of {known_formats()}")
    if fmt == "embedded":
        from .embedded import embedded_config

        return embedded_config()
    for key in ("train", "val"):
        if data.get(key) in (None, "", []):
            raise DataError(path, f"missing {key!r} split")

    root, tried = resolve_root(data.get("path", data.get("root")), yaml_dir, datasets_dir=ultralytics_datasets_dir())

    if "names" in data:
        names = _names(data["names"], path)
    elif fmt == "voc":
        names = list(VOC_NAMES)
    elif fmt == "coco":
        from .coco import coco_names, coco_split

        check_root(root, tried, path)  # the names are in the data: say where it was looked for
        names = coco_names(coco_split(root, data["train"], path)[0])
    else:
        raise DataError(path, "missing 'names' (the class names)")
    if "nc" in data and int(data["nc"]) != len(names):
        raise DataError(path, f"'nc' is {data['nc']} but 'names' has {len(names)} entries")
    if not names:
        raise DataError(path, "'names' is empty")

    return DatasetConfig(
        name=str(data.get("name", path.stem)),
        format=fmt,
        root=root,
        train=data["train"],
        val=data["val"],
        names=names,
        test=data.get("test"),
        options={k: v for k, v in data.items() if k not in _KNOWN_KEYS},
        source=path,
        root_tried=tried,
    )
