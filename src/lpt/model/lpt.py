"""LPT: long-tailed prompt tuning of a frozen ViT (Dong et al., ICLR 2023).

Phase 1 trains a shared deep prompt ``u = [u_1..u_L]`` and a cosine classifier. Phase 2 freezes
``u``; the phase-1 feature of an image is its query ``q``; the top-k of ``m`` keys by cosine with
``q`` pick group prompts whose raw tokens are averaged and added, beside ``u``, to the last
``L - K`` blocks. Phase 2 reuses the phase-1 hidden state after block ``K``, so an image costs
``L + (L - K)`` block passes instead of ``2L``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from lpt.model.heads import CosineClassifier
from lpt.model.prompted_vit import block_forward, concat_kv, deep_prompt_blocks, embed, pooled_feature, prompt_kv


def _trunc_normal(*shape: int) -> nn.Parameter:
    """Prompts, pool and keys start from a truncated normal of std 0.02, as in the published code."""
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(*shape), std=0.02))


class GroupPromptPool(nn.Module):
    """``m`` group prompts for the last ``L - K`` blocks, each with a key in feature space.

    Args:
        pool_size: m.
        num_blocks: L - K.
        prompt_len: tokens per block.
        dim: D.
        top_k: groups selected per image.
    """

    def __init__(self, pool_size: int, num_blocks: int, prompt_len: int, dim: int, top_k: int):
        super().__init__()
        self.prompts = _trunc_normal(pool_size, num_blocks, prompt_len, dim)
        self.keys = _trunc_normal(pool_size, dim)
        self.top_k = top_k

    def select(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k groups by cosine of ``query`` ``[B, D]`` with the keys: indices and cosines ``[B, k]``,
        most similar first."""
        sim = F.normalize(query, dim=-1) @ F.normalize(self.keys, dim=-1).t()
        top = sim.topk(self.top_k, dim=1)
        return top.indices, top.values

    def ensemble(self, groups: torch.Tensor) -> torch.Tensor:
        """Mean of the selected groups' raw prompt tokens: ``[B, k] -> [B, L - K, P, D]``."""
        return self.prompts[groups].mean(dim=1)


class LPT(nn.Module):
    """Frozen ViT + shared prompt + group prompt pool + cosine classifier.

    ``model(images)`` gives cosine logits ``[B, C]`` of the current phase (1 or 2);
    ``model.query(images)`` the phase-1 query ``[B, D]``; ``model.match(images)`` the selected
    groups ``[B, k]``, most similar first.

    Args:
        backbone: a timm VisionTransformer with standard blocks (frozen here).
        num_classes: C.
        prompt_len: prompt tokens per block (shared and group prompts).
        pool_size: m.
        split_block: K; group prompts enter blocks K+1..L.
        top_k: k.
        feature_dropout: dropout on the feature before the classifier, in training.
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        num_classes: int,
        prompt_len: int = 10,
        pool_size: int = 20,
        split_block: int = 6,
        top_k: int = 2,
        feature_dropout: float = 0.1,
    ):
        super().__init__()
        depth, dim = len(backbone.blocks), backbone.embed_dim
        if not 0 <= split_block < depth:
            raise ValueError(f"split_block K={split_block} must be in [0, {depth}) for a ViT of {depth} blocks")
        self.backbone = backbone.requires_grad_(False)
        self.split_block = split_block
        self.shared_prompt = _trunc_normal(depth, prompt_len, dim)
        self.pool = GroupPromptPool(pool_size, depth - split_block, prompt_len, dim, top_k)
        self.head = CosineClassifier(dim, num_classes)
        self.dropout = nn.Dropout(feature_dropout)
        self.phase = 1
        self.set_phase(1)

    @property
    def num_classes(self) -> int:
        return self.head.weight.shape[0]

    def set_phase(self, phase: int) -> None:
        """Choose the forward and what trains: phase 1 the shared prompt, phase 2 the pool and keys;
        the classifier trains in both."""
        if phase not in (1, 2):
            raise ValueError(f"phase must be 1 or 2, got {phase}")
        self.phase = phase
        self.shared_prompt.requires_grad_(phase == 1)
        self.pool.requires_grad_(phase == 2)
        self.head.requires_grad_(True)

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """Everything lpt trains (never the backbone), by state-dict name."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def _shared_pass(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens after block K and after all L blocks, with the shared prompt."""
        k = self.split_block
        h_k = deep_prompt_blocks(self.backbone, embed(self.backbone, images), self.shared_prompt[:k])
        return h_k, deep_prompt_blocks(self.backbone, h_k, self.shared_prompt[k:], start=k)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Phase-1 feature ``[B, D]``: final norm at the class token after L blocks with the shared prompt."""
        return pooled_feature(self.backbone, self._shared_pass(images)[1])

    def _group_pass(self, h_k: torch.Tensor, group_prompts: torch.Tensor) -> torch.Tensor:
        """Blocks K+1..L again from ``h_k``, each with the shared and the per-image group prompt."""
        x, k = h_k, self.split_block
        for i, block in enumerate(self.backbone.blocks[k:]):
            shared = prompt_kv(block, self.shared_prompt[k + i][None])
            x = block_forward(block, x, concat_kv(shared, prompt_kv(block, group_prompts[:, i]), batch=x.shape[0]))
        return pooled_feature(self.backbone, x)

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature of the current phase; in phase 2 also the query, selected groups and their key cosines."""
        if self.phase == 1:
            return {"feature": self.query(images)}
        with torch.no_grad():
            h_k, x_l = self._shared_pass(images)
            q = pooled_feature(self.backbone, x_l)
        groups, key_sim = self.pool.select(q)
        feature = self._group_pass(h_k, self.pool.ensemble(groups))
        return {"feature": feature, "query": q, "groups": groups, "key_sim": key_sim}

    def forward_train(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features plus ``logits`` (feature dropout applies in training mode)."""
        out = self.forward_features(images)
        out["logits"] = self.head(self.dropout(out["feature"]))
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_train(images)["logits"]

    @torch.no_grad()
    def match(self, images: torch.Tensor) -> torch.Tensor:
        """Indices ``[B, k]`` of the groups selected for each image, most similar first."""
        return self.pool.select(self.query(images))[0]
