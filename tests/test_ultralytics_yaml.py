"""yaml_with_attention: rows inserted where asked, every `from` index renumbered, shipped YAMLs."""

from __future__ import annotations

import pytest
import torch
import yaml

from _ultralytics_env import ultralytics  # noqa: F401

import mlca.ultralytics as mu
from ultralytics.nn.tasks import DetectionModel, yaml_model_load


def _resolve(rows):
    """Each row's inputs as absolute indices."""
    out = []
    for i, (f, *_rest) in enumerate(rows):
        fs = f if isinstance(f, list) else [f]
        out.append([x if x >= 0 else i + x for x in fs])
    return out


def _load(path):
    d = yaml.safe_load(open(path, encoding="utf-8"))
    return d["backbone"] + d["head"]


@pytest.mark.parametrize("base, stage", [("yolo11n.yaml", "C3k2"), ("yolov8n.yaml", "C2f")])
def test_backbone_placement_renumbers_every_reference(tmp_path, base, stage):
    cfg = yaml_model_load(base)
    old = cfg["backbone"] + cfg["head"]
    path = mu.yaml_with_attention(base, "mlca", out=tmp_path / "m.yaml", local_size=3)
    new = _load(path)
    stages = [i for i, r in enumerate(cfg["backbone"]) if r[2] == stage]
    assert len(new) == len(old) + len(stages)
    # old index -> new index of the layer that now carries that output (the attention after a stage)
    carried, k = {}, 0
    for i in range(len(old)):
        k += 1 if i in stages else 0
        carried[i] = i + k
    old_in, new_in = _resolve(old), _resolve(new)
    for i, row in enumerate(old):
        j = carried[i] - (1 if i in stages else 0)  # the new position of the old row itself
        assert new[j][1:] == row[1:]
        # each input now reads the carrier of what it read before
        assert new_in[j] == [carried.get(x, x) for x in old_in[i]], (i, row)  # -1 at row 0: the image
        if i in stages:
            assert new[j + 1] == [-1, 1, "MLCA", [{"local_size": 3}]]


def test_neck_placement_feeds_detect(tmp_path):
    cfg = yaml_model_load("yolo11n.yaml")
    old = cfg["backbone"] + cfg["head"]
    new = _load(mu.yaml_with_attention("yolo11n.yaml", "cbam", where="neck", out=tmp_path / "n.yaml"))
    assert new[: len(old) - 1] == old[:-1]
    sources = old[-1][0]
    added = new[len(old) - 1:-1]
    assert [r[0] for r in added] == sources and all(r[2] == "CBAM" for r in added)
    assert new[-1][0] == list(range(len(old) - 1, len(old) - 1 + len(sources)))
    assert new[-1][2] == "Detect"


@pytest.mark.parametrize("where", ["backbone", "neck"])
def test_written_yaml_builds_at_two_scales(tmp_path, where):
    for scale in "ns":
        path = mu.yaml_with_attention(f"yolov8{scale}.yaml", "eca", where=where,
                                      out=tmp_path / f"yolov8{scale}-eca.yaml")
        m = DetectionModel(str(path), verbose=False)
        ref = DetectionModel(f"yolov8{scale}.yaml", verbose=False)
        layers = [x for x in m.model if isinstance(x, mu.AttentionLayer)]
        assert len(layers) == (4 if where == "backbone" else 3)
        m.eval(), ref.eval()
        x = torch.rand(1, 3, 64, 64)
        with torch.no_grad():
            assert m(x)[0].shape == ref(x)[0].shape


@pytest.mark.parametrize("name", ["yolo11n-mlca.yaml", "yolo11n-mlca-neck.yaml",
                                  "yolov8n-mlca.yaml", "yolov8n-mlca-neck.yaml"])
def test_shipped_yamls_are_what_the_generator_writes(tmp_path, name):
    base = name.split("-")[0] + ".yaml"
    where = "neck" if name.endswith("-neck.yaml") else "backbone"
    fresh = mu.yaml_with_attention(base, "mlca", where=where, out=tmp_path / name)
    assert mu.shipped_yaml(name).read_text() == fresh.read_text()


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(KeyError, match="unknown attention"):
        mu.yaml_with_attention("yolo11n.yaml", "nope", out=tmp_path / "x.yaml")
    with pytest.raises(ValueError, match="'backbone' or 'neck'"):
        mu.yaml_with_attention("yolo11n.yaml", "mlca", where="head", out=tmp_path / "x.yaml")
    d = {"nc": 1, "backbone": [[-1, 1, "Conv", [16, 3, 2]]], "head": [[[-1], 1, "Detect", ["nc"]]]}
    with pytest.raises(ValueError, match="no C3k2 / C2f stage"):
        mu.yaml_with_attention(d, "mlca", out=tmp_path / "x.yaml")
    with pytest.raises(FileNotFoundError, match="shipped"):
        mu.shipped_yaml("yolo99.yaml")
