"""Each detection head learns: MAY overfits four small images of big, high-contrast shapes.

The images are drawn here (red rectangles = class 0, blue ellipses = class 1, on dark plain
backgrounds); the model trains on them with its head's own loss and is evaluated on the same
images (COCO mAP@0.5 through the engine's NMS). A wrong decode, assignment or loss leaves mAP
near zero; the correct code reaches 1.0 on this schedule, so the bound leaves a wide margin.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlca.engine.criterion import build_loss
from mlca.engine.metrics import ImageDets, ImageGT, coco_map
from mlca.engine.postprocess import non_max_suppression
from mlca.models import build_may

SIZE = 96
STEPS = 80
MIN_MAP50 = 0.8


def _images(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, list[np.ndarray]]:
    """n images (n, 3, SIZE, SIZE) in [0, 1], and per image boxes (k, 5) [x1, y1, x2, y2, cls] pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images, boxes = [], []
    for _ in range(n):
        img = np.zeros((SIZE, SIZE, 3), np.float32) + 0.1 * rng.random(3).astype(np.float32)
        placed: list[tuple[int, int, int, int, int]] = []
        for _ in range(int(rng.integers(1, 4))):
            for _ in range(20):  # a spot that overlaps no earlier shape
                w, h = (int(v) for v in rng.integers(SIZE // 5, SIZE // 2, 2))
                x1, y1 = int(rng.integers(0, SIZE - w)), int(rng.integers(0, SIZE - h))
                if all(x1 >= b[2] or x1 + w <= b[0] or y1 >= b[3] or y1 + h <= b[1] for b in placed):
                    break
            else:
                continue
            cls = int(rng.integers(0, 2))
            if cls == 0:
                img[y1:y1 + h, x1:x1 + w] = (0.9, 0.2, 0.1)
            else:
                inside = ((xx - (x1 + w / 2)) / (w / 2)) ** 2 + ((yy - (y1 + h / 2)) / (h / 2)) ** 2 <= 1
                img[inside] = (0.1, 0.4, 0.95)
            placed.append((x1, y1, x1 + w, y1 + h, cls))
        images.append(img)
        boxes.append(np.array(placed, np.float32))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), boxes


def _targets(boxes: list[np.ndarray]) -> torch.Tensor:
    rows = [[i, c, (x1 + x2) / 2 / SIZE, (y1 + y2) / 2 / SIZE, (x2 - x1) / SIZE, (y2 - y1) / SIZE]
            for i, b in enumerate(boxes) for x1, y1, x2, y2, c in b]
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["yolov5", "yolov8"])
def test_each_head_overfits_a_few_images(head):
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    try:
        images, boxes = _images()
        targets = _targets(boxes)
        torch.manual_seed(0)
        model = build_may("none", num_classes=2, width=0.25, head=head)
        loss_fn = build_loss(model, {}, img_size=SIZE)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.0)
        model.train()
        for it in range(STEPS):
            for g in opt.param_groups:
                g["lr"] = 0.01 * min(1.0, (it + 1) / 20)  # short warmup
            loss, _ = loss_fn(model(images), targets)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
        # batch-norm statistics of exactly these images (the running averages lag a short run)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        with torch.no_grad():
            model(images)
        model.eval()
        with torch.no_grad():
            dets = non_max_suppression(model(images), conf_thres=0.001, iou_thres=0.6)
    finally:
        torch.set_num_threads(threads)
    gts = [ImageGT(b[:, :4], b[:, 4].astype(int), SIZE, SIZE) for b in boxes]
    found = [ImageDets(d[:, :4].numpy(), d[:, 4].numpy(), d[:, 5].long().numpy()) for d in dets]
    result = coco_map(gts, found, ["rectangle", "ellipse"])
    assert result.map50 >= MIN_MAP50, f"{head}: mAP@0.5 {result.map50:.3f} after overfitting (need {MIN_MAP50})"
