"""Prompted forward of a timm ViT, with prompts entering attention as keys and values only.

Block ``i`` attends with queries from its own tokens ``[c, z]`` and keys/values from
``[c, z, u_i]``. Prompt outputs are never needed (a fresh prompt enters the next block), so
computing them, as the published VPT/LPT code does by concatenating tokens, is wasted work.
Every function calls the timm block's own submodules (norm1, attn.qkv, q_norm, k_norm,
attn.norm, proj, ls1, drop_path1, norm2, mlp, ls2), so it computes what timm computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer

PromptKV = torch.Tensor  # keys and values of prompt tokens, stacked: [2, B|1, H, P, hd]


def embed(vit: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """Patch embedding, class token, position embedding: ``[B, 3, H, W] -> [B, N, D]``."""
    x = vit.patch_embed(images)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    return vit.norm_pre(x)


def prompt_kv(block: Block, prompt: torch.Tensor) -> PromptKV:
    """Keys and values of prompt tokens ``[Bp, P, D]`` in ``block``, stacked: ``[2, Bp, H, P, hd]``.

    Prompts are never queries, so only the key and value rows of ``attn.qkv`` (a plain ``nn.Linear``
    in timm's ``Attention``, which ``check_vit_layout`` requires) are applied. The keys are those
    before ``attn.k_norm``, which ``block_forward`` applies to all keys at once (it acts per token).
    """
    attn = block.attn
    bp, p, _ = prompt.shape
    width = attn.num_heads * attn.head_dim
    bias = None if attn.qkv.bias is None else attn.qkv.bias[width:]
    kv = F.linear(block.norm1(prompt), attn.qkv.weight[width:], bias)
    return kv.reshape(bp, p, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)


def block_forward(block: Block, x: torch.Tensor, *kvs: PromptKV) -> torch.Tensor:
    """One timm ``Block`` on tokens ``x`` ``[B, N, D]`` whose attention also sees the prompt keys and
    values ``kvs`` (``prompt_kv``'s ``[2, B|1, H, P, hd]``; batch 1: shared by every image, broadcast).

    The tokens' own keys and values and all prompts' join in one concatenation; empty prompts are skipped.
    """
    attn = block.attn
    b, n, _ = x.shape
    h = block.norm1(x)
    qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, kv = qkv[0], qkv[1:]
    prompts = [p.expand(-1, b, -1, -1, -1) for p in kvs if p.shape[3] > 0]
    if prompts:
        kv = torch.cat([kv, *prompts], dim=3)
    k, v = kv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    o = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    o = attn.norm(o.transpose(1, 2).reshape(b, n, attn.num_heads * attn.head_dim))
    gate = getattr(attn, "gate", None)
    if gate is not None:
        o = o * gate(h).sigmoid()
    o = attn.proj_drop(attn.proj(o))
    x = x + block.drop_path1(block.ls1(o))
    y = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    parallel = getattr(block, "adaptformer", None)  # lpt.model.peft: a branch beside the MLP, on its input
    return y if parallel is None else y + parallel(x)


def plain_blocks(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Every block without prompts (timm's ``vit.blocks(x)`` for a plain ViT; with lpt.model.peft modules too)."""
    for block in vit.blocks:
        x = block_forward(block, x)
    return x


def pooled_feature(vit: VisionTransformer, x: torch.Tensor, project: bool = False) -> torch.Tensor:
    """Final norm and timm's own pooling (class token for the standard ViT): ``[B, N, D] -> [B, D]``; with
    ``project``, then the ViT's head (a CLIP image tower's projection into the joint space): ``[B, E]``."""
    return vit.forward_head(vit.norm(x), pre_logits=not project)


def deep_prompt_blocks(
    vit: VisionTransformer, x: torch.Tensor, prompts: torch.Tensor, start: int = 0
) -> torch.Tensor:
    """Run blocks ``start..start+len(prompts)-1``, block ``start+i`` with prompt ``prompts[i]``.

    Args:
        x: tokens ``[B, N, D]`` entering block ``start``.
        prompts: ``[L', P, D]`` shared across the batch, or ``[B, L', P, D]`` per image.
    """
    per_image = prompts.ndim == 4
    for i in range(prompts.shape[1] if per_image else prompts.shape[0]):
        block = vit.blocks[start + i]
        x = block_forward(block, x, prompt_kv(block, prompts[:, i] if per_image else prompts[i][None]))
    return x


def shallow_prompt_forward(vit: VisionTransformer, images: torch.Tensor, prompt: torch.Tensor,
                           project: bool = False) -> torch.Tensor:
    """VPT-Shallow: prompt tokens ``[P, D]`` inserted after the class token once and carried through
    every block as ordinary tokens (their outputs feed the next block, so they cannot be keys/values
    only); dropped before pooling. Returns the pooled feature ``[B, D]``."""
    x = embed(vit, images)
    npt = vit.num_prefix_tokens
    x = torch.cat([x[:, :npt], prompt[None].expand(x.shape[0], -1, -1), x[:, npt:]], dim=1)
    x = plain_blocks(vit, x)
    x = torch.cat([x[:, :npt], x[:, npt + prompt.shape[0]:]], dim=1)
    return pooled_feature(vit, x, project)
