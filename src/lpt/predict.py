"""Top-k predictions of a reloaded run on image files or folders of images."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from lpt.config import ConfigError
from lpt.data import build_transform
from lpt.data.datasets import load_rgb
from lpt.engine.runner import Run

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def expand_images(items: Iterable[str]) -> list[Path]:
    """Files as given, folders expanded to the image files below them (sorted)."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(path)
        else:
            raise ConfigError(f"image or folder {path} does not exist")
    if not paths:
        raise ConfigError(f"no images found in {', '.join(map(str, items))}")
    return paths


@torch.no_grad()
def predict_topk(run: Run, paths: list[Path], k: int = 5, batch_size: int = 64) -> list[dict]:
    """One record per image: path, and the top-k classes with softmax(scale * cosine) scores."""
    transform = build_transform(run.config.data, train=False)
    device = next(run.model.parameters()).device
    scale, k = run.config.loss.scale, min(k, len(run.classes))
    rows = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = torch.stack([transform(load_rgb(str(p))) for p in chunk]).to(device)
        probs = (scale * run.model(images).float()).softmax(dim=1)
        top = probs.topk(k, dim=1)
        for path, idx, val in zip(chunk, top.indices.tolist(), top.values.tolist()):
            rows.append({"path": str(path), "classes": [run.classes[i] for i in idx], "scores": val})
    return rows
