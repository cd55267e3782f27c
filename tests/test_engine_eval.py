"""evaluate(): oracle and blind predictors on a real DetectionDataset, and a real MAY end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from mlca.data.dataset import DetectionDataset, collate
from mlca.data.records import Record
from mlca.engine.evaluate import EvalResult, evaluate

NAMES = ["circle", "square", "bar"]


def make_records(tmp: Path, n: int = 5, seed: int = 0) -> list[Record]:
    """Images of different sizes and aspect ratios (so the letterbox pads), random boxes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = int(rng.integers(40, 120)), int(rng.integers(40, 120))
        path = tmp / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        k = int(rng.integers(1, 4))
        xy = rng.uniform(0, [w * 0.6, h * 0.6], (k, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, [w * 0.4, h * 0.4], (k, 2))], 1)
        out.append(Record(path, boxes, rng.integers(0, len(NAMES), k), w, h))
    return out


class Oracle(nn.Module):
    """Replays the letterboxed targets of a loader as perfect decoded predictions, batch by batch."""

    def __init__(self, loader: DataLoader, nc: int, size: int, width_scale: float = 1.0) -> None:
        super().__init__()
        self.batches = []
        for _, targets, metas in loader:
            b = len(metas)
            n = max(int(np.bincount(targets[:, 0].long().numpy(), minlength=b).max(initial=0)), 1)
            pred = torch.zeros(b, n + 2, 5 + nc)
            for i in range(b):
                t = targets[targets[:, 0] == i]
                pred[i, : len(t), :4] = t[:, 2:6] * size
                pred[i, : len(t), 2] *= width_scale  # narrower boxes, same centre: IoU = width_scale
                pred[i, : len(t), 4] = 1.0
                pred[i, torch.arange(len(t)), 5 + t[:, 1].long()] = 0.9
            self.batches.append(pred)
        self.calls = 0
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, N, 5 + nc), the replayed batch."""
        out = self.batches[self.calls]
        self.calls += 1
        return out


def test_oracle_predictions_give_map_one(tmp_path):
    ds = DetectionDataset(make_records(tmp_path), 64, augment=False)
    loader = DataLoader(ds, batch_size=2, collate_fn=collate)
    res = evaluate(Oracle(loader, 3, 64), loader, names=NAMES, keep_detections=True)
    assert isinstance(res, EvalResult)
    assert res.map50 == pytest.approx(1.0) and res.map == pytest.approx(1.0)
    assert res.n_images == 5 and res.n_gt == sum(len(r.labels) for r in ds.records)
    assert set(res.per_class) == set(NAMES)
    # detections are reported in original-image pixels: they equal the records' boxes
    # (a COCO results list whose image ids are those of the ground-truth dict that comes with it)
    file_of = {im["id"]: im["file_name"] for im in res.ground_truth["images"]}
    got = sorted((file_of[d["image_id"]], round(d["bbox"][0], 2), round(d["bbox"][2], 2)) for d in res.detections)
    want = sorted((str(r.image), round(float(b[0]), 2), round(float(b[2] - b[0]), 2)) for r in ds.records for b in r.boxes)
    assert got == want
    assert sorted(file_of) == [1, 2, 3, 4, 5]
    assert {d["category_id"] for d in res.detections} <= {1, 2, 3}
    assert [c["name"] for c in res.ground_truth["categories"]] == NAMES
    assert len(res.stats) == 12 and res.stats[1] == pytest.approx(1.0) and res.metric == "coco"


def test_narrowed_predictions_lose_strict_ious_but_keep_map50(tmp_path):
    ds = DetectionDataset(make_records(tmp_path, seed=1), 64, augment=False)
    loader = DataLoader(ds, batch_size=3, collate_fn=collate)
    # IoU 0.88 with every box: a hit at IoU thresholds 0.50..0.85 (8 of 10), a miss at 0.90, 0.95
    res = evaluate(Oracle(loader, 3, 64, width_scale=0.88), loader, names=NAMES)
    assert res.map50 == pytest.approx(1.0)
    assert res.map == pytest.approx(8 / 10, abs=1e-6)


def test_blind_predictor_gives_zero_and_a_dataset_is_accepted(tmp_path):
    ds = DetectionDataset(make_records(tmp_path), 64, augment=False)

    def blind(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 10, 8)

    res = evaluate(blind, ds, batch_size=4, names=NAMES, keep_detections=True)
    assert res.map50 == 0.0 and res.map == 0.0 and res.detections == []


def test_real_may_runs_end_to_end_and_keeps_train_mode(tmp_path):
    from mlca.models.may import build_may

    torch.manual_seed(0)
    model = build_may(num_classes=3)
    model.names = NAMES
    model.train()
    ds = DetectionDataset(make_records(tmp_path, n=3), 64, augment=False)
    res = evaluate(model, ds, batch_size=3)
    assert model.training  # restored
    assert 0.0 <= res.map <= res.map50 <= 1.0
    assert res.n_images == 3 and set(res.speed) == {"inference", "nms"}
    assert list(res.per_class) == NAMES


def test_raw_outputs_are_rejected_with_a_clear_message(tmp_path):
    ds = DetectionDataset(make_records(tmp_path, n=2), 64, augment=False)
    with pytest.raises(TypeError, match="raw per-level outputs"):
        evaluate(lambda x: [torch.zeros(1)], ds, names=NAMES)


class Replay(nn.Module):
    """Replays fixed decoded predictions (B, N, 5 + nc) for one batch."""

    def __init__(self, pred: torch.Tensor) -> None:
        super().__init__()
        self.pred = pred
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, N, 5 + nc)."""
        return self.pred


