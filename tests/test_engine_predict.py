"""predict_images / load_backend: sources, letterbox undo, drawing, checkpoints and clear errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mlca.engine.predict import load_backend, predict_images, resolve_sources


def save_image(path, w, h, value=128):
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)
    return path


def centre_box_backend(imgs: torch.Tensor) -> torch.Tensor:
    """One confident class-1 box in the middle of the network input, a quarter of its side."""
    s = imgs.shape[-1]
    return torch.tensor([[[s / 2, s / 2, s / 4, s / 4, 0.9, 0.1, 0.9]]]).expand(imgs.shape[0], 1, 7)


def test_boxes_are_mapped_to_the_original_image_and_drawn(tmp_path):
    src = save_image(tmp_path / "wide.png", 100, 50)
    paths, dets = predict_images(centre_box_backend, src, img_size=64, out_dir=tmp_path / "out", names=["a", "b"])
    assert paths == [tmp_path / "out" / "wide.png"]
    # 100x50 -> ratio 0.64, 64x32 + 16 px padding on top; box (24, 24, 40, 40) in the input
    torch.testing.assert_close(dets[0], torch.tensor([[37.5, 12.5, 62.5, 37.5, 0.81, 1.0]]))
    drawn = np.array(Image.open(paths[0]))
    assert drawn.shape == (50, 100, 3)
    assert (drawn[25, 36:39] != 128).any()  # on the left edge of the box (x = 37.5)
    assert (drawn[45, 5] == 128).all() and (drawn[25, 50] == 128).all()  # far away and inside: untouched


def test_sources_files_folders_and_globs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a1 = save_image(tmp_path / "a" / "x.jpg", 40, 30)
    a2 = save_image(tmp_path / "a" / "y.png", 30, 40)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    b1 = save_image(tmp_path / "b" / "x.jpg", 20, 20)
    assert resolve_sources(tmp_path / "a") == [a1, a2]
    assert resolve_sources([str(tmp_path / "*" / "x.*"), b1]) == [a1, b1, b1]
    paths, dets = predict_images(centre_box_backend, [tmp_path / "a", b1], img_size=32, out_dir=tmp_path / "o")
    # the same stem from two folders does not overwrite; JPEG stays JPEG
    assert [p.name for p in paths] == ["x.jpg", "y.png", "x_1.jpg"]
    assert all(p.is_file() for p in paths) and len(dets) == 3


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        resolve_sources(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match="no images match"):
        resolve_sources(str(tmp_path / "*.png"))
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(ValueError, match="t.txt is not an image"):
        resolve_sources(tmp_path / "t.txt")
    with pytest.raises(FileNotFoundError, match="no images"):
        resolve_sources(tmp_path)


def test_load_backend_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="weights not found"):
        load_backend(tmp_path / "nope.pt")
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"\.pt checkpoint .* \.onnx"):
        load_backend(tmp_path / "w.h5")
    (tmp_path / "w.onnx").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "mlca.deploy.onnxrt", None)  # as if onnxruntime were missing
    with pytest.raises(RuntimeError, match=r"mlca\[export\]"):
        load_backend(tmp_path / "w.onnx")


def test_checkpoint_backend_matches_the_model(tmp_path):
    from mlca.engine.checkpoint import save_checkpoint
    from mlca.models.may import build_may

    torch.manual_seed(0)
    model = build_may(num_classes=2).eval()
    save_checkpoint(tmp_path / "w.pt", {"model_config": dict(model.config), "model": model.state_dict(),
                                        "ema": None, "names": ["cat", "dog"]})
    backend = load_backend(tmp_path / "w.pt")
    assert backend.names == ["cat", "dog"]
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(backend(x), model(x))
    src = save_image(tmp_path / "img.jpg", 70, 50)
    paths, dets = predict_images(tmp_path / "w.pt", src, img_size=64, conf=0.0001, out_dir=tmp_path / "out")
    assert paths[0].is_file() and dets[0].shape[1] == 6
    assert (dets[0][:, :4] >= 0).all() and (dets[0][:, [0, 2]] <= 70).all() and (dets[0][:, [1, 3]] <= 50).all()


def test_onnx_weights_run_through_onnxruntime(tmp_path):
    """A hand-built ONNX graph that always answers one centred class-1 box, with mlca's metadata."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    box = np.array([[[32, 32, 16, 16, 0.9, 0.1, 0.9]]], np.float32)  # in 64 x 64 input pixels
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),  # uses the input
         helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.FLOAT, box.shape,
                                                                          box.ravel().tolist())),
         helper.make_node("Mul", ["m", "zero"], ["z"]),
         helper.make_node("Add", ["c", "z"], ["output"])],
        "fixed",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 7])],
        initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(model, {"names": '["cat", "dog"]', "num_classes": "2", "img_size": "64"})
    path = tmp_path / "fixed.onnx"
    onnx.save(model, path)
    backend = load_backend(path)
    assert backend.names == ["cat", "dog"] and backend.img_size == 64
    src = save_image(tmp_path / "wide.png", 100, 50)
    paths, dets = predict_images(path, src, img_size=64, out_dir=tmp_path / "out")
    torch.testing.assert_close(dets[0], torch.tensor([[37.5, 12.5, 62.5, 37.5, 0.81, 1.0]]))
    assert paths[0].is_file()
