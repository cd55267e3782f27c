"""The detector learns: MAY, with each head, overfits a handful of images and then finds their objects.

Every other end-to-end test accepts any mAP, including 0. Here four images made by the test
(1-3 large, high-contrast shapes each: red rectangles = class 0, blue ellipses = class 1, on
dark plain backgrounds) are written as a YOLO-format dataset, read back through mlca's reader
and ``DetectionDataset``, fitted for a short schedule with the head's own loss
(``build_loss``), and evaluated on the same images with ``mlca.evaluate`` (COCO mAP through
the engine's NMS and its mapping back to image coordinates). The correct code reaches 1.0
mAP@0.5; a broken loss, target assignment, anchor handling or box decode leaves it far below
the bound (checked by hand: with the targets' x and y swapped, mAP@0.5 ends at 0.26 with the
``yolov5`` head and 0.13 with ``yolov8``).

The loop is the training step of ``mlca.train`` without its per-epoch work (augmentation,
checkpoints, validation), so each head runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mlca
from mlca.data import collate, read_records
from mlca.engine.criterion import build_loss

SIZE = 96
STEPS = 80
MIN_MAP50 = 0.8
NAMES = ["rectangle", "ellipse"]


def _make_dataset(root, n: int = 4, seed: int = 0) -> str:
    """n images with 1-3 non-overlapping shapes each, their YOLO labels, and a data YAML."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
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
                img[y1 : y1 + h, x1 : x1 + w] = (0.9, 0.2, 0.1)
            else:
                inside = ((xx - (x1 + w / 2)) / (w / 2)) ** 2 + ((yy - (y1 + h / 2)) / (h / 2)) ** 2 <= 1
                img[inside] = (0.1, 0.4, 0.95)
            placed.append((x1, y1, x1 + w, y1 + h, cls))
        Image.fromarray((img * 255).round().astype(np.uint8)).save(root / "images" / f"{i}.png")
        (root / "labels" / f"{i}.txt").write_text(
            "".join(f"{c} {(a + b) / 2 / SIZE} {(t + u) / 2 / SIZE} {(b - a) / SIZE} {(u - t) / SIZE}\n"
                    for a, t, b, u, c in placed)
        )  # fmt: skip
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images\nval: images\nnames: {NAMES}\n")
    return str(data)


@pytest.mark.parametrize("head", ["yolov5", "yolov8"])
def test_may_overfits_a_few_images(tmp_path, head):
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    try:
        ds = mlca.DetectionDataset(read_records(_make_dataset(tmp_path), "val"), SIZE, augment=False)
        images, targets, _ = collate([ds[i] for i in range(len(ds))])
        assert images.shape == (4, 3, SIZE, SIZE) and targets.shape[1] == 6

        torch.manual_seed(0)
        model = mlca.build_may("none", num_classes=2, width=0.25, head=head)
        loss_fn = build_loss(model, {}, img_size=SIZE)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.0)
        model.train()
        first = None
        for it in range(STEPS):
            for g in opt.param_groups:
                g["lr"] = 0.01 * min(1.0, (it + 1) / 20)  # short warmup
            loss, items = loss_fn(model(images), targets)
            first = items.detach().clone() if first is None else first
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
        assert torch.isfinite(items).all() and items[0] < 0.5 * first[0]  # the box loss fell

        # batch-norm statistics of exactly these images (the running averages lag a short run)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        with torch.no_grad():
            model(images)
        result = mlca.evaluate(model, ds)
    finally:
        torch.set_num_threads(threads)
    assert result.n_gt == targets.shape[0]
    assert result.map50 >= MIN_MAP50, f"{head}: mAP@0.5 {result.map50:.3f} after overfitting (need {MIN_MAP50})"
    assert result.map >= 0.4, f"{head}: mAP@0.5:0.95 {result.map:.3f}"