def test_ignored_ground_truth_flows_from_records_into_every_protocol(tmp_path):
    """One 64 x 64 image (no letterbox padding) with a normal box N and a box X, as an ignored
    object, as a normal one, or left out. Detections: on both (the one on X ranked first), or on
    N only. Ignored, X changes nothing: AP 1 either way. Left out, the detection on X is an FP
    ranked first (precision 1/2 at recall 1: AP 1/2). Normal, missing X halves the recall
    (COCO: precision 1 at 51 of 101 recall points; VOC07: 6 of 11 points; all-point: 1/2)."""
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    boxes = np.array([[4, 4, 24, 24], [36, 36, 60, 60]], np.float32)  # N, X
    both = torch.zeros(1, 2, 5 + 3)
    for k, (b, score) in enumerate(zip(boxes, (0.5, 0.9))):
        both[0, k, :4] = torch.tensor([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]])
        both[0, k, 4], both[0, k, 5] = 1.0, score
    n_only = both[:, :1].clone()
    records = {
        "ignored": Record(path, boxes, [0, 0], 64, 64, ignore=[False, True]),
        "dropped": Record(path, boxes[:1], [0], 64, 64),
        "normal": Record(path, boxes, [0, 0], 64, 64),
    }
    half = {"coco": 51 / 101, "voc07": 6 / 11, "voc12": 0.5}
    for metric in ("coco", "voc07", "voc12"):
        want = {("ignored", "both"): 1.0, ("ignored", "n_only"): 1.0, ("dropped", "both"): 0.5,
                ("dropped", "n_only"): 1.0, ("normal", "both"): 1.0, ("normal", "n_only"): half[metric]}
        for (kind, dets), ap in want.items():
            ds = DetectionDataset([records[kind]], 64, augment=False)
            res = evaluate(Replay(both if dets == "both" else n_only), ds, names=NAMES, metric=metric)
            assert res.map50 == pytest.approx(ap), (kind, dets, metric)
            assert res.n_gt == (2 if kind == "normal" else 1) and res.metric == metric
    with pytest.raises(ValueError, match="metric must be one of"):
        evaluate(Replay(both), ds, names=NAMES, metric="voc")
