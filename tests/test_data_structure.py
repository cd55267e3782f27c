"""The data package's shape: no import circles, leaf modules, one reader registry, and the
public import paths unchanged."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mlca.data
from mlca.data import registry
from mlca.data.errors import DataError

DATA = Path(mlca.data.__file__).parent
PKG = "mlca.data"


def imports_of(path: Path) -> set[str]:
    """Modules of mlca.data that ``path`` imports anywhere (top level or inside functions)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = node.module
                names = [base] if base else [a.name for a in node.names]  # "from . import x"
            elif node.level == 0 and node.module and (node.module + ".").startswith(PKG + "."):
                base = node.module[len(PKG) + 1 :] if node.module != PKG else None
                names = [base] if base else [a.name for a in node.names]
            else:
                continue
            out |= {n.split(".")[0] for n in names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[2] for a in node.names if a.name.startswith(PKG + ".")}
    modules = {p.stem for p in DATA.glob("*.py")}
    return out & modules - {path.stem}


def graph() -> dict[str, set[str]]:
    return {p.stem: imports_of(p) for p in DATA.glob("*.py") if p.stem != "__init__"}


def test_the_data_package_has_no_import_circle():
    g = graph()
    # Kahn's algorithm: a graph is acyclic iff repeatedly removing nodes with no imports empties it
    left = {m: set(d) - {"__init__"} for m, d in g.items()}
    while True:
        free = [m for m, d in left.items() if not d]
        if not free:
            break
        for m in free:
            del left[m]
        for d in left.values():
            d -= set(free)
    assert not left, f"import circle among {sorted(left)}: {left}"


def test_the_finder_sees_imports(tmp_path):
    # the check above must be able to fail: the finder sees every import form the package uses
    src = tmp_path / "x.py"
    src.write_text("from .record import Record\nfrom . import yolo\ndef f():\n    from mlca.data.config import A\n"
                   "    import mlca.data.scan\n")  # fmt: skip
    assert imports_of(src) == {"record", "yolo", "config", "scan"}


@pytest.mark.parametrize(
    "leaf, allowed",
    [("record", set()), ("errors", set()), ("registry", {"errors"}), ("scan", {"errors", "record"}),
     ("dataset_config", {"errors", "registry"})],
)  # fmt: skip
def test_leaf_modules_import_only_leaves(leaf, allowed):
    assert imports_of(DATA / f"{leaf}.py") <= allowed


def test_readers_do_not_import_the_loader_or_the_entry_point():
    for reader in ("yolo", "voc", "coco"):
        assert not imports_of(DATA / f"{reader}.py") & {"config", "records"}, reader


def test_public_import_paths_still_work():
    from mlca.data import DatasetConfig, ReadReport, Record, load_dataset_config, read_records, scan_records
    from mlca.data.config import DatasetConfig as C2
    from mlca.data.records import ReadReport as R2
    from mlca.data.records import Record as Rec2
    from mlca.data.records import check_boxes, collect  # noqa: F401

    assert Rec2 is Record and C2 is DatasetConfig and R2 is ReadReport
    assert callable(load_dataset_config) and callable(read_records) and callable(scan_records)


def test_a_registered_reader_is_used_for_its_format(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_READERS", dict(registry._READERS))  # undone after the test
    from mlca.data import Record, read_records
    from mlca.data.scan import ReadReport, check_boxes, collect

    img = tmp_path / "a.png"
    Image.new("RGB", (20, 10)).save(img)
    rows = (tmp_path / "boxes.csv")
    rows.write_text("a.png,1,2,6,8\na.png,3,3,3,9\n")  # the second box is empty: dropped, noted

    @registry.register_reader("csvboxes")
    def read_csv(config, spec, skip_bad=False) -> ReadReport:
        def parse(line):
            name, *xyxy = line.split(",")
            boxes, n = check_boxes(np.array([[float(v) for v in xyxy]]), 20, 10, rows, [1])
            return Record(config.root / name, boxes, [0], 20, 10), n

        return collect((config.root / spec).read_text().splitlines(), parse, skip_bad)

    (tmp_path / "d.yaml").write_text("format: csvboxes\npath: .\ntrain: boxes.csv\nval: boxes.csv\nnames: [x]\n")
    recs = read_records(tmp_path / "d.yaml", "train")
    assert len(recs) == 2 and recs[0].boxes.tolist() == [[1, 2, 6, 8]] and recs[1].boxes.shape == (0, 4)
    assert "csvboxes" in registry.known_formats()
    with pytest.raises(ValueError, match="already has a reader"):
        registry.register_reader("csvboxes")(lambda *a: None)


def test_unknown_format_lists_the_known_ones(tmp_path):
    from mlca.data.records import read_records

    (tmp_path / "d.yaml").write_text("format: tfrecord\ntrain: a\nval: b\nnames: [x]\n")
    with pytest.raises(DataError, match=r"unknown dataset format 'tfrecord'; expected one of .*'coco'"):
        read_records(tmp_path / "d.yaml", "train")
    with pytest.raises(DataError, match="no reader for dataset format 'nope'; known formats: coco, embedded, voc, yo"):
        registry.reader_for("nope")
