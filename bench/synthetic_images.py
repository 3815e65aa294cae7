"""Write a synthetic image-list dataset (JPEGs + ``train.txt`` / ``test.txt``) for end-to-end timing.

    python bench/synthetic_images.py OUT_DIR [--images 6144] [--classes 100] [--size 256x256]
    lpt train --config places_lt --out runs/e2e data.root=OUT_DIR data.train_list=OUT_DIR/train.txt \\
        data.test_list=OUT_DIR/test.txt model.pretrained=false phase1.epochs=1 phase2.epochs=1

The images are those of bench/loader.py (smooth random content with noise, JPEG quality 90); labels
cycle through the classes, and the test list is every fourth image. The accuracy of such a run means
nothing; its images/s (``metrics.jsonl``) is the trainer's real rate, data loading included.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from loader import write_images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--images", type=int, default=6144)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--size", default="256x256", help="WIDTHxHEIGHT")
    args = p.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    train = write_images(args.out, args.images, size, args.classes)
    lines = train.read_text().splitlines()
    (args.out / "test.txt").write_text("\n".join(lines[::4]) + "\n")
    print(f"wrote {args.images} images, {train} and {args.out / 'test.txt'}")


if __name__ == "__main__":
    main()
