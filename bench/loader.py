"""Training-loader throughput: how many images/s lpt's data pipeline delivers, per worker count and decode path.

    python bench/loader.py [--size 256x256] [--workers 2 4 8] [--decode exact fast fast-whole gpu] [--device cuda]
                           [--batch 256] [--steps 20] [--images 3000] [--quality 90] [--threads 1]
                           [--set data.interpolation=bicubic ...] [--root DIR]

Writes ``--images`` JPEG files (``--quality``, smooth random content with noise, like photographs in size and
entropy rather than flat colour) and a list file, builds the Places-LT preset's training split over them with
``lpt.data.build_datasets`` and its training images with ``lpt.data.train_images`` for each ``data.decode`` of
``--decode`` (RandomResizedCrop 224 + flip; uint8 batches, normalised later on the device as ``lpt train`` does,
or float32 with ``--float``, exact only), its dual-sampling stream with ``lpt.data.build_train_stream``
(``--workers`` processes per stream, so twice that in all; 0: everything in this one process), and times
``--steps`` steps after two of warm-up. One JSON line per decode path and worker count: images/s counts both
batches of a step; ``images_per_s_per_process`` divides it by the processes that decode (the loader processes,
or this one with 0 workers). This is the rate the GPU can be fed; compare it with bench/throughput.py's rate.

With ``--device``, each step's batches are also moved there and finished as the trainer finishes them
(normalised; decoded first under ``gpu``), synchronised, inside the timed step: the only way to time ``gpu``,
whose loader processes only read bytes. Without a CUDA device ``gpu`` runs as ``fast`` (``decoded_as`` says so).
``fast-whole`` is ``fast`` as it runs where lpt's cropped JPEG decoder was not built (each JPEG decoded whole at the
box's DCT scale by simplejpeg): the same crops, to time what the decoder saves.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import lpt.data.decode
from lpt.data.decode import FastCrop
from lpt.data.gpu_decode import EncodedCrop

from lpt.config import load_config
from lpt.data import TrainImages, build_datasets, build_train_stream, build_transform, train_images, with_transform


def _write_jpeg(path: Path, coarse: np.ndarray, noise: np.ndarray, size: tuple[int, int], quality: int) -> None:
    img = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    noisy = np.asarray(img, dtype=np.int16) + noise
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=quality)


def write_images(root: Path, count: int, size: tuple[int, int], classes: int, seed: int = 0,
                 quality: int = 90) -> Path:
    """``count`` JPEGs of ``size`` (width, height) and ``quality`` under root/img, and root/train.txt listing them.
    The random draws are made here, in order; the resizing and encoding, most of the time, in one process per core
    (the same files as one process writes)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    paths = [root / "img" / f"{i:06d}.jpg" for i in range(count)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        for start in range(0, count, 64):  # a bounded number of images in flight
            jobs = [pool.submit(_write_jpeg, path, rng.integers(0, 256, (size[1] // 16 + 1, size[0] // 16 + 1, 3),
                                                                dtype=np.uint8),
                                rng.integers(-12, 13, (size[1], size[0], 3)).astype(np.int8), size, quality)
                    for path in paths[start:start + 64]]
            for job in jobs:
                job.result()
    (root / "train.txt").write_text("".join(f"img/{i:06d}.jpg {i % classes}\n" for i in range(count)))
    return root / "train.txt"


def measure(root: Path, listing: Path, workers: int, batch: int, steps: int, decode: str, normalize: bool,
            device: str | None, overrides: list[str] = ()) -> dict:
    path = "fast" if decode == "fast-whole" else decode
    cfg = load_config("places_lt", [f"data.root={root}", f"data.train_list={listing}", f"data.test_list={listing}",
                                    f"data.num_workers={workers}", f"data.decode={path}", *overrides])
    splits = build_datasets(cfg.data)
    if normalize:
        images = TrainImages(with_transform(splits.train, build_transform(cfg.data, train=True)), finish=None)
    else:
        images = train_images(splits.train, cfg.data, device or "cpu")  # uint8: as lpt train does
    stream = build_train_stream(images.dataset, "dual", batch, cfg.data.samples_per_class, workers, cfg.seed,
                                rank=0, world_size=1, pin_memory=torch.cuda.is_available(), collate=images.collate)
    finish = _finisher(images, device)
    times, count, epoch = [], 0, 0

    def epochs():
        nonlocal epoch
        while True:  # the steps may span epochs
            stream.set_epoch(epoch)
            yield from stream
            epoch += 1

    it = epochs()
    for step in range(2 + steps):
        start = time.perf_counter()
        batches = {k: (finish(x), y) for k, (x, y) in next(it).items()}
        if step >= 2:
            times.append(time.perf_counter() - start)
            count += sum(len(y) for _, y in batches.values())
    processes = 2 * workers or 1
    return {"decode": decode, "decoded_as": _decoded_as(images), "interpolation": cfg.data.interpolation,
            "device": device, "workers_per_stream": workers,
            "output": "float32" if normalize else "uint8", "batch": batch, "steps": steps,
            "images_per_s": round(count / sum(times), 1),
            "images_per_s_per_process": round(count / sum(times) / processes, 1),
            "median_step_ms": round(1000 * statistics.median(times), 1)}


def _finisher(images: TrainImages, device: str | None):
    """The trainer's move-and-finish of a batch on ``device``, synchronised; without a device, nothing."""
    if device is None:
        return lambda x: x
    finish = images.finish or (lambda x: x)

    def run(x):
        out = finish(x.to(device, non_blocking=True))
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        return out
    return run


def _decoded_as(images: TrainImages) -> str:
    reader = getattr(images.dataset, "reader", None)
    return "fast" if isinstance(reader, FastCrop) else "gpu" if isinstance(reader, EncodedCrop) else "exact"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="256x256", help="WIDTHxHEIGHT of the JPEGs (Places365-Standard: 256x256)")
    p.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8], help="loader processes per stream")
    p.add_argument("--batch", type=int, default=256, help="images per batch (a step takes two)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--images", type=int, default=3000, help="JPEG files written (steps cycle through them)")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--root", type=Path, default=None,
                   help="time the JPEGs of bench/synthetic_images.py's DIR (DIR/train.txt) instead of writing new ones")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the written files")
    p.add_argument("--decode", nargs="+", default=["exact"], choices=["exact", "fast", "fast-whole", "gpu"],
                   help="data.decode paths to time, each at every worker count (fast-whole: fast without lpt's "
                        "cropped JPEG decoder)")
    p.add_argument("--device", default=None, help="finish each batch there as the trainer does (cuda, cpu)")
    p.add_argument("--float", action="store_true",
                   help="normalise in the loader processes (float32 batches) instead of lpt's uint8 batches (exact)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more overrides of the places_lt preset, e.g. data.interpolation=bicubic")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of this process (1, as PyTorch sets in loader processes)")
    args = p.parse_args()
    if args.float and args.decode != ["exact"]:
        p.error("--float normalises in the exact path's transform; use it with --decode exact")
    torch.set_num_threads(args.threads)
    cropped_decoder = lpt.data.decode._jpegcrop
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        listing = root / "train.txt" if args.root else write_images(root, args.images, size, args.classes,
                                                                     quality=args.quality)
        jpegs = list((root / "img").iterdir())
        mean_kb = sum(f.stat().st_size for f in jpegs) / len(jpegs) / 1024
        for workers in args.workers:
            for decode in args.decode:
                lpt.data.decode._jpegcrop = None if decode == "fast-whole" else cropped_decoder
                result = measure(root, listing, workers, args.batch, args.steps, decode, args.float, args.device,
                                 args.set)
                print(json.dumps({"size": args.size, "quality": args.quality, "jpeg_kb": round(mean_kb, 1),
                                  "cpu_cores": os.cpu_count(), "loadavg_1min": round(os.getloadavg()[0], 2),
                                  **result}), flush=True)


if __name__ == "__main__":
    main()
