"""How far the fast and GPU decode paths' training crops are from the exact path's, on bench/loader.py's JPEGs.

    python bench/decode_diff.py [--size 800x600] [--images 60] [--keys 3] [--device cuda]
                                [--set data.interpolation=bicubic ...]

Writes ``--images`` synthetic JPEGs (bench/loader.py's: smooth random colour with per-pixel noise, quality 90), and
for ``--keys`` augmentation keys per image makes the Places-LT preset's training crop (RandomResizedCrop 224 + flip)
by ``data.decode=exact``, ``fast`` and ``gpu`` (the latter on ``--device``: nvJPEG on cuda; on cpu, the default,
torchvision's CPU decoder in place of nvJPEG, the same crop and resize code). Prints one JSON line per path and DCT
reduction (1: decoded at full scale), then one for all crops: the largest and mean absolute difference from the exact
crop in grey levels (0-255), and the 99.9th percentile, over every pixel and channel. The boxes are the same by
construction (tests/test_decode.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from loader import write_images

from lpt.config import load_config
from lpt.data import build_datasets, train_images
from lpt.data.decode import FileCrops, reduction_for
from lpt.data.gpu_decode import DeviceDecode, EncodedCrop, EncodedImage, collate_encoded


class Crops:
    """The three paths' uint8 crops of an image for one key, and the DCT reduction of its box."""

    def __init__(self, cfg, dataset, device: str):
        self.cfg, self.readers = cfg.data, {}
        for decode in ("exact", "fast"):
            cfg.data.decode = decode
            self.readers[decode] = train_images(dataset, cfg.data, "cpu").dataset
        self.encoded, self.finish = FileCrops(dataset, EncodedCrop(cfg.data)), DeviceDecode(cfg.data, device)
        self.mean, self.std = torch.tensor(cfg.data.mean)[:, None, None], torch.tensor(cfg.data.std)[:, None, None]

    def __call__(self, key: int, index: int) -> tuple[dict[str, torch.Tensor], int]:
        out = {}
        for decode, reader in self.readers.items():
            torch.manual_seed(key)
            out[decode] = reader[index][0]
        torch.manual_seed(key)
        encoded = self.encoded[index][0]
        normalised = self.finish(collate_encoded([(encoded, 0)])[0])[0].cpu()
        out["gpu"] = ((normalised * self.std + self.mean) * 255).round().to(torch.uint8)
        box = encoded.box if isinstance(encoded, EncodedImage) else None
        return out, reduction_for(box, self.cfg.img_size) if box else 1


def stats(diffs: list[torch.Tensor]) -> dict:
    d = torch.stack(diffs).float().flatten()
    return {"crops": len(diffs), "max": d.max().item(), "mean": round(d.mean().item(), 3),
            "p99_9": torch.quantile(d[torch.randperm(len(d))[:1_000_000]], 0.999).item()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="800x600", help="WIDTHxHEIGHT of the JPEGs")
    p.add_argument("--images", type=int, default=60)
    p.add_argument("--keys", type=int, default=3, help="augmentation keys per image")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--device", default="cpu", help="where the gpu path decodes (cuda: nvJPEG)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides of places_lt")
    args = p.parse_args()
    torch.set_num_threads(1)
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        listing = write_images(Path(tmp), args.images, size, 10, quality=args.quality)
        cfg = load_config("places_lt", [f"data.root={tmp}", f"data.train_list={listing}",
                                        f"data.test_list={listing}", *args.set])
        dataset = build_datasets(cfg.data).train
        crops = Crops(cfg, dataset, args.device)
        diffs: dict[tuple[str, int], list[torch.Tensor]] = {}
        for index in range(len(dataset)):
            for key in range(args.keys):
                out, reduction = crops(1000 * key + index, index)
                for path in ("fast", "gpu"):
                    diff = (out[path].int() - out["exact"].int()).abs()
                    diffs.setdefault((path, reduction), []).append(diff)
                    diffs.setdefault((path, 0), []).append(diff)
    for (path, reduction), d in sorted(diffs.items()):
        print(json.dumps({"size": args.size, "interpolation": cfg.data.interpolation, "decode": path,
                          "device": args.device if path == "gpu" else "cpu",
                          "reduction": reduction or "all", **stats(d)}), flush=True)


if __name__ == "__main__":
    main()
