"""The two pretraining recipes: each binds a data source, a model around the encoder and a final metric.

A recipe exposes ``model`` (an ``nn.Module`` whose ``encoder`` is the timm ViT being pretrained),
``steps_per_epoch``, ``batches(total_steps)`` (an iterator of device batches), ``step(batch)``
(a dict with ``loss``, and ``correct`` where there are labels), ``evaluate(amp)`` (the final metric)
and ``describe()`` (the card's data section). The one training loop lives in
:mod:`lpt.pretrain.runner`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader

from lpt.config import ConfigError
from lpt.pretrain.config import PretrainConfig
from lpt.pretrain.glyphs import GlyphDataset, default_workers, find_fonts, select_glyphs
from lpt.pretrain.images import DeviceImages, to_input
from lpt.pretrain.mae import MaskedAutoencoder, num_visible
from lpt.pretrain.supervised import ClassTokenClassifier

Amp = Callable[[], AbstractContextManager]


class MaeRecipe:
    """MAE on unlabelled images: Fashion-MNIST's 60,000 training images (labels unread, test split
    never opened), or any uint8 array given as ``images``."""

    name, metric, betas = "mae", "mae_loss", (0.9, 0.95)

    def __init__(self, cfg: PretrainConfig, encoder: VisionTransformer, device: torch.device,
                 images: np.ndarray | None = None):
        self.cfg, self.device = cfg, device
        if images is None:
            from lpt.data.sources import fashion_mnist_arrays

            images = fashion_mnist_arrays(cfg.data_root, train=True)[0]
            self.source = f"Fashion-MNIST training images, labels unused ({cfg.data_root or 'default location'})"
        else:
            self.source = "uint8 array given to lpt.pretrain.pretrain"
        if len(images) < cfg.batch_size:
            raise ConfigError(f"batch {cfg.batch_size} is larger than the {len(images)} images")
        n = encoder.patch_embed.num_patches
        if num_visible(n, cfg.mask_ratio) < 1:
            raise ConfigError(f"mask_ratio {cfg.mask_ratio} leaves no visible patch of {n}")
        self.data = DeviceImages(images, cfg.img_size, device, (cfg.crop_scale_min, 1.0))
        self.model = MaskedAutoencoder(encoder, cfg.mask_ratio, cfg.decoder_dim, cfg.decoder_depth,
                                       cfg.decoder_heads, cfg.norm_pix_loss).to(device)
        self.steps_per_epoch = len(images) // cfg.batch_size

    def batches(self, total_steps: int) -> Iterator[torch.Tensor]:
        return self.data.batches(self.cfg.batch_size, torch.Generator().manual_seed(self.cfg.seed))

    def step(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(batch)

    @torch.no_grad()
    def evaluate(self, amp: Amp) -> dict[str, Any]:
        """MAE loss on the first ``eval_images`` images, unaugmented, with masks fixed by the seed."""
        images = self.data.fixed(min(self.cfg.eval_images, len(self.data)))
        gen = torch.Generator().manual_seed(self.cfg.seed + 1)
        noise = torch.rand(len(images), self.model.encoder.patch_embed.num_patches, generator=gen).to(self.device)
        self.model.eval()
        total = 0.0
        for x, z in zip(images.split(self.cfg.batch_size), noise.split(self.cfg.batch_size)):
            with amp():
                total += float(self.model(x, z)["loss"]) * len(x)  # every image masks the same number
        return {"name": self.metric, "value": total / len(images),
                "on": f"the first {len(images)} training images, no augmentation, masks fixed by seed {self.cfg.seed}"}

    def describe(self) -> dict[str, Any]:
        n = self.model.encoder.patch_embed.num_patches
        return {"source": self.source, "images": len(self.data), "img_size": self.cfg.img_size,
                "normalisation": "x / 255, mean 0.5, std 0.5, greyscale repeated to 3 channels",
                "augmentation": f"random resized crop (area {self.cfg.crop_scale_min}-1, ratio 3/4-4/3), "
                                "horizontal flip",
                "masking": f"{n - num_visible(n, self.cfg.mask_ratio)} of {n} patches per image "
                           f"(ratio {self.cfg.mask_ratio})",
                "target": "pixels normalised per patch" if self.cfg.norm_pix_loss else "pixels"}


class GlyphRecipe:
    """Supervised classification of characters rendered from the machine's fonts."""

    name, metric, betas = "glyphs", "glyph_accuracy", (0.9, 0.999)

    def __init__(self, cfg: PretrainConfig, encoder: VisionTransformer, device: torch.device,
                 images: np.ndarray | None = None):
        if images is not None:
            raise ConfigError("the glyphs recipe renders its own images; it takes no image array")
        self.cfg, self.device = cfg, device
        self.glyphs = select_glyphs(find_fonts(cfg.font_dirs), cfg.num_classes, cfg.seed)
        self.model = ClassTokenClassifier(encoder, cfg.num_classes).to(device)
        self.steps_per_epoch = max(1, cfg.images_per_class * cfg.num_classes // cfg.batch_size)
        self.workers = default_workers() if cfg.workers < 0 else cfg.workers

    def _loader(self, dataset: GlyphDataset, drop_last: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=False, drop_last=drop_last,
                          num_workers=self.workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False, prefetch_factor=4 if self.workers else None)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return to_input(x.to(self.device, non_blocking=True), self.cfg.img_size), y.to(self.device, non_blocking=True)

    def batches(self, total_steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Fresh glyphs for every step: image i of the run is image i of split 0."""
        dataset = GlyphDataset(self.glyphs, total_steps * self.cfg.batch_size, self.cfg.img_size, self.cfg.seed, 0)
        return (self._to_device(x, y) for x, y in self._loader(dataset, drop_last=True))

    def step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model(*batch)

    def eval_set(self) -> GlyphDataset:
        """The held-out set: ``eval_per_class`` images per class from split 1, never trained on."""
        return GlyphDataset(self.glyphs, self.cfg.eval_per_class * self.cfg.num_classes, self.cfg.img_size,
                            self.cfg.seed, 1)

    @torch.no_grad()
    def evaluate(self, amp: Amp) -> dict[str, Any]:
        """Top-1 accuracy (%) on the held-out generated set."""
        dataset = self.eval_set()
        self.model.eval()
        correct = 0
        for x, y in self._loader(dataset, drop_last=False):
            with amp():
                correct += int(self.model(*self._to_device(x, y))["correct"])
        return {"name": self.metric, "value": 100.0 * correct / len(dataset),
                "on": f"{len(dataset)} held-out generated glyphs ({self.cfg.eval_per_class} per class, split 1, "
                      f"seed {self.cfg.seed})"}

    def describe(self) -> dict[str, Any]:
        p = GlyphDataset(self.glyphs, 0, self.cfg.img_size).params
        return {"source": "characters rendered from system fonts, generated on the fly", **self.glyphs.describe(),
                "img_size": self.cfg.img_size,
                "normalisation": "x / 255, mean 0.5, std 0.5, greyscale repeated to 3 channels",
                "rendering": {"font_size": p.size, "stroke_px_at_28": p.stroke, "rotation_deg": p.rotation,
                              "shift": p.shift, "brightness": p.brightness, "supersample": p.supersample},
                "images_per_epoch": self.steps_per_epoch * self.cfg.batch_size}


RECIPES: dict[str, type] = {"mae": MaeRecipe, "glyphs": GlyphRecipe}


def build_recipe(cfg: PretrainConfig, encoder: VisionTransformer, device: torch.device,
                 images: np.ndarray | None = None) -> MaeRecipe | GlyphRecipe:
    """The recipe named by ``cfg.recipe``; unknown names raise, listing the valid ones."""
    if cfg.recipe not in RECIPES:
        raise ConfigError(f"unknown recipe '{cfg.recipe}'; expected one of {', '.join(RECIPES)}")
    return RECIPES[cfg.recipe](cfg, encoder, device, images)
