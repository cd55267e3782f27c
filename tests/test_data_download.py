"""`mlca data get`: resumable, verified downloads from a local HTTP server; never a half dataset."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mlca.data import download
from mlca.data.config import load_dataset_config
from mlca.data.download import Archive, DownloadError, get_dataset
from mlca.data.records import read_records


class Server:
    """A tiny HTTP server on 127.0.0.1 with Range support; it can cut a first response short."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.log: list[tuple[str, str | None]] = []
        self.cut: set[str] = set()  # paths whose next response stops halfway
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                server.log.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if self.path in server.cut:
                    server.cut.discard(self.path)
                    self.wfile.write(body[start : start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True  # the client sees the connection drop
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server({})
    yield s
    s.close()


def tiny_voc_tar(rng: np.random.Generator) -> tuple[bytes, dict[str, list]]:
    """A VOCdevkit tar with 2007 trainval/test and 2012 trainval, one random image each."""
    buf, boxes = io.BytesIO(), {}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:

        def add(name: str, data: bytes):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for year, sets in (("VOC2007", {"trainval": "000001", "test": "000002"}), ("VOC2012", {"trainval": "2012_000003"})):
            for split, stem in sets.items():
                w, h = (int(v) for v in rng.integers(40, 90, 2))
                img = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(img, "JPEG")
                x1, y1 = (int(v) for v in rng.integers(1, 15, 2))
                box = [x1, y1, x1 + 20, y1 + 20]
                boxes[stem] = box
                xml = (f"<annotation><filename>{stem}.jpg</filename><size><width>{w}</width><height>{h}</height>"
                       f"</size><object><name>dog</name><difficult>0</difficult><bndbox><xmin>{box[0]}</xmin>"
                       f"<ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>"
                       f"</annotation>")  # fmt: skip
                add(f"VOCdevkit/{year}/JPEGImages/{stem}.jpg", img.getvalue())
                add(f"VOCdevkit/{year}/Annotations/{stem}.xml", xml.encode())
                add(f"VOCdevkit/{year}/ImageSets/Main/{split}.txt", f"{stem}\n".encode())
    return buf.getvalue(), boxes


def local_voc(server: Server, data: bytes, sha256: str | None = None, size: int | None = None, urls=None):
    """The real `voc` catalogue entry, its archives replaced by one tiny archive on the local server."""
    server.files["/voc.tar.gz"] = data
    archive = Archive(
        "voc.tar.gz", tuple(urls or [f"{server.url}/voc.tar.gz"]),
        size=len(data) if size is None else size, sha256=sha256 or hashlib.sha256(data).hexdigest(),
    )  # fmt: skip
    return dataclasses.replace(download.CATALOGUE["voc"], archives=(archive,), min_images={})


def leftovers(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.name.startswith(".") or p.suffix == ".part")


def test_an_interrupted_download_resumes_and_the_set_is_found_by_name(server, tmp_path, monkeypatch):
    data, boxes = tiny_voc_tar(np.random.default_rng())
    ds = local_voc(server, data)
    server.cut.add("/voc.tar.gz")
    monkeypatch.setenv("MLCA_HOME", str(tmp_path))
    yaml_path = get_dataset(ds, quiet=True)
    # the first response broke off halfway; the second asked for the rest only
    half = len(data) // 2
    assert server.log == [("/voc.tar.gz", None), ("/voc.tar.gz", f"bytes={half}-")]
    assert yaml_path == tmp_path / "datasets" / "voc.yaml"
    assert leftovers(tmp_path) == [] and not (tmp_path / "downloads" / "voc.tar.gz").exists()
    # `--data voc` now means the downloaded set, as `mlca compare --data voc` reads it
    cfg = load_dataset_config("voc")
    assert cfg.source == yaml_path and cfg.root == tmp_path / "datasets" / "voc" / "VOCdevkit"
    train, val = read_records(cfg, "train"), read_records(cfg, "val")
    assert [r.image.stem for r in train] == ["000001", "2012_000003"] and [r.image.stem for r in val] == ["000002"]
    for r in train + val:  # VOC's 1-based inclusive pixels: [xmin - 1, ymin - 1, xmax, ymax]
        b = boxes[r.image.stem]
        np.testing.assert_allclose(r.boxes, [[b[0] - 1, b[1] - 1, b[2], b[3]]])
    # a second get finds it and downloads nothing; a lost YAML is written again, also without a download
    n = len(server.log)
    assert get_dataset(ds, quiet=True) == yaml_path and len(server.log) == n
    text = yaml_path.read_text()
    yaml_path.unlink()
    assert get_dataset(ds, quiet=True) == yaml_path and len(server.log) == n and yaml_path.read_text() == text


def test_a_part_left_by_an_earlier_run_is_resumed(server, tmp_path):
    data, _ = tiny_voc_tar(np.random.default_rng())
    ds = local_voc(server, data)
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "voc.tar.gz.part").write_bytes(data[:1000])
    get_dataset(ds, home=tmp_path, quiet=True, keep_archives=True)
    assert server.log == [("/voc.tar.gz", "bytes=1000-")]
    assert (tmp_path / "downloads" / "voc.tar.gz").read_bytes() == data


def test_a_part_longer_than_the_file_is_dropped_and_fetched_again(server, tmp_path):
    data, _ = tiny_voc_tar(np.random.default_rng())
    ds = local_voc(server, data)
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "voc.tar.gz.part").write_bytes(data + b"junk")
    get_dataset(ds, home=tmp_path, quiet=True, keep_archives=True)
    assert server.log == [("/voc.tar.gz", f"bytes={len(data) + 4}-"), ("/voc.tar.gz", None)]
    assert (tmp_path / "downloads" / "voc.tar.gz").read_bytes() == data


