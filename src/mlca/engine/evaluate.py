"""Evaluate a detector on a dataset: inference, NMS, letterbox undo, COCO or VOC mAP.

Detections are mapped back to original-image pixels and compared with the original boxes of
the dataset's records (not the letterboxed targets), so the numbers do not depend on the
evaluation image size through rounding of the ground truth. The records' ignored objects
(VOC difficult, COCO crowd) are ignored ground truth, as the reference tools treat them.

Protocols (``metric``): ``"coco"``, COCOeval's 101-point AP over IoU 0.5:0.95 (through
faster-coco-eval, :mod:`mlca.engine.metrics`); ``"voc07"`` and ``"voc12"``, the VOC devkit's
AP at IoU 0.5, 11-point and all-point (:mod:`mlca.engine.voc_ap`).

Under DDP, call it on rank 0 only with a plain (non-distributed) loader over the whole
validation set; the trainer does this with the EMA model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mlca.engine.metrics import ImageDets, ImageGT, coco_det_list, coco_gt_dict, coco_map
from mlca.engine.postprocess import non_max_suppression, scale_boxes


METRICS = ("coco", "voc07", "voc12")


@dataclass
class EvalResult:
    """What :func:`evaluate` measured.

    Attributes:
        map50: mAP at IoU 0.5, mean over classes with ground truth: COCO's 101-point AP for
            ``metric="coco"``, the VOC devkit's AP for ``"voc07"`` (11-point) / ``"voc12"``.
        map: COCO mAP averaged over IoU 0.5:0.05:0.95 (NaN for the VOC protocols).
        per_class: ``{name: {"ap50", "ap", "n_gt"}}``; AP is NaN for a class without ground truth.
        n_images, n_gt: images evaluated and (non-ignored) ground-truth boxes in them.
        speed: milliseconds per image, ``{"inference": ..., "nms": ...}``.
        metric: the protocol, ``"coco"``, ``"voc07"`` or ``"voc12"``.
        stats: COCOeval's 12 summary numbers (``metrics.COCO_STAT_NAMES``) for ``"coco"``.
        detections: with ``keep_detections=True``, a COCO results list: every kept detection as
            ``{"image_id", "category_id", "bbox" [x, y, w, h] original pixels, "score"}``, with
            the dataset's own ids (see :func:`evaluate`).
        ground_truth: with ``keep_detections=True``, the COCO ground-truth dict those ids refer
            to (images with ``file_name``, ignored objects as ``iscrowd: 1``, class names).
    """

    map50: float
    map: float
    per_class: dict[str, dict[str, float]]
    n_images: int = 0
    n_gt: int = 0
    speed: dict[str, float] = field(default_factory=dict)
    metric: str = "coco"
    stats: list[float] = field(default_factory=list)
    detections: list[dict[str, Any]] = field(default_factory=list, repr=False)
    ground_truth: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def fitness(self) -> float:
        """YOLOv5's model-selection score: 0.1 mAP@0.5 + 0.9 mAP@0.5:0.95 (:func:`mlca.engine.fitness.fitness`)."""
        from mlca.engine.fitness import fitness

        return fitness(self.map50, self.map)


def _loader(data: Dataset | DataLoader, batch_size: int, workers: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    from mlca.data.dataset import collate

    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)


def _records_by_path(dataset: Any) -> dict[str, Any] | None:
    """The dataset's records keyed by image path, looking through ``Subset`` wrappers."""
    while hasattr(dataset, "dataset") and not hasattr(dataset, "records"):
        dataset = dataset.dataset
    records = getattr(dataset, "records", None)
    return None if records is None else {str(r.image): r for r in records}


def _gt_from_targets(targets: Tensor, meta: dict, size: tuple[int, int]) -> ImageGT:
    """Fallback ground truth for datasets without records: letterboxed targets mapped back."""
    h_in, w_in = size
    cxcywh = targets[:, 1:5] * torch.tensor([w_in, h_in, w_in, h_in], dtype=targets.dtype)
    xyxy = torch.cat((cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2), 1)
    h, w = meta["orig_size"]
    return ImageGT(scale_boxes(xyxy.double(), meta).numpy(), targets[:, 0].long().numpy(), int(w), int(h))


def _names_of(model: Any, loader: DataLoader, names: Sequence[str] | None) -> list[str]:
    if names is not None:
        return list(names)
    for source in (model, loader.dataset, getattr(loader.dataset, "dataset", None)):
        found = getattr(source, "names", None)
        if found:
            return list(found)
    nc = getattr(model, "num_classes", None)
    if nc is None:
        raise ValueError("evaluate() needs class names: pass names=, or a model/dataset with .names")
    return [str(i) for i in range(nc)]


