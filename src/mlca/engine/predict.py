"""Run a trained detector (PyTorch ``.pt`` or ONNX ``.onnx``) on image files and draw the boxes.

Images go through the validation path of the data pipeline (``DetectionDataset`` with
``augment=False``: the same letterbox the model was evaluated with), detections are mapped
back to original-image pixels and drawn with ``torchvision.utils.draw_bounding_boxes``.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mlca.engine.postprocess import non_max_suppression, scale_boxes

_GLOB_CHARS = set("*?[")


class TorchBackend:
    """A MAY model as a backend: ``(B, 3, S, S) float in [0, 1] -> (B, N, 5 + nc)`` decoded outputs."""

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.names: list[str] | None = getattr(model, "names", None)
        self.num_classes: int = int(model.num_classes)

    def __call__(self, imgs: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, N, 5 + nc)."""
        with torch.inference_mode():
            return self.model(imgs.to(self.device).float())


def load_backend(weights: str | os.PathLike, device: str | torch.device = "cpu") -> Callable[[Tensor], Tensor]:
    """A callable ``(B, 3, S, S) float in [0, 1] -> (B, N, 5 + nc)`` for ``weights``.

    ``.pt``/``.pth``: the mlca checkpoint through :func:`mlca.engine.checkpoint.load_model`
    (EMA weights, names). ``.onnx``: :class:`mlca.deploy.onnxrt.OnnxBackend` (needs
    onnxruntime: ``pip install 'mlca[export]'``). The result has ``names`` (``None`` when the
    file does not record class names) and ``num_classes``.
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        from mlca.engine.checkpoint import load_model

        return TorchBackend(load_model(path, device=device), device)
    if suffix == ".onnx":
        try:
            from mlca.deploy.onnxrt import OnnxBackend
        except ImportError as e:  # onnxruntime missing, or the deploy part not installed
            raise RuntimeError(
                f"running {path} needs onnxruntime and mlca.deploy.onnxrt ({e}); "
                "install the export extra: pip install 'mlca[export]'"
            ) from e
        # same interface: tensor in, decoded (B, N, 5 + nc) tensor out, .names, .img_size
        return OnnxBackend(path)
    raise ValueError(f"unsupported weights {path}: expected a .pt checkpoint from `mlca train` or an .onnx export")


def resolve_sources(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Image files from files, folders (their images, sorted) and glob patterns, in the given order."""
    from mlca.data.images import IMAGE_SUFFIXES

    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    files: list[Path] = []
    for src in sources:
        s = str(src)
        if any(c in s for c in _GLOB_CHARS) and not Path(s).exists():
            matches = sorted(Path(m) for m in glob.glob(s, recursive=True))
            found = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise FileNotFoundError(f"no images match {s!r}")
            files += found
        elif Path(s).is_dir():
            found = sorted(p for p in Path(s).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {s}")
            files += found
        elif Path(s).is_file():
            if Path(s).suffix.lower() not in IMAGE_SUFFIXES:
                raise ValueError(f"{s} is not an image ({', '.join(IMAGE_SUFFIXES)})")
            files.append(Path(s))
        else:
            raise FileNotFoundError(f"source not found: {s}")
    return files


def _palette(n: int) -> list[tuple[int, int, int]]:
    """A fixed, distinguishable colour per class (matplotlib's tab20, cycled)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [tuple(int(255 * c) for c in cmap(i % 20)[:3]) for i in range(max(n, 1))]


def draw_detections(image: Tensor, det: Tensor, names: Sequence[str]) -> Tensor:
    """Draw ``det`` (n, 6) ``[x1, y1, x2, y2, score, cls]`` on ``image`` (3, H, W) uint8 -> (3, H, W) uint8."""
    from torchvision.utils import draw_bounding_boxes

    if not len(det):
        return image
    palette = _palette(len(names))
    cls = det[:, 5].long().tolist()
    labels = [f"{names[c] if c < len(names) else c} {s:.2f}" for c, s in zip(cls, det[:, 4].tolist())]
    width = max(1, round(max(image.shape[1:]) / 300))  # visible on large photos, thin on small ones
    return draw_bounding_boxes(image, det[:, :4].float(), labels=labels, colors=[palette[c % len(palette)] for c in cls],
                               width=width)


def _output_path(out_dir: Path, src: Path, taken: set[Path]) -> Path:
    # JPEG and PNG keep their format; anything else (bmp, tif, webp) is written as PNG
    suffix = src.suffix.lower() if src.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"
    path, k = out_dir / f"{src.stem}{suffix}", 1
    while path in taken:  # two sources with the same name from different folders
        path, k = out_dir / f"{src.stem}_{k}{suffix}", k + 1
    taken.add(path)
    return path


def predict_images(
    weights: str | os.PathLike | Callable[[Tensor], Tensor],
    sources: str | os.PathLike | Iterable[str | os.PathLike],
    img_size: int = 640,
    conf: float = 0.25,
    iou: float = 0.45,
    out_dir: str | os.PathLike = "runs/predict",
    device: str | torch.device = "cpu",
    max_det: int = 300,
    names: Sequence[str] | None = None,
    progress: bool = False,
) -> tuple[list[Path], list[Tensor]]:
    """Detect objects in images and write copies with the boxes drawn.

    Args:
        weights: a ``.pt`` checkpoint, an ``.onnx`` file, or a backend from :func:`load_backend`.
        sources: image files, folders and glob patterns (``"imgs/*.jpg"``, ``"data/**/*.png"``).
        img_size: network input size (a multiple of 32; use the training size).
        conf, iou, max_det: NMS settings.
        out_dir: where the drawn images go (created); same file names, JPEG/PNG kept.
        device: for ``.pt`` weights.
        names: class names (default: from the weights, else class indices).

    Returns:
        ``(written paths, detections)``: one ``(n, 6)`` tensor ``[x1, y1, x2, y2, score, cls]``
        per image, in original-image pixels, in the order of the sources.
    """
    from PIL import Image
    from tqdm import tqdm

    from mlca.data.dataset import DetectionDataset
    from mlca.data.images import load_image, probe_image
    from mlca.data.records import Record

    backend = weights if callable(weights) else load_backend(weights, device)
    files = resolve_sources(sources)
    # the validation path of the data pipeline letterboxes exactly as during evaluation
    records = [Record(f, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), *probe_image(f)) for f in files]
    dataset = DetectionDataset(records, img_size, augment=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    detections: list[Tensor] = []
    taken: set[Path] = set()
    for i in tqdm(range(len(dataset)), desc="predict", disable=not progress):
        img, _, meta = dataset[i]
        pred = backend(img.unsqueeze(0))
        det = scale_boxes(non_max_suppression(pred.float().cpu(), conf, iou, max_det=max_det)[0], meta)
        nc = pred.shape[-1] - 5
        class_names = list(names or getattr(backend, "names", None) or [str(c) for c in range(nc)])
        image = torch.from_numpy(load_image(files[i])).permute(2, 0, 1).contiguous()
        drawn = draw_detections(image, det, class_names)
        path = _output_path(out_dir, files[i], taken)
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(path, **({} if path.suffix == ".png" else {"quality": 95}))
        written.append(path)
        detections.append(det)
    return written, detections


__all__ = ["TorchBackend", "draw_detections", "load_backend", "predict_images", "resolve_sources"]
