"""Image transforms: RGB PIL image in, normalised float32 tensor [3, img_size, img_size] out.

Resizing is bicubic by default, the interpolation of timm's pretrained ViT configurations;
``data.interpolation=bilinear`` gives torchvision's default, which the published LPT scripts use.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from lpt.config import ConfigError, DataConfig, test_resize_of
from lpt.data.datasets import upright_rgb

INTERPOLATION = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def rrc_flip(cfg: DataConfig) -> tuple[v2.RandomResizedCrop, v2.RandomHorizontalFlip]:
    """The two random steps of ``train_aug=rrc_flip``. The fast and GPU decode paths (:mod:`lpt.data.decode`) draw
    their crop box and flip from these same objects, so that they draw what the exact path draws."""
    how = INTERPOLATION[cfg.interpolation]
    return v2.RandomResizedCrop(cfg.img_size, interpolation=how, antialias=True), v2.RandomHorizontalFlip()


MDA_SCHEDULES: dict[str, Callable[[float], float]] = {  # shijxcs/LIFT-plus@ea555ea utils/transforms.py:29-47
    "min": lambda t: 0.0,
    "convex": lambda t: 1.0 - math.sqrt(1.0 - t * t),
    "linear": lambda t: t,
    "concave": lambda t: math.sqrt(1.0 - (1.0 - t) ** 2),
    "max": lambda t: 1.0,
}


class MinimalistRandomResizedCrop:
    """LIFT+'s minimalist data augmentation (MDA; Shi, Wei, Li 2025; shijxcs/LIFT-plus@ea555ea
    utils/transforms.py:11-95): a random *square* crop, no flip, resized to ``size``. Its area is a uniform
    fraction of the image's in ``[s_min, 1]``, both capped at the largest square's, and ``s_min`` rises over the
    epochs: ``s_min = lo + f(t) * (1 - lo)`` with ``lo`` 0.08, ``t = epoch / (epochs - 1)`` (``set_progress``;
    :class:`lpt.data.samplers.KeyedAugmentation` sets it per sample) and ``f`` one of :data:`MDA_SCHEDULES`
    (``convex`` by default, as LIFT+). The draws (area, then top and left) come from torch's CPU generator, as
    torchvision's; a one-epoch phase stays at ``t = 0`` (LIFT+ divides by zero there)."""

    def __init__(self, size: int, schedule: str = "convex",
                 interpolation: InterpolationMode = InterpolationMode.BICUBIC,
                 scale: tuple[float, float] = (0.08, 1.0)):
        self.size, self.schedule, self.interpolation, self.scale = size, MDA_SCHEDULES[schedule], interpolation, scale
        self.schedule_name = schedule
        self.progress = 0.0

    def set_progress(self, progress: float) -> None:
        self.progress = progress

    def min_scale(self) -> float:
        low, high = self.scale
        return low + self.schedule(self.progress) * (high - low)

    def box(self, height: int, width: int) -> tuple[int, int, int]:
        """(top, left, side) of the square crop of an image ``height`` x ``width``."""
        area = height * width
        square = min(height, width) ** 2 / area
        low, high = min(self.min_scale(), square), min(self.scale[1], square)
        side = int(round(math.sqrt(area * torch.empty(1).uniform_(low, high).item())))
        top = int(torch.randint(0, height - side + 1, size=(1,)).item())
        left = int(torch.randint(0, width - side + 1, size=(1,)).item())
        return top, left, side

    def __call__(self, image):
        top, left, side = self.box(*v2.functional.get_size(image))
        return v2.functional.resized_crop(image, top, left, side, side, [self.size, self.size],
                                          interpolation=self.interpolation, antialias=True)

    def __repr__(self) -> str:
        return f"MinimalistRandomResizedCrop(size={self.size}, schedule={self.schedule_name}, progress={self.progress})"


