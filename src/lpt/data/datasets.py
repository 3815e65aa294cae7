"""Labelled image datasets held in memory (uint8 arrays) or on disk (image files).

Every dataset hands its transform an RGB PIL image and exposes ``targets`` (one int label per
image) and ``classes`` (class names, indexed by label), so samplers and the long-tail profile
can work on labels without decoding a single image.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps
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


def exif_orientation(img: Image.Image) -> int:
    """The orientation an image file asks to be shown in, 1..8 (1: as stored; a phone stores a portrait photo
    sideways with 6): EXIF's tag, or XMP's where EXIF has none, read as ``ImageOps.exif_transpose`` reads it; a
    value outside 1..8 counts as 1, as that function ignores it."""
    orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    return orientation if orientation in range(1, 9) else 1


def upright_rgb(img: Image.Image) -> Image.Image:
    """:func:`to_rgb` of the image as it is meant to be seen: turned by its EXIF orientation, as
    ``ImageOps.exif_transpose`` turns it (a new image where it turns; ``img`` itself is never changed)."""
    return to_rgb(ImageOps.exif_transpose(img) if exif_orientation(img) != 1 else img)


def _array_to_l(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


class BadImageError(OSError):
    """An image file that cannot be opened, decoded or converted to RGB; the one-line message starts with its path."""


# Appended where a dataset's image stops a run or a check: the way past it, which the message alone did not say.
SKIP_HINT = "to drop unreadable images and list them, run with --skip-bad-images (data.skip_bad_images=true)"


# What PIL raises on a missing, truncated, corrupt or non-image file (struct.error, SyntaxError and
# ValueError come out of some broken PNG/TIFF headers; DecompressionBombError is not an OSError).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def load_rgb(path: str) -> Image.Image:
    """Open an image file, decode all of it and return it upright (its EXIF orientation applied) as an RGB PIL image.

    Raises:
        BadImageError (an OSError): ``"<path>: cannot read image (<reason>)"``, on one line, for a
            missing, truncated, corrupt or non-image file. A truncated file fails unless someone set
            ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` (lpt never does; it would decode the missing part grey).
    """
    try:
        with Image.open(path) as img:
            img.load()  # decode now: the file closes on leaving this block, and truncation shows here
            return upright_rgb(img)
    except FileNotFoundError:
        raise BadImageError(f"{path}: cannot read image (file not found)") from None
    except DECODE_ERRORS as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise BadImageError(f"{path}: cannot read image ({reason})") from exc


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
    """Image files opened lazily, one per ``__getitem__``; an unreadable one raises :class:`BadImageError`
    (its message ends with :data:`SKIP_HINT`).

    Args:
        paths: N image file paths.
        targets: N labels.
        classes: class names.
        transform: see :class:`ImageDataset`.
        origins: where each image is listed (``"train.txt:12"``, ``"train.json: images[3]"``), for
            messages; None: nowhere but its path.
    """

    def __init__(self, paths: Sequence[str], targets: Sequence[int], classes: Sequence[str],
                 transform: Transform | None = None, origins: Sequence[str] | None = None):
        super().__init__(targets, classes, transform)
        if len(paths) != len(self.targets):
            raise ValueError(f"got {len(paths)} paths for {len(self.targets)} labels")
        if origins is not None and len(origins) != len(paths):
            raise ValueError(f"got {len(origins)} origins for {len(paths)} paths")
        self.paths = [str(p) for p in paths]
        self.origins = list(origins) if origins is not None else None

    def load(self, index: int) -> Image.Image:
        return self.read(index, load_rgb)

    def read(self, index: int, reader: Callable[[str], Any]) -> Any:
        """``reader(path)`` of image ``index`` (:func:`load_rgb`, or a decoder of training crops): whatever reads the
        file, an unreadable one raises :class:`BadImageError` ending with :data:`SKIP_HINT`."""
        try:
            return reader(self.paths[index])
        except BadImageError as exc:
            raise BadImageError(f"{exc}; {SKIP_HINT}") from exc.__cause__

    def origin(self, index: int) -> str:
        """Where image ``index`` is listed (``"train.txt:12"``), or its path when that is unknown."""
        return self.origins[index] if self.origins is not None else self.paths[index]

    def subset(self, indices: Sequence[int]) -> FileImageDataset:
        idx = [int(i) for i in indices]
        origins = [self.origins[i] for i in idx] if self.origins is not None else None
        return FileImageDataset([self.paths[i] for i in idx], [self.targets[i] for i in idx], self.classes,
                                self.transform, origins)



class FeatureDataset(Dataset):
    """Precomputed features with their labels (a linear probe's training set); ``targets`` lets the samplers
    balance classes."""

    def __init__(self, features, targets: Sequence[int]):
        self.features = features
        self.targets = list(targets)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.features[index], self.targets[index]
