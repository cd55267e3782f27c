"""YOLO txt reader: layouts, label parsing, and every kind of bad data, located to file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mlca.data.config import load_dataset_config
from mlca.data.errors import DataError
from mlca.data.records import read_records, scan_records
from mlca.data.yolo import label_path, parse_label_file

NAMES = ["cat", "dog", "bird"]


def write_image(path: Path, w: int, h: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def make_set(root: Path, labels: dict[str, str], sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """images/train/<stem>.png + labels/train/<stem>.txt for each entry, and a data.yaml."""
    sizes = sizes or {}
    for i, (stem, text) in enumerate(labels.items()):
        write_image(root / "images" / "train" / f"{stem}.png", *sizes.get(stem, (64, 48)), seed=i)
        if text is not None:
            (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
            (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    yaml = root / "data.yaml"
    yaml.write_text("path: .\ntrain: images/train\nval: images/train\nnames: [cat, dog, bird]\n")
    return yaml


def test_boxes_are_pixels_xyxy_from_normalised_cxcywh(tmp_path):
    yaml = make_set(tmp_path, {"a": "1 0.5 0.5 0.25 0.5\n\n0 0.25 0.75 0.5 0.5\n", "b": None})
    cfg = load_dataset_config(yaml)
    recs = read_records(cfg, "train")
    assert [r.image.name for r in recs] == ["a.png", "b.png"]
    a, b = recs
    assert (a.width, a.height) == (64, 48)
    # independent reference, float64: x1 = (cx - w/2) * W ...
    ref = np.array([[(0.5 - 0.125) * 64, (0.5 - 0.25) * 48, (0.5 + 0.125) * 64, (0.5 + 0.25) * 48],
                    [0.0, 0.5 * 48, 0.5 * 64, 48.0]])  # fmt: skip
    np.testing.assert_allclose(a.boxes, ref, rtol=0, atol=1e-4)
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64
    assert a.labels.tolist() == [1, 0]
    assert b.boxes.shape == (0, 4) and b.labels.shape == (0,)  # no label file: background image


def test_segment_polygons_become_their_bounding_box_and_a_bom_is_tolerated(tmp_path):
    yaml = make_set(tmp_path, {"a": "\ufeff2 0.1 0.2 0.5 0.25 0.3 0.9\n0 0.5 0.5 0.5 0.5 0.6 0.6 0.4 0.7\n"})
    (a,) = read_records(load_dataset_config(yaml), "train")
    ref = [[0.1 * 64, 0.2 * 48, 0.5 * 64, 0.9 * 48], [0.4 * 64, 0.5 * 48, 0.6 * 64, 0.7 * 48]]
    np.testing.assert_allclose(a.boxes, ref, atol=1e-4)
    assert a.labels.tolist() == [2, 0]


def test_read_records_takes_a_yaml_path_and_errors_survive_pickling(tmp_path):
    import pickle

    yaml = make_set(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": "9 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(DataError) as e:
        read_records(yaml, "train")  # a path works as well as a loaded config
    # DataLoader workers send exceptions to the main process by pickling them
    back = pickle.loads(pickle.dumps(e.value))
    assert (back.file, back.line, back.reason, str(back)) == (e.value.file, 1, e.value.reason, str(e.value))


def test_split_as_txt_list_and_list_of_dirs(tmp_path):
    make_set(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": "2 0.5 0.5 0.2 0.2\n"})
    write_image(tmp_path / "images" / "extra" / "c.jpg", 32, 32)
    (tmp_path / "list.txt").write_text("./images/train/b.png\nimages/extra/c.jpg\n")
    (tmp_path / "d.yaml").write_text(
        "path: .\ntrain: [images/train, images/extra]\nval: list.txt\nnames: {0: cat, 1: dog, 2: bird}\n"
    )
    cfg = load_dataset_config(tmp_path / "d.yaml")
    assert cfg.format == "yolo" and cfg.names == NAMES
    assert [r.image.name for r in read_records(cfg, "train")] == ["a.png", "b.png", "c.jpg"]
    assert [r.image.name for r in read_records(cfg, "val")] == ["b.png", "c.jpg"]


def test_label_path_replaces_the_last_images_dir():
    assert label_path(Path("/d/images/x/images/train/a.jpg")) == Path("/d/images/x/labels/train/a.txt")
    assert label_path(Path("/d/pics/a.png")) == Path("/d/pics/a.txt")


@pytest.mark.parametrize(
    "text, line, reason",
    [
        ("0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2\n", 2, "expected 5 fields"),
        ("0 0.5 0.5 0.2 0.2 0.1\n", 1, "expected 5 fields"),
        ("0 0.5 0.5 0.2 0.2 0.1 0.3 0.4\n", 1, "expected 5 fields"),  # a polygon needs whole points
        ("0 0.1 0.1 0.5 0.1 30 40\n", 1, "not normalised"),
        ("0 0.5 0.5 0.2 0.2\n\n0 0.5 abc 0.2 0.2\n", 3, "non-numeric"),
        ("0 0.5 0.5 nan 0.2\n", 1, "non-finite"),
        ("3 0.5 0.5 0.2 0.2\n", 1, "class 3 not in the config"),
        ("-1 0.5 0.5 0.2 0.2\n", 1, "class -1 not in the config"),
        ("1.5 0.5 0.5 0.2 0.2\n", 1, "class 1.5 not in the config"),
        ("0 32 24 10 10\n", 1, "not normalised"),
        ("0 0.5 0.5 1.2 0.2\n", 1, "not normalised"),
    ],
)
def test_bad_label_line_names_file_and_line(tmp_path, text, line, reason):
    yaml = make_set(tmp_path, {"good": "0 0.5 0.5 0.2 0.2\n", "bad": text})
    cfg = load_dataset_config(yaml)
    with pytest.raises(DataError) as e:
        read_records(cfg, "train")
    bad = tmp_path / "labels" / "train" / "bad.txt"
    assert e.value.file == bad and e.value.line == line
    assert reason in str(e.value) and f"{bad}:{line}" in str(e.value)


def test_corrupt_and_missing_images(tmp_path, capsys):
    yaml = make_set(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": "0 0.5 0.5 0.2 0.2\n", "c": ""})
    corrupt = tmp_path / "images" / "train" / "b.png"
    corrupt.write_bytes(corrupt.read_bytes()[:60])  # a truncated download
    trunc_jpg = write_image(tmp_path / "images" / "train" / "d.jpg", 40, 40)
    trunc_jpg.write_bytes(trunc_jpg.read_bytes()[:-50])
    (tmp_path / "list.txt").write_text("images/train/a.png\nimages/train/missing.png\n")
    cfg = load_dataset_config(yaml)
    with pytest.raises(DataError) as e:
        read_records(cfg, "train")
    assert e.value.file == corrupt and "corrupt" in str(e.value)

    report = scan_records(cfg, "train", skip_bad=True)
    assert sorted(err.file.name for err in report.bad) == ["b.png"]  # a truncated JPEG is restored
    assert len(report.restored) == 1 and "d.jpg" in report.restored[0]
    assert [r.image.name for r in report.records] == ["a.png", "c.png", "d.jpg"]
    read_records(cfg, "train", skip_bad=True)
    err = capsys.readouterr().err
    assert "skipped 1 bad image(s)" in err and "b.png" in err and "restored 1 corrupt JPEG(s)" in err

    cfg.val = "list.txt"
    with pytest.raises(DataError, match="image file not found") as e:
        read_records(cfg, "val")
    assert e.value.file.name == "missing.png"


def test_skip_bad_counts_and_lists_every_bad_file(tmp_path, capsys):
    labels = {f"g{i}": "0 0.5 0.5 0.2 0.2\n" for i in range(3)}
    labels |= {"x1": "7 0.5 0.5 0.2 0.2\n", "x2": "0 0.5 0.5\n", "x3": "0 0.5 0.5 0.2 0.2\n0 2 2 2 2\n"}
    cfg = load_dataset_config(make_set(tmp_path, labels))
    recs = read_records(cfg, "train", skip_bad=True)
    assert sorted(r.image.stem for r in recs) == ["g0", "g1", "g2"]
    err = capsys.readouterr().err
    assert "skipped 3 bad image(s)" in err
    for stem, line in (("x1", 1), ("x2", 1), ("x3", 2)):
        assert f"labels/train/{stem}.txt:{line}" in err


def test_partly_outside_boxes_are_clipped_and_counted(tmp_path, capsys):
    # x from 0.9 - 0.15 to 0.9 + 0.15 = 1.05: 5% outside on the right
    yaml = make_set(tmp_path, {"a": "0 0.9 0.5 0.3 0.2\n1 0.5 0.5 0.2 0.2\n", "b": "2 0.1 0.05 0.1 0.2\n"})
    cfg = load_dataset_config(yaml)
    report = scan_records(cfg, "train")
    assert report.clipped == 2 and sorted(p.name for p in report.clipped_files) == ["a.png", "b.png"]
    a = report.records[0]
    np.testing.assert_allclose(a.boxes[0], [0.75 * 64, 0.4 * 48, 64, 0.6 * 48], atol=1e-4)
    read_records(cfg, "train")
    assert "clipped 2 box(es)" in capsys.readouterr().err


def test_rounding_at_the_border_is_not_clipping(tmp_path):
    yaml = make_set(tmp_path, {"a": "0 0.5 0.5 1.0000001 1\n"})
    assert scan_records(load_dataset_config(yaml), "train").clipped == 0


def test_empty_split_is_an_error(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "d.yaml").write_text("train: images/train\nval: images/train\nnames: [a]\n")
    with pytest.raises(DataError, match="no images found"):
        read_records(load_dataset_config(tmp_path / "d.yaml"), "train")


@settings(max_examples=60, deadline=None)
@given(
    w=st.integers(1, 2000),
    h=st.integers(1, 2000),
    rows=st.lists(
        st.tuples(st.integers(0, 2), *[st.floats(0.05, 0.95)] * 2, *[st.floats(0.01, 1.0)] * 2), min_size=0, max_size=8
    ),
)
def test_label_parsing_matches_a_float64_reference(tmp_path_factory, w, h, rows):
    path = tmp_path_factory.mktemp("lbl") / "a.txt"
    path.write_text("".join(f"{c} {cx!r} {cy!r} {bw!r} {bh!r}\n" for c, cx, cy, bw, bh in rows))
    boxes, labels, n_clipped = parse_label_file(path, 3, w, h)
    ref = np.array([[(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
                    for _, cx, cy, bw, bh in rows]).reshape(-1, 4)  # fmt: skip
    clipped = np.clip(ref, 0, [w, h, w, h])
    np.testing.assert_allclose(boxes, clipped, rtol=1e-6, atol=1e-3)
    assert labels.tolist() == [r[0] for r in rows]
    assert n_clipped == int((np.abs(ref - clipped).max(1, initial=0) > 0.01).sum())