def _train_geometry(cfg: DataConfig) -> list[v2.Transform]:
    size, how = cfg.img_size, INTERPOLATION[cfg.interpolation]
    if cfg.train_aug == "rrc_flip":
        return list(rrc_flip(cfg))
    if cfg.train_aug == "mda":
        return [MinimalistRandomResizedCrop(size, cfg.mda_func, how)]
    if cfg.train_aug == "crop_flip":  # for small images (CIFAR, Fashion-MNIST): upsample, pad-and-crop
        return [v2.Resize(size, interpolation=how, antialias=True), v2.RandomCrop(size, padding=size // 8),
                v2.RandomHorizontalFlip()]
    if cfg.train_aug == "none":
        return _eval_geometry(size, size, "shorter", how)
    raise ConfigError(f"config key 'data.train_aug' is {cfg.train_aug!r}; expected one of rrc_flip, mda, crop_flip, "
                      "none")


def _resize(side: int, mode: str, how: InterpolationMode) -> v2.Resize:
    return v2.Resize(side if mode == "shorter" else (side, side), interpolation=how, antialias=True)


def _eval_geometry(resize: int, size: int, mode: str, how: InterpolationMode) -> list[v2.Transform]:
    return [_resize(max(resize, size), mode, how), v2.CenterCrop(size)]


class FiveCrops:
    """An image tensor ``[C, H, W]`` -> its five ``size`` crops stacked ``[5, C, size, size]``: torchvision's
    ``five_crop``, which LIFT's test-time ensemble takes (shijxcs/LIFT@661ead9 trainer.py:120), with the centre moved
    first, since evaluation matches prompts on the first view."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        top_left, top_right, bottom_left, bottom_right, centre = v2.functional.five_crop(image, self.size)
        return torch.stack([centre, top_left, top_right, bottom_left, bottom_right]).as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"FiveCrops(size={self.size})"


def build_transform(cfg: DataConfig, train: bool, normalize: bool = True, expand: int | None = None) -> v2.Compose:
    """The training or evaluation transform of a data configuration.

    Training: ``rrc_flip`` (RandomResizedCrop + horizontal flip), ``mda`` (LIFT+'s
    :class:`MinimalistRandomResizedCrop`, ``data.mda_func``), ``crop_flip`` (resize the short
    side to img_size, RandomCrop with padding img_size // 8, flip) or ``none`` (resize + centre
    crop). Evaluation: resize the short side to ``test_resize`` (when it is 0, img_size * 256 / 224;
    img_size when it is smaller), keeping the aspect ratio, or with ``test_resize_mode=square`` the
    whole image to test_resize x test_resize, as the published LPT script does; then centre-crop
    img_size. The two agree on square images (Places365-Standard, CIFAR). Both end with scaling to [0, 1] and
    ``Normalize(mean, std)``.

    Args:
        cfg: data configuration (img_size, test_resize, test_resize_mode, interpolation, train_aug, mean, std).
        train: training (random) or evaluation (deterministic) transform.
        normalize: False stops at the uint8 image; :class:`BatchNormalize` then finishes batches on the
            device, with the same arithmetic (loader processes do less work and move a quarter of the bytes).
        expand: evaluation with LIFT's crop ensemble (``tta=crops``, shijxcs/LIFT trainer.py:117-122): resize
            to ``img_size + expand`` (shorter side or square, as ``test_resize_mode`` says; ``test_resize`` is
            not used) and take :class:`FiveCrops` instead of the centre crop.

    Returns:
        A callable mapping an RGB PIL image to a float32 tensor [3, img_size, img_size] (uint8 with
        ``normalize=False``; [5, 3, img_size, img_size] with ``expand``).
    """
    how, crops = INTERPOLATION[cfg.interpolation], []
    if train:
        geometry = _train_geometry(cfg)
    elif expand is not None:
        geometry = [_resize(cfg.img_size + expand, cfg.test_resize_mode, how)]
        crops = [FiveCrops(cfg.img_size)]  # on the tensor, so that the image is decoded and resized once
    else:
        geometry = _eval_geometry(test_resize_of(cfg), cfg.img_size, cfg.test_resize_mode, how)
    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(cfg.mean), std=list(cfg.std))]
    return v2.Compose([
        *geometry,  # on the PIL image
        v2.ToImage(),
        *crops,
        *(finish if normalize else []),
        v2.ToPureTensor(),
    ])


def build_init_transform(cfg: DataConfig) -> v2.Compose:
    """The evaluation transform that the training features of ``model.head_init`` (class means, linear probe) see:
    resized to ``init_resize`` where it is set (LIFT's ``transform_plain``, Resize(224) + CenterCrop(224),
    shijxcs/LIFT@661ead9 trainer.py:109-114), else as the test images."""
    return build_transform(dataclasses.replace(cfg, test_resize=cfg.init_resize or cfg.test_resize), train=False)


class UprightRGB:
    """Any PIL image (RGBA, CMYK, palette, 16-bit, EXIF-rotated) -> the RGB image as shown
    (:func:`lpt.data.datasets.upright_rgb`): the first step of a transform given users' own images (``run.transform``),
    where datasets hand over such images already."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return upright_rgb(image)

    def __repr__(self) -> str:
        return "UprightRGB()"


class BatchNormalize:
    """The last two steps of :func:`build_transform` (scale to [0, 1], ``Normalize(mean, std)``) on a
    uint8 batch [B, 3, H, W], wherever it lives; float batches pass through unchanged."""

    def __init__(self, cfg: DataConfig):
        self.mean, self.std = list(cfg.mean), list(cfg.std)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            return images
        return v2.functional.normalize(v2.functional.to_dtype(images, torch.float32, scale=True), self.mean, self.std)
