"""Data pipeline throughput: embedded-set generation and DetectionDataset samples per second.

    python benchmarks/bench_data.py [--img-size 256] [--n 64]

Runs with one torch thread (as in a DataLoader worker). Uses $MLCA_HOME (default ~/.cache/mlca).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--img-size", type=int, default=256)
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from mlca.data import DetectionDataset, load_dataset_config, read_records
    from mlca.data.embedded import generate_embedded

    with tempfile.TemporaryDirectory() as tmp:
        t, c = time.perf_counter(), time.process_time()
        generate_embedded(tmp, args.n, 0, workers=1)
        print(f"generate: {(time.process_time() - c) / args.n * 1e3:.1f} ms CPU per image "
              f"({(time.perf_counter() - t) / args.n * 1e3:.1f} ms wall), one process")
    records = read_records(load_dataset_config("embedded"), "train")[: args.n]
    for augment in (False, True):
        ds = DetectionDataset(records, args.img_size, augment=augment)
        ds[0]
        torch.manual_seed(0)
        t, c = time.perf_counter(), time.process_time()
        for i in range(len(ds)):
            ds[i]
        n = len(ds)
        print(f"augment={augment}: {(time.process_time() - c) / n * 1e3:.1f} ms CPU per sample "
              f"({(time.perf_counter() - t) / n * 1e3:.1f} ms wall) at {args.img_size} px")


if __name__ == "__main__":
    main()
