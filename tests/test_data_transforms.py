"""Letterbox math and augmentation: boxes must stay on the pixels they label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mlca.data.dataset import DetectionDataset, collate
from mlca.data.errors import DataError
from mlca.data.mosaic import mosaic4
from mlca.data.records import Record
from mlca.data.transforms import DEFAULT_HYP, PAD_VALUE, letterbox, resolve_hyp

# saturated colours, far from each other, from the grey padding and from the dark background
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]])
NO_COLOUR_JITTER = {"hsv_h": 0, "hsv_s": 0, "hsv_v": 0}


def float64_forward(boxes: np.ndarray, meta: dict) -> np.ndarray:
    """The letterbox written from its definition: ``resized = orig * ratio``, then shifted by pad."""
    px, py = meta["pad"]
    return boxes.astype(np.float64) * meta["ratio"] + np.array([px, py, px, py], dtype=np.float64)


def float64_inverse(boxes: np.ndarray, meta: dict) -> np.ndarray:
    px, py = meta["pad"]
    return (boxes.astype(np.float64) - np.array([px, py, px, py])) / meta["ratio"]


@settings(max_examples=200, deadline=None)
@given(w=st.integers(1, 4000), h=st.integers(1, 4000), s32=st.integers(1, 40), seed=st.integers(0, 2**31))
def test_letterbox_meta_is_exact_and_inverts(w, h, s32, seed):
    S = 32 * s32
    rng = np.random.default_rng(seed)
    xy = np.sort(rng.uniform(0, [w, w], (5, 2)), 1), np.sort(rng.uniform(0, [h, h], (5, 2)), 1)
    boxes = np.stack([xy[0][:, 0], xy[1][:, 0], xy[0][:, 1], xy[1][:, 1]], 1)
    ds = DetectionDataset([Record(Path("x.png"), boxes, np.zeros(5), w, h)], S, augment=False)
    meta = ds.meta(0)
    assert meta["orig_size"] == (h, w)
    ratio = S / max(w, h)
    assert meta["ratio"] == pytest.approx(ratio, rel=1e-15)
    new_w, new_h = round(w * ratio), round(h * ratio)
    assert max(new_w, new_h) == S
    assert meta["pad"] == ((S - max(new_w, 1)) // 2, (S - max(new_h, 1)) // 2)
    fwd = float64_forward(boxes, meta)
    # the image spans [pad, pad + w * ratio] <= S: every box lands inside the letterboxed square
    assert fwd.min() >= 0 and fwd.max() <= S + 1e-9
    np.testing.assert_allclose(float64_inverse(fwd, meta), boxes, rtol=1e-12, atol=1e-9)


def frame_with_rects(w: int, h: int, rects: np.ndarray, seed: int = 0) -> np.ndarray:
    """A dark noisy image with rectangle k filled with COLOURS[label k] (rects: (n, 5) cls x1 y1 x2 y2)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    for c, x1, y1, x2, y2 in rects.astype(int):
        img[y1:y2, x1:x2] = COLOURS[c]
    return img


def is_colour(img: np.ndarray, c: int, tol: int = 40) -> np.ndarray:
    """``(H, W)`` bool: pixels of an ``(H, W, 3)`` uint8 image that have class c's colour."""
    return (np.abs(img.astype(int) - COLOURS[c]) <= tol).all(-1)


