"""Classifier heads on top of the pooled ViT feature."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CosineClassifier(nn.Module):
    """Cosine classifier: rows of W and the feature are L2-normalised, logits are cosines in [-1, 1].

    The loss applies the scale. As in the published LPT code, weight vectors start uniform in
    [-1, 1] and are rescaled to unit norm.

    Args:
        dim: feature size D.
        num_classes: C.
    """

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """``[B, D] -> [B, C]`` cosines."""
        return F.normalize(feature, dim=-1) @ F.normalize(self.weight, dim=-1).t()


class LinearClassifier(nn.Linear):
    """Plain linear classifier (VPT, linear probe, full fine-tuning baselines); logits are unbounded,
    so use it with ``loss.scale=1``."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__(dim, num_classes)
        nn.init.zeros_(self.bias)
        nn.init.trunc_normal_(self.weight, std=0.02)


HEADS = {"cosine": CosineClassifier, "linear": LinearClassifier}
