"""The label cache: written on the first read, reused, re-parsed where files changed, never trusted blindly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlca.data import cache, voc, yolo
from mlca.data.config import load_dataset_config
from mlca.data.errors import DataError
from mlca.data.records import scan_records


def make_yolo(root: Path, n: int, seed: int, nc: int = 3) -> tuple[Path, dict[str, list[list[float]]]]:
    """n random images with random labels (fresh each run); returns the YAML and the label rows."""
    rng = np.random.default_rng(seed)
    rows = {}
    for i in range(n):
        stem = f"im{i:03d}"
        w, h = (int(v) for v in rng.integers(24, 80, 2))
        img = root / "images" / "train" / f"{stem}.jpg"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(img)
        k = int(rng.integers(0, 4))
        cxcy = rng.uniform(0.3, 0.7, (k, 2))
        wh = rng.uniform(0.05, 0.5, (k, 2))
        cls = rng.integers(0, nc, k)
        rows[stem] = [[int(c), *xy, *s] for c, xy, s in zip(cls, cxcy, wh)]
        lbl = root / "labels" / "train" / f"{stem}.txt"
        lbl.parent.mkdir(parents=True, exist_ok=True)
        lbl.write_text("".join(f"{r[0]} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n" for r in rows[stem]))
    yaml = root / "data.yaml"
    names = ", ".join(f"c{i}" for i in range(nc))
    yaml.write_text(f"path: .\ntrain: images/train\nval: images/train\nnames: [{names}]\n")
    return yaml, rows


def reference(root: Path, n_clipped_ok: bool = True) -> list[tuple]:
    """The same split read without any cache, as comparable tuples."""
    cfg = load_dataset_config(root / "data.yaml")
    cfg.options["label_cache"] = False
    return as_tuples(scan_records(cfg, "train", skip_bad=True))


def as_tuples(report) -> list[tuple]:
    return [(str(r.image), r.width, r.height, r.boxes.tolist(), r.labels.tolist()) for r in report.records]


class Counter:
    """Wraps a module function, counting calls per first argument."""

    def __init__(self, monkeypatch, module, name):
        self.calls: list[str] = []
        fn = getattr(module, name)

        def wrapped(first, *a, **k):
            self.calls.append(Path(getattr(first, "xml", first)).name)
            return fn(first, *a, **k)

        monkeypatch.setattr(module, name, wrapped)


def read(yaml: Path, **options):
    cfg = load_dataset_config(yaml)
    cfg.options.update(options)
    return scan_records(cfg, "train", skip_bad=True)


def test_first_read_writes_the_cache_and_the_next_read_parses_nothing(tmp_path, monkeypatch):
    yaml, rows = make_yolo(tmp_path, 7, seed=int(np.random.default_rng().integers(1 << 30)))
    ref = reference(tmp_path)
    # independent check of the boxes: cx, cy, w, h normalised -> xyxy pixels, float64
    for stem, (_, w, h, boxes, labels) in zip(sorted(rows), ref):
        expect = [[(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h] for _, cx, cy, bw, bh in rows[stem]]
        np.testing.assert_allclose(np.reshape(boxes, (-1, 4)), np.reshape(expect, (-1, 4)), atol=1e-3)
        assert labels == [r[0] for r in rows[stem]]
    file = tmp_path / "labels" / f"train{cache.CACHE_SUFFIX}"
    assert not file.exists()

    labels, images = Counter(monkeypatch, yolo, "parse_label_file"), Counter(monkeypatch, yolo, "probe_image")
    assert as_tuples(read(yaml)) == ref and file.is_file()
    assert len(images.calls) == 7
    labels.calls.clear(), images.calls.clear()
    mtime = file.stat().st_mtime_ns
    assert as_tuples(read(yaml)) == ref
    assert labels.calls == [] and images.calls == []  # nothing parsed again
    assert file.stat().st_mtime_ns == mtime  # and nothing rewritten


def test_a_changed_touched_new_or_removed_file_is_rescanned_alone(tmp_path, monkeypatch):
    yaml, _ = make_yolo(tmp_path, 6, seed=1)
    read(yaml)
    labels, images = Counter(monkeypatch, yolo, "parse_label_file"), Counter(monkeypatch, yolo, "probe_image")
    lbl = tmp_path / "labels" / "train"
    (lbl / "im001.txt").write_text("2 0.5 0.5 0.5 0.5\n")  # new content
    st = (lbl / "im003.txt").stat()
    os.utime(lbl / "im003.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched only
    (lbl / "im004.txt").unlink()  # now a background image
    (tmp_path / "images" / "train" / "im005.jpg").unlink()  # gone from the split
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "train" / "new.jpg")  # new, no label
    got = read(yaml)
    assert sorted(images.calls) == ["im001.jpg", "im003.jpg", "im004.jpg", "new.jpg"]
    assert sorted(labels.calls) == ["im001.txt", "im003.txt"]
    assert as_tuples(got) == reference(tmp_path)
    im001 = next(r for r in got.records if r.image.name == "im001.jpg")
    assert im001.labels.tolist() == [2]
    assert [r.image.name for r in got.records][-1] == "new.jpg" and len(got.records) == 6


def test_bad_files_are_cached_as_errors_but_checked_again(tmp_path, monkeypatch):
    yaml, _ = make_yolo(tmp_path, 4, seed=2)
    bad = tmp_path / "labels" / "train" / "im002.txt"
    bad.write_text("7 0.5 0.5 0.1 0.1\n")
    first = read(yaml)
    assert [e.file for e in first.bad] == [bad] and first.bad[0].line == 1
    labels = Counter(monkeypatch, yolo, "parse_label_file")
    file = tmp_path / "labels" / f"train{cache.CACHE_SUFFIX}"
    mtime = file.stat().st_mtime_ns
    again = read(yaml)
    assert labels.calls == ["im002.txt"]  # only the bad one
    assert file.stat().st_mtime_ns == mtime  # bad as before: the cache is not rewritten
    assert [str(e) for e in again.bad] == [str(e) for e in first.bad]
    with pytest.raises(DataError, match=r"im002.txt:1: class 7"):  # without skip_bad: the error, named
        scan_records(load_dataset_config(yaml), "train")
    bad.write_text("1 0.5 0.5 0.1 0.1\n")
    fixed = read(yaml)
    assert not fixed.bad and len(fixed.records) == 4


def test_class_count_version_and_parser_changes_invalidate_the_cache(tmp_path, monkeypatch):
    yaml, _ = make_yolo(tmp_path, 3, seed=3, nc=3)
    read(yaml)
    images = Counter(monkeypatch, yolo, "probe_image")
    yaml.write_text(yaml.read_text().replace("names: [c0, c1, c2]", "names: [c0, c1, c2, c3]"))
    read(yaml)
    assert len(images.calls) == 3  # another class count: all parsed again
    images.calls.clear()
    read(yaml)
    assert images.calls == []
    monkeypatch.setattr(cache, "CACHE_VERSION", cache.CACHE_VERSION + 1)
    read(yaml)
    assert len(images.calls) == 3
    images.calls.clear()
    monkeypatch.setattr(cache, "code_hash", lambda *m: "another parser")
    read(yaml)
    assert len(images.calls) == 3


class RunsCode:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


@pytest.mark.parametrize(
    "garbage",
    [b"not a zip file", b"PK\x03\x04truncated", "pickle"],
    ids=["text", "truncated-zip", "pickled-object-array"],
)
def test_a_corrupt_or_crafted_cache_is_ignored_with_a_warning(tmp_path, monkeypatch, garbage):
    yaml, _ = make_yolo(tmp_path, 3, seed=4)
    file = tmp_path / "labels" / f"train{cache.CACHE_SUFFIX}"
    marker = tmp_path / "code-ran"
    if garbage == "pickle":
        # an object array runs code when unpickled (here: makes a folder): it must never be loaded
        np.savez(file, meta=np.array([RunsCode(marker)], dtype=object))
    else:
        file.write_bytes(garbage)
    with pytest.warns(cache.LabelCacheWarning, match="unreadable label cache .*train.mlca-cache.npz"):
        got = read(yaml)
    assert as_tuples(got) == reference(tmp_path) and not marker.exists()
    images = Counter(monkeypatch, yolo, "probe_image")
    read(yaml)  # rewritten: a good cache now
    assert images.calls == []


def test_an_unwritable_folder_reads_without_a_cache_and_warns(tmp_path, monkeypatch):
    yaml, _ = make_yolo(tmp_path, 3, seed=5)
    nowhere = tmp_path / "no" / "such" / "dir" / f"x{cache.CACHE_SUFFIX}"
    monkeypatch.setattr(cache, "cache_file", lambda *a: nowhere)
    with pytest.warns(cache.LabelCacheWarning, match="cannot write the label cache"):
        got = read(yaml)
    assert as_tuples(got) == reference(tmp_path) and not nowhere.parent.exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_labels_folder_warns(tmp_path):
    yaml, _ = make_yolo(tmp_path, 2, seed=6)
    (tmp_path / "labels").chmod(0o555)
    try:
        with pytest.warns(cache.LabelCacheWarning, match="cannot write"):
            assert len(read(yaml).records) == 2
    finally:
        (tmp_path / "labels").chmod(0o755)


def test_the_cache_can_be_switched_off(tmp_path, monkeypatch):
    yaml, _ = make_yolo(tmp_path, 2, seed=7)
    read(yaml, label_cache=False)
    monkeypatch.setenv("MLCA_LABEL_CACHE", "0")
    read(yaml)
    assert not list((tmp_path / "labels").glob("*" + cache.CACHE_SUFFIX))


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_the_parallel_scan_gives_the_sequential_result_in_order(tmp_path, monkeypatch, pool):
    yaml, _ = make_yolo(tmp_path, 12, seed=int(np.random.default_rng().integers(1 << 30)))
    for stem in ("im004", "im009"):
        (tmp_path / "labels" / "train" / f"{stem}.txt").write_text("0 0.5 0.5 0.1\n")
    ref_report = read(yaml, label_cache=False)
    monkeypatch.setattr(cache, "PARALLEL_MIN", 0)
    monkeypatch.setattr(cache, "POOL", pool)
    monkeypatch.setattr(cache, "scan_workers", lambda: 2)
    got = read(yaml)
    assert as_tuples(got) == as_tuples(ref_report) and len(got.records) == 10
    assert [str(e) for e in got.bad] == [str(e) for e in ref_report.bad] and len(got.bad) == 2
    (tmp_path / "labels" / f"train{cache.CACHE_SUFFIX}").unlink()
    with pytest.raises(DataError, match="im004.txt:1"):  # the first bad file in the split's order
        scan_records(load_dataset_config(yaml), "train")


def test_voc_splits_are_cached_per_set(tmp_path, monkeypatch):
    year = tmp_path / "VOCdevkit" / "VOC2007"
    rng = np.random.default_rng()
    for i, stem in enumerate(["000001", "000002", "000003"]):
        (year / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(year / "JPEGImages" / f"{stem}.jpg")
        x1 = int(rng.integers(1, 20))
        (year / "Annotations").mkdir(exist_ok=True)
        (year / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><object><name>dog</name><bndbox><xmin>{x1}</xmin>"
            f"<ymin>2</ymin><xmax>{x1 + 10}</xmax><ymax>30</ymax></bndbox></object></annotation>"
        )
    (year / "ImageSets" / "Main").mkdir(parents=True)
    (year / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n")
    (year / "ImageSets" / "Main" / "test.txt").write_text("000003\n")
    yaml = tmp_path / "voc.yaml"
    yaml.write_text("format: voc\npath: VOCdevkit\ntrain: VOC2007/trainval\nval: VOC2007/test\n")
    cfg = load_dataset_config(yaml)
    train, val = scan_records(cfg, "train"), scan_records(cfg, "val")
    assert len(list((year).glob("Annotations.*" + cache.CACHE_SUFFIX))) == 2  # one per set
    for f in year.glob("Annotations.*" + cache.CACHE_SUFFIX):  # the process pool gives the same records
        f.unlink()
    with monkeypatch.context() as m:
        m.setattr(cache, "PARALLEL_MIN", 0)
        m.setattr(cache, "scan_workers", lambda: 2)
        assert as_tuples(scan_records(cfg, "train")) == as_tuples(train)
        assert as_tuples(scan_records(cfg, "val")) == as_tuples(val)
    xmls = Counter(monkeypatch, voc, "parse_voc_xml")
    assert as_tuples(scan_records(cfg, "train")) == as_tuples(train)
    assert as_tuples(scan_records(cfg, "val")) == as_tuples(val)
    assert xmls.calls == []
    (year / "Annotations" / "000002.xml").write_text((year / "Annotations" / "000002.xml").read_text().replace("dog", "cat"))
    again = scan_records(cfg, "train")
    assert xmls.calls == ["000002.xml"] and again.records[1].labels.tolist() == [cfg.names.index("cat")]


def test_nested_image_folders_share_one_cache_beside_the_labels_folder(tmp_path):
    yaml, _ = make_yolo(tmp_path, 2, seed=8)
    for i, sub in enumerate(["a", "b"]):
        (tmp_path / "images" / "train" / sub).mkdir()
        (tmp_path / "labels" / "train" / sub).mkdir()
        (tmp_path / "images" / "train" / f"im00{i}.jpg").rename(tmp_path / "images" / "train" / sub / f"im00{i}.jpg")
        (tmp_path / "labels" / "train" / f"im00{i}.txt").rename(tmp_path / "labels" / "train" / sub / f"im00{i}.txt")
    assert len(read(yaml).records) == 2
    assert [p.name for p in tmp_path.rglob("*" + cache.CACHE_SUFFIX)] == [f"train{cache.CACHE_SUFFIX}"]
    assert (tmp_path / "labels" / f"train{cache.CACHE_SUFFIX}").is_file()


def test_a_dying_worker_falls_back_to_scanning_in_this_process(tmp_path, monkeypatch):
    parent = os.getpid()

    def parse(item):
        if os.getpid() != parent:
            os._exit(3)  # a worker killed mid-scan (e.g. out of memory)
        return (item * 2,)

    monkeypatch.setattr(cache, "PARALLEL_MIN", 0)
    with pytest.warns(cache.LabelCacheWarning, match="parallel scan failed"):
        got = cache.parse_all(list(range(10)), parse, deps=lambda it: [], workers=2, pool="process")
    assert [r[1] for r in got] == [(2 * i,) for i in range(10)]
