"""Read the published LPT checkpoint (DongSky/LPT, ``LPT_places.pth``) as an lpt model.

The official model (``phase2_test/PromptModels_pool_eval/structure.py``) subclasses timm's
VisionTransformer, so its state dict holds the ViT under timm's own names (``cls_token``,
``pos_embed``, ``patch_embed.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``,
``norm.*``; its ViT head is Identity) plus four tensors of its ``prompt_learner``:

==========================================  =====================  ============================
official                                    shape                  lpt
==========================================  =====================  ============================
``prompt_learner.Prompt_Tokens``            ``[L, P, D]``          ``shared_prompt``
``prompt_learner.Prompt_Tokens_pool``       ``[m, L - K, P, D]``   ``pool.prompts``
``prompt_learner.Prompt_Keys``              ``[m, D]``             ``pool.keys``
``prompt_learner.head.weight``              ``[D, C]``             ``head.weight`` ``[C, D]``
==========================================  =====================  ============================

The official cosine classifier (``NormedLinear``) normalises W over D, column by column; lpt's
normalises rows of ``[C, D]``, so the transpose is the whole conversion. The file is
``{"state_dict": ...}`` with keys prefixed ``module.`` when saved from DataParallel (the official
evaluation strips it the same way). The official blocks use nn.LayerNorm's eps 1e-5 where timm's
ViT uses 1e-6; the import keeps 1e-5 (``model.layer_norm_eps``). It is read with
``torch.load(weights_only=True)``: a pickle that would build anything but tensors is refused.
Turning it into a run directory is ``lpt.run.official``.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch

from lpt.config import ConfigError, ModelConfig
from lpt.model.backbone import BackboneError, check_vit_layout, set_layer_norm_eps
from lpt.model.build import build_lpt
from lpt.model.lpt import LPT
from lpt.model.state import CheckpointError, load_strict
from lpt.utils import first_line, log

# The published checkpoint's ViT: ViT-B/16 at 224, started from timm's (0.5) vit_base_patch16_224_in21k, the
# AugReg ImageNet-21k weights, which timm 1.x names with this tag. Only the architecture is used; weights come
# from the checkpoint.
OFFICIAL_BACKBONE = "vit_base_patch16_224.augreg_in21k"
OFFICIAL_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, used by the official blocks
PREFIX = "prompt_learner."
SHARED, POOL, KEYS, HEAD = (PREFIX + n for n in ("Prompt_Tokens", "Prompt_Tokens_pool", "Prompt_Keys", "head.weight"))
PROMPT_KEYS = (SHARED, POOL, KEYS, HEAD)
DROPPED_PREFIXES = ("head.", "head_dist.")  # ViT classifier heads (Identity in the official model): not the backbone


class OfficialCheckpointError(CheckpointError):
    """An official LPT checkpoint that cannot be read safely or does not have the published layout."""


@dataclass(frozen=True)
class OfficialLayout:
    """Sizes read off the prompt tensors."""

    depth: int  # L
    prompt_len: int  # P
    dim: int  # D
    pool_size: int  # m
    split_block: int  # K = L - (second dim of the pool)
    num_classes: int  # C


def read_official_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat state dict of an official checkpoint, ``module.`` prefixes stripped.

    Accepts ``{"state_dict": {...}}`` (the published format) or a bare mapping of tensors.
    Raises OfficialCheckpointError for a missing or unreadable file and for a pickle that holds
    anything but tensors and plain containers (it is never executed).
    """
    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"official checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
        what = f"builds {found.group(1)}" if found else "holds objects other than tensors"
        raise OfficialCheckpointError(
            f"refusing {path}: its pickle {what}, which torch.load(weights_only=True) does not allow since it "
            "could run code; only tensors and plain containers are read (re-save the state_dict alone where the "
            "file is trusted)"
        ) from None
    except (RuntimeError, ValueError, KeyError, EOFError, AttributeError) as exc:
        raise OfficialCheckpointError(f"{path} is not a readable torch checkpoint ({type(exc).__name__}: "
                                      f"{first_line(exc)})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state:
        raise OfficialCheckpointError(f"{path}: expected a dict with a 'state_dict' mapping of tensors")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = str(key)
        while name.startswith("module."):  # DataParallel / DDP
            name = name[len("module."):]
        if not isinstance(value, torch.Tensor):
            raise OfficialCheckpointError(f"{path}: state_dict entry '{key}' is a {type(value).__name__}, not a tensor")
        if name in out:
            raise OfficialCheckpointError(f"{path}: '{name}' appears twice once 'module.' prefixes are stripped")
        out[name] = value
    return out


def _shape(t: torch.Tensor | tuple) -> str:
    return str(tuple(t.shape if isinstance(t, torch.Tensor) else t))


def official_layout(state: dict[str, torch.Tensor], source: str = "checkpoint") -> OfficialLayout:
    """Check the four prompt tensors against each other and return the sizes they imply.

    Raises OfficialCheckpointError naming the key and both shapes on any disagreement.
    """
    extra = sorted(k for k in state if k.startswith(PREFIX) and k not in PROMPT_KEYS)
    if extra:
        raise OfficialCheckpointError(f"{source}: unexpected tensor '{extra[0]}' {_shape(state[extra[0]])}; "
                                      f"the official prompt learner holds only {', '.join(PROMPT_KEYS)}")
    missing = [k for k in PROMPT_KEYS if k not in state]
    if missing:
        raise OfficialCheckpointError(f"{source}: missing tensor '{missing[0]}'; an official LPT checkpoint holds "
                                      f"{', '.join(PROMPT_KEYS)}")
    shared, pool, keys, head = (state[k] for k in PROMPT_KEYS)
    if shared.ndim != 3:
        raise OfficialCheckpointError(f"{source}: '{SHARED}' has shape {_shape(shared)}; expected [L, P, D]")
    depth, plen, dim = shared.shape
    m = pool.shape[0] if pool.ndim else "m"
    checks = (
        (POOL, pool, 4, lambda s: s[1] <= depth and s[1] >= 1 and tuple(s[2:]) == (plen, dim),
         f"(m, 1..{depth}, {plen}, {dim})"),
        (KEYS, keys, 2, lambda s: s[0] == m and s[1] == dim, f"({m}, {dim})"),
        (HEAD, head, 2, lambda s: s[0] == dim and s[1] >= 1, f"({dim}, C)"),
    )
    for key, tensor, ndim, ok, expected in checks:
        if tensor.ndim != ndim or not ok(tensor.shape):
            context = f"'{SHARED}' {_shape(shared)}" + (f" and '{POOL}' {_shape(pool)}" if key == KEYS else "")
            raise OfficialCheckpointError(
                f"{source}: '{key}' has shape {_shape(tensor)}, expected {expected} to fit {context}"
            )
    return OfficialLayout(depth=depth, prompt_len=plen, dim=dim, pool_size=pool.shape[0],
                          split_block=depth - pool.shape[1], num_classes=head.shape[1])


def split_official_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """ViT weights (timm names, classifier heads dropped) and lpt's trained tensors, by lpt name."""
    vit = {k: v for k, v in state.items() if not k.startswith(PREFIX) and not k.startswith(DROPPED_PREFIXES)}
    dropped = sorted(k for k in state if k.startswith(DROPPED_PREFIXES))
    if dropped:
        log.info("official checkpoint: dropping ViT head tensors %s (not part of the frozen backbone)", dropped)
    trained = {
        "shared_prompt": state[SHARED],
        "pool.prompts": state[POOL],
        "pool.keys": state[KEYS],
        "head.weight": state[HEAD].t(),  # [D, C] normalised over D == [C, D] normalised over rows
    }
    return vit, {k: v.detach().float().contiguous() for k, v in trained.items()}


def _official_backbone(name: str, backbone_args: dict[str, Any]) -> torch.nn.Module:
    """Headless timm ViT of architecture ``name`` (no weights loaded yet) with the official LayerNorm eps."""
    if not timm.is_model(name.split(".")[0]):
        raise BackboneError(f"unknown backbone '{name}'; see timm.list_models('vit_*') for valid names")
    try:
        vit = timm.create_model(name, pretrained=False, num_classes=0, **backbone_args)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise BackboneError(f"backbone '{name}' with {backbone_args}: {first_line(exc, type(exc).__name__)}") from exc
    check_vit_layout(vit, name)
    set_layer_norm_eps(vit, OFFICIAL_LAYER_NORM_EPS)
    return vit.requires_grad_(False)


def official_model_config(layout: OfficialLayout, backbone: str, backbone_args: dict[str, Any],
                          top_k: int) -> ModelConfig:
    """The model section of a run holding this checkpoint: sizes from its tensors, options as published."""
    return ModelConfig(backbone=backbone, pretrained=False, checkpoint="", backbone_args=dict(backbone_args),
                       prompt_len=layout.prompt_len, pool_size=layout.pool_size, split_block=layout.split_block,
                       top_k=top_k, feature_dropout=0.1, head="cosine", prompt_depth="deep", query="shared",
                       layer_norm_eps=OFFICIAL_LAYER_NORM_EPS)


def build_official(state: dict[str, torch.Tensor], backbone: str, backbone_args: dict[str, Any], top_k: int,
                   source: str) -> tuple[LPT, ModelConfig]:
    """The phase-2 LPT model of an official state dict, in eval mode, and its model config."""
    layout = official_layout(state, source)
    if not 1 <= top_k <= layout.pool_size:
        raise ConfigError(f"top_k is {top_k}; expected 1..{layout.pool_size} (the pool size of {source})")
    vit_weights, trained = split_official_state(state)
    vit = _official_backbone(backbone, backbone_args)
    load_strict(vit, vit_weights, source, hint=f" for backbone '{backbone}'; check the backbone name and its arguments",
                error=OfficialCheckpointError)
    if len(vit.blocks) != layout.depth or vit.embed_dim != layout.dim:
        raise OfficialCheckpointError(f"{source}: '{SHARED}' has shape {_shape(trained['shared_prompt'])}, backbone "
                                      f"'{backbone}' has {len(vit.blocks)} blocks of width {vit.embed_dim}")
    model_cfg = official_model_config(layout, backbone, backbone_args, top_k)
    model = build_lpt(vit, model_cfg, layout.num_classes)
    load_strict(model, trained, source, expected=model.trained_tensors())
    model.set_phase(2)
    return model.eval(), model_cfg


def load_official_checkpoint(path: str | Path, backbone: str = OFFICIAL_BACKBONE, top_k: int = 2,
                             **backbone_kwargs: Any) -> LPT:
    """The published LPT checkpoint as an lpt model, in eval mode and phase 2.

    Nothing is downloaded: the ViT weights come from the checkpoint, ``backbone`` only names the
    architecture. LayerNorm eps is the official 1e-5.

    Args:
        path: the ``.pth`` file (``{"state_dict": ...}``, ``module.`` prefixes allowed).
        backbone: timm architecture of the checkpoint's ViT (default ViT-B/16 at 224, the published one).
        top_k: groups selected per image (k; the official code uses 2).
        **backbone_kwargs: ``timm.create_model`` arguments (img_size, patch_size, embed_dim, depth, ...).

    Raises:
        OfficialCheckpointError: an unsafe or unreadable file, or tensors that do not fit the layout.
    """
    return build_official(read_official_state(path), backbone, backbone_kwargs, top_k, str(path))[0]
