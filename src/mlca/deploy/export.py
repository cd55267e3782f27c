"""Export MAY to ONNX (dynamo exporter) or TorchScript, and prove the file right before keeping it.

Every export is checked before it reaches its destination: ``onnx.checker`` (full check
with shape inference), then onnxruntime (or ``torch.jit.load``) against the PyTorch model on
real photos at several sizes. Only a file that passes is moved into place (written to a
temporary file in the same folder, then ``os.replace``); a failure raises
:class:`ExportError` with the reason and leaves no file behind.

Tolerances (decoded outputs, every row): boxes ``|d| <= box_atol + box_rtol * |ref|`` in
pixels, objectness/class probabilities ``|d| <= prob_atol``. Float32: 1e-2 px + 1e-4 rel,
1e-4 — far below anything NMS or mAP can see. Float16 (``half``): 1 px + 1e-2 rel, 1e-2.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .images import load_check_images, resize_batch

__all__ = ["ExportError", "ExportReport", "TOLERANCES", "export_onnx", "export_torchscript", "check_sizes"]

TOLERANCES: dict[str, dict[str, float]] = {
    "float32": {"box_atol": 1e-2, "box_rtol": 1e-4, "prob_atol": 1e-4},
    "float16": {"box_atol": 1.0, "box_rtol": 1e-2, "prob_atol": 1e-2},
}
MAX_STRIDE = 32


class ExportError(RuntimeError):
    """The model could not be exported, or the exported file does not match PyTorch."""


@dataclass
class ExportReport:
    """What was written and how well it matched PyTorch (one entry per checked input shape)."""

    path: Path
    format: str
    img_size: int
    dynamic: bool
    half: bool
    tolerance: dict[str, float]
    checks: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"{self.format} -> {self.path} ({self.path.stat().st_size / 1e6:.1f} MB, {self.seconds:.0f} s)"]
        for c in self.checks:
            if "unmatched" in c:
                lines.append(f"  check {tuple(c['shape'])}: {c['detections']} detections, {c['unmatched']} without "
                             f"a PyTorch match (tolerance {self.tolerance})")
                continue
            lines.append(
                f"  check {tuple(c['shape'])}: max |box diff| {c['box_err']:.2e} px, "
                f"max |prob diff| {c['prob_err']:.2e}  (tolerance {self.tolerance})"
            )
        return "\n".join(lines)


def check_sizes(img_size: int, dynamic: bool, batch: int = 1) -> list[tuple[int, int, int]]:
    """(batch, h, w) shapes an export is checked at: the export shape, and for dynamic exports
    also batch 2 at half size and a non-square size."""
    if img_size % MAX_STRIDE:
        raise ExportError(f"--img-size must be a multiple of {MAX_STRIDE}, got {img_size}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ExportError(f"--batch must be an int >= 1, got {batch!r}")
    if dynamic and batch != 1:
        raise ExportError("--batch is the fixed batch of a static export; a --dynamic export "
                          f"takes any batch (got --batch {batch} with --dynamic)")
    if not dynamic:
        return [(batch, img_size, img_size)]
    half = max(MAX_STRIDE, img_size // 2 // MAX_STRIDE * MAX_STRIDE)
    wide = img_size + MAX_STRIDE * max(1, img_size // 4 // MAX_STRIDE)
    return [(1, img_size, img_size), (2, half, half), (1, half, wide)]


class _HalfModel(nn.Module):
    """float16 weights inside, float32 in and out, so callers keep one interface."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) float32 -> (B, N, 5 + nc) float32."""
        return self.model(x.half()).float()


def _metadata(model: nn.Module, img_size: int, dynamic: bool, half: bool, names: Sequence[str] | None,
              batch: int = 1) -> dict:
    from mlca import __version__

    nc = int(getattr(model, "num_classes", 0))
    names = list(names if names is not None else (getattr(model, "names", None) or [str(i) for i in range(nc)]))
    return {
        "names": json.dumps(names),
        "num_classes": str(nc),
        "img_size": json.dumps(None if dynamic else img_size),
        "export_img_size": str(img_size),
        "batch": json.dumps(None if dynamic else batch),
        "stride": str(MAX_STRIDE),
        "strides": json.dumps([int(s) for s in getattr(model, "stride", torch.tensor([8, 16, 32])).tolist()]),
        "dynamic": json.dumps(dynamic),
        "half": json.dumps(half),
        "model_config": json.dumps(getattr(model, "config", {})),
        "output": "(B, N, 5 + nc): cx, cy, w, h (input pixels), objectness, class probabilities",
        "producer": f"mlca {__version__}",
    }


