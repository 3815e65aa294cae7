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

from lpt.model.heads import HEADS
from lpt.model.prompted_vit import (
    PromptKV, block_forward, deep_prompt_blocks, embed, plain_blocks, pooled_feature, prompt_kv,
    shallow_prompt_forward,
)
from lpt.model.peft import add_peft, aft_ratio, bottleneck_dim, peft_part


def _trunc_normal(*shape: int) -> nn.Parameter:
    """Prompts, pool and keys start from a truncated normal of std 0.02, as in the published code."""
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(*shape), std=0.02))


GROUP_PROMPTS = "pool."  # state-dict prefix of the group prompts and their keys (phase 2)


class GroupPromptPool(nn.Module):
    """``m`` group prompts for the last ``L - K`` blocks, each with a key in feature space.

    Args:
        pool_size: m.
        num_blocks: L - K.
        prompt_len: tokens per block.
        dim: D.
        top_k: groups selected per image.
        key_dim: size of the query the keys are compared with (D, or CLIP's joint space with a projection).
    """

    def __init__(self, pool_size: int, num_blocks: int, prompt_len: int, dim: int, top_k: int, key_dim: int):
        super().__init__()
        self.prompts = _trunc_normal(pool_size, num_blocks, prompt_len, dim)
        self.keys = _trunc_normal(pool_size, key_dim)
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
    """Frozen ViT + shared prompt + group prompt pool + classifier.

    ``model(images)`` gives logits ``[B, C]`` of the current phase (1 or 2), cosines for the
    cosine head; ``model.query(images)`` the phase-2 query ``[B, D]``; ``model.match(images)`` the
    selected groups ``[B, k]``, most similar first. Baselines are the same model with options:
    VPT is phase 1 (``prompt_depth`` deep or shallow), a linear probe or full fine-tuning is
    phase 1 with ``prompt_len=0`` (and ``train_backbone`` for the latter).

    Args:
        backbone: a timm VisionTransformer with standard blocks (frozen unless ``train_backbone``).
        num_classes: C.
        prompt_len: prompt tokens per block (shared and group prompts).
        pool_size: m.
        split_block: K; group prompts enter blocks K+1..L.
        top_k: k.
        feature_dropout: dropout on the feature before the classifier, in training.
        head: ``cosine`` (LPT) or ``linear``.
        prompt_depth: ``deep`` (a prompt per block, keys/values only) or ``shallow`` (VPT-Shallow).
        query: phase-2 query function, ``shared`` (phase-1 prompted ViT) or ``plain`` (the ViT alone).
        train_backbone: full fine-tuning: the backbone trains too.
        peft: parameter-efficient modules put into the backbone's blocks (``lpt.model.peft``); they train in
            every phase, beside the prompts and the classifier.
        peft_dim: their bottleneck / LoRA rank; 0: LIFT's rule from C and the depth.
        projection: every feature (the classifier's input, the phase-2 query) is the pooled feature through the
            backbone's own head, frozen: a CLIP image tower's projection into the joint space with the text.
        class_scales: a learnt scale per class multiplies the logits (``class_scale``, ones at first; LWS).
        aft: ``(ratio, location, seed)`` of ``peft=[aft]``; ratio 0: LIFT+'s rule (:func:`lpt.model.peft.aft_ratio`).
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
        head: str = "cosine",
        prompt_depth: str = "deep",
        query: str = "shared",
        train_backbone: bool = False,
        peft: list[str] | None = None,
        peft_dim: int = 0,
        projection: bool = False,
        class_scales: bool = False,
        aft: tuple[float, str, int] = (0.0, "all", 0),
    ):
        super().__init__()
        depth, dim = len(backbone.blocks), backbone.embed_dim
        if not 0 <= split_block < depth:
            raise ValueError(f"split_block K={split_block} must be in [0, {depth}) for a ViT of {depth} blocks")
        if head not in HEADS or prompt_depth not in ("deep", "shallow") or query not in ("shared", "plain"):
            raise ValueError(f"unknown option: head={head!r}, prompt_depth={prompt_depth!r}, query={query!r}")
        self.backbone = backbone
        ratio, loc, seed = aft
        aft = (ratio or aft_ratio(num_classes, depth, dim, loc), loc, seed)
        self.tuned = set(add_peft(backbone, list(peft or []), peft_dim or bottleneck_dim(num_classes, depth), aft))
        self.split_block = split_block
        self.shallow = prompt_depth == "shallow"
        self.plain_query = query == "plain"
        self.train_backbone = train_backbone
        kept = backbone.get_classifier()  # CLIP's projection; SigLIP's tower has none (its pooled feature is joint)
        self.projection = projection
        feature_dim = kept.out_features if projection and isinstance(kept, nn.Linear) else dim
        self.shared_prompt = _trunc_normal(1 if self.shallow else depth, prompt_len, dim)
        self.pool = GroupPromptPool(pool_size, depth - split_block, prompt_len, dim, top_k, feature_dim)
        self.head = HEADS[head](feature_dim, num_classes)
        # LWS (method lws): a learnt scale per class on the classifier's logits
        self.class_scale = nn.Parameter(torch.ones(num_classes)) if class_scales else None
        self.dropout = nn.Dropout(feature_dropout)
        self.phase = 1
        self.set_phase(1)

    @property
    def num_classes(self) -> int:
        return self.head.weight.shape[0]

    def set_phase(self, phase: int, train_shared: bool | None = None) -> None:
        """Choose the forward and what trains: phase 1 the shared prompt, phase 2 the pool and keys
        (and the shared prompt too when ``train_shared``, for joint training); the classifier trains
        in both, the backbone only for full fine-tuning."""
        if phase not in (1, 2):
            raise ValueError(f"phase must be 1 or 2, got {phase}")
        if phase == 2 and self.shallow:
            raise ValueError("phase 2 needs a deep shared prompt; this model has a shallow one")
        self.phase = phase
        self.shared_prompt.requires_grad_(phase == 1 if train_shared is None else train_shared)
        self.pool.requires_grad_(phase == 2)
        self.head.requires_grad_(True)
        self.backbone.requires_grad_(self.train_backbone)
        for name, param in self.backbone.named_parameters():
            if name in self.tuned:
                param.requires_grad_(True)

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """Everything lpt trains, by state-dict name: of the backbone, all of it when it trains, else its PEFT
        tensors."""
        return {k: v for k, v in self.state_dict().items()
                if self.train_backbone or not k.startswith("backbone.") or k[len("backbone."):] in self.tuned}

    def trainable_by_part(self) -> dict[str, int]:
        """Parameters that train now, by part: prompts, group pool, classifier, the backbone (full fine-tuning)
        or each PEFT module (``bitfit/ln``: the existing biases and LayerNorms they train)."""
        parts: dict[str, int] = {}
        for name, p in self.named_parameters():
            if p.requires_grad and p.numel():
                part = name.split(".")[0]
                if part == "backbone" and not self.train_backbone:
                    part = peft_part(name) or "bitfit/ln"
                parts[part] = parts.get(part, 0) + p.numel()
        return parts

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """The feature of tokens ``[B, N, D]``: timm's final norm and pooling, then the projection if any."""
        return pooled_feature(self.backbone, x, project=self.projection)

    def _shared_pass(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens after block K and after all L blocks, with the (deep) shared prompt."""
        k = self.split_block
        h_k = deep_prompt_blocks(self.backbone, embed(self.backbone, images), self.shared_prompt[:k])
        return h_k, deep_prompt_blocks(self.backbone, h_k, self.shared_prompt[k:], start=k)

    def phase1_feature(self, images: torch.Tensor) -> torch.Tensor:
        """Feature of the phase-1 model ``[B, D]`` (``[B, E]`` with the projection): final norm and pooling after
        L blocks with the shared prompt (deep or shallow)."""
        if self.shallow:
            return shallow_prompt_forward(self.backbone, images, self.shared_prompt[0], project=self.projection)
        return self._pool(self._shared_pass(images)[1])

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Phase-2 query (of the feature's size): the phase-1 feature, or with ``query='plain'`` the plain ViT's."""
        return self.plain_feature(images) if self.plain_query else self.phase1_feature(images)

    def plain_feature(self, images: torch.Tensor) -> torch.Tensor:
        """The feature of the backbone without prompts (with its PEFT modules and projection, if any)."""
        return self._pool(plain_blocks(self.backbone, embed(self.backbone, images)))

    def _group_pass(self, h_k: torch.Tensor, group_prompts: torch.Tensor, shared_kv: list[PromptKV]) -> torch.Tensor:
        """Blocks K+1..L again from ``h_k``, each with the shared prompt's keys/values (computed once, for
        the whole batch) and the per-image group prompt's."""
        x, k = h_k, self.split_block
        for i, block in enumerate(self.backbone.blocks[k:]):
            x = block_forward(block, x, shared_kv[i], prompt_kv(block, group_prompts[:, i]))
        return self._pool(x)

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature of the current phase; in phase 2 also the query, selected groups and their key cosines.

        Phase 2 reuses the hidden state after block K of the query pass, and the shared prompt's
        keys/values of blocks K+1..L serve both passes; these run without gradient unless the shared
        prompt trains (joint training). The query never carries gradient.
        """
        if self.phase == 1:
            return {"feature": self.phase1_feature(images)}
        vit, k = self.backbone, self.split_block
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.shared_prompt.requires_grad):
            h_k = deep_prompt_blocks(vit, embed(vit, images), self.shared_prompt[:k])
            shared_kv = [prompt_kv(block, u[None]) for block, u in zip(vit.blocks[k:], self.shared_prompt[k:])]
        with torch.no_grad():
            if self.plain_query:
                q = self.query(images)
            else:
                x = h_k
                for block, kv in zip(vit.blocks[k:], shared_kv):
                    x = block_forward(block, x, kv)
                q = self._pool(x)
        groups, key_sim = self.pool.select(q)
        feature = self._group_pass(h_k, self.pool.ensemble(groups), shared_kv)
        return {"feature": feature, "query": q, "groups": groups, "key_sim": key_sim}

    def classify(self, feature: torch.Tensor) -> torch.Tensor:
        """Logits of features ``[B, D]``: the classifier on the (dropped-out, in training mode) feature, times the
        per-class scales where the model has them (``class_scales``)."""
        logits = self.head(self.dropout(feature))
        return logits if self.class_scale is None else logits * self.class_scale

    def forward_train(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features plus ``logits`` (feature dropout applies in training mode)."""
        out = self.forward_features(images)
        out["logits"] = self.classify(out["feature"])
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_train(images)["logits"]

    def compile_forwards(self, **options) -> None:
        """``torch.compile`` the two entry points training and evaluation call (``forward_train``,
        ``forward_features``; ``nn.Module.compile`` would cover only ``__call__``). On an H100 this made
        LPT phase-2 training 1.36x and evaluation 1.23x faster (bench/results/h100-2026-11-23); the first
        steps of each phase pay the compilation."""
        self.forward_features = torch.compile(self.forward_features, **options)
        self.forward_train = torch.compile(self.forward_train, **options)

    @torch.no_grad()
    def match(self, images: torch.Tensor) -> torch.Tensor:
        """Indices ``[B, k]`` of the groups selected for each image, most similar first (phase 2 only: in
        phase 1 the keys never trained, so a match would mean nothing)."""
        if self.phase != 2:
            raise ValueError("match() needs a phase-2 model; this one is in phase 1, its group keys never trained")
        return self.pool.select(self.query(images))[0]