def assert_boxes_on_their_pixels(
    img: np.ndarray, boxes: np.ndarray, labels: np.ndarray, margin: float = 2.0, tight: bool = True
):
    """Each box is filled with its class colour (``tight``), and its class colour stops just
    outside it (except where the box touches the image border): the box covers its object."""
    H, W = img.shape[:2]
    for (x1, y1, x2, y2), c in zip(boxes, labels):
        mask = is_colour(img, int(c))
        inner = mask[int(np.ceil(y1 + margin)) : int(y2 - margin), int(np.ceil(x1 + margin)) : int(x2 - margin)]
        assert not tight or inner.size == 0 or inner.mean() > 0.97, f"box {x1, y1, x2, y2} is not on colour {c}"
        ys = slice(int(np.ceil(y1 + margin)), max(int(y2 - margin), int(np.ceil(y1 + margin)) + 1))
        xs = slice(int(np.ceil(x1 + margin)), max(int(x2 - margin), int(np.ceil(x1 + margin)) + 1))
        # one-pixel lines `margin` outside each side must not be the object's colour (box not too small)
        if x1 - margin >= 1:
            assert mask[ys, int(np.floor(x1 - margin))].mean() < 0.2, f"colour {c} extends left of {x1}"
        if x2 + margin <= W - 1:
            assert mask[ys, int(np.ceil(x2 + margin))].mean() < 0.2, f"colour {c} extends right of {x2}"
        if y1 - margin >= 1:
            assert mask[int(np.floor(y1 - margin)), xs].mean() < 0.2, f"colour {c} extends above {y1}"
        if y2 + margin <= H - 1:
            assert mask[int(np.ceil(y2 + margin)), xs].mean() < 0.2, f"colour {c} extends below {y2}"


def targets_to_pixels(targets: torch.Tensor, S: int) -> tuple[np.ndarray, np.ndarray]:
    t = targets.double().numpy()
    cx, cy, w, h = (t[:, 1:] * S).T
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), t[:, 0].astype(int)


