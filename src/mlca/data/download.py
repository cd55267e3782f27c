"""``mlca data get``: download a public dataset's official archives, verify, unpack, write its YAML.

A dataset is fetched into ``<home>/datasets/<name>/`` (``home`` is ``$MLCA_HOME``, default
``~/.cache/mlca``) and described by ``<home>/datasets/<name>.yaml``, which
:func:`mlca.data.config.load_dataset_config` finds by the bare name, so ``--data voc`` works
once ``mlca data get voc`` has run. What is fetched is listed in :data:`CATALOGUE`.

Each archive is downloaded into ``<home>/downloads/<file>.part``, resumed with an HTTP
``Range`` request when the connection drops (also in a later run), checked against its known
size and checksum, and only then renamed to ``<file>``. The archives are unpacked into a
temporary folder beside the target, the expected files are checked, and the folder is renamed
into place: a failed or interrupted ``get`` never leaves a half dataset where a reader would
find it. A checksum mismatch deletes the bad download (resuming it could never succeed).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import yaml

__all__ = [
    "Archive",
    "RemoteDataset",
    "CATALOGUE",
    "DownloadError",
    "datasets_home",
    "dataset_yaml",
    "download_file",
    "get_dataset",
]


class DownloadError(RuntimeError):
    """A download failed (network, size, checksum) or an archive did not hold what it should."""


class _WrongFile(DownloadError):
    """The server's file is not the expected one (another size, a range it was not asked for)."""


@dataclass(frozen=True)
class Archive:
    """One file to fetch: its name, where from (first the official host), and how to check it.

    ``size`` in bytes and ``md5`` / ``sha256`` are ``None`` where no source gives them; a
    file is then accepted on what is known (size only, or the dataset's contents check).
    """

    filename: str
    urls: tuple[str, ...]
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class RemoteDataset:
    """A dataset ``mlca data get`` knows: its archives, what must exist after unpacking, its YAML.

    ``config(root)`` returns the dataset YAML's mapping for the unpacked folder ``root``.
    """

    name: str
    description: str
    archives: tuple[Archive, ...]
    required: tuple[str, ...]
    config: Callable[[Path], dict]
    provenance: str = ""
    min_images: dict[str, int] = field(default_factory=dict)  # folder -> at least this many files


# ----------------------------------------------------------------------------- the catalogue

_OXFORD = "https://thor.robots.ox.ac.uk/pascal/VOC"  # the VOC organisers' host (host.robots.ox.ac.uk moved here)
_PJREDDIE = "https://pjreddie.com/media/files"  # the mirror darknet/YOLO documentation points to


def _voc_config(root: Path) -> dict:
    shipped = yaml.safe_load((resources.files("mlca") / "configs" / "voc.yaml").read_text())
    return {**shipped, "path": str(root / "VOCdevkit")}


# the 80 COCO detection classes in the order of their category ids (YOLO class indices)
COCO80_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]  # fmt: skip


def _coco128_config(root: Path) -> dict:
    return {
        "format": "yolo",
        "path": str(root / "coco128"),
        "train": "images/train2017",
        "val": "images/train2017",  # coco128 is one folder: the first 128 COCO train2017 images
        "names": list(COCO80_NAMES),
    }


CATALOGUE: dict[str, RemoteDataset] = {
    "voc": RemoteDataset(
        name="voc",
        description="Pascal VOC 2007 trainval + test and 2012 trainval (VOCdevkit layout), 2.9 GB",
        archives=(
            Archive("VOCtrainval_06-Nov-2007.tar",
                    (f"{_OXFORD}/voc2007/VOCtrainval_06-Nov-2007.tar", f"{_PJREDDIE}/VOCtrainval_06-Nov-2007.tar"),
                    size=460_032_000, md5="c52e279531787c972589f7e41ab4ae64"),
            Archive("VOCtest_06-Nov-2007.tar",
                    (f"{_OXFORD}/voc2007/VOCtest_06-Nov-2007.tar", f"{_PJREDDIE}/VOCtest_06-Nov-2007.tar"),
                    size=451_020_800, md5="b6e924de25625d8de591ea690078ad9f"),
            Archive("VOCtrainval_11-May-2012.tar",
                    (f"{_OXFORD}/voc2012/VOCtrainval_11-May-2012.tar", f"{_PJREDDIE}/VOCtrainval_11-May-2012.tar"),
                    size=1_999_639_040, md5="6cd6e144f989b92b3379bac3b3de84fd"),
        ),  # fmt: skip
        required=(
            "VOCdevkit/VOC2007/ImageSets/Main/trainval.txt",
            "VOCdevkit/VOC2007/ImageSets/Main/test.txt",
            "VOCdevkit/VOC2012/ImageSets/Main/trainval.txt",
        ),
        config=_voc_config,
        provenance="MD5s as torchvision's VOCDetection checks them (the organisers publish none); sizes as "
        "the Oxford host serves them",
        min_images={"VOCdevkit/VOC2007/JPEGImages": 9963, "VOCdevkit/VOC2012/JPEGImages": 17125},
    ),
    "coco128": RemoteDataset(
        name="coco128",
        description="the first 128 COCO train2017 images with YOLO labels (Ultralytics' sample set), 7 MB",
        archives=(Archive("coco128.zip", ("https://github.com/ultralytics/assets/releases/download/v0.0.0/coco128.zip",)),),
        required=("coco128/images/train2017", "coco128/labels/train2017"),
        config=_coco128_config,
        provenance="no checksum or size is published for coco128.zip: it is accepted when it unpacks to 128 "
        "images (its SHA-256 is printed so it can be pinned with --sha256)",
        min_images={"coco128/images/train2017": 128},
    ),
}


