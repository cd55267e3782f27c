"""The embedded synthetic set: deterministic bytes, safe concurrent generation, sensible content."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from mlca.data import embedded
from mlca.data.config import load_dataset_config
from mlca.data.dataset import DetectionDataset
from mlca.data.records import read_records


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != embedded.MARKER and not p.name.endswith(".mlca-cache.npz")  # label caches
    }


def test_generation_is_deterministic_parallel_or_not_and_smaller_sets_are_prefixes(tmp_path):
    a = tree_hashes(embedded.generate_embedded(tmp_path / "a", 5, 2))
    # two worker processes write the same bytes as one
    b = tree_hashes(embedded.generate_embedded(tmp_path / "b", 5, 2, workers=2))
    assert a == b and len(a) == 2 * 7 + 1
    c = tree_hashes(embedded.generate_embedded(tmp_path / "c", 3, 1))
    for name, digest in c.items():
        if name != "data.yaml":
            assert a[name] == digest, name


def test_first_use_generates_into_mlca_home_and_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCA_HOME", str(tmp_path / "h1"))
    cfg = embedded.embedded_config(6, 2)
    root = cfg.root
    assert root == tmp_path / "h1" / f"embedded-v{embedded.VERSION}-6-2" and (root / embedded.MARKER).is_file()
    assert cfg.format == "embedded" and cfg.names == embedded.NAMES
    train, val = read_records(cfg, "train"), read_records(cfg, "val")
    assert len(train) == 6 and len(val) == 2
    # the folder is also a plain YOLO dataset with a YOLOv5 data YAML
    assert len(read_records(load_dataset_config(root / "data.yaml"), "train")) == 6
    img, targets, meta = DetectionDataset(train, 128, augment=True)[0]
    assert img.shape == (3, 128, 128) and targets.shape[1] == 5
    # a second call reuses the set
    mtime = (root / embedded.MARKER).stat().st_mtime_ns
    assert embedded.embedded_config(6, 2).root == root
    assert (root / embedded.MARKER).stat().st_mtime_ns == mtime
    # another home gets the same bytes
    monkeypatch.setenv("MLCA_HOME", str(tmp_path / "h2"))
    assert tree_hashes(embedded.ensure_embedded(6, 2)) == tree_hashes(root)


def test_default_set_is_reachable_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCA_HOME", str(tmp_path))
    # pretend the full set exists, so this test does not spend 20 s generating it
    fake = embedded.embedded_root()
    embedded.generate_embedded(fake, 2, 1)
    (fake / embedded.MARKER).write_text("{}")
    cfg = load_dataset_config("embedded")
    assert cfg.root == tmp_path / f"embedded-v{embedded.VERSION}" and cfg.name == "embedded"
    assert len(read_records(cfg, "train")) == 2


def test_two_processes_generating_at_once_both_get_the_complete_set(tmp_path):
    env = {**os.environ, "MLCA_HOME": str(tmp_path)}
    code = "from mlca.data.embedded import ensure_embedded; print(ensure_embedded(4, 2))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    root = tmp_path / f"embedded-v{embedded.VERSION}-4-2"
    assert outs == [str(root)] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [root.name]  # no temp folders left
    assert tree_hashes(root) == tree_hashes(embedded.generate_embedded(tmp_path / "ref", 4, 2))


def test_a_folder_without_the_marker_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCA_HOME", str(tmp_path))
    broken = embedded.embedded_root(3, 1)
    (broken / "images").mkdir(parents=True)
    root = embedded.ensure_embedded(3, 1)
    assert root == broken and (root / embedded.MARKER).is_file()
    assert len(list((root / "images" / "train").glob("*.jpg"))) == 3


def test_images_hold_objects_of_every_class_at_many_scales():
    sizes, labels, counts = [], [], []
    for i in range(30):
        img, boxes, lab = embedded.render_image(np.random.default_rng([1, 2, i]))
        h, w = img.shape[:2]
        assert img.dtype == np.uint8 and 240 <= h <= 320 and 240 <= w <= 320
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 2).all()
        # boxes are tight on drawn pixels: the image is not flat inside any box
        for x1, y1, x2, y2 in boxes.astype(int):
            assert img[y1:y2, x1:x2].std() > 3
        sizes += (boxes[:, 2:] - boxes[:, :2]).max(1).tolist()
        labels += lab.tolist()
        counts.append(len(lab))
    assert set(labels) == set(range(len(embedded.NAMES)))
    assert min(sizes) < 16 and max(sizes) > 80  # small and large objects
    assert max(counts) >= 10 and min(counts) >= 1  # some crowded images, no empty ones
