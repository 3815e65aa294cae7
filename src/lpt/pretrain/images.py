"""Unlabelled images held on the device as one uint8 tensor, with batched augmentation there.

Fashion-MNIST's 60,000 training images are 47 MB: they fit on any GPU, so batches are indexed,
cropped and flipped on the device with no data-loader processes. Model inputs use the demo's
normalisation (mean 0.5, std 0.5 per channel, greyscale repeated to three channels), so a
backbone pretrained here sees the same input distribution in ``lpt demo``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

MEAN, STD = 0.5, 0.5


def to_input(images: torch.Tensor, img_size: int) -> torch.Tensor:
    """uint8 [B, H, W] or [B, H, W, 3] to normalised float [B, 3, img_size, img_size]."""
    x = images.float().div(255.0)
    x = x[:, None].expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[-2:] != (img_size, img_size):
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False)
    return (x - MEAN) / STD


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float], generator: torch.Generator,
                        flip: bool = True) -> torch.Tensor:
    """A random crop per image (area fraction in ``scale``, aspect ratio 3/4 to 4/3), resized back
    to the input size, and a random horizontal flip; one ``grid_sample`` for the whole batch.

    Args:
        x: [B, C, H, W] float.
        scale: (min, max) fraction of the image area kept.
        generator: CPU generator: the same seed gives the same crops on any device.
        flip: flip half of the images left-right.
    """
    b = x.shape[0]
    u = torch.rand(b, 5, generator=generator).to(x.device)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1]
    sx = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # crop width / image width
    sy = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    tx = (2 * u[:, 2] - 1) * (1 - sx)  # crop centre, in [-1, 1] coordinates, inside the image
    ty = (2 * u[:, 3] - 1) * (1 - sy)
    sign = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if flip else torch.ones_like(sx)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * sign, tx, sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class DeviceImages:
    """Unlabelled uint8 images on ``device``, served as shuffled, augmented, normalised batches.

    Args:
        images: uint8 array [N, H, W] or [N, H, W, 3].
        img_size: model input side.
        device: where the images and batches live.
        crop_scale: area range of the random crops; (1, 1) with ``flip=False`` turns augmentation off.
        flip: random horizontal flips.
    """

    def __init__(self, images: np.ndarray, img_size: int, device: torch.device,
                 crop_scale: tuple[float, float] = (0.35, 1.0), flip: bool = True):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) == 0:
            raise ValueError(f"expected uint8 images [N, H, W(, 3)], got {images.dtype} {images.shape}")
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.img_size, self.crop_scale, self.flip = img_size, crop_scale, flip

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Endless augmented batches [batch_size, 3, img_size, img_size]: a new permutation per pass,
        the incomplete last batch of a pass dropped."""
        if not 0 < batch_size <= len(self.images):
            raise ValueError(f"batch size {batch_size} is not between 1 and the {len(self.images)} images")
        while True:
            order = torch.randperm(len(self.images), generator=generator).to(self.images.device)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                x = to_input(self.images[order[start:start + batch_size]], self.img_size)
                yield random_resized_crop(x, self.crop_scale, generator, self.flip)

    def fixed(self, count: int) -> torch.Tensor:
        """The first ``count`` images, unaugmented and normalised: a fixed set to measure the loss on."""
        return to_input(self.images[:count], self.img_size)