# ----------------------------------------------------------------------------- where


def datasets_home(home: str | Path | None = None) -> Path:
    """``<home>/datasets``; ``home`` defaults to ``$MLCA_HOME``, then ``~/.cache/mlca``."""
    if home is None:
        env = os.environ.get("MLCA_HOME")
        home = Path(env).expanduser() if env else Path.home() / ".cache" / "mlca"
    return Path(home) / "datasets"


def dataset_yaml(name: str, home: str | Path | None = None) -> Path:
    """Where the YAML of a downloaded dataset ``name`` is (it may not exist)."""
    return datasets_home(home) / f"{name}.yaml"


# ----------------------------------------------------------------------------- download


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _progress(total: int | None, initial: int, name: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                disable=quiet, file=sys.stderr, leave=False)  # fmt: skip


def _fetch_once(url: str, part: Path, expected: int | None, timeout: float, quiet: bool) -> int | None:
    """One HTTP request appending to ``part`` from where it ends; returns the file's total size if known.

    Raises ``OSError`` (including ``urllib.error.URLError``) when the transfer breaks off.
    """
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "mlca-data-get"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            if expected is None or have == expected:
                return have  # nothing left to fetch: the part is complete
            part.unlink()  # longer than the file: not a prefix of it; start afresh
            raise ConnectionError(f"the partial download ({have} bytes) is longer than the file; restarting") from None
        raise
    with resp:
        total = None
        if resp.status == 206:
            crange = resp.headers.get("Content-Range", "")  # "bytes START-END/TOTAL"
            try:
                start = int(crange.split()[1].split("-")[0])
                total = int(crange.rsplit("/", 1)[1]) if not crange.endswith("/*") else None
            except (IndexError, ValueError):
                raise _WrongFile(f"bad Content-Range {crange!r}") from None
            if start != have:
                raise _WrongFile(f"asked for bytes from {have}, got a range from {start}")
            mode = "ab"
        else:  # 200: the server ignored the range (or there was none): start over
            length = resp.headers.get("Content-Length")
            total = int(length) if length is not None else None
            have, mode = 0, "wb"
        if expected is not None and total is not None and total != expected:
            raise _WrongFile(f"the server's file has {total} bytes, expected {expected}")
        with open(part, mode) as f, _progress(total, have, part.name[: -len(".part")], quiet) as bar:
            while True:
                block = resp.read(1 << 16)
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
    got = part.stat().st_size
    if total is not None and got < total:
        raise ConnectionError(f"connection closed after {got} of {total} bytes")
    return total if total is not None else got


def download_file(
    archive: Archive,
    folder: Path,
    retries: int = 5,
    timeout: float = 60.0,
    quiet: bool = False,
    sha256: str | None = None,
) -> Path:
    """Download ``archive`` into ``folder`` (resuming a ``.part`` left there), verify it, return its path.

    Tries each URL in turn; on each, a broken transfer is resumed up to ``retries`` times.
    ``sha256`` (if given) overrides the catalogue's checksums.

    Raises:
        DownloadError: every URL failed, or the file has the wrong size or checksum (the bad
            file is then deleted, so the next try starts afresh).
    """
    folder.mkdir(parents=True, exist_ok=True)
    final, part = folder / archive.filename, folder / f"{archive.filename}.part"
    checks = {"sha256": sha256} if sha256 else {"md5": archive.md5, "sha256": archive.sha256}
    checks = {k: v.lower() for k, v in checks.items() if v}

    def problem(path: Path) -> str | None:
        """Why the finished file ``path`` is wrong (deleting it), or ``None``."""
        size = path.stat().st_size
        why = None
        if archive.size is not None and size != archive.size:
            why = f"{size} bytes, expected {archive.size}"
        for algo, want in checks.items():
            got = _digest(path, algo) if why is None else want
            if got != want:
                why = f"{algo} {got}, expected {want}"
        if why:
            path.unlink()
        return why

    if final.exists() and problem(final) is None:
        return final
    errors = []
    for url in archive.urls:
        for attempt in range(retries + 1):
            try:
                total = _fetch_once(url, part, archive.size, timeout, quiet)
                if total is not None and part.stat().st_size != total:
                    raise ConnectionError(f"got {part.stat().st_size} of {total} bytes")
            except _WrongFile as e:
                errors.append(f"{url}: {e}")
                break  # this host serves another file: try the next one
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets, short reads
                errors.append(f"{url}: {e}")
                if isinstance(e, urllib.error.HTTPError) and e.code in (401, 403, 404, 410):
                    break  # not there: try the next URL
                if attempt < retries:
                    if not quiet:
                        print(f"  {archive.filename}: {e}; resuming", file=sys.stderr)
                    time.sleep(min(0.2 * 2.0**attempt, 10.0))
                continue
            why = problem(part)
            if why:
                raise DownloadError(f"{archive.filename} from {url}: {why}; deleted the download")
            os.replace(part, final)
            return final
    raise DownloadError(f"{archive.filename}: every download failed:\n  " + "\n  ".join(errors[-4:]))


