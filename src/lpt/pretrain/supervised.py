"""Supervised pretraining: a linear classifier on a timm ViT's class token, trained with cross-entropy."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer


class ClassTokenClassifier(nn.Module):
    """``encoder`` followed by a linear head on its final-norm class token.

    Only the encoder is kept after pretraining; the head exists for the pretraining loss.

    Args:
        encoder: headless timm ``VisionTransformer`` with a class token.
        num_classes: classes of the pretraining task.
    """

    def __init__(self, encoder: VisionTransformer, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.zeros_(self.head.weight)  # uniform predictions at the start: loss ln(C)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns ``loss`` (cross-entropy), ``logits`` [B, C] and ``correct`` (top-1 hits in the batch).

        Args:
            images: [B, C, H, W].
            labels: [B] class indices.
        """
        logits = self.head(self.encoder.forward_features(images)[:, 0])
        return {"loss": F.cross_entropy(logits.float(), labels), "logits": logits,
                "correct": (logits.argmax(dim=1) == labels).sum()}