def test_a_server_that_ignores_range_restarts_the_file(server, tmp_path):
    data, _ = tiny_voc_tar(np.random.default_rng())
    ds = local_voc(server, data)
    server.ignore_range = True
    server.cut.add("/voc.tar.gz")
    get_dataset(ds, home=tmp_path, quiet=True, keep_archives=True)
    assert len(server.log) == 2 and (tmp_path / "downloads" / "voc.tar.gz").read_bytes() == data


@pytest.mark.parametrize("wrong", ["sha256", "size"])
def test_a_wrong_checksum_or_size_is_an_error_and_leaves_nothing(server, tmp_path, wrong):
    data, _ = tiny_voc_tar(np.random.default_rng())
    ds = local_voc(server, data, **({"sha256": "0" * 64} if wrong == "sha256" else {"size": len(data) + 1}))
    with pytest.raises(DownloadError, match="voc.tar.gz") as e:
        get_dataset(ds, home=tmp_path, quiet=True)
    assert ("sha256" in str(e.value)) if wrong == "sha256" else ("bytes" in str(e.value))
    assert not (tmp_path / "datasets" / "voc").exists() and not (tmp_path / "datasets" / "voc.yaml").exists()
    assert leftovers(tmp_path) == [] and list((tmp_path / "downloads").iterdir()) == []


def test_the_next_url_is_tried_when_one_is_missing(server, tmp_path):
    data, _ = tiny_voc_tar(np.random.default_rng())
    ds = local_voc(server, data, urls=[f"{server.url}/gone.tar.gz", f"{server.url}/voc.tar.gz"])
    get_dataset(ds, home=tmp_path, quiet=True)
    assert [p for p, _ in server.log] == ["/gone.tar.gz", "/voc.tar.gz"]


def test_an_archive_without_the_expected_files_or_with_unsafe_members_leaves_nothing(server, tmp_path):
    for name in ("VOCdevkit/VOC2007/readme.txt", "../escaped.txt"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
        ds = local_voc(server, buf.getvalue())
        with pytest.raises(DownloadError, match="without VOCdevkit|outside|unsafe|escaped"):
            get_dataset(ds, home=tmp_path / "h", quiet=True)
        assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "h" / "escaped.txt").exists()
        assert not (tmp_path / "h" / "datasets" / "voc").exists() and leftovers(tmp_path / "h") == []


def test_the_catalogue_names_official_hosts_with_sizes_and_checksums():
    voc = download.CATALOGUE["voc"]
    assert [a.filename for a in voc.archives] == [
        "VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar", "VOCtrainval_11-May-2012.tar"]  # fmt: skip
    for a in voc.archives:
        assert a.urls[0].startswith("https://thor.robots.ox.ac.uk/pascal/VOC/") and a.urls[0].endswith(a.filename)
        assert a.size and len(a.md5) == 32 and int(a.md5, 16) >= 0
    coco = download.CATALOGUE["coco128"]
    assert coco.archives[0].urls[0].startswith("https://github.com/ultralytics/assets/releases/")
    assert len(download.COCO80_NAMES) == 80 and len(set(download.COCO80_NAMES)) == 80


def test_the_written_yaml_of_coco128_is_a_yolo_config(tmp_path):
    text = yaml.safe_dump(download.CATALOGUE["coco128"].config(tmp_path))
    (tmp_path / "c.yaml").write_text(text)
    cfg = load_dataset_config(tmp_path / "c.yaml")
    assert cfg.format == "yolo" and cfg.nc == 80 and cfg.root == tmp_path / "coco128"


def test_cli_get(server, tmp_path, monkeypatch, capsys):
    from mlca.cli import main

    data, _ = tiny_voc_tar(np.random.default_rng())
    monkeypatch.setitem(download.CATALOGUE, "voc", local_voc(server, data))
    assert main(["data", "get", "voc", "--home", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(tmp_path / "datasets" / "voc.yaml") and f"MLCA_HOME={tmp_path}" in out.err
    assert main(["data", "get", "nope", "--home", str(tmp_path)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


def test_an_unpinned_archive_can_be_pinned_with_sha256(server, tmp_path, capsys):
    data, _ = tiny_voc_tar(np.random.default_rng())
    server.files["/x.tar.gz"] = data
    unpinned = Archive("x.tar.gz", (f"{server.url}/x.tar.gz",))  # like coco128.zip: no size, no checksum
    ds = dataclasses.replace(download.CATALOGUE["voc"], archives=(unpinned,), min_images={})
    with pytest.raises(DownloadError, match="sha256"):
        get_dataset(ds, home=tmp_path, sha256="f" * 64, quiet=True)
    assert get_dataset(ds, home=tmp_path, sha256=hashlib.sha256(data).hexdigest(), quiet=True).is_file()
    get_dataset(ds, home=tmp_path / "other")  # unpinned: the digest is printed so it can be pinned
    assert hashlib.sha256(data).hexdigest() in capsys.readouterr().err