@contextlib.contextmanager
def _atomic_output(path: Path):
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _compare(out: torch.Tensor, ref: torch.Tensor, tol: dict[str, float], what: str, shape) -> dict[str, Any]:
    if out.shape != ref.shape:
        raise ExportError(f"{what}: output shape {tuple(out.shape)} != PyTorch {tuple(ref.shape)} at input {shape}")
    out, ref = out.double(), ref.double()
    box_d = (out[..., :4] - ref[..., :4]).abs()
    prob_d = (out[..., 4:] - ref[..., 4:]).abs()
    box_bad = box_d > tol["box_atol"] + tol["box_rtol"] * ref[..., :4].abs()
    prob_bad = prob_d > tol["prob_atol"]
    if not torch.isfinite(out).all():
        raise ExportError(f"{what}: non-finite outputs at input {shape}")
    res = {"shape": shape, "box_err": float(box_d.max()), "prob_err": float(prob_d.max())}
    if box_bad.any() or prob_bad.any():
        raise ExportError(
            f"{what} does not match PyTorch at input {shape}: max |box diff| {res['box_err']:.3g} px, "
            f"max |prob diff| {res['prob_err']:.3g} (tolerance {tol}); "
            f"{int(box_bad.any(-1).sum() + prob_bad.any(-1).sum())} of {out.shape[0] * out.shape[1]} rows differ"
        )
    return res


# NMS keeps one box of two overlapping ones whose scores may differ by float32 noise (about
# 1e-5): two correct implementations can then keep different boxes or list them in another
# order. Detections are therefore matched one to one, and this share may go unmatched.
NMS_UNMATCHED_FRACTION = 0.05


def match_detections(
    a: torch.Tensor, b: torch.Tensor, box_atol: float = 1e-2, box_rtol: float = 1e-4, score_atol: float = 1e-4
) -> tuple[int, int]:
    """One-to-one matching of detections ``(n, 6)`` ``[x1, y1, x2, y2, score, class]``.

    Two rows match when the class is equal, every box coordinate is within
    ``box_atol + box_rtol * |coord|`` and the score within ``score_atol``.

    Returns:
        ``(unmatched rows of a, unmatched rows of b)``; ``(0, 0)`` means the same set.
    """
    from scipy.optimize import linear_sum_assignment

    if len(a) == 0 or len(b) == 0:
        return len(a), len(b)
    a, b = a.double(), b.double()
    box_excess = ((a[:, None, :4] - b[None, :, :4]).abs() - box_atol - box_rtol * b[None, :, :4].abs()).amax(-1)
    score_excess = (a[:, None, 4] - b[None, :, 4]).abs() - score_atol
    ok = (box_excess <= 0) & (score_excess <= 0) & (a[:, None, 5] == b[None, :, 5])
    rows, cols = linear_sum_assignment((~ok).double().numpy())
    matched = int(ok[torch.as_tensor(rows), torch.as_tensor(cols)].sum())
    return len(a) - matched, len(b) - matched


def _compare_nms(out: torch.Tensor, ref: torch.Tensor, tol: dict[str, float], what: str, shape) -> dict[str, Any]:
    """(K, 7) detections [image, x1, y1, x2, y2, score, class], matched one to one per image."""
    unmatched, total = 0, max(len(out), len(ref))
    for img in range(int(shape[0])):
        ua, ub = match_detections(out[out[:, 0] == img, 1:], ref[ref[:, 0] == img, 1:],
                                  tol["box_atol"], tol["box_rtol"], tol["prob_atol"])
        unmatched += max(ua, ub)
    if unmatched > NMS_UNMATCHED_FRACTION * total:
        raise ExportError(
            f"{what}: detections differ from PyTorch at input {shape}: {unmatched} of {total} "
            f"({len(out)} from onnxruntime, {len(ref)} from PyTorch) have no match within {tol}"
        )
    return {"shape": shape, "box_err": float("nan"), "prob_err": float("nan"), "detections": int(len(out)),
            "unmatched": unmatched}


