"""The one model builder: a frozen backbone and LPT's prompts and classifier, from a config's model section."""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer

from lpt.config import ConfigError, ModelConfig
from lpt.model.backbone import BackboneIdentity, backbone_geometry, create_backbone
from lpt.model.lpt import LPT
from lpt.utils import seed_everything


def build_model(m: ModelConfig, num_classes: int, seed: int, train_backbone: bool = False,
                ) -> tuple[LPT, BackboneIdentity]:
    """Backbone (seeded, so a random one is rebuilt identically on reload) plus prompts and head.

    ``train_backbone`` is full fine-tuning; the method says so (``Method.trains_backbone``).
    """
    seed_everything(seed)
    backbone, identity = create_backbone(m.backbone, m.pretrained, m.checkpoint, layer_norm_eps=m.layer_norm_eps,
                                         keep_head=bool(m.text), **m.backbone_args)
    return build_lpt(backbone, m, num_classes, train_backbone), identity


def build_lpt(backbone: VisionTransformer, m: ModelConfig, num_classes: int, train_backbone: bool = False) -> LPT:
    """LPT's prompts and classifier around a backbone already built (``build_model``, or an official checkpoint's)."""
    return LPT(backbone, num_classes, prompt_len=m.prompt_len, pool_size=m.pool_size, split_block=m.split_block,
               top_k=m.top_k, feature_dropout=m.feature_dropout, head=m.head, prompt_depth=m.prompt_depth,
               query=m.query, train_backbone=train_backbone, peft=m.peft, peft_dim=m.peft_dim, projection=m.projection)


def check_fits(m: ModelConfig, img_size: int) -> None:
    """Refuse, before any data loads or weights are read, a model section the backbone cannot take: K not
    below its depth, or images of another size than its patch grid."""
    depth, size, patch = backbone_geometry(m.backbone, **m.backbone_args)
    if not 0 <= m.split_block < depth:
        raise ConfigError(f"config key 'model.split_block' is {m.split_block}; expected 0..{depth - 1} (K must be "
                          f"below the depth of {m.backbone}, {depth} blocks)")
    if size is not None and size != (img_size, img_size):
        raise ConfigError(f"config key 'data.img_size' is {img_size}, but {m.backbone} takes {size[0]}x{size[1]} "
                          f"images ({patch[0]} px patches); set data.img_size={size[0]}, or the backbone's size with "
                          f"model.backbone_args.img_size")
