"""Autoanchor: the recall check, the refit and determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mlca.data.records import Record
from mlca.engine.autoanchor import anchor_fitness, check_anchors, dataset_wh, kmean_anchors

DEFAULT = torch.tensor([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
                       dtype=torch.float32).view(3, 3, 2)


class FakeDetector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.detect = nn.Module()
        self.detect.register_buffer("anchors", DEFAULT.clone())


def test_fitness_counts_boxes_within_the_ratio():
    anchors = np.array([[10.0, 10.0], [100.0, 50.0]])
    wh = np.array([[10.0, 10.0], [39.0, 10.0], [41.0, 10.0], [100.0, 13.0], [400.0, 400.0]])
    # ratios to the best anchor: 1, 3.9, 4.1 (fails), 3.85 vs (100, 50), 4 (fails: not > 1/4)
    bpr, aat = anchor_fitness(wh, anchors, thr=4.0)
    assert bpr == pytest.approx(3 / 5)
    assert aat == pytest.approx(3 / 5)


def test_dataset_wh_scales_records_to_the_training_size():
    rec = Record("a.jpg", np.array([[0, 0, 100, 50], [10, 10, 11, 11]]), np.array([0, 1]), 800, 400)
    wh = dataset_wh([rec], img_size=400, scale_jitter=0.0)
    np.testing.assert_allclose(wh, [[50.0, 25.0]])  # the 1 px box is dropped (0.5 px at 400)


def elongated_records(n: int = 60, seed: int = 0) -> list[Record]:
    """Thin horizontal bars (about 20:1): no default anchor matches them within 4x."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w = rng.uniform(260, 400, 3)
        h = w / rng.uniform(18, 22, 3)
        boxes = np.stack([np.zeros(3), np.zeros(3), w, h], 1)
        out.append(Record(f"{i}.jpg", boxes, np.zeros(3, int), 640, 640))
    return out


def test_refit_improves_recall_writes_the_model_and_is_deterministic():
    records = elongated_records()
    model = FakeDetector()
    wh = dataset_wh(records, 640)
    before, _ = anchor_fitness(wh, DEFAULT.view(-1, 2).double().numpy())
    new = check_anchors(records, model, thr=4.0, img_size=640, gen=200, verbose=False)
    assert new is not None and new.shape == (3, 3, 2)
    torch.testing.assert_close(model.detect.anchors, new)
    after, _ = anchor_fitness(wh, new.view(-1, 2).double().numpy())
    assert before < 0.1 and after > 0.99
    areas = new.view(-1, 2).prod(1)
    assert (areas[1:] >= areas[:-1]).all()  # the smallest anchors go to stride 8
    again = check_anchors(records, FakeDetector(), thr=4.0, img_size=640, gen=200, verbose=False)
    torch.testing.assert_close(again, new)


def test_fitting_anchors_are_kept():
    rng = np.random.default_rng(1)
    wh = DEFAULT.view(-1, 2).numpy()[rng.integers(0, 9, 500)] * rng.uniform(0.7, 1.3, (500, 2))
    model = FakeDetector()
    assert check_anchors(wh, model, verbose=False) is None
    torch.testing.assert_close(model.detect.anchors, DEFAULT)


def test_kmeans_needs_enough_boxes():
    with pytest.raises(ValueError, match="at least 9 boxes"):
        kmean_anchors(np.ones((3, 2)) * 10)
    assert check_anchors(np.zeros((0, 2)), FakeDetector(), verbose=False) is None
