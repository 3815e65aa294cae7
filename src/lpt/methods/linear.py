"""Linear (or cosine) probe: only the classifier trains, on the frozen ViT's features computed once."""

from __future__ import annotations

import torch
import torch.nn as nn

from lpt.methods.base import Method
from lpt.model.lpt import LPT


class LinearProbe(Method):
    name = "linear"
    label = "linear probe"
    prompts = False
    features = True

    def prepare(self, model: LPT, phase: str) -> list[nn.Parameter]:
        model.set_phase(1)
        model.shared_prompt.requires_grad_(False)
        return list(model.head.parameters())

    def logits(self, model: LPT, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": model.classify(inputs)}
