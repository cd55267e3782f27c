"""MAY with the anchor-free decoupled head: builds, shapes, decode against a float64 reference,
config and checkpoint round trip, ONNX export parity with onnxruntime."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mlca.models import build_may
from mlca.models.head_decoupled import REG_MAX, DecoupledDetect

TINY_BLOCKS = [[16, 16, 3, 2, 1, 0], [24, 48, 3, 2, 0, 0], [40, 96, 5, 2, 1, 1], [96, 192, 5, 2, 1, 1]]


def tiny(attention: str = "none", nc: int = 3) -> nn.Module:
    torch.manual_seed(0)
    model = build_may(attention, num_classes=nc, width=0.25, blocks=TINY_BLOCKS, head="yolov8")
    with torch.no_grad():  # non-trivial BN statistics and box distributions, as after training
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        for branch in model.detect.box:
            branch[-1].weight.mul_(20)
    return model.eval()


@settings(max_examples=4, deadline=None)
@given(b=st.integers(1, 2), hm=st.integers(1, 3), wm=st.integers(1, 3))
def test_output_shapes_for_any_multiple_of_32(b, hm, wm):
    model = tiny(nc=4)
    h, w = 32 * hm, 32 * wm
    x = torch.rand(b, 3, h, w)
    with torch.no_grad():
        out = model(x)
    n = sum((h // s) * (w // s) for s in (8, 16, 32))
    assert out.shape == (b, n, 5 + 4)
    assert (out[..., 4] == 1).all() and ((out[..., 5:] > 0) & (out[..., 5:] < 1)).all()
    model.train()
    raw = model(torch.rand(2, 3, h, w))  # batch norm in training needs more than one value per channel
    assert [tuple(r.shape) for r in raw] == [(2, 4 * REG_MAX + 4, h // s, w // s) for s in (8, 16, 32)]


def test_decode_matches_a_hand_written_float64_decode():
    model = tiny().double()
    x = torch.rand(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        feats = model.neck(*model.backbone(x))
        raw = [torch.cat((model.detect.box[i](f), model.detect.cls[i](f)), 1) for i, f in enumerate(feats)]
    rows = []
    for p, s in zip(raw, (8, 16, 32)):
        _, _, ny, nx = p.shape
        for y in range(ny):
            for xx in range(nx):
                v = p[:, :, y, xx]  # (B, 4R + nc)
                prob = v[:, : 4 * REG_MAX].view(-1, 4, REG_MAX).softmax(-1)
                d = (prob * torch.arange(REG_MAX, dtype=torch.float64)).sum(-1) * s  # l, t, r, b in px
                px, py = (xx + 0.5) * s, (y + 0.5) * s
                x1, y1, x2, y2 = px - d[:, 0], py - d[:, 1], px + d[:, 2], py + d[:, 3]
                box = torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), 1)
                rows.append(torch.cat((box, torch.ones(2, 1, dtype=torch.float64), v[:, 4 * REG_MAX:].sigmoid()), 1))
    torch.testing.assert_close(out, torch.stack(rows, 1))


def test_class_bias_prior_and_head_arguments():
    det = DecoupledDetect(5, (32, 64, 128))
    for cls, s in zip(det.cls, (8, 16, 32)):
        # about 5 objects per 640 x 640 image, spread over the classes (here 5)
        torch.testing.assert_close(cls[-1].bias, torch.full((5,), math.log(1 / (640 / s) ** 2)))
    with pytest.raises(ValueError, match="head must be one of"):
        build_may("none", num_classes=2, head="yolo11")
    with pytest.raises(ValueError, match="anchor-free"):
        build_may("none", num_classes=2, head="yolov8", anchors=[[10, 13, 16, 30, 33, 23]] * 3)
    with pytest.raises(ValueError, match="reg_max"):
        DecoupledDetect(2, (8, 8, 8), reg_max=1)


def test_config_and_checkpoint_round_trip_rebuild_the_head(tmp_path):
    from mlca.engine.checkpoint import load_model

    model = tiny("eca")
    assert model.config["head"] == "yolov8" and model.config["anchors"] is None
    assert build_may("none", num_classes=2).config["head"] == "yolov5"
    path = tmp_path / "best.pt"
    torch.save({"model_config": model.config, "model": model.state_dict(), "ema": None, "names": ["a", "b", "c"]},
               path)
    loaded = load_model(path)
    assert loaded.head == "yolov8" and isinstance(loaded.detect, DecoupledDetect)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    # a checkpoint written before heads existed has no "head": the paper's head
    old = build_may("none", num_classes=2)
    cfg = {k: v for k, v in old.config.items() if k != "head"}
    torch.save({"model_config": cfg, "model": old.state_dict(), "ema": None, "names": ["a", "b"]}, path)
    assert load_model(path).head == "yolov5"


def test_attention_slots_are_the_same_with_either_head():
    a = build_may("mlca", num_classes=2, width=0.25, blocks=TINY_BLOCKS)
    b = build_may("mlca", num_classes=2, width=0.25, blocks=TINY_BLOCKS, head="yolov8")
    kinds = [type(m).__name__ for m in a.backbone.modules()]
    assert kinds == [type(m).__name__ for m in b.backbone.modules()] and "MLCA" in kinds


@pytest.mark.slow
def test_dynamic_onnx_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from mlca.deploy import export_onnx
    from mlca.deploy.images import load_check_images, resize_batch
    from mlca.deploy.onnxrt import OnnxBackend
    from mlca.engine.postprocess import non_max_suppression

    model = tiny("mlca")
    model.names = ["cat", "dog", "person"]
    path = tmp_path / "v8.onnx"
    report = export_onnx(model, path, 64, dynamic=True)
    assert len(report.checks) == 3
    backend = OnnxBackend(path)
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["model_config"])["head"] == "yolov8"
    for shape in [(2, 96, 64), (1, 64, 128)]:
        x = resize_batch(load_check_images(), shape[1:], shape[0])
        with torch.no_grad():
            ref = model(x)
        out = backend(x)
        torch.testing.assert_close(out[..., :4], ref[..., :4], atol=1e-2, rtol=1e-4)
        torch.testing.assert_close(out[..., 4:], ref[..., 4:], atol=1e-4, rtol=0)
        assert len(non_max_suppression(out, 0.001)[0]) > 0


def test_cam_and_bench_take_the_yolov8_head():
    pytest.importorskip("pytorch_grad_cam")
    from mlca.compare.cam import eigencam_maps
    from mlca.deploy.bench import bench_may

    maps = eigencam_maps(tiny("mlca"), torch.rand(2, 3, 64, 64))
    assert maps.shape == (2, 64, 64) and float(maps.max()) > 0
    rows = bench_may(["none"], [1], [64], ["eager"], reps=1, warmup=0, width=0.25, head="yolov8", log=lambda s: None)
    assert len(rows) == 1
