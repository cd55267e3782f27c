"""Every attention of the zoo inside YOLO11 and YOLOv8 at scales n and s: it builds, runs
forward and backward, and adds exactly the parameters its definition says.

One model per (base, scale): after every backbone C3k2/C2f stage, the whole zoo in a row, so
each attention is tested at each stage width. The expected count is the base model's plus, per
stage, the hand formulas below at the stage width computed from the YAML's numbers.
"""

from __future__ import annotations

import math

import pytest
import torch

from _ultralytics_env import stage_channels, ultralytics  # noqa: F401

import mlca
import mlca.ultralytics  # noqa: F401  (registers the YAML names)
from ultralytics.nn.tasks import DetectionModel, yaml_model_load

ZOO = ["none", "se", "se-resnet", "eca", "cbam", "ca", "simam", "ema", "mlca"]


def _eca_k(c: int) -> int:
    t = int(abs(math.log2(c) + 1) / 2)
    return t if t % 2 else t + 1


def _se_width(c: int) -> int:
    v = int(c * 0.25)
    r = max(8, (v + 4) // 8 * 8)
    return r + 8 if r < 0.9 * v else r


def expected_params(name: str, c: int) -> int:
    """Parameters of each zoo module at C channels, from the papers' definitions."""
    if name in ("none", "simam"):
        return 0
    if name == "eca":
        return _eca_k(c)  # one 1-D kernel, no bias
    if name == "mlca":
        return 2 * _eca_k(c)  # global and local 1-D kernels
    if name == "se":
        r = _se_width(c)
        return c * r + r + r * c + c  # two 1x1 convs with biases
    if name == "se-resnet":
        r = max(1, c // 16)
        return c * r + r + r * c + c
    if name == "cbam":
        h = max(1, c // 16)
        return (c * h + h + h * c + c) + (2 * 7 * 7 + 1)  # shared MLP + 7x7 spatial conv
    if name == "ca":
        mip = max(8, c // 32)
        return (c * mip + mip) + 2 * mip + 2 * (mip * c + c)  # conv1 + BN + conv_h, conv_w
    if name == "ema":
        g = c // 8
        return (g * g + g) + (9 * g * g + g) + 2 * g  # 1x1, 3x3 (shared by the groups), GN
    raise KeyError(name)


def _with_zoo(base: dict) -> tuple[dict, list[int]]:
    """The base dict with the zoo after each backbone C3k2/C2f; returns it and the stage rows."""
    backbone, head = base["backbone"], base["head"]
    rows = backbone + head
    stages = [i for i, r in enumerate(backbone) if r[2] in ("C3k2", "C2f")]
    new_index, out = {}, []
    for i, r in enumerate(rows):
        out.append((i, r))
        if i in stages:
            out += [(None, [-1, 1, n.upper().replace("-", "_"), []]) for n in ZOO]
        new_index[i] = len(out) - 1  # a reference to the stage reads the last attention
    fixed = []
    for i, r in out:
        f = r[0]
        if i is not None:
            f = [x if x == -1 else new_index[x if x >= 0 else i + x] for x in f] if isinstance(f, list) \
                else (f if f == -1 else new_index[f if f >= 0 else i + f])
        fixed.append([f, *r[1:]])
    nb = len(backbone) + len(stages) * len(ZOO)
    d = {k: v for k, v in base.items() if k not in ("backbone", "head", "yaml_file")}
    d["backbone"], d["head"] = fixed[:nb], fixed[nb:]
    return d, [backbone[i][3][0] for i in stages]


@pytest.mark.parametrize("base", ["yolo11n.yaml", "yolov8n.yaml", "yolo11s.yaml", "yolov8s.yaml"])
def test_zoo_in_yolo(base):
    assert sorted(ZOO) == sorted(n for n in mlca.list_attentions() if n in ZOO)
    torch.manual_seed(0)
    cfg = yaml_model_load(base)
    plain = DetectionModel(dict(cfg), verbose=False)
    n_plain = sum(p.numel() for p in plain.parameters())
    d, stage_c2 = _with_zoo(cfg)
    model = DetectionModel(d, verbose=False)
    _, width, max_channels = cfg["scales"][cfg["scale"]]
    widths = [stage_channels(c2, width, max_channels) for c2 in stage_c2]
    extra = sum(expected_params(n, c) for c in widths for n in ZOO)
    assert sum(p.numel() for p in model.parameters()) == n_plain + extra

    layers = [m for m in model.modules() if isinstance(m, mlca.ultralytics.AttentionLayer)]
    assert [m.channels for m in layers] == [c for c in widths for _ in ZOO]
    assert [m.attention_name for m in layers] == ZOO * len(widths)

    model.train()
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    preds = out["one2many"] if isinstance(out, dict) and "one2many" in out else out
    feats = preds["feats"] if isinstance(preds, dict) else preds
    loss = sum(f.float().square().mean() for f in feats)
    loss.backward()
    for m in layers:
        for name, p in m.attn.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (m.attention_name, name)
    assert any(float(p.grad.abs().sum()) > 0 for m in layers for p in m.attn.parameters())
    # same strides and output shapes as the base model
    assert torch.equal(model.stride, plain.stride)
