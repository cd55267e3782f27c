"""MAY: shapes, the YOLOv5 decode, parameter count vs the official model, build paths, export paths."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mlca.attention  # noqa: F401  (registers the zoo)
from _may_counts import eca_kernel, official_may_params
from mlca.attention import list_attentions
from mlca.models import build_may, build_may_from_yaml, model_info
from mlca.models.head import DEFAULT_ANCHORS

SMALL = dict(width=0.25, num_classes=3)


def small(attention: str = "none", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_may(attention, **{**SMALL, **kw})


# ---------------------------------------------------------------- shapes


@settings(max_examples=6, deadline=None)
@given(b=st.integers(1, 2), hm=st.integers(1, 4), wm=st.integers(1, 4))
def test_output_shapes_for_any_multiple_of_32(b, hm, wm):
    model = small()
    h, w = 32 * hm, 32 * wm
    x = torch.rand(b, 3, h, w)
    model.train()  # batch 2: train-mode BN needs more than one value per channel at 1x1 P5
    raw = model(torch.rand(2, 3, h, w))
    assert [tuple(r.shape) for r in raw] == [(2, 3, h // s, w // s, 8) for s in (8, 16, 32)]
    model.eval()
    with torch.no_grad():
        out = model(x)
    n = sum(3 * (h // s) * (w // s) for s in (8, 16, 32))
    assert out.shape == (b, n, 8)
    assert torch.isfinite(out).all()
    assert (out[..., 4:] >= 0).all() and (out[..., 4:] <= 1).all()


def test_bad_input_shape_is_a_clear_error():
    model = small().eval()
    with pytest.raises(ValueError, match=r"multiples of 32.*\(64, 70\)"):
        model(torch.rand(1, 3, 64, 70))
    with pytest.raises(ValueError, match=r"\(1, 4, 64, 64\)"):
        model(torch.rand(1, 4, 64, 64))


@pytest.mark.parametrize("name", list_attentions())
def test_every_registered_attention_builds_trains_and_runs(name):
    model = small(name)
    x = torch.rand(2, 3, 64, 96)
    model.train()
    loss = sum(r.float().square().mean() for r in model(x))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 3 * (8 * 12 + 4 * 6 + 2 * 3), 8)


def test_attention_sits_in_the_marked_blocks_on_expanded_channels():
    model = build_may("none", num_classes=20)
    blocks = model.backbone.blocks
    marked = [i for i, b in enumerate(model.backbone.blocks)
              if any(type(m).__name__ == "NoAttention" for m in b.modules())]
    assert marked == [0, 3, 4, 5, 6, 7, 8, 9, 10]
    # expanding blocks: pw, bn, act, dw, bn, ATTENTION, act, pw, bn
    seq = blocks[3].block
    assert type(seq[5]).__name__ == "NoAttention" and isinstance(seq[3], torch.nn.Conv2d)
    assert seq[3].groups == seq[3].in_channels == 96


# ---------------------------------------------------------------- parameters and FLOPs


def test_param_count_matches_the_official_layer_list():
    model = build_may("none", num_classes=20)
    assert sum(p.numel() for p in model.parameters()) == official_may_params(20)


@pytest.mark.skipif("mlca" not in list_attentions(), reason="the mlca layer is not registered yet")
def test_may_mlca_param_count_is_the_papers_3_14_million():
    model = build_may("mlca", num_classes=20)
    params = sum(p.numel() for p in model.parameters())
    hidden = [16, 96, 240, 240, 120, 144, 288, 576, 576]  # expanded channels of the marked blocks
    assert params == official_may_params(20) + sum(2 * eca_kernel(c) for c in hidden)
    assert abs(params - 3.14e6) / 3.14e6 < 0.01


def test_model_info_counts_conv_flops_like_the_definition():
    model = build_may("none", num_classes=20)
    info = model_info(model, 640)
    assert info["params"] == official_may_params(20)
    # 2 x MACs of every conv; the paper's 6.1 GFLOPs also counts BN (thop): see docs/may.md
    assert 5.9 < info["gflops"] < 6.1
    # FLOPs of convolutions scale with the number of pixels
    info2 = model_info(model, (320, 640))
    assert info2["gflops"] == pytest.approx(info["gflops"] / 2, rel=1e-6)


# ---------------------------------------------------------------- head


def test_detect_biases_use_the_yolov5_priors():
    model = build_may("none", num_classes=20)
    for conv, s in zip(model.detect.m, (8, 16, 32)):
        b = conv.bias.detach().view(3, 25)
        torch.testing.assert_close(b[:, 4], torch.full((3,), math.log(8 / (640 / s) ** 2)))
        torch.testing.assert_close(b[:, 5:], torch.full((3, 20), math.log(0.6 / 19.01)))
    torch.testing.assert_close(model.detect.anchors, torch.tensor(DEFAULT_ANCHORS, dtype=torch.float32).view(3, 3, 2))
    assert model.stride.tolist() == [8.0, 16.0, 32.0]


def test_decode_matches_a_hand_computed_yolov5_decode_in_float64():
    model = small("none").double().eval()
    with torch.no_grad():
        for conv in model.detect.m:  # spread logits so the sigmoid is not flat
            conv.bias.normal_(0, 2)
    raw = []
    hooks = [conv.register_forward_hook(lambda m, i, o: raw.append(o)) for conv in model.detect.m]
    x = torch.rand(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        out = model(x).numpy()
    for h in hooks:
        h.remove()
    anchors = np.array(DEFAULT_ANCHORS, dtype=np.float64).reshape(3, 3, 2)
    rows = []
    for level, (t, s) in enumerate(zip(raw, (8, 16, 32))):
        t = t.numpy()  # (B, na * no, ny, nx) straight from the conv
        b, _, ny, nx = t.shape
        t = t.reshape(b, 3, 8, ny, nx)
        sig = 1 / (1 + np.exp(-t))
        ref = np.empty((b, 3, ny, nx, 8))
        for a in range(3):
            for j in range(ny):
                for i in range(nx):
                    p = sig[:, a, :, j, i]
                    ref[:, a, j, i, 0] = (2 * p[:, 0] - 0.5 + i) * s
                    ref[:, a, j, i, 1] = (2 * p[:, 1] - 0.5 + j) * s
                    ref[:, a, j, i, 2] = (2 * p[:, 2]) ** 2 * anchors[level, a, 0]
                    ref[:, a, j, i, 3] = (2 * p[:, 3]) ** 2 * anchors[level, a, 1]
                    ref[:, a, j, i, 4:] = p[:, 4:]
        rows.append(ref.reshape(b, -1, 8))
    np.testing.assert_allclose(out, np.concatenate(rows, 1), rtol=1e-12, atol=1e-10)


def test_anchors_are_settable_and_used_by_the_decode():
    model = small("none").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.detect.anchors.mul_(2)
        after = model(x)
    torch.testing.assert_close(after[..., 2:4], before[..., 2:4] * 2)
    torch.testing.assert_close(after[..., :2], before[..., :2])


# ---------------------------------------------------------------- build paths and persistence


def test_state_dict_round_trip_through_config():
    model = small("none").eval()
    model.detect.anchors.mul_(1.5)  # as autoanchor would
    buf = io.BytesIO()
    torch.save({"model_config": model.config, "model": model.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    clone = build_may(**ckpt["model_config"])
    clone.load_state_dict(ckpt["model"], strict=True)
    clone.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)


def test_attention_kwargs_reach_the_attention_and_the_config():
    model = build_may("se", num_classes=2, width=0.25, rd_ratio=0.5) if "se" in list_attentions() else None
    if model is None:
        pytest.skip("se not registered")
    assert model.config["attention_kwargs"] == {"rd_ratio": 0.5}
    rebuilt = build_may(**model.config)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
    with pytest.raises(TypeError, match="no_such_option"):
        build_may("se", num_classes=2, width=0.25, no_such_option=1)


def test_yaml_build_equals_python_build(tmp_path):
    torch.manual_seed(0)
    a = build_may_from_yaml("may.yaml", attention="none")
    torch.manual_seed(0)
    b = build_may("none", num_classes=20)
    assert a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)
    # a user file changing the table is honoured and remembered in the config
    f = tmp_path / "tiny.yaml"
    f.write_text("attention: none\nnum_classes: 2\nwidth: 0.25\nneck: [64, 32, 32, 64, 128]\n")
    m = build_may_from_yaml(f)
    assert m.detect.m[2].in_channels == 32 and m.config["neck"] == [64, 32, 32, 64, 128]
    assert [p.shape for p in build_may(**m.config).parameters()] == [p.shape for p in m.parameters()]


def test_yaml_errors_name_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("attention: none\nnum_clases: 2\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*num_clases"):
        build_may_from_yaml(f)
    f.write_text("blocks:\n  - [16, 16, 3]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*blocks\[0\]"):
        build_may_from_yaml(f)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        build_may_from_yaml(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- memory formats and graph capture


def test_channels_last_gives_the_same_detections():
    model = small("none").eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)


def test_traced_model_follows_the_input_size():
    model = small("none").eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.rand(1, 3, 64, 64), check_trace=False)
        for shape in [(1, 3, 64, 64), (2, 3, 96, 128)]:
            x = torch.rand(shape)
            torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_torch_compile_matches_eager_at_two_sizes():
    model = small("none").eval()
    compiled = torch.compile(model, dynamic=True)
    with torch.no_grad():
        for shape in [(1, 3, 64, 64), (2, 3, 96, 64)]:
            x = torch.rand(shape)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-3)
