"""`python -m mlca.data.check`: one run lists every problem and the class counts."""

from __future__ import annotations

import pytest
from PIL import Image
from test_data_yolo import make_set

from mlca.data.check import check_dataset, main


def test_check_lists_all_bad_files_counts_and_writes_a_preview(tmp_path, capsys):
    yaml = make_set(tmp_path, {"a": "0 0.5 0.5 0.5 0.5\n2 0.5 0.5 0.25 0.25\n", "b": "", "c": "5 0.5 0.5 0.1 0.1\n",
                               "d": "0 0.5 0.5 0.1\n", "e": "1 0.95 0.5 0.2 0.2\n"})  # fmt: skip
    (train, val) = check_dataset(yaml, preview=tmp_path / "p.png")
    assert (train.images, train.objects, train.empty_images) == (3, 3, 1)
    assert train.per_class == {"cat": 1, "dog": 1, "bird": 1}
    assert train.box_long_side["max"] == 32 and train.box_long_side["min"] == pytest.approx(0.2 * 48)
    assert sorted(e.file.name for e in train.bad) == ["c.txt", "d.txt"] and train.report.clipped == 1
    assert Image.open(tmp_path / "p.png").size == (4 * 320, 320)

    assert main([str(yaml)]) == 1
    out = capsys.readouterr().out
    assert "train: 3 images (1 without objects), 3 objects" in out
    assert "labels/train/c.txt:1: class 5 not in the config" in out and "labels/train/d.txt:1" in out
    assert "clipped 1 box(es)" in out
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "dataset config not found" in capsys.readouterr().err