# ----------------------------------------------------------------------------- unpack


def _unpack(archive: Path, dest: Path) -> None:
    """Extract a .tar(.gz/.xz) or .zip into ``dest``, refusing members that would land outside it."""
    dest_abs = dest.resolve()

    def inside(name: str) -> bool:
        target = (dest_abs / name).resolve()
        return target == dest_abs or dest_abs in target.parents

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            bad = [n for n in z.namelist() if not inside(n)]
            if bad:
                raise DownloadError(f"{archive.name}: member {bad[0]!r} would be written outside the dataset folder")
            z.extractall(dest)
        return
    try:
        with tarfile.open(archive) as t:
            if hasattr(tarfile, "data_filter"):
                t.extractall(dest, filter="data")  # rejects absolute paths, '..', links out, devices
            else:
                members = t.getmembers()
                bad = [m.name for m in members if not inside(m.name) or m.issym() or m.islnk() or m.isdev()]
                if bad:
                    raise DownloadError(f"{archive.name}: unsafe member {bad[0]!r}")
                t.extractall(dest, members)
    except tarfile.TarError as e:
        raise DownloadError(f"{archive.name}: cannot unpack ({e})") from None


def _check_contents(ds: RemoteDataset, root: Path) -> None:
    missing = [r for r in ds.required if not (root / r).exists()]
    if missing:
        raise DownloadError(f"{ds.name}: the archives unpacked without {missing[0]} (and {len(missing) - 1} more)")
    for folder, n in ds.min_images.items():
        count = sum(1 for p in (root / folder).iterdir() if p.is_file())
        if count < n:
            raise DownloadError(f"{ds.name}: {folder} holds {count} files after unpacking, expected at least {n}")


def _write_yaml(ds: RemoteDataset, target: Path, yaml_path: Path) -> None:
    text = f"# written by `mlca data get {ds.name}`: {ds.description}\n" + yaml.safe_dump(
        ds.config(target), sort_keys=False, default_flow_style=None, width=100
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{ds.name}.", suffix=".yaml", dir=yaml_path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, yaml_path)  # atomic: no half-written YAML is ever found by name


def get_dataset(
    name: str | RemoteDataset,
    home: str | Path | None = None,
    force: bool = False,
    keep_archives: bool = False,
    quiet: bool = False,
    sha256: str | None = None,
    retries: int = 5,
    timeout: float = 60.0,
) -> Path:
    """Download, verify and unpack a dataset of :data:`CATALOGUE`; returns the YAML that describes it.

    Does nothing but return the YAML if the dataset is already there (unless ``force``).
    ``sha256`` pins the checksum of a single-archive dataset (e.g. coco128, which has no
    published one).
    """
    ds = CATALOGUE.get(name) if isinstance(name, str) else name
    if ds is None:
        raise DownloadError(f"unknown dataset {name!r}; known: {', '.join(sorted(CATALOGUE))}")
    if sha256 and len(ds.archives) != 1:
        raise DownloadError(f"--sha256 pins one archive, but {ds.name} has {len(ds.archives)}")
    base = datasets_home(home)
    target, yaml_path = base / ds.name, dataset_yaml(ds.name, home)
    if target.is_dir() and not force:
        if not yaml_path.is_file():  # unpacked, but stopped before the YAML was written
            _check_contents(ds, target)
            _write_yaml(ds, target, yaml_path)
        return yaml_path
    downloads = base.parent / "downloads"
    files = [download_file(a, downloads, retries, timeout, quiet, sha256) for a in ds.archives]
    for a, f in zip(ds.archives, files):
        if not quiet and not (a.md5 or a.sha256 or sha256):  # nothing pinned it: show what to pin
            print(f"{f.name}: {f.stat().st_size:,} bytes, sha256 {_digest(f, 'sha256')}", file=sys.stderr)
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ds.name}.tmp-", dir=base))
    try:
        for f in files:
            _unpack(f, tmp)
        _check_contents(ds, tmp)
        stale = None
        if target.exists():  # --force: move the old one aside first, remove it after the swap
            stale = Path(tempfile.mkdtemp(prefix=f".{ds.name}.old-", dir=base))
            os.replace(target, stale / "old")
        os.replace(tmp, target)
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write_yaml(ds, target, yaml_path)
    if not keep_archives:
        for f in files:
            f.unlink(missing_ok=True)
    return yaml_path