def evaluate(
    model: nn.Module | Callable[[Tensor], Tensor],
    data: Dataset | DataLoader,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 300,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    amp: bool = False,
    multi_label: bool = True,
    names: Sequence[str] | None = None,
    workers: int = 0,
    progress: bool = False,
    keep_detections: bool = False,
    metric: str = "coco",
    category_ids: Sequence[int] | None = None,
) -> EvalResult:
    """mAP of ``model`` on ``data``.

    Args:
        model: a MAY (or DDP-wrapped MAY; put in eval mode here and restored afterwards), or any
            callable ``(B, 3, S, S) float in [0, 1] -> (B, N, 5 + nc)`` decoded predictions
            (an ONNX backend from :func:`mlca.engine.predict.load_backend`).
        data: a ``DetectionDataset`` (built with ``augment=False``) or a DataLoader over one
            with ``mlca.data.dataset.collate``. Ground truth comes from its ``records``.
        conf_thres, iou_thres, max_det, multi_label: NMS settings (YOLOv5's mAP settings by
            default: a low threshold and one candidate per class, as mAP integrates over scores).
        batch_size, workers: used when ``data`` is a dataset.
        device: where the model runs (default: the model's parameters' device, else CPU).
        amp: autocast the forward pass (fp16 on CUDA, bf16 on CPU).
        names: class names (default: ``model.names``, then ``dataset.names``, then indices).
        progress: show a tqdm bar.
        keep_detections: fill ``EvalResult.detections`` and ``ground_truth`` (off by default:
            at ``conf_thres=0.001`` that is up to ``max_det`` dicts per image, every epoch).
        metric: ``"coco"``, ``"voc07"`` or ``"voc12"`` (see the module docstring).
        category_ids: the dataset's category id of each class index (COCO data:
            :func:`mlca.data.coco.coco_category_ids`); default ``index + 1``.

    Image ids are the records' own (``Record.image_id``) when every record has an integer one
    (COCO data), else 1..n in the order of ``data``.

    Returns:
        :class:`EvalResult` in original-image coordinates.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    from tqdm import tqdm

    # only DDP is peeled (its forward would wait for the other ranks); a compiled model stays
    # compiled, so evaluation runs the same kernels as training (mlca.engine.unwrap peels all)
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if device is None:
        param = next(net.parameters(), None) if isinstance(net, nn.Module) else None
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    loader = _loader(data, batch_size, workers)
    names = _names_of(net, loader, names)
    records = _records_by_path(loader.dataset)

    was_training = net.training if isinstance(net, nn.Module) else False
    if isinstance(net, nn.Module):
        net.eval()
    gts: list[ImageGT] = []
    dets: list[ImageDets] = []
    paths: list[str] = []
    own_ids: list[Any] = []
    t_inf = t_nms = 0.0
    try:
        with torch.inference_mode():
            for imgs, targets, metas in tqdm(loader, desc="val", disable=not progress, leave=False):
                imgs = imgs.to(device, non_blocking=True).float()
                t0 = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16,
                                    enabled=amp):
                    pred = net(imgs)
                if isinstance(pred, (list, tuple)):
                    raise TypeError("the model returned raw per-level outputs; evaluate() needs the eval-mode "
                                    "decoded (B, N, 5 + nc) tensor")
                pred = pred.float()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t1 = time.perf_counter()
                out = non_max_suppression(pred, conf_thres, iou_thres, max_det=max_det, multi_label=multi_label)
                t_nms += time.perf_counter() - t1
                t_inf += t1 - t0
                targets = targets.cpu()
                for i, (det, meta) in enumerate(zip(out, metas)):
                    det = scale_boxes(det.cpu().double(), meta)
                    dets.append(ImageDets(det[:, :4].numpy(), det[:, 4].numpy(), det[:, 5].long().numpy()))
                    path = str(meta["path"])
                    paths.append(path)
                    rec = records.get(path) if records is not None else None
                    own_ids.append(rec.image_id if rec is not None else None)
                    if rec is not None:
                        gts.append(ImageGT(rec.boxes, rec.labels, rec.width, rec.height, rec.ignore, rec.area))
                    else:
                        gts.append(_gt_from_targets(targets[targets[:, 0] == i][:, 1:].double(), meta,
                                                    tuple(imgs.shape[2:])))
    finally:
        if isinstance(net, nn.Module):
            net.train(was_training)

    integer = all(isinstance(i, int) and not isinstance(i, bool) for i in own_ids)
    image_ids = own_ids if own_ids and integer and len(set(own_ids)) == len(own_ids) else None
    if metric == "coco":
        res = coco_map(gts, dets, names, image_ids=image_ids, category_ids=category_ids)
    else:
        from mlca.engine.voc_ap import voc_map

        res = voc_map(gts, dets, names, use_07_metric=metric == "voc07")
    n = max(len(dets), 1)
    detections, ground_truth = [], {}
    if keep_detections:
        detections = coco_det_list(dets, image_ids, category_ids)
        ground_truth = coco_gt_dict(gts, names, image_ids, category_ids, file_names=paths)
    return EvalResult(
        map50=res.map50, map=res.map, per_class=res.per_class, n_images=len(dets), n_gt=res.n_gt,
        speed={"inference": 1000 * t_inf / n, "nms": 1000 * t_nms / n}, metric=metric, stats=res.stats,
        detections=detections, ground_truth=ground_truth,
    )


__all__ = ["METRICS", "EvalResult", "evaluate"]
