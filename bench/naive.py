"""The yardstick: LPT phase 2 written the straightforward way, as the published code does it.

Prompts are concatenated to the tokens as ordinary tokens, every timm block runs on the longer
sequence through its own ``forward``, and the prompts' outputs are dropped after each block. Phase 2
first runs a separate query pass (all ``L`` blocks with the shared prompt, no gradient), then embeds
the images again and recomputes all ``L`` blocks: the first ``K`` with the shared prompt, the last
``L - K`` with the shared and the ensembled group prompt. One image costs ``2L`` block passes on
``N + P`` or ``N + 2P`` tokens, against ``L + (L - K)`` passes on ``N`` query tokens in ``lpt``.

Only ``bench/compare.py`` uses this; it computes what ``lpt.model.LPT`` computes (same weights, same
selected groups, logits equal to float rounding).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lpt.methods.lpt import LPT as LPTMethod
from lpt.model import LPT
from lpt.model.prompted_vit import embed, pooled_feature


def concat_blocks(vit: nn.Module, x: torch.Tensor, prompts: list[torch.Tensor], start: int = 0) -> torch.Tensor:
    """Blocks ``start..`` with ``prompts[i]`` (``[P, D]`` shared or ``[B, P, D]`` per image) appended as tokens."""
    n = x.shape[1]
    for i, p in enumerate(prompts):
        p = p if p.ndim == 3 else p[None].expand(x.shape[0], -1, -1)
        x = vit.blocks[start + i](torch.cat([x, p], dim=1))[:, :n]
    return x


def naive_forward_train(model: LPT, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Phase-2 outputs of ``model`` (``logits``, ``feature``, ``query``, ``groups``, ``key_sim``), naively."""
    vit, k = model.backbone, model.split_block
    shared = list(model.shared_prompt)
    with torch.no_grad():  # the query pass: the frozen phase-1 model, a whole forward of its own
        query = pooled_feature(vit, concat_blocks(vit, embed(vit, images), shared))
    groups, key_sim = model.pool.select(query)
    group_prompt = model.pool.ensemble(groups)  # [B, L - K, P, D]
    b = images.shape[0]
    prompts = shared[:k] + [torch.cat([shared[k + i][None].expand(b, -1, -1), group_prompt[:, i]], dim=1)
                            for i in range(len(vit.blocks) - k)]
    feature = pooled_feature(vit, concat_blocks(vit, embed(vit, images), prompts))
    logits = model.head(model.dropout(feature))
    return {"feature": feature, "query": query, "groups": groups, "key_sim": key_sim, "logits": logits}


class NaiveLPTMethod(LPTMethod):
    """lpt's LPT method (``lpt.methods.lpt``: same losses, same dual-sampling weights) on the naive forward."""

    def logits(self, model: LPT, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if model.phase != 2:
            raise ValueError("the naive yardstick covers phase 2 only")
        return naive_forward_train(model, inputs)
