"""Backbones, prompts, the prompted ViT forward and heads."""

from lpt.model.backbone import BackboneError, BackboneIdentity, create_backbone, weights_fingerprint
from lpt.model.heads import CosineClassifier
from lpt.model.lpt import LPT, GroupPromptPool

__all__ = [
    "LPT", "BackboneError", "BackboneIdentity", "CosineClassifier", "GroupPromptPool", "create_backbone",
    "weights_fingerprint",
]