def synthetic_records(tmp_path: Path, n: int, seed: int) -> list[Record]:
    """Images of random size with 1-4 non-overlapping rectangles away from the border."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(90, 220, 2))
        cells = [(0, 0), (1, 0), (0, 1), (1, 1)]
        rects = []
        for gx, gy in [cells[k] for k in rng.permutation(4)[: rng.integers(1, 5)]]:
            # each rectangle inside its own quadrant, with a 10% margin: no two touch
            x1 = gx * w / 2 + rng.uniform(0.1, 0.2) * w / 2
            y1 = gy * h / 2 + rng.uniform(0.1, 0.2) * h / 2
            x2 = gx * w / 2 + rng.uniform(0.75, 0.9) * w / 2
            y2 = gy * h / 2 + rng.uniform(0.75, 0.9) * h / 2
            rects.append([rng.integers(len(COLOURS)), round(x1), round(y1), round(x2), round(y2)])
        rects = np.array(rects)
        path = tmp_path / f"{i}.png"
        Image.fromarray(frame_with_rects(w, h, rects, seed=i)).save(path)
        records.append(Record(path, rects[:, 1:].astype(np.float32), rects[:, 0], w, h))
    return records


def test_letterbox_image_keeps_boxes_on_pixels_and_pads_grey(tmp_path):
    for rec in synthetic_records(tmp_path, 6, seed=1):
        S = 128
        img = torch.from_numpy(np.array(Image.open(rec.image))).permute(2, 0, 1)
        out, boxes, ratio, (px, py) = letterbox(img, rec.boxes, S)
        assert out.shape == (3, S, S) and out.dtype == torch.uint8
        hwc = out.permute(1, 2, 0).numpy()
        new_w, new_h = round(rec.width * ratio), round(rec.height * ratio)
        content = np.zeros((S, S), bool)
        content[py : py + new_h, px : px + new_w] = True
        assert (hwc[~content] == PAD_VALUE).all()
        np.testing.assert_allclose(boxes.numpy(), rec.boxes * ratio + [px, py, px, py], rtol=1e-6)
        assert_boxes_on_their_pixels(hwc, boxes.numpy(), rec.labels)


@pytest.mark.parametrize("mosaic, degrees", [(0.0, 0.0), (1.0, 0.0), (0.5, 20.0)])
def test_augmentation_keeps_boxes_on_their_pixels(tmp_path, mosaic, degrees):
    """Through mosaic, scale/translate, flips (and rotation, where boxes grow loose but must
    still cover their object), every box stays on its coloured rectangle."""
    records = synthetic_records(tmp_path, 8, seed=2)
    S = 128
    hyp = {**NO_COLOUR_JITTER, "mosaic": mosaic, "fliplr": 0.5, "flipud": 0.5, "translate": 0.2, "scale": 0.5,
           "degrees": degrees}  # fmt: skip
    ds = DetectionDataset(records, S, augment=True, hyp=hyp)
    torch.manual_seed(0)
    n_boxes = 0
    for _ in range(2):
        for i in range(len(ds)):
            img, targets, meta = ds[i]
            assert img.shape == (3, S, S) and img.dtype == torch.float32
            assert 0 <= img.min() and img.max() <= 1
            assert targets.shape[1] == 5 and targets.dtype == torch.float32
            boxes, labels = targets_to_pixels(targets, S)
            assert (boxes >= -1e-4).all() and (boxes <= S + 1e-4).all()
            hwc = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            assert_boxes_on_their_pixels(hwc, boxes, labels, tight=degrees == 0)
            n_boxes += len(boxes)
    assert n_boxes > 15  # the check above ran on real boxes


def test_mosaic_places_tiles_around_the_centre_and_clips_boxes(tmp_path):
    records = synthetic_records(tmp_path, 4, seed=3)
    S = 96
    samples = [(torch.from_numpy(np.array(Image.open(r.image))).permute(2, 0, 1), r.boxes, r.labels) for r in records]
    for center in [(48, 48), (144, 144), (50, 130), (96, 96)]:
        canvas, boxes, labels = mosaic4(samples, S, center=center, min_visible=0.0)
        assert canvas.shape == (3, 2 * S, 2 * S) and boxes.canvas_size == (2 * S, 2 * S)
        b = boxes.as_subclass(torch.Tensor).numpy()
        assert (b >= 0).all() and (b <= 2 * S).all()
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()  # no degenerate box survives
        xc, yc = center
        hwc = canvas.permute(1, 2, 0).numpy()
        # the tile of image k touches the centre from its quadrant; outside the tiles it is grey
        r0 = S / max(records[0].width, records[0].height)
        w0, h0 = round(records[0].width * r0), round(records[0].height * r0)
        if xc - w0 > 0:
            assert (hwc[: yc, : xc - w0] == PAD_VALUE).all()
        if yc - h0 > 0:
            assert (hwc[: yc - h0, : xc] == PAD_VALUE).all()
        assert_boxes_on_their_pixels(hwc, b, labels.numpy())


def test_mosaic_drops_boxes_mostly_off_the_canvas():
    S = 64
    img = torch.zeros((3, 64, 64), dtype=torch.uint8)
    boxes = np.array([[0, 0, 20, 64], [44, 0, 64, 64]], np.float32)  # a left and a right bar
    samples = [(img, boxes, np.array([0, 1]))] * 4
    # tile 0 (top-left) ends at x = xc = 40: starts at -24, so its left bar keeps (20-24)<0 -> gone
    # tile 1 starts at 40: right bar [84, 104] fits; tile 0's right bar [20, 40] fits
    _, b, lab = mosaic4(samples, S, center=(40, 64), min_visible=0.5)
    kept = b.as_subclass(torch.Tensor).numpy()
    assert not any((kept[:, 0] == 0) & (kept[:, 2] <= 0))
    # tile 0's left bar spans x in [-24, -4]: fully off, dropped; tile 2 (bottom-left) likewise
    assert len(kept) == 6 and sorted(lab.tolist()) == [0, 0, 1, 1, 1, 1]


def test_sanitize_drops_tiny_boxes_and_keeps_labels_aligned(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(path)
    rec = Record(path, np.array([[10, 10, 11, 11], [20, 20, 80, 80]], np.float32), np.array([4, 2]), 100, 100)
    hyp = {**NO_COLOUR_JITTER, "mosaic": 0, "scale": 0, "translate": 0, "fliplr": 0, "min_size": 3}
    _, targets, _ = DetectionDataset([rec], 96, augment=True, hyp=hyp)[0]
    assert targets[:, 0].tolist() == [2.0]
    np.testing.assert_allclose(targets[0, 1:].numpy(), [0.5, 0.5, 0.6, 0.6], atol=1e-6)  # 60 px * 0.96 of 96


def test_collate_indexes_targets_by_image(tmp_path):
    records = synthetic_records(tmp_path, 3, seed=4)
    ds = DetectionDataset(records, 64, augment=False)
    imgs, targets, metas = collate([ds[i] for i in range(3)])
    assert imgs.shape == (3, 3, 64, 64) and targets.shape == (sum(len(r.labels) for r in records), 6)
    expected = np.concatenate([np.full(len(r.labels), k) for k, r in enumerate(records)])
    np.testing.assert_array_equal(targets[:, 0].numpy(), expected)
    np.testing.assert_array_equal(targets[:, 1].numpy(), np.concatenate([r.labels for r in records]))
    assert [m["path"] for m in metas] == [str(r.image) for r in records]
    for k, r in enumerate(records):  # val targets are the letterboxed record boxes
        t = targets[targets[:, 0] == k][:, 1:]
        boxes, _ = targets_to_pixels(t, 64)
        np.testing.assert_allclose(float64_inverse(boxes, metas[k]), r.boxes, atol=1e-3)
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


def test_errors_for_bad_settings_and_images(tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        DetectionDataset([], 100, augment=False)
    with pytest.raises(ValueError, match="hyp\\['mosaic'\\]"):
        resolve_hyp({"mosaic": 1.5})
    assert resolve_hyp({"lr0": 0.01, "fliplr": 0}) == {**DEFAULT_HYP, "fliplr": 0.0}
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(path)
    ds = DetectionDataset([Record(path, np.zeros((0, 4)), np.zeros(0), 30, 10)], 32, augment=False)
    with pytest.raises(DataError, match="20x10 but its record says 30x10"):
        ds[0]
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt") as e:
        ds[0]
    assert e.value.file == path


@pytest.mark.parametrize("seed", range(4))
def test_fast_scale_translate_matches_v2_affine_then_centre_crop(tmp_path, seed):
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as F

    from mlca.data.transforms import _scale_translate

    rng = np.random.default_rng(seed)
    (rec,) = synthetic_records(tmp_path, 1, seed=10 + seed)
    size_in, S = 2 * 64, 64  # a mosaic-sized canvas cropped to S
    img = torch.from_numpy(np.array(Image.open(rec.image).resize((size_in, size_in)))).permute(2, 0, 1)
    sx, sy = size_in / rec.width, size_in / rec.height
    boxes = tv_tensors.BoundingBoxes(
        torch.as_tensor(rec.boxes * [sx, sy, sx, sy]), format="XYXY", canvas_size=(size_in, size_in), clamping_mode=None
    )
    scale, translate = float(rng.uniform(0.5, 1.5)), [int(v) for v in rng.integers(-10, 11, 2)]
    fast_img, fast_box = _scale_translate(tv_tensors.Image(img), boxes, S, scale, translate)
    ref_img = F.center_crop(F.affine(tv_tensors.Image(img), 0.0, translate, scale, [0.0, 0.0], fill=PAD_VALUE), [S, S])
    ref_box = F.center_crop(F.affine(boxes, 0.0, translate, scale, [0.0, 0.0]), [S, S])
    assert fast_img.shape == ref_img.shape == (3, S, S) and fast_box.canvas_size == (S, S)
    np.testing.assert_allclose(fast_box.numpy(), ref_box.numpy(), atol=1.0)
    # same picture up to resampling (antialiased resize vs nearest-neighbour grid sampling)
    assert (fast_img.float() - ref_img.float()).abs().mean() < 12


@pytest.mark.parametrize("mosaic, degrees", [(0.0, 0.0), (1.0, 0.0), (0.0, 10.0)])
def test_images_without_objects_pass_every_path(tmp_path, mosaic, degrees):
    path = tmp_path / "empty.png"
    Image.fromarray(np.zeros((50, 70, 3), np.uint8)).save(path)
    rec = Record(path, np.zeros((0, 4)), np.zeros(0), 70, 50)
    ds = DetectionDataset([rec] * 4, 64, augment=True, hyp={"mosaic": mosaic, "degrees": degrees})
    imgs, targets, _ = collate([ds[i] for i in range(4)])
    assert imgs.shape == (4, 3, 64, 64) and targets.shape == (0, 6)
    assert DetectionDataset([rec], 64, augment=False)[0][1].shape == (0, 5)
