"""Run an exported MAY through onnxruntime with the PyTorch model's interface."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["OnnxBackend"]


class OnnxBackend:
    """An ``.onnx`` file written by ``mlca export`` as a callable like ``MAY.eval()``.

    ``backend(imgs)`` maps float images ``(B, 3, S, S)`` in [0, 1] to decoded detections
    ``(B, N, 5 + nc)`` (``[cx, cy, w, h]`` in input pixels, objectness, class probabilities),
    the same tensor the PyTorch model returns, so the engine's NMS and letterbox undo apply
    unchanged.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers (default: CUDA when available, then CPU).
        num_threads: intra-op threads (default: onnxruntime's choice).
        spin: whether idle intra-op threads busy-wait for the next run (onnxruntime's default,
            fastest for back-to-back calls). ``False`` makes them sleep, so they do not take
            CPU from other work in the process (``mlca bench`` times other backends in between).

    Attributes:
        names: class names from the file's metadata (``None`` if absent).
        num_classes: ``nc``.
        img_size: the fixed input size, or ``None`` for a dynamic-size export.
        stride: the largest stride (input sizes must be multiples of it).
        metadata: every ``metadata_props`` entry, as strings.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        num_threads: int | None = None,
        spin: bool = True,
    ):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=list(providers))
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, str] = dict(meta)
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        self.input_name = inp.name
        self._input_dtype = np.float16 if "float16" in inp.type else np.float32
        if len(inp.shape) != 4:
            raise ValueError(f"{self.path}: expected one (B, 3, H, W) image input, found {inp.name} {inp.shape}")
        nc_dim = out.shape[-1]
        if "num_classes" in meta:
            self.num_classes = int(meta["num_classes"])
        elif isinstance(nc_dim, int):
            self.num_classes = nc_dim - 5
        else:
            raise ValueError(f"{self.path}: cannot tell the number of classes (no metadata, dynamic output {out.shape})")
        self.names: list[str] | None = json.loads(meta["names"]) if "names" in meta else None
        h, w = inp.shape[2], inp.shape[3]
        if "img_size" in meta:
            self.img_size: int | None = json.loads(meta["img_size"])
        else:
            self.img_size = h if isinstance(h, int) and h == w else None
        self._fixed_hw = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        self._fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.stride = int(meta.get("stride", 32))
        # exports with --nms give final detections, not the (B, N, 5 + nc) head output
        self.nms: dict | None = json.loads(meta["nms"]) if meta.get("nms") else None

    def __call__(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (B, 3, H, W) float in [0, 1] -> (B, N, 5 + nc) float32 on the CPU."""
        if self.nms is not None:
            raise ValueError(
                f"{self.path.name} was exported with --nms and returns final detections; use "
                "OnnxBackend.detect(imgs), or export without --nms for mlca predict / val"
            )
        return self.run(imgs)

    def detect(
        self, imgs: torch.Tensor, conf: float = 0.25, iou: float = 0.45, max_det: int = 300
    ) -> list[torch.Tensor]:
        """imgs (B, 3, H, W) -> B tensors (n, 6) [x1, y1, x2, y2, score, class] in input pixels.

        NMS exports apply the NMS settings stored in the file (``conf``/``iou``/``max_det``
        are ignored); raw exports go through :func:`mlca.engine.postprocess.non_max_suppression`.
        """
        if self.nms is None:
            from mlca.engine.postprocess import non_max_suppression

            return non_max_suppression(self.run(imgs), conf, iou, max_det=max_det)
        det = self.run(imgs)
        return [det[det[:, 0] == b, 1:] for b in range(imgs.shape[0])]

    def run(self, imgs: torch.Tensor) -> torch.Tensor:
        """The graph's output as a float32 tensor: (B, N, 5 + nc), or (K, 7) for NMS exports."""
        if imgs.dim() != 4 or imgs.shape[1] != 3:
            raise ValueError(f"{self.path.name}: expected images (B, 3, H, W), got {tuple(imgs.shape)}")
        if self._fixed_hw is not None and tuple(imgs.shape[2:]) != self._fixed_hw:
            raise ValueError(
                f"{self.path.name} was exported for {self._fixed_hw[0]}x{self._fixed_hw[1]} inputs, got "
                f"{imgs.shape[2]}x{imgs.shape[3]}; use --img-size {self._fixed_hw[0]} or export with --dynamic"
            )
        if self._fixed_hw is None and (imgs.shape[2] % self.stride or imgs.shape[3] % self.stride):
            raise ValueError(f"{self.path.name}: H and W must be multiples of {self.stride}, got {tuple(imgs.shape[2:])}")
        x = imgs.detach().cpu().numpy().astype(self._input_dtype, copy=False)
        n = self._fixed_batch
        if n is not None and x.shape[0] != n:
            # a fixed-batch export runs in chunks of its batch, the last one padded with
            # blank images whose outputs are dropped
            outs = []
            for start in range(0, x.shape[0], n):
                chunk = x[start : start + n]
                real = chunk.shape[0]
                if real < n:
                    pad = np.zeros((n - real, *chunk.shape[1:]), dtype=chunk.dtype)
                    chunk = np.concatenate([chunk, pad])
                o = self.session.run(None, {self.input_name: chunk})[0]
                if self.nms is not None:  # image index column: chunk position -> batch position
                    o = o[o[:, 0] < real]
                    o[:, 0] += start
                else:
                    o = o[:real]
                outs.append(o)
            return torch.from_numpy(np.concatenate(outs)).float()
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0]).float()

    def __repr__(self) -> str:
        return f"OnnxBackend({str(self.path)!r}, num_classes={self.num_classes}, img_size={self.img_size})"
