"""Training-loader throughput: how many images/s lpt's data pipeline delivers, per worker count.

    python bench/loader.py [--size 256x256] [--workers 2 4 8] [--batch 256] [--steps 20] [--images 3000]

Writes ``--images`` JPEG files (quality 90, smooth random content with noise, like photographs in
size and entropy rather than flat colour) and a list file, builds the Places-LT preset's training
split over them with ``lpt.data.build_datasets`` (RandomResizedCrop 224 + flip; uint8 batches,
normalised later on the device as ``lpt train`` does, or float32 with ``--float``) and its
dual-sampling stream with ``lpt.data.build_train_stream`` (``--workers`` processes per stream, so
twice that in all), and times ``--steps`` steps after two of warm-up. One JSON line per
worker count: images/s counts both batches of a step. This is the rate the GPU can be fed;
compare it with bench/throughput.py's training rate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lpt.config import load_config
from lpt.data import build_datasets, build_train_stream, build_transform


def write_images(root: Path, count: int, size: tuple[int, int], classes: int, seed: int = 0) -> Path:
    """``count`` JPEGs of ``size`` (width, height) under root/img, and root/train.txt listing them."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        coarse = rng.integers(0, 256, (size[1] // 16 + 1, size[0] // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
        noisy = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (size[1], size[0], 3))
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(root / "img" / f"{i:06d}.jpg", quality=90)
        lines.append(f"img/{i:06d}.jpg {i % classes}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root / "train.txt"


def measure(root: Path, listing: Path, workers: int, batch: int, steps: int, normalize: bool) -> dict:
    cfg = load_config("places_lt", [f"data.root={root}", f"data.train_list={listing}", f"data.test_list={listing}",
                                    f"data.num_workers={workers}"])
    splits = build_datasets(cfg.data)
    splits.train.transform = build_transform(cfg.data, train=True, normalize=normalize)  # uint8: as lpt train does
    stream = build_train_stream(splits.train, "dual", batch, cfg.data.samples_per_class, workers, cfg.seed,
                                rank=0, world_size=1, pin_memory=torch.cuda.is_available())
    times, images, epoch = [], 0, 0

    def epochs():
        nonlocal epoch
        while True:  # the steps may span epochs
            stream.set_epoch(epoch)
            yield from stream
            epoch += 1

    it = epochs()
    for step in range(2 + steps):
        start = time.perf_counter()
        batches = next(it)
        if step >= 2:
            times.append(time.perf_counter() - start)
            images += sum(len(y) for _, y in batches.values())
    return {"workers_per_stream": workers, "output": "float32" if normalize else "uint8", "batch": batch,
            "steps": steps,
            "images_per_s": round(images / sum(times), 1),
            "median_step_ms": round(1000 * statistics.median(times), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="256x256", help="WIDTHxHEIGHT of the JPEGs (Places365-Standard: 256x256)")
    p.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8], help="loader processes per stream")
    p.add_argument("--batch", type=int, default=256, help="images per batch (a step takes two)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--images", type=int, default=3000, help="JPEG files written (steps cycle through them)")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--float", action="store_true",
                   help="normalise in the loader processes (float32 batches) instead of lpt's uint8 batches")
    args = p.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        listing = write_images(root, args.images, size, args.classes)
        mean_kb = sum(f.stat().st_size for f in (root / "img").iterdir()) / args.images / 1024
        for workers in args.workers:
            result = measure(root, listing, workers, args.batch, args.steps, normalize=args.float)
            print(json.dumps({"size": args.size, "jpeg_kb": round(mean_kb, 1), "cpu_cores": os.cpu_count(),
                              **result}), flush=True)


if __name__ == "__main__":
    main()
