"""mlca attentions through ultralytics' own API on a tiny YOLO-format set made here.

One training run (1 epoch, CPU, 64 px) in a subprocess whose sockets, DNS and pip/uv calls are
blocked, so any download ultralytics attempts fails the test; then, on its checkpoint: val and
predict, reload in a fresh process without importing mlca by hand, reload under
``ULTRALYTICS_SAFE_LOAD=1`` (torch's weights_only with mlca's safe globals), reload where mlca
cannot be imported (a message naming ``pip install mlca``, no install attempt), and ONNX export
(ultralytics' TorchScript-based exporter) against onnxruntime at 416 px (13, 26, 52 px maps, not
multiples of MLCA's local_size 5), static and dynamic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from _ultralytics_env import ultralytics  # noqa: F401

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[1] / "src"

# Prepended to every child: offline ultralytics, and a record of every network or install attempt.
GUARD = textwrap.dedent(
    """
    import os, socket, subprocess, sys, json, urllib.request
    ATTEMPTS = []
    def _no_net(*a, **k):
        ATTEMPTS.append("network " + repr(a[:2])); raise OSError("network blocked by the test")
    socket.socket.connect = lambda self, *a: _no_net(*a)
    socket.socket.connect_ex = lambda self, *a: _no_net(*a)
    socket.getaddrinfo = _no_net
    socket.create_connection = _no_net
    urllib.request.urlopen = _no_net
    _popen = subprocess.Popen.__init__
    def _no_install(self, args, *a, **k):
        text = " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
        if "install" in text.split():  # pip install, uv pip install
            ATTEMPTS.append("install " + text); raise OSError("install blocked by the test")
        return _popen(self, args, *a, **k)
    subprocess.Popen.__init__ = _no_install
    def report(**kw):
        print("RESULT " + json.dumps({"attempts": ATTEMPTS, **kw}))
    """
)

HIDE_MLCA = textwrap.dedent(
    """
    import importlib.abc
    class _HideMlca(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mlca" or name.startswith("mlca."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, _HideMlca())
    """
)


def run_child(code: str, tmp: Path, **env) -> dict:
    """Run GUARD + code in a fresh interpreter; returns what it passed to report()."""
    environ = {**os.environ, "PYTHONPATH": str(SRC), "YOLO_OFFLINE": "1",
               "YOLO_CONFIG_DIR": str(tmp / "yolo-config"), **env}
    proc = subprocess.run([sys.executable, "-c", GUARD + textwrap.dedent(code)], cwd=tmp,
                          env=environ, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"child failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def make_dataset(root: Path) -> Path:
    """Four 96x96 JPEGs per split, one bright box each, and the data YAML."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for k in range(4):
            img = (rng.random((96, 96, 3)) * 60).astype(np.uint8)
            x0, y0 = rng.integers(5, 40, size=2)
            img[y0:y0 + 40, x0:x0 + 40] = 200
            Image.fromarray(img).save(root / "images" / split / f"{k}.jpg")
            cx, cy = (x0 + 20) / 96, (y0 + 20) / 96
            (root / "labels" / split / f"{k}.txt").write_text(f"0 {cx:.4f} {cy:.4f} 0.4167 0.4167\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: box\n")
    return data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("yolo")
    data = make_dataset(tmp / "data")
    result = run_child(
        f"""
        import mlca.ultralytics as mu
        from ultralytics import YOLO
        mu.offline()
        cfg = mu.yaml_with_attention("yolo11n.yaml", "mlca", out="yolo11n-mlca.yaml")
        model = YOLO(str(cfg))
        built = [m for m in model.model.modules() if isinstance(m, mu.AttentionLayer)]
        ready = all(m.attn is not None for m in built)
        model.train(data={str(data)!r}, epochs=1, imgsz=64, batch=4, workers=0, device="cpu",
                    plots=False, amp=False, project={str(tmp / "runs")!r}, name="t", exist_ok=True, verbose=False)
        metrics = model.val(data={str(data)!r}, imgsz=64, batch=4, workers=0, device="cpu",
                            plots=False, verbose=False)
        report(layers=len(built), ready=ready, map50=float(metrics.box.map50))
        """,
        tmp,
    )
    weights = tmp / "runs" / "t" / "weights" / "best.pt"
    assert weights.is_file()
    return tmp, data, weights, result


def test_build_train_val_offline_without_any_download(trained):
    _, _, _, result = trained
    assert result["attempts"] == []  # no socket, DNS, urlopen, pip or uv call
    assert result["layers"] == 4 and result["ready"]  # built before the optimizer
    assert 0.0 <= result["map50"] <= 1.0


def _checksum_code(weights: Path) -> str:
    return f"""
        from ultralytics import YOLO
        import torch
        model = YOLO({str(weights)!r})
        layers = [m for m in model.model.modules() if type(m).__module__ == "mlca.ultralytics.layer"]
        total = sum(float(p.double().sum()) for m in layers for p in m.parameters())
        """


def test_reload_in_a_fresh_process_without_importing_mlca(trained):
    tmp, data, weights, _ = trained
    image = tmp / "data" / "images" / "val" / "0.jpg"
    result = run_child(
        _checksum_code(weights) + f"""
        had_mlca = "mlca.ultralytics" in sys.modules  # imported by the checkpoint itself
        preds = model.predict({str(image)!r}, imgsz=64, device="cpu", verbose=False)
        metrics = model.val(data={str(data)!r}, imgsz=64, batch=4, workers=0, device="cpu",
                            plots=False, verbose=False)
        report(n=len(layers), total=total, had_mlca=had_mlca, preds=len(preds),
               map50=float(metrics.box.map50))
        """,
        tmp,
    )
    assert result["n"] == 4 and result["had_mlca"] and result["preds"] == 1
    assert result["attempts"] == []
    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    here = [m for m in ckpt["model"].modules() if type(m).__module__ == "mlca.ultralytics.layer"]
    assert result["total"] == pytest.approx(sum(float(p.detach().double().sum()) for m in here for p in m.parameters()))


def test_reload_under_ultralytics_safe_load(trained):
    tmp, _, weights, _ = trained
    code = "import mlca.ultralytics\n" + textwrap.dedent(_checksum_code(weights)) + "report(n=len(layers), total=total)\n"
    result = run_child(code, tmp, ULTRALYTICS_SAFE_LOAD="1")
    assert result["n"] == 4 and result["attempts"] == []
    plain = run_child(textwrap.dedent(_checksum_code(weights)) + "report(total=total)\n", tmp)
    assert result["total"] == plain["total"]


def test_without_mlca_the_user_is_told_to_pip_install_mlca_and_nothing_is_installed(trained):
    """On a machine ultralytics believes online (the usual case), a checkpoint whose class lives in
    a missing package makes ultralytics try ``pip install <package>`` (the control below); an mlca
    checkpoint where mlca cannot be imported must raise the message instead."""
    tmp, _, weights, _ = trained
    (tmp / "probe_pkg_for_mlca_test.py").write_text(
        "import torch\nclass Probe(torch.nn.Module):\n    pass\n"
    )
    result = run_child(
        HIDE_MLCA + textwrap.dedent(f"""
        import torch
        sys.path.insert(0, {str(tmp)!r})
        import probe_pkg_for_mlca_test
        torch.save({{"model": probe_pkg_for_mlca_test.Probe()}}, "probe.pt")
        del sys.modules["probe_pkg_for_mlca_test"]
        sys.path.remove({str(tmp)!r})
        os.remove({str(tmp / "probe_pkg_for_mlca_test.py")!r})
        import ultralytics.utils.checks as checks
        checks.ONLINE = True  # as on a connected machine: AutoInstall would run
        from ultralytics import YOLO
        try:
            YOLO("probe.pt")
        except Exception:
            pass
        control = list(ATTEMPTS)
        del ATTEMPTS[:]
        try:
            YOLO({str(weights)!r})
        except Exception as e:
            report(control=control, error=type(e).__name__, message=str(e))
        else:
            report(control=control, error=None, message="")
        """),
        tmp,
        YOLO_OFFLINE="False",
        ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS="False",
        YOLO_AUTOINSTALL="True",  # whatever this process inherited: the control needs it on
    )
    assert any("install" in a and "probe_pkg_for_mlca_test" in a for a in result["control"]), result
    assert result["error"] == "KeyError", result
    assert "pip install mlca" in result["message"]
    assert not [a for a in result["attempts"] if a.startswith("install")]  # no pip, no uv


@pytest.mark.parametrize("dynamic", [False, True])
def test_onnx_export_matches_pytorch_at_416(trained, dynamic):
    ort = pytest.importorskip("onnxruntime")
    tmp, _, weights, _ = trained
    from ultralytics import YOLO

    import mlca.ultralytics  # noqa: F401

    work = tmp / f"onnx-{dynamic}"
    work.mkdir()
    local = work / "best.pt"
    local.write_bytes(weights.read_bytes())
    model = YOLO(str(local))
    path = model.export(format="onnx", imgsz=416, dynamic=dynamic, simplify=False, device="cpu")
    torch_model = YOLO(str(local)).model.float().eval()
    x = torch.rand(1, 3, 416, 416, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = torch_model(x)
    ref = (ref[0] if isinstance(ref, (list, tuple)) else ref).numpy()
    assert ref.shape[-1] == 13 * 13 + 26 * 26 + 52 * 52
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-3)
