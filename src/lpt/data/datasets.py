"""Labelled image datasets held in memory (uint8 arrays) or on disk (image files).

Every dataset hands its transform an RGB PIL image and exposes ``targets`` (one int label per
image) and ``classes`` (class names, indexed by label), so samplers and the long-tail profile
can work on labels without decoding a single image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

Transform = Callable[[Image.Image], Any]


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, 1, P, RGBA, CMYK, 16-bit, float) to 8-bit RGB.

    16-bit and 32-bit integer greyscale is scaled from [0, 65535] to [0, 255] (PIL's own
    conversion clips instead, which turns most 16-bit images white); float images are taken
    to be in [0, 255]. Alpha is dropped, as torchvision's image loader does.
    """
    if img.mode == "RGB":
        return img
    if img.mode == "I" or img.mode.startswith("I;16"):
        img = _array_to_l(np.asarray(img, dtype=np.float64) / 257.0)
    elif img.mode == "F":
        img = _array_to_l(np.asarray(img, dtype=np.float64))
    elif img.mode in ("P", "PA") and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's warning about palette transparency
    return img.convert("RGB")


def _array_to_l(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def load_rgb(path: str) -> Image.Image:
    """Open an image file and return it as an RGB PIL image, or raise OSError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now: the file closes on leaving this block
            return to_rgb(img)
    except OSError as exc:
        raise OSError(f"{path}: cannot read image ({exc})") from exc


class ImageDataset(Dataset):
    """Base class: ``dataset[i]`` is ``(transform(rgb_image), label)``.

    Args:
        targets: label of each image, in ``[0, len(classes))``.
        classes: class names; ``classes[label]`` names a label.
        transform: applied to the RGB PIL image; None returns the PIL image itself.
    """

    def __init__(self, targets: Sequence[int], classes: Sequence[str], transform: Transform | None = None):
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.load(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def load(self, index: int) -> Image.Image:
        """The untransformed RGB image at ``index``."""
        raise NotImplementedError

    def subset(self, indices: Sequence[int]) -> ImageDataset:
        """A dataset of the same kind holding only ``indices``, in that order (same classes, transform)."""
        raise NotImplementedError


class ArrayImageDataset(ImageDataset):
    """Images kept in memory as one uint8 array.

    Args:
        images: uint8 array of shape [N, H, W] (greyscale) or [N, H, W, 3] (RGB).
        targets: N labels.
        classes: class names.
        transform: see :class:`ImageDataset`.
    """

    def __init__(self, images: np.ndarray, targets: Sequence[int], classes: Sequence[str],
                 transform: Transform | None = None):
        super().__init__(targets, classes, transform)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(self.targets):
            raise ValueError(f"expected {len(self.targets)} uint8 images [N, H, W(, 3)], got "
                             f"{images.dtype} array of shape {images.shape}")
        self.images = images

    def load(self, index: int) -> Image.Image:
        return to_rgb(Image.fromarray(self.images[index]))

    def subset(self, indices: Sequence[int]) -> ArrayImageDataset:
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayImageDataset(self.images[idx], [self.targets[i] for i in idx], self.classes, self.transform)


class FileImageDataset(ImageDataset):
    """Image files opened lazily, one per ``__getitem__``.

    Args:
        paths: N image file paths.
        targets: N labels.
        classes: class names.
        transform: see :class:`ImageDataset`.
    """

    def __init__(self, paths: Sequence[str], targets: Sequence[int], classes: Sequence[str],
                 transform: Transform | None = None):
        super().__init__(targets, classes, transform)
        if len(paths) != len(self.targets):
            raise ValueError(f"got {len(paths)} paths for {len(self.targets)} labels")
        self.paths = [str(p) for p in paths]

    def load(self, index: int) -> Image.Image:
        return load_rgb(self.paths[index])

    def subset(self, indices: Sequence[int]) -> FileImageDataset:
        idx = [int(i) for i in indices]
        return FileImageDataset([self.paths[i] for i in idx], [self.targets[i] for i in idx], self.classes,
                                self.transform)

