"""Damaged JPEG ends load and are counted; undecodable images are named errors; one degenerate
box costs that box (counted, located), not its image, in every format."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlca.data.config import load_dataset_config
from mlca.data.errors import DataError
from mlca.data.images import jpeg_damage, load_image, probe_image
from mlca.data.record import Record
from mlca.data.records import read_records, scan_records
from mlca.data.scan import drop_degenerate


def jpeg_bytes(w: int, h: int, rng: np.random.Generator, quality: int = 90) -> bytes:
    # smooth content, so a decoded prefix is close to the intact image
    y, x = np.mgrid[0:h, 0:w]
    phase = rng.uniform(0, 6, 3)
    img = np.stack([127 + 100 * np.sin(x / 9 + phase[c]) * np.cos(y / 7) for c in range(3)], -1)
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def yolo_set(root: Path, images: dict[str, bytes], labels: dict[str, str] | None = None) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (root / "images" / name).write_bytes(data)
    for stem, text in (labels or {}).items():
        (root / "labels" / f"{stem}.txt").write_text(text)
    (root / "d.yaml").write_text("path: .\ntrain: images\nval: images\nnames: [a, b]\n")
    return root / "d.yaml"


def test_truncated_and_trailing_jpegs_load_and_are_counted_once_per_split(tmp_path, capsys):
    rng = np.random.default_rng()
    good = jpeg_bytes(96, 64, rng)
    cut = int(len(good) * rng.uniform(0.6, 0.8))
    extra = int(rng.integers(1, 300))
    yaml = yolo_set(tmp_path, {"ok.jpg": good, "cut.jpg": good[:cut], "tail.jpg": good + b"\x00" * extra,
                               "cut2.jpg": good[:cut - 100]})  # fmt: skip
    cfg = load_dataset_config(yaml)
    recs = read_records(cfg, "train")  # no error, not even without skip_bad
    assert sorted(r.image.name for r in recs) == ["cut.jpg", "cut2.jpg", "ok.jpg", "tail.jpg"]
    assert all((r.width, r.height) == (96, 64) for r in recs)
    err = capsys.readouterr().err
    assert err.count("restored 3 corrupt JPEG(s)") == 1  # one warning for the split
    assert "cut.jpg: truncated" in err and f"tail.jpg: {extra} byte(s) after the end-of-image marker" in err

    report = scan_records(cfg, "val")
    assert len(report.restored) == 3 and not report.bad

    intact = decode(good)
    np.testing.assert_array_equal(load_image(tmp_path / "images" / "tail.jpg"), intact)
    restored = load_image(tmp_path / "images" / "cut.jpg")
    assert restored.shape == intact.shape
    top = 16  # the first MCU rows were in the data that is left
    assert np.abs(restored[:top].astype(int) - intact[:top]).mean() < 2
    assert (tmp_path / "images" / "cut.jpg").read_bytes() == good[:cut]  # the file is not rewritten


@pytest.mark.parametrize("what", ["header cut", "not a jpeg", "scan cut at once"])
def test_an_undecodable_image_is_a_named_error(tmp_path, what):
    rng = np.random.default_rng()
    good = jpeg_bytes(64, 48, rng)
    sos = good.find(b"\xff\xda")
    data = {"header cut": good[: sos // 2], "not a jpeg": rng.bytes(500), "scan cut at once": good[:sos]}[what]
    yaml = yolo_set(tmp_path, {"ok.jpg": good, "bad.jpg": data})
    bad = tmp_path / "images" / "bad.jpg"
    with pytest.raises(DataError) as e:
        read_records(yaml, "train")
    assert e.value.file == bad and str(bad) in str(e.value)
    with pytest.raises(DataError) as e:
        load_image(bad)
    assert e.value.file == bad
    report = scan_records(yaml, "train", skip_bad=True)
    assert [r.image.name for r in report.records] == ["ok.jpg"] and [x.file for x in report.bad] == [bad]


def test_jpeg_damage_is_not_fooled_by_an_exif_thumbnail():
    rng = np.random.default_rng()
    main, thumb = jpeg_bytes(80, 60, rng), jpeg_bytes(16, 12, rng)
    payload = b"Exif\x00\x00" + thumb  # a thumbnail has its own SOS ... EOI inside APP1
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    data = main[:2] + app1 + main[2:]
    assert jpeg_damage(data) is None
    assert jpeg_damage(data + b"\x00" * 7).startswith("7 byte(s) after")
    assert jpeg_damage(data[:-300]).startswith("truncated")
    assert jpeg_damage(data[: len(app1)]).startswith("truncated")  # cut before the main image's scan


def write_png(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 90, 90)).save(path)


def test_yolo_degenerate_box_is_dropped_with_its_line(tmp_path, capsys):
    write_png(tmp_path / "images" / "a.png", 64, 48)
    (tmp_path / "labels").mkdir()
    lines = ["0 0.5 0.5 0.25 0.5", "1 0.5 0.5 0 0.2", "1 1.0 0.5 0.0 0.2", "1 0.25 0.25 0.5 0.5"]
    (tmp_path / "labels" / "a.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "d.yaml").write_text("path: .\ntrain: images\nval: images\nnames: [a, b]\n")
    report = scan_records(tmp_path / "d.yaml", "train")
    (rec,) = report.records
    np.testing.assert_allclose(rec.boxes, [[24, 12, 40, 36], [0, 0, 32, 24]], atol=1e-4)
    assert rec.labels.tolist() == [0, 1]
    lbl = tmp_path / "labels" / "a.txt"
    assert [d.split(": ")[0] for d in report.dropped] == [f"{lbl}:2", f"{lbl}:3"]
    read_records(tmp_path / "d.yaml", "train")
    assert "dropped 2 degenerate box(es)" in capsys.readouterr().err


def voc_xml(boxes: list[tuple[str, tuple]]) -> str:
    objs = "".join(
        f"<object>\n<name>{n}</name>\n<difficult>0</difficult>\n<bndbox>\n<xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax>\n</bndbox>\n</object>\n"
        for n, b in boxes
    )
    size = "<size><width>50</width><height>40</height></size>"
    return f"<annotation>\n<filename>a.png</filename>\n{size}\n{objs}</annotation>\n"


def test_voc_inverted_empty_and_outside_boxes_are_dropped_with_their_lines(tmp_path):
    write_png(tmp_path / "ann" / "a.png", 50, 40)
    xml = tmp_path / "ann" / "a.xml"
    # 1-based inclusive: (5, 5, 4, 9) is empty (xmax = xmin - 1); (9, 9, 5, 12) inverted; (60, ...) outside
    xml.write_text(voc_xml([("cat", (1, 1, 10, 10)), ("dog", (5, 5, 4, 9)), ("dog", (9, 9, 5, 12)),
                            ("cat", (60, 60, 70, 70)), ("dog", (11, 11, 20, 30))]))  # fmt: skip
    (tmp_path / "v.yaml").write_text("format: voc\npath: .\ntrain: ann\nval: ann\nnames: [cat, dog]\n")
    report = scan_records(tmp_path / "v.yaml", "train")
    (rec,) = report.records
    np.testing.assert_allclose(rec.boxes, [[0, 0, 10, 10], [10, 10, 20, 30]])
    assert rec.labels.tolist() == [0, 1]
    lines = [i for i, s in enumerate(xml.read_text().splitlines(), 1) if "<bndbox>" in s]
    assert [d.split(": ")[0] for d in report.dropped] == [f"{xml}:{n}" for n in lines[1:4]]
    why = [d.rsplit("image: ", 1)[1] for d in report.dropped]
    assert why == ["zero width or height", "inverted (x2 < x1 or y2 < y1)", "outside the image"]


def test_coco_degenerate_box_is_dropped_with_its_index(tmp_path):
    write_png(tmp_path / "imgs" / "a.png", 40, 40)
    anns = [{"id": 3, "image_id": 7, "category_id": 2, "bbox": bbox, "iscrowd": 0}
            for bbox in ([1, 2, 10, 10], [10, 10, 0, 5], [50, 50, 5, 5], [0, 0, 4, 4])]  # fmt: skip
    js = {"images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 40}], "annotations": anns,
          "categories": [{"id": 2, "name": "car"}]}  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps(js))
    (tmp_path / "c.yaml").write_text("format: coco\npath: .\ntrain: {annotations: a.json, images: imgs}\n"
                                     "val: {annotations: a.json, images: imgs}\n")  # fmt: skip
    report = scan_records(tmp_path / "c.yaml", "train")
    (rec,) = report.records
    np.testing.assert_allclose(rec.boxes, [[1, 2, 11, 12], [0, 0, 4, 4]])
    assert [d.split(": ")[0] for d in report.dropped] == [
        f"{tmp_path / 'a.json'} (annotations[1] (id 3))", f"{tmp_path / 'a.json'} (annotations[2] (id 3))"]


def test_non_finite_box_is_still_an_error(tmp_path):
    write_png(tmp_path / "ann" / "a.png", 50, 40)
    (tmp_path / "ann" / "a.xml").write_text(voc_xml([("cat", (1, 1, "inf", 10))]))
    (tmp_path / "v.yaml").write_text("format: voc\npath: .\ntrain: ann\nval: ann\nnames: [cat]\n")
    with pytest.raises(DataError, match="non-finite"):
        read_records(tmp_path / "v.yaml", "train")


def test_drop_degenerate_keeps_every_per_box_field_aligned():
    @dataclasses.dataclass
    class Flagged(Record):  # e.g. a record with a per-box flag
        flags: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))

    rng = np.random.default_rng()
    n = int(rng.integers(3, 9))
    xy = rng.uniform(0, 50, (n, 2))
    wh = rng.uniform(1, 10, (n, 2))
    bad = rng.random(n) < 0.5
    wh[bad, int(rng.integers(0, 2))] = -rng.uniform(0, 3)  # zero or negative width or height
    boxes = np.concatenate([xy, xy + wh], 1)
    rec = Flagged("a.png", boxes, np.arange(n), 64, 64, flags=np.arange(n) % 2 == 0)
    out = drop_degenerate(rec)
    keep = ~bad
    np.testing.assert_array_equal(out.boxes, boxes[keep].astype(np.float32))
    assert out.labels.tolist() == np.arange(n)[keep].tolist()
    assert out.flags.tolist() == (np.arange(n) % 2 == 0)[keep].tolist()
    assert (out.width, out.height, out.image) == (64, 64, Path("a.png"))


def test_probe_of_an_intact_jpeg_notes_nothing(tmp_path):
    rng = np.random.default_rng()
    yaml = yolo_set(tmp_path, {"a.jpg": jpeg_bytes(32, 24, rng)})
    report = scan_records(yaml, "train")
    assert report.restored == [] and report.dropped == [] and report.summary() == ""
    assert probe_image(tmp_path / "images" / "a.jpg") == (32, 24)


def test_a_replayed_result_keeps_its_notes_and_counts_like_a_fresh_one(tmp_path):
    """A cache stores ``parse_one``'s result (notes as plain pairs, as JSON gives them back) and
    replays it through ``collect``: the report must equal the fresh scan's."""
    from mlca.data.scan import collect, parse_one
    from mlca.data.yolo import label_path, parse_label_file

    rng = np.random.default_rng()
    good = jpeg_bytes(48, 32, rng)
    yaml = yolo_set(tmp_path, {"a.jpg": good[:-30], "b.jpg": good}, {"a": "0 0.5 0.5 0 0.2\n0 0.5 0.5 0.5 0.5\n"})
    fresh = scan_records(yaml, "train")

    def parse(image: Path):  # one YOLO item, as read_yolo parses it
        w, h = probe_image(image)
        lbl = label_path(image)
        boxes, labels, n = parse_label_file(lbl, 2, w, h) if lbl.is_file() else (np.zeros((0, 4)), [], 0)
        return Record(image, boxes, labels, w, h), n

    images = sorted((tmp_path / "images").glob("*.jpg"))
    stored = {}
    for im in images:  # a cache's first scan
        rec, n, notes = parse_one(parse, im)
        stored[im] = (rec, n, json.loads(json.dumps(notes)))
    replayed = collect(images, lambda im: stored[im], False)  # a cached start: nothing is probed
    assert replayed.restored == fresh.restored and replayed.dropped == fresh.dropped
    assert len(replayed.restored) == 1 and len(replayed.dropped) == 1
    assert [r.boxes.tolist() for r in replayed.records] == [r.boxes.tolist() for r in fresh.records]


def test_a_corrupt_image_stays_a_named_error_after_pil_open_was_replaced(tmp_path, monkeypatch):
    """Libraries replace ``PIL.Image.open`` (ultralytics: a wrapper that tries to install a HEIF
    plugin on an unidentified file); mlca's reader still raises its own error, naming the file."""
    calls = []
    original = Image.open

    def wrapper(fp, *args, **kwargs):  # what such a wrapper does on an unidentified file
        calls.append(fp)
        try:
            return original(fp, *args, **kwargs)
        except Image.UnidentifiedImageError:
            raise ModuleNotFoundError("No module named 'some_plugin'") from None

    monkeypatch.setattr(Image, "open", wrapper)
    bad = tmp_path / "images" / "bad.jpg"
    yaml = yolo_set(tmp_path, {"ok.jpg": jpeg_bytes(32, 32, np.random.default_rng()), "bad.jpg": b"not an image" * 40})
    with pytest.raises(DataError, match="bad.jpg"):
        read_records(yaml, "train")
    with pytest.raises(DataError, match="corrupt"):
        load_image(bad)
    assert calls == []  # PIL's own open was used
    assert Image.open is wrapper  # and the other library's replacement is left in place
