"""Evaluation cost: NMS per image and COCO mAP per image, on synthetic predictions.

    python benchmarks/bench_eval.py [--img-size 416] [--nc 20] [--images 200]

Predictions look like a half-trained model's at the mAP threshold (conf 0.001): every anchor
has some objectness, a few hundred candidates pass. Reports CPU time (process time) and wall
time, one torch thread.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--img-size", type=int, default=416)
    ap.add_argument("--nc", type=int, default=20)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from mlca.engine.metrics import ImageDets, ImageGT, coco_map
    from mlca.engine.postprocess import non_max_suppression

    s = args.img_size
    n = 3 * sum((s // st) ** 2 for st in (8, 16, 32))
    g = torch.Generator().manual_seed(0)
    pred = torch.cat([torch.rand(args.batch, n, 2, generator=g) * s, torch.rand(args.batch, n, 2, generator=g) * s / 4 + 4,
                      torch.rand(args.batch, n, 1, generator=g) ** 4, torch.rand(args.batch, n, args.nc, generator=g) ** 3], -1)
    for multi_label in (False, True):
        t, c = time.perf_counter(), time.process_time()
        out = non_max_suppression(pred, 0.001, 0.6, multi_label=multi_label)
        print(f"NMS {s}px, N={n}, nc={args.nc}, multi_label={multi_label}: "
              f"{(time.process_time() - c) / args.batch * 1e3:.1f} ms CPU per image "
              f"({(time.perf_counter() - t) / args.batch * 1e3:.1f} ms wall), {np.mean([len(o) for o in out]):.0f} kept")

    rng = np.random.default_rng(0)
    gts, dets = [], []
    for _ in range(args.images):
        k = int(rng.integers(1, 8))
        xy = rng.uniform(0, 300, (k, 2))
        gt = np.concatenate([xy, xy + rng.uniform(10, 100, (k, 2))], 1)
        gts.append(ImageGT(gt, rng.integers(0, args.nc, k), 400, 400))
        xy = rng.uniform(0, 300, (300, 2))
        d = np.concatenate([xy, xy + rng.uniform(10, 100, (300, 2))], 1)
        dets.append(ImageDets(d, rng.random(300), rng.integers(0, args.nc, 300)))
    t, c = time.perf_counter(), time.process_time()
    coco_map(gts, dets, [str(i) for i in range(args.nc)])
    print(f"COCO mAP (faster-coco-eval), {args.images} images x 300 detections: "
          f"{(time.process_time() - c) / args.images * 1e3:.2f} ms CPU per image "
          f"({(time.perf_counter() - t) / args.images * 1e3:.2f} ms wall)")


if __name__ == "__main__":
    main()
