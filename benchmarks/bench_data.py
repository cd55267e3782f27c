"""Data pipeline benchmarks: reading a big YOLO split (label cache), and augmentation throughput.

    python benchmarks/bench_data.py scan [--n 20000]          # default
    python benchmarks/bench_data.py augment [--img-size 256] [--n 64]

``scan`` writes a YOLO-format set of ``--n`` small JPEGs (40-160 px, 1-8 boxes each) into a
temporary folder and reads its train split four ways, side by side:

- sequential: one process, no cache (how every start read a split before the cache);
- first scan, process pool / thread pool: a pool sized from the CPU count, cache written;
- cached start: the cache exists and no file changed.

``augment`` measures embedded-set generation and DetectionDataset samples per second with one
torch thread (as in a DataLoader worker); it uses $MLCA_HOME (default ~/.cache/mlca).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def make_yolo_set(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEGs in ``images/train`` with random labels in ``labels/train``; returns the data YAML."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    # 64 distinct small JPEGs, written in turn: encoding 20,000 would dominate the set-up
    blobs = []
    for _ in range(64):
        w, h = (int(v) for v in rng.integers(40, 161, 2))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
        blobs.append(buf.getvalue())
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for i in range(n):
        (root / "images" / "train" / f"{i:06d}.jpg").write_bytes(blobs[i % len(blobs)])
        k = int(rng.integers(1, 9))
        cxcy, wh, cls = rng.uniform(0.3, 0.7, (k, 2)), rng.uniform(0.05, 0.5, (k, 2)), rng.integers(0, 20, k)
        lines = "".join(f"{c} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n" for c, (x, y), (bw, bh) in zip(cls, cxcy, wh))
        (root / "labels" / "train" / f"{i:06d}.txt").write_text(lines)
    yaml = root / "data.yaml"
    yaml.write_text("path: .\ntrain: images/train\nval: images/train\nnames: [" + ", ".join(f"c{i}" for i in range(20)) + "]\n")
    return yaml


def bench_scan(n: int) -> None:
    """Print the scan table (wall time, and CPU time of this process and of the pool's workers)."""
    from mlca.data import cache
    from mlca.data.config import load_dataset_config
    from mlca.data.records import scan_records

    workers = cache.scan_workers()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        yaml = make_yolo_set(Path(tmp), n)
        print(f"wrote {n} images + labels in {time.perf_counter() - t:.1f} s; {workers} worker(s)")
        cache_path = Path(tmp) / "labels" / f"train{cache.CACHE_SUFFIX}"

        def run(label_cache: bool, pool: str, parallel: bool) -> tuple[float, float, int]:
            cfg = load_dataset_config(yaml)
            cfg.options["label_cache"] = label_cache
            cache.POOL, cache.PARALLEL_MIN = pool, (512 if parallel else 1 << 62)
            t, c0 = time.perf_counter(), os.times()
            report = scan_records(cfg, "train")
            wall, c1 = time.perf_counter() - t, os.times()
            own = c1.user + c1.system - c0.user - c0.system
            workers_cpu = c1.children_user + c1.children_system - c0.children_user - c0.children_system
            return wall, own, own + workers_cpu, len(report.records)

        rows = []
        from mlca.data.images import probe_image

        probe_image(Path(tmp) / "images" / "train" / "000000.jpg")  # PIL's JPEG plugin loaded outside the timing
        rows.append(("sequential, no cache", *run(False, "process", False)))
        for pool in ("process", "thread"):
            if cache_path.exists():
                cache_path.unlink()
            rows.append((f"first scan, {pool} pool, cache written", *run(True, pool, True)))
        size = cache_path.stat().st_size
        rows.append(("cached start", *run(True, "process", True)))
        base = rows[0][1]
        print(f"\n| {n:,} images | wall s | CPU s, this process | CPU s, with workers | wall speed-up |")
        print("|---|---|---|---|---|")
        for name, wall, own, total, count in rows:
            assert count == n, (name, count)
            print(f"| {name} | {wall:.2f} | {own:.2f} | {total:.2f} | {base / wall:.1f}x |")
        print(f"\ncache file: {size / 1e6:.1f} MB")


def bench_augment(img_size: int, n: int) -> None:
    import torch

    torch.set_num_threads(1)
    from mlca.data import DetectionDataset, load_dataset_config, read_records
    from mlca.data.embedded import generate_embedded

    with tempfile.TemporaryDirectory() as tmp:
        t, c = time.perf_counter(), time.process_time()
        generate_embedded(tmp, n, 0, workers=1)
        print(f"generate: {(time.process_time() - c) / n * 1e3:.1f} ms CPU per image "
              f"({(time.perf_counter() - t) / n * 1e3:.1f} ms wall), one process")
    records = read_records(load_dataset_config("embedded"), "train")[:n]
    for augment in (False, True):
        ds = DetectionDataset(records, img_size, augment=augment)
        ds[0]
        torch.manual_seed(0)
        t, c = time.perf_counter(), time.process_time()
        for i in range(len(ds)):
            ds[i]
        print(f"augment={augment}: {(time.process_time() - c) / len(ds) * 1e3:.1f} ms CPU per sample "
              f"({(time.perf_counter() - t) / len(ds) * 1e3:.1f} ms wall) at {img_size} px")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", choices=["scan", "augment"], default="scan")
    ap.add_argument("--n", type=int, default=None, help="images (scan: 20000, augment: 64)")
    ap.add_argument("--img-size", type=int, default=256)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.what == "scan":
        bench_scan(args.n or 20000)
    else:
        bench_augment(args.img_size, args.n or 64)


if __name__ == "__main__":
    main()
