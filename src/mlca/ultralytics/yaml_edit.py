"""``yaml_with_attention``: a copy of an ultralytics model YAML with an attention inserted.

Two placements:

* ``where="backbone"``: after every C3k2 / C2f stage of the backbone. Every later reference to
  such a stage (the next layer's ``-1``, a neck ``Concat``'s absolute index) then reads the
  attention's output, as if the attention were the stage's last block.
* ``where="neck"``: one attention per Detect input, appended to the head just before Detect,
  which then reads them; the rest of the neck is unchanged.

Absolute ``from`` indices are renumbered; ``-1`` stays ``-1``, other relative indices become
absolute. ``scales`` are kept, so the written file builds at every width: name it
``yolo11s-...yaml`` (ultralytics reads the scale letter from the file name) for another scale.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .layer import layer_class, yaml_name

__all__ = ["yaml_with_attention", "model_dict_with_attention", "dump_model_yaml", "shipped_yaml"]

STAGES = ("C3k2", "C2f")
HEADS = ("Detect", "Segment", "Pose", "OBB", "v10Detect")
_DROP = ("yaml_file", "scale", "ch")  # keys ultralytics' loader adds to the dict it returns


def _load_base(base: str | Path | dict) -> tuple[dict, str]:
    if isinstance(base, dict):
        return {k: v for k, v in base.items() if k not in _DROP}, "model"
    from ultralytics.nn.tasks import yaml_model_load

    d = yaml_model_load(base)  # finds the shipped yolo11n.yaml etc. like YOLO() does
    return {k: v for k, v in d.items() if k not in _DROP}, Path(str(base)).stem


def _absolute(f: int, i: int) -> int:
    return f if f >= 0 else i + f


def model_dict_with_attention(
    base: str | Path | dict, name: str, where: str = "backbone", **kwargs: Any
) -> dict:
    """The model dict of ``base`` with attention ``name`` (registry name) placed per ``where``."""
    layer_class(name)  # normalises the name
    from mlca.attention.registry import get_attention_class

    get_attention_class(name)  # unknown attention: KeyError listing the known ones
    if where not in ("backbone", "neck"):
        raise ValueError(f"where must be 'backbone' or 'neck', got {where!r}")
    d, stem = _load_base(base)
    backbone, head = list(d["backbone"]), list(d["head"])
    rows = backbone + head
    n_backbone = len(backbone)
    row = [-1, 1, yaml_name(name), [dict(kwargs)] if kwargs else []]

    if where == "backbone":
        after = [i for i, r in enumerate(backbone) if r[2] in STAGES]
        if not after:
            raise ValueError(
                f"{stem}: no {' / '.join(STAGES)} stage in the backbone to put {name!r} after "
                f"(modules found: {sorted({r[2] for r in backbone})}); use where='neck'"
            )
        # old index -> new index of the layer whose output now stands for it
        new_of, out, shift = {}, [], 0
        for i, r in enumerate(rows):
            out.append((i, r))
            new_of[i] = i + shift
            if i in after:
                shift += 1
                out.append((None, list(row)))
                new_of[i] = i + shift  # references to the stage read its attention
        result = []
        for k, (i, r) in enumerate(out):
            f = r[0]
            if i is not None:
                if isinstance(f, int):
                    f = -1 if f == -1 else new_of[_absolute(f, i)]
                else:
                    f = [-1 if x == -1 else new_of[_absolute(x, i)] for x in f]
            result.append([f, *r[1:]])
        new_backbone = result[: n_backbone + len(after)]
        new_head = result[n_backbone + len(after):]
    else:
        heads = [i for i, r in enumerate(rows) if r[2] in HEADS]
        if not heads:
            raise ValueError(f"{stem}: no {' / '.join(HEADS)} layer to put {name!r} before")
        h = heads[-1]
        if h != len(rows) - 1:
            raise ValueError(f"{stem}: the {rows[h][2]} layer must be the last one for where='neck'")
        sources = rows[h][0] if isinstance(rows[h][0], list) else [rows[h][0]]
        sources = [_absolute(x, h) for x in sources]
        added = [[s, 1, yaml_name(name), [dict(kwargs)] if kwargs else []] for s in sources]
        detect = [list(range(h, h + len(added))), *rows[h][1:]]
        new_backbone = backbone
        new_head = head[:-1] + added + [detect]
    d = dict(d)
    d["backbone"], d["head"] = new_backbone, new_head
    return d


def dump_model_yaml(d: dict, header: str = "") -> str:
    """YAML text in ultralytics' layout: one flow-style ``[from, n, module, args]`` row per layer."""
    def flow(v: Any) -> str:
        text = yaml.safe_dump(v, default_flow_style=True, width=10**6).strip()
        return text[: -len("...")].strip() if text.endswith("\n...") else text  # scalar documents

    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for key, value in d.items():
        if key in ("backbone", "head"):
            lines.append(f"{key}:")
            lines += [f"  - {flow(r)}" for r in value]
        elif key == "scales":
            lines.append("scales:")
            lines += [f"  {k}: {flow(v)}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {flow(value)}")
    return "\n".join(lines) + "\n"


def yaml_with_attention(
    base: str | Path | dict,
    name: str,
    where: str = "backbone",
    *,
    out: str | Path | None = None,
    **kwargs: Any,
) -> Path:
    """Write ``base`` (e.g. ``"yolo11n.yaml"``, ``"yolov8n.yaml"``, a path) with attention ``name``.

    Args:
        base: an ultralytics model YAML name or path, or a model dict.
        name: registry name of the attention (``mlca.list_attentions()``).
        where: ``"backbone"`` (after each C3k2/C2f stage) or ``"neck"`` (on each Detect input).
        out: the file to write; default ``<base stem>-<name>[-neck].yaml`` in the working directory.
        **kwargs: the attention's keyword arguments, written into every inserted row.

    Returns:
        The path written; pass it to ``ultralytics.YOLO``.
    """
    d = model_dict_with_attention(base, name, where, **kwargs)
    stem = Path(str(base)).stem if not isinstance(base, dict) else "model"
    key = name.strip().lower().replace("_", "-")
    path = Path(out) if out is not None else Path(f"{stem}-{key}{'-neck' if where == 'neck' else ''}.yaml")
    extra = f" with {kwargs}" if kwargs else ""
    header = (
        f"{stem} with the mlca attention {key!r}{extra} "
        f"{'after each backbone C3k2/C2f stage' if where == 'backbone' else 'on each Detect input'}.\n"
        "Written by mlca.ultralytics.yaml_with_attention; needs `import mlca.ultralytics` (or a\n"
        "checkpoint of it) before ultralytics parses it. Channels are inferred at every scale."
    )
    path.write_text(dump_model_yaml(d, header), encoding="utf-8")
    return path


def shipped_yaml(name: str) -> Path:
    """The path of a YAML shipped under ``mlca/configs/ultralytics`` (e.g. ``"yolo11n-mlca.yaml"``)."""
    path = Path(str(resources.files("mlca") / "configs" / "ultralytics" / name))
    if not path.is_file():
        folder = path.parent
        known = sorted(p.name for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise FileNotFoundError(f"no shipped ultralytics YAML {name!r} in {folder}; shipped: {known}")
    return path
