"""EXIF orientation: images are read as displayed, sizes and boxes included.

The reference is written from the EXIF definition of the tag (where the stored 0th row and
0th column are shown), not from PIL's table, and checked for all eight values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlca.data.config import load_dataset_config
from mlca.data.dataset import DetectionDataset
from mlca.data.images import load_image, probe_image
from mlca.data.records import read_records

# EXIF Orientation: (side where the stored 0th row is shown, side where the 0th column is shown)
EXIF_SIDES = {
    1: ("top", "left"), 2: ("top", "right"), 3: ("bottom", "right"), 4: ("bottom", "left"),
    5: ("left", "top"), 6: ("right", "top"), 7: ("right", "bottom"), 8: ("left", "bottom"),
}  # fmt: skip
COLOURS = np.array([[230, 30, 30], [30, 200, 30], [30, 30, 230], [240, 240, 240]], np.uint8)


def displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
    """The image a viewer shows for ``stored`` pixels with this EXIF orientation."""
    row0, col0 = EXIF_SIDES[orientation]
    if row0 in ("top", "bottom"):  # rows stay rows
        out = stored
        out = out[::-1] if row0 == "bottom" else out
        return out[:, ::-1] if col0 == "right" else out
    out = stored.transpose(1, 0, 2)  # stored rows become columns
    out = out[:, ::-1] if row0 == "right" else out
    return out[::-1] if col0 == "bottom" else out


def quadrants(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Four flat quadrants of distinct colours in a random order: every orientation differs."""
    c = COLOURS[rng.permutation(4)]
    img = np.empty((h, w, 3), np.uint8)
    img[: h // 2, : w // 2], img[: h // 2, w // 2 :] = c[0], c[1]
    img[h // 2 :, : w // 2], img[h // 2 :, w // 2 :] = c[2], c[3]
    return img


def write_oriented_jpeg(path: Path, stored: np.ndarray, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stored).save(path, "JPEG", quality=95, subsampling=0, exif=exif.tobytes())  # 4:4:4: sharp edges
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_probe_and_load_give_the_displayed_image(tmp_path, orientation):
    rng = np.random.default_rng()
    w, h = int(rng.integers(40, 80)) * 2, int(rng.integers(20, 39)) * 2  # never square
    stored = quadrants(w, h, rng)
    path = write_oriented_jpeg(tmp_path / "a.jpg", stored, orientation)
    ref = displayed(stored, orientation)
    assert probe_image(path) == (ref.shape[1], ref.shape[0])
    got = load_image(path)
    assert got.shape == ref.shape
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 4  # JPEG noise; a wrong turn is ~100


def test_a_box_labelled_on_the_displayed_photo_covers_its_object(tmp_path):
    """A phone photo stored sideways (orientation 6): the label, drawn on the displayed image,
    must land on the same pixels in the records and the dataset."""
    stored = np.full((60, 100, 3), 128, np.uint8)  # stored 100 wide, 60 high; displayed 60 x 100
    ref = displayed(stored, 6).copy()
    ref[10:30, 5:25] = (250, 20, 20)  # a red object at displayed x 5..25, y 10..30
    stored = np.ascontiguousarray(displayed(ref, 8))  # orientation 8 undoes 6
    np.testing.assert_array_equal(displayed(stored, 6), ref)
    write_oriented_jpeg(tmp_path / "images" / "train" / "p.jpg", stored, 6)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    W, H = 60, 100
    (tmp_path / "labels" / "train" / "p.txt").write_text(f"0 {15 / W} {20 / H} {20 / W} {20 / H}\n")
    (tmp_path / "d.yaml").write_text("path: .\ntrain: images/train\nval: images/train\nnames: [obj]\n")
    (rec,) = read_records(load_dataset_config(tmp_path / "d.yaml"), "train")
    assert (rec.width, rec.height) == (W, H)
    np.testing.assert_allclose(rec.boxes, [[5, 10, 25, 30]], atol=1e-4)
    img, boxes, _ = DetectionDataset([rec], 64, augment=False).load(0)
    x1, y1, x2, y2 = boxes[0].astype(int)
    inside = img[:, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].float().mean((1, 2))
    assert inside[0] > 200 and inside[1] < 60 and inside[2] < 60  # red under the box
