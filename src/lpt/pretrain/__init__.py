"""Pretraining a small timm ViT where no pretrained weights can be downloaded (the offline demo).

Two recipes, both producing timm-compatible fp16 safetensors of the encoder alone plus a card:

- ``mae``: masked-autoencoder pretraining (He et al., CVPR 2022) on unlabelled images, by
  default Fashion-MNIST's 60,000 training images without their labels (never the test images);
- ``glyphs``: supervised classification of Unicode characters rendered from the system's fonts.

>>> from lpt.pretrain import PretrainConfig, pretrain
>>> cfg = PretrainConfig(recipe="mae", backbone_args={"patch_size": 4, "depth": 12}, epochs=100)
>>> result = pretrain(cfg, "pretrained/mae")   # backbone.safetensors, card.json, card.md
"""

from lpt.pretrain.config import PretrainConfig
from lpt.pretrain.glyphs import FontError, GlyphDataset, GlyphSet, find_fonts, select_glyphs
from lpt.pretrain.mae import MaskedAutoencoder, masked_patch_loss, patchify, random_masking
from lpt.pretrain.recipes import RECIPES, build_recipe
from lpt.pretrain.runner import PretrainResult, pretrain
from lpt.pretrain.supervised import ClassTokenClassifier

__all__ = [
    "RECIPES", "ClassTokenClassifier", "FontError", "GlyphDataset", "GlyphSet", "MaskedAutoencoder", "PretrainConfig",
    "PretrainResult", "build_recipe", "find_fonts", "masked_patch_loss", "patchify", "pretrain", "random_masking",
    "select_glyphs",
]
