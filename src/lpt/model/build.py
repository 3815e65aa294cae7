"""The one model builder: a frozen backbone and LPT's prompts and classifier, from a config's model section."""

from __future__ import annotations

import numpy as np
import timm
from timm.models.vision_transformer import VisionTransformer

from lpt.config import ConfigError, ModelConfig
from lpt.model.backbone import BackboneIdentity, backbone_geometry, create_backbone
from lpt.model.lpt import LPT
from lpt.model.text import text_model_name, text_quick_gelu, text_tower_weights
from lpt.utils import log, seed_everything


def build_model(m: ModelConfig, num_classes: int, seed: int, train_backbone: bool = False,
                class_scales: bool = False) -> tuple[LPT, BackboneIdentity]:
    """Backbone (seeded, so a random one is rebuilt identically on reload) plus prompts and head.

    ``train_backbone`` is full fine-tuning, ``class_scales`` LWS's per-class scales; the method says so
    (``Method.trains_backbone``, ``Method.class_scales``).
    """
    seed_everything(seed)
    backbone, identity = create_backbone(m.backbone, m.pretrained, m.checkpoint, layer_norm_eps=m.layer_norm_eps,
                                         keep_head=bool(m.text), **m.backbone_args)
    return build_lpt(backbone, m, num_classes, train_backbone, class_scales), identity


def build_lpt(backbone: VisionTransformer, m: ModelConfig, num_classes: int, train_backbone: bool = False,
              class_scales: bool = False) -> LPT:
    """LPT's prompts and classifier around a backbone already built (``build_model``, or an official checkpoint's)."""
    return LPT(backbone, num_classes, prompt_len=m.prompt_len, pool_size=m.pool_size, split_block=m.split_block,
               top_k=m.top_k, feature_dropout=m.feature_dropout, head=m.head, prompt_depth=m.prompt_depth,
               query=m.query, train_backbone=train_backbone, peft=m.peft, peft_dim=m.peft_dim, projection=m.projection,
               class_scales=class_scales, aft=(m.aft_ratio, m.aft_loc, m.aft_seed))


def check_fits(m: ModelConfig, img_size: int) -> None:
    """Refuse, before any data loads or weights are read, a model section the backbone cannot take: K not
    below its depth, images of another size than its patch grid, or with a text tower an untagged CLIP name, or
    towers of two activations."""
    text = text_model_name(m) if m.text else ""  # open_clip installed, and the text tower's name known
    if m.text and "." not in m.backbone:
        raise ConfigError(f"config key 'model.backbone' is {m.backbone!r} without a weights tag; with model.text name "
                          f"the CLIP weights, e.g. {m.backbone}.openai (untagged, timm takes its default tag, which "
                          "may be fine-tuned with a classifier where CLIP's projection should be)")
    depth, size, patch = backbone_geometry(m.backbone, **m.backbone_args)
    if not 0 <= m.split_block < depth:
        raise ConfigError(f"config key 'model.split_block' is {m.split_block}; expected 0..{depth - 1} (K must be "
                          f"below the depth of {m.backbone}, {depth} blocks)")
    if size is not None and size != (img_size, img_size):
        raise ConfigError(f"config key 'data.img_size' is {img_size}, but {m.backbone} takes {size[0]}x{size[1]} "
                          f"images ({patch[0]} px patches); set data.img_size={size[0]}, or the backbone's size with "
                          f"model.backbone_args.img_size")
    if text:
        text_quick_gelu(m, text, text_tower_weights(m))


def warn_mismatches(m: ModelConfig, mean: list[float], std: list[float]) -> None:
    """Warn, without refusing, where the backbone would run otherwise than it was trained: OpenAI's CLIP weights
    with GELU (they were trained with QuickGELU), or ``data.mean`` / ``data.std`` that are not the ones timm's
    pretrained configuration gives the backbone (CLIP's differ from the ImageNet-21k ViT's 0.5)."""
    arch, _, tag = m.backbone.partition(".")
    if "_clip_" in arch and "quickgelu" not in arch and tag == "openai":
        log.warning("%s runs OpenAI's CLIP weights with GELU; they were trained with QuickGELU: %s gives the "
                    "original model", m.backbone, arch.replace("_clip_", "_clip_quickgelu_") + ".openai")
    try:
        pretrained = timm.models.get_pretrained_cfg(m.backbone)
    except (RuntimeError, ValueError):
        pretrained = None
    if pretrained is None or not pretrained.mean:
        return
    if not (np.allclose(pretrained.mean, mean, atol=1e-4) and np.allclose(pretrained.std, std, atol=1e-4)):
        log.warning("data.mean %s / data.std %s are not %s's own normalisation %s / %s (timm's pretrained config)",
                    list(mean), list(std), m.backbone, list(pretrained.mean), list(pretrained.std))
