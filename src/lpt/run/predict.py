"""Class probabilities of a reloaded run on image files, PIL images or tensors, and top-k rows for ``lpt predict``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lpt.config import ConfigError
from lpt.data.datasets import FileImageDataset, load_rgb, upright_rgb
from lpt.data.folders import Skipped, image_files
from lpt.data.scan import scan_images
from lpt.evaluation import Views, ensemble_logits
from lpt.model.lpt import LPT
from lpt.utils import ignore_stop_signals, log, usable_cores

def expand_images(items: Iterable[str]) -> list[Path]:
    """Files as given, folders expanded to the image files below them, as training lists a class folder
    (:func:`lpt.data.folders.image_files`: hidden entries and other extensions left out, and said)."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            skipped = Skipped()
            paths += map(Path, image_files(path, skipped))
            skipped.say(path)
        elif path.is_file():
            paths.append(path)
        else:
            raise ConfigError(f"image or folder {path} does not exist")
    if not paths:
        raise ConfigError(f"no images found in {', '.join(map(str, items))}")
    return paths


def readable_images(paths: list[Path], workers: int = 0) -> list[Path]:
    """``paths`` less the files that cannot be read (``lpt predict --skip-bad-images``), each named in a warning
    line; decoded by up to ``workers`` loader processes, as :func:`lpt.data.scan.scan_images` decodes them."""
    bad = scan_images(FileImageDataset(paths, [0] * len(paths), []), "predict", min(workers, usable_cores()))
    for image in bad:
        log.warning("skipped %s", image.line())
    if len(bad) == len(paths):
        raise ConfigError(f"none of the {len(paths)} images can be read; the first: {bad[0].line()}")
    dropped = {b.index for b in bad}
    return [p for i, p in enumerate(paths) if i not in dropped]


class _Images(Dataset):
    """Image paths or PIL images as a dataset of ``transform``-ed tensors, so that loader processes can decode them."""

    def __init__(self, items: Sequence[Any], transform: Callable):
        bad = next((x for x in items if not isinstance(x, (str, Path, Image.Image))), None)
        if bad is not None:
            raise ConfigError(f"cannot predict on a {type(bad).__name__}; give image paths, PIL images or a float "
                              "tensor [N, 3, S, S] made by run.transform")
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self.items[index]
        return self.transform(upright_rgb(item) if isinstance(item, Image.Image) else load_rgb(str(item)))


def check_batch(images: torch.Tensor, model: LPT) -> None:
    """Refuse what the model would misread: integer images, or a shape other than [N, 3, S, S] at its size."""
    size = model.backbone.patch_embed.img_size
    if not images.is_floating_point():
        raise ConfigError(f"images are {images.dtype}; the model takes normalised float images (use run.transform "
                          "or run.predict on paths / PIL images)")
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != tuple(size):
        raise ConfigError(f"images have shape {tuple(images.shape)}; the model takes [N, 3, {size[0]}, {size[1]}]")


def _logits(model: LPT, images: torch.Tensor, views: Views | None) -> torch.Tensor:
    return model(images).float() if views is None else ensemble_logits(model, views(images))[0]


@torch.no_grad()
def predict_images(model: LPT, transform: Callable, scale: float, images: Sequence[Any] | torch.Tensor,
                   batch_size: int = 64, views: Views | None = None, workers: int = 0,
                   progress: bool = False) -> torch.Tensor:
    """Probabilities ``softmax(scale * logits)`` ``[N, C]`` on the CPU, in the order given (one path or PIL image:
    ``[1, C]``); with ``views`` (a
    test-time ensemble of :data:`lpt.evaluation.VIEWS`, its input made by ``transform``) the logits are averaged over
    the views first, as evaluation averages them. Image files are decoded by up to ``workers`` loader processes (no
    more than there are batches or cores; none for one batch); ``progress`` shows a bar on a terminal."""
    device = next(model.parameters()).device
    if isinstance(images, (str, Path, Image.Image)):  # one image, not a sequence of its letters or rows
        images = [images]
    if not len(images):
        raise ConfigError("no images to predict: give image paths, PIL images or a float tensor [N, 3, S, S]")
    if isinstance(images, torch.Tensor):
        check_batch(images, model)
        chunks = images.split(batch_size)
    else:
        batches, files = -(-len(images) // batch_size), all(isinstance(x, (str, Path)) for x in images)
        workers = min(workers, batches, usable_cores()) if files and batches > 1 else 0
        chunks = DataLoader(_Images(images, transform), batch_size=batch_size, num_workers=workers,
                            pin_memory=device.type == "cuda", worker_init_fn=ignore_stop_signals)
    probs = [(scale * _logits(model, chunk.to(device), views)).softmax(dim=1).cpu()
             for chunk in tqdm(chunks, desc="predict", disable=not progress or None, leave=False, mininterval=2.0)]
    return torch.cat(probs)


def predict_topk(run, paths: list[Path], k: int = 5, batch_size: int = 64, tta: str | None = None) -> list[dict]:
    """One record per image of ``run`` (an ``lpt.run.load.Run``): path, and the top-k classes with their
    probabilities (under ``run.predict``'s test-time ensembling ``tta``), the files decoded by the run's
    ``data.num_workers`` loader processes, with a progress bar where the run showed one."""
    k = min(k, len(run.classes))
    top = run.predict(paths, batch_size, tta, workers=run.config.data.num_workers,
                      progress=run.config.progress).topk(k, dim=1)
    return [{"path": str(path), "classes": [run.classes[i] for i in idx], "scores": val}
            for path, idx, val in zip(paths, top.indices.tolist(), top.values.tolist())]
