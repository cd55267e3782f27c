"""`mlca check data.yaml`: the subcommand reads every split, lists every problem and note."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlca.cli import main


@pytest.fixture(autouse=True)
def no_ultralytics_settings(tmp_path, monkeypatch):
    (tmp_path / "no-ucfg").mkdir()
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "no-ucfg"))


def make(root: Path, labels: dict[str, str], jpeg_cut: bool = False) -> Path:
    rng = np.random.default_rng()
    for stem, text in labels.items():
        img = root / "ds" / "images" / f"{stem}.jpg"
        img.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(buf, "JPEG")
        img.write_bytes(buf.getvalue()[: -40 if jpeg_cut and stem == "a" else None])
        (root / "ds" / "labels").mkdir(exist_ok=True)
        (root / "ds" / "labels" / f"{stem}.txt").write_text(text)
    yaml = root / "cfg" / "data.yaml"
    yaml.parent.mkdir(exist_ok=True)
    yaml.write_text("path: ../ds\ntrain: images\nval: images\nnames: [cat, dog]\n")
    return yaml


def test_clean_dataset_exits_0_and_says_where_the_root_is(tmp_path, capsys, monkeypatch):
    yaml = make(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.4 0.4\n0 0.2 0.2 0.1 0.1\n"})
    monkeypatch.chdir(tmp_path)
    assert main(["check", str(yaml)]) == 0
    out = capsys.readouterr().out
    assert f"root {tmp_path / 'cfg' / '../ds'} (relative to the YAML file's folder)" in out
    assert "train: 2 images (0 without objects), 3 objects" in out and "val: 2 images" in out
    assert "  cat  2" in out and "  dog  1" in out


def test_bad_files_exit_1_and_every_note_is_listed(tmp_path, capsys):
    labels = {"a": "0 0.5 0.5 0.2 0.2\n", "b": "7 0.5 0.5 0.2 0.2\n", "c": "0 0.5 0.5 0 0.3\n1 0.5 0.5 0.3 0.3\n"}
    yaml = make(tmp_path, labels, jpeg_cut=True)
    assert main(["check", str(yaml), "--splits", "train"]) == 1
    out = capsys.readouterr().out
    assert "labels/b.txt:1: class 7 not in the config" in out
    assert "restored 1 corrupt JPEG(s) (train)" in out and "images/a.jpg: truncated" in out
    assert "dropped 1 degenerate box(es) (train)" in out and "labels/c.txt:1: degenerate box" in out
    assert "train: 2 images" in out and "val:" not in out


def test_unreadable_config_or_missing_root_exits_2_with_the_paths_tried(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.yaml")]) == 2
    assert "dataset config not found" in capsys.readouterr().err
    yaml = tmp_path / "cfg" / "d.yaml"
    yaml.parent.mkdir()
    yaml.write_text("path: ../gone\ntrain: images\nval: images\nnames: [cat]\n")
    assert main(["check", str(yaml)]) == 2
    err = capsys.readouterr().err
    assert "dataset root not found; tried" in err and str(tmp_path / "cfg" / "../gone") in err


def test_mlca_help_lists_check_and_python_m_still_works(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mlca", "--help"], capture_output=True, text=True, check=True)
    assert "check" in out.stdout and "every bad file" in out.stdout
    out = subprocess.run([sys.executable, "-m", "mlca", "check", "--help"], capture_output=True, text=True, check=True)
    assert "--preview" in out.stdout and "--splits" in out.stdout
    cmd = [sys.executable, "-m", "mlca.data.check", "--help"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "--preview" in out.stdout