def _prepare(model: nn.Module, half: bool) -> tuple[nn.Module, nn.Module, dict[str, float]]:
    """(reference float32 eval model on CPU, model to export, tolerance)."""
    ref = copy.deepcopy(model).float().cpu().eval()
    target = _HalfModel(copy.deepcopy(ref)).eval() if half else ref
    return ref, target, TOLERANCES["float16" if half else "float32"]


def _describe(model: nn.Module) -> str:
    cfg = getattr(model, "config", {}) or {}
    return f"MAY(attention={cfg.get('attention', '?')!r}, width={cfg.get('width', '?')})"


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    img_size: int = 640,
    *,
    dynamic: bool = False,
    batch: int = 1,
    half: bool = False,
    opset: int = 18,
    names: Sequence[str] | None = None,
    check_images: Sequence[str | os.PathLike] | None = None,
    tolerance: dict[str, float] | None = None,
    nms: bool = False,
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
    mlca: str = "exact",
) -> ExportReport:
    """Export ``model`` (MAY, eval outputs) to ONNX with the dynamo exporter, check it, write it.

    Args:
        model: the detector; not modified (a copy is exported, on the CPU).
        path: destination ``.onnx`` file; written only if every check passes.
        img_size: square input size of the export (a multiple of 32).
        dynamic: dynamic batch, height and width (multiples of 32) instead of (batch, 3, S, S).
            A static export is faster in onnxruntime where the graph depends on the size: MLCA
            at feature maps that are multiples of local_size is a reshape-mean and a resize
            there, at symbolic sizes the general gathers (see ``mlca``).
        batch: the fixed batch size of a static export (default 1).
        half: float16 weights and arithmetic (inputs and outputs stay float32).
        opset: ONNX opset (>= 18).
        names: class names for the metadata (default ``model.names``).
        check_images: image files for the onnxruntime check (default: a real VOC photo).
        tolerance: override :data:`TOLERANCES`.
        nms: put class-aware NMS in the graph (:mod:`mlca.deploy.nms`); the output is then
            ``(K, 7)`` rows ``[image, x1, y1, x2, y2, score, class]`` instead of ``(B, N, 5 + nc)``.
        conf, iou, max_det: the NMS settings baked into the graph (with ``nms``).
        mlca: how MLCA layers are exported where a feature map's size is symbolic (dynamic
            export) or not a multiple of local_size: ``"exact"`` (gathers; the seed's function
            for any input) or ``"dense"`` (averaging-matrix products; faster in onnxruntime,
            equal for finite inputs, but a NaN/Inf spreads over its channel plane). Static
            sizes that are multiples of local_size are exact and fast either way. See
            :func:`mlca.attention.mlca.export_formulation`.

    Returns:
        :class:`ExportReport`. Raises :class:`ExportError` on any failure (no file left).

    Metadata (``metadata_props``): names (JSON), num_classes, img_size and batch (JSON, null if
    dynamic), stride, strides, dynamic, half, model_config, output layout, producer.
    """
    import onnx

    if opset < 18:
        raise ExportError(f"opset must be >= 18 for the dynamo exporter, got {opset}")
    from mlca.attention.mlca import EXPORT_FORMULATIONS, export_formulation

    if mlca not in EXPORT_FORMULATIONS:
        raise ExportError(f"mlca must be one of {EXPORT_FORMULATIONS}, got {mlca!r}")
    t0 = time.time()
    path = Path(path)
    shapes = check_sizes(img_size, dynamic, batch)
    ref, target, tol = _prepare(model, half)
    tol = {**tol, **(tolerance or {})}
    what = f"ONNX export of {_describe(ref)}" + (" with NMS" if nms else "")
    translation = None
    if nms:
        from .nms import DetectWithNMS, onnx_translation_table

        target, ref = DetectWithNMS(target, conf, iou, max_det), DetectWithNMS(ref, conf, iou, max_det)
        translation = onnx_translation_table()
    # batch 2 in the example: torch.export specialises dimensions of size 1
    example = torch.rand(2 if dynamic else batch, 3, img_size, img_size)
    dynamic_shapes = None
    if dynamic:
        from torch.export import Dim

        dynamic_shapes = ({
            0: Dim("batch", min=1, max=1024),
            2: MAX_STRIDE * Dim("height_div_32", min=1, max=256),
            3: MAX_STRIDE * Dim("width_div_32", min=1, max=256),
        },)
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), torch.no_grad(), \
                export_formulation(mlca):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                target, (example,), dynamo=True, opset_version=opset, dynamic_shapes=dynamic_shapes,
                input_names=["images"], output_names=["detections" if nms else "output"], verbose=False,
                custom_translation_table=translation,
            )
        proto = program.model_proto
    except Exception as e:  # the exporters raise many types; all mean "cannot export"
        msg = str(e).strip().splitlines()
        raise ExportError(
            f"{what} failed: {type(e).__name__}: {' '.join(msg[:6])[:1500]}"
        ) from e
    meta = _metadata(ref.model if nms else ref, img_size, dynamic, half, names, batch)
    meta["mlca_formulation"] = mlca
    if nms:
        meta["nms"] = json.dumps({"conf": conf, "iou": iou, "max_det": max_det})
        meta["output"] = "(K, 7): image index, x1, y1, x2, y2 (input pixels), score, class"
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise ExportError(f"{what}: onnx.checker rejected the graph: {e}") from e

    report = ExportReport(path, "onnx", img_size, dynamic, half, tol)
    images = load_check_images(check_images)
    with _atomic_output(path) as tmp:
        onnx.save(proto, str(tmp))
        from .onnxrt import OnnxBackend

        try:
            backend = OnnxBackend(tmp)
        except Exception as e:
            raise ExportError(f"{what}: onnxruntime cannot load the exported graph: {e}") from e
        for b, h, w in shapes:
            x = resize_batch(images, (h, w), b)
            with torch.no_grad():
                expected = ref(x)
            try:
                got = backend.run(x)
            except Exception as e:
                raise ExportError(f"{what}: onnxruntime failed at input {(b, 3, h, w)}: {e}") from e
            compare = _compare_nms if nms else _compare
            report.checks.append(compare(got, expected, tol, what, (b, 3, h, w)))
    report.seconds = time.time() - t0
    return report


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike,
    img_size: int = 640,
    *,
    half: bool = False,
    names: Sequence[str] | None = None,
    check_images: Sequence[str | os.PathLike] | None = None,
    tolerance: dict[str, float] | None = None,
) -> ExportReport:
    """Trace ``model`` to TorchScript, check the reloaded file against PyTorch, write it.

    The traced graph follows the input's batch and size (the head builds its grid from the
    feature shape), so it is checked at the export size and at a smaller, non-square one.
    The metadata of :func:`export_onnx` is stored as the extra file ``mlca.json``
    (``torch.jit.load(path, _extra_files={"mlca.json": ""})``).
    """
    t0 = time.time()
    path = Path(path)
    shapes = check_sizes(img_size, True)
    ref, target, tol = _prepare(model, half)
    tol = {**tol, **(tolerance or {})}
    what = f"TorchScript export of {_describe(ref)}"
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(target, torch.rand(1, 3, img_size, img_size), check_trace=False)
    except Exception as e:
        raise ExportError(f"{what} failed: {type(e).__name__}: {e}") from e
    meta = {k: v for k, v in _metadata(ref, img_size, True, half, names).items()}
    report = ExportReport(path, "torchscript", img_size, True, half, tol)
    images = load_check_images(check_images)
    with _atomic_output(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still the format asked for
        torch.jit.save(traced, str(tmp), _extra_files={"mlca.json": json.dumps(meta)})
        loaded = torch.jit.load(str(tmp))
        for b, h, w in shapes:
            x = resize_batch(images, (h, w), b)
            with torch.no_grad():
                report.checks.append(_compare(loaded(x), ref(x), tol, what, (b, 3, h, w)))
    report.seconds = time.time() - t0
    return report
