"""Full fine-tuning: the whole ViT and the classifier train; no prompts."""

from __future__ import annotations

from lpt.methods.base import Method


class FullFineTuning(Method):
    name = "full"
    label = "full FT"
    trains_backbone = True
    prompts = False
