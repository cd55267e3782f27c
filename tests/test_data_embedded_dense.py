"""The dense embedded set: deterministic, reachable by name, many small objects of two classes."""

from __future__ import annotations

import numpy as np

from mlca.data import embedded, embedded_dense
from mlca.data.config import load_dataset_config
from mlca.data.records import read_records

from test_data_embedded import tree_hashes


def test_generation_is_deterministic_parallel_or_not(tmp_path):
    a = tree_hashes(embedded.generate_embedded(tmp_path / "a", 3, 1, variant="embedded-dense"))
    b = tree_hashes(embedded.generate_embedded(tmp_path / "b", 3, 1, workers=2, variant="embedded-dense"))
    assert a == b and len(a) == 2 * 4 + 1
    yaml_text = (tmp_path / "a" / "data.yaml").read_text()
    assert "embedded-dense dataset v1" in yaml_text and "0: vehicle" in yaml_text and "1: tank" in yaml_text
    # the first set is a different set
    c = tree_hashes(embedded.generate_embedded(tmp_path / "c", 3, 1))
    assert c["images/train/train_00000.jpg"] != a["images/train/train_00000.jpg"]


def test_reachable_by_name_as_its_own_set(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCA_HOME", str(tmp_path))
    fake = embedded.embedded_root(variant="embedded-dense")  # pretend the full set exists
    assert fake == tmp_path / f"embedded-dense-v{embedded_dense.VERSION}"
    embedded.generate_embedded(fake, 2, 1, variant="embedded-dense")
    (fake / embedded.MARKER).write_text("{}")
    cfg = load_dataset_config("embedded-dense")
    assert cfg.name == "embedded-dense" and cfg.names == ["vehicle", "tank"] and cfg.root == fake
    assert len(read_records(cfg, "train")) == 2
    small = embedded.embedded_config(2, 1, variant="embedded-dense")
    assert small.root.name == f"embedded-dense-v{embedded_dense.VERSION}-2-1"


def test_images_are_dense_with_small_objects_of_both_classes():
    counts, sides, labels = [], [], []
    for i in range(6):
        img, boxes, lab = embedded_dense.render_dense_image(np.random.default_rng([embedded.SEED, 0, i]))
        assert img.dtype == np.uint8 and 256 <= min(img.shape[:2]) and max(img.shape[:2]) <= 320
        assert len(boxes) == len(lab)
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        counts.append(len(boxes))
        sides.append(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        labels.append(lab)
    sides, labels = np.concatenate(sides), np.concatenate(labels)
    assert min(counts) >= 20 and np.mean(counts) >= 35
    assert np.median(sides) < 20 and sides.max() < 40
    assert set(labels.tolist()) == {0, 1}
