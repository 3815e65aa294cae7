"""Frozen ViT backbones from timm: by pretrained name, from a local weights file, or at random.

The model code never opens files: this module is the only place weights are read, and it hands
back the model together with an identity record (name, weights source, fingerprint) that
checkpoints carry so that prompts are never loaded onto a backbone they were not trained on.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.models.vision_transformer import Attention, Block, VisionTransformer

from lpt.utils import log

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")


class BackboneError(ValueError):
    """The backbone cannot be built or does not have the layout lpt needs."""


@dataclass
class BackboneIdentity:
    """What a checkpoint records about the backbone its prompts were trained on."""

    name: str
    source: str  # "timm-pretrained", "file" or "random"
    checkpoint: str = ""
    pretrained_tag: str = ""
    fingerprint: str = ""
    args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 over parameter and buffer names, shapes, dtypes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def check_vit_layout(model: nn.Module, name: str = "backbone") -> None:
    """Refuse models whose blocks lpt cannot prompt (prompting calls the block's own submodules)."""
    if not isinstance(model, VisionTransformer):
        raise BackboneError(f"{name}: expected a timm VisionTransformer, got {type(model).__name__}")
    if model.cls_token is None:
        raise BackboneError(f"{name}: LPT needs a class token; this ViT has none (class_token=False)")
    for i, block in enumerate(model.blocks):
        if type(block) is not Block or type(block.attn) is not Attention:
            raise BackboneError(
                f"{name}: block {i} is {type(block).__name__} with {type(block.attn).__name__}; "
                "lpt supports timm's standard Block with Attention"
            )


def set_layer_norm_eps(module: nn.Module, eps: float) -> None:
    """Set ``eps`` on every LayerNorm of ``module`` (timm's ViTs use 1e-6, the official LPT model 1e-5)."""
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = eps


def create_backbone(
    name: str, pretrained: bool = True, checkpoint: str = "", layer_norm_eps: float = 0.0, **kwargs: Any
) -> tuple[VisionTransformer, BackboneIdentity]:
    """Build a frozen, headless timm ViT and its identity.

    Args:
        name: timm model name, ideally with its weights tag (``vit_base_patch16_224.augreg_in21k``).
        pretrained: load timm's pretrained weights for ``name`` (hub download, cached).
        checkpoint: local weights file (.safetensors, .pth, .npz); takes precedence over ``pretrained``.
        layer_norm_eps: > 0 sets the eps of every LayerNorm after creation; 0 keeps timm's.
        **kwargs: passed to ``timm.create_model`` (img_size, patch_size, embed_dim, depth, ...).
    """
    arch = name.split(".")[0]
    if not timm.is_model(arch):
        raise BackboneError(f"unknown backbone '{name}'; see timm.list_models('vit_*') for valid names")
    if layer_norm_eps < 0:
        raise BackboneError(f"layer_norm_eps is {layer_norm_eps}; expected 0 (timm's default) or a positive number")
    create_kwargs: dict[str, Any] = dict(kwargs)
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise BackboneError(f"backbone checkpoint {path} does not exist")
        if path.suffix not in WEIGHT_SUFFIXES:
            raise BackboneError(f"backbone checkpoint {path}: expected one of {', '.join(WEIGHT_SUFFIXES)}")
        overlay = {"file": str(path), "custom_load": path.suffix == ".npz"}
        create_kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
        source = "file"
    else:
        create_kwargs["pretrained"] = pretrained
        source = "timm-pretrained" if pretrained else "random"
    try:
        model = timm.create_model(name, num_classes=0, **create_kwargs)
    except (RuntimeError, OSError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackboneError(f"backbone '{name}' ({source}{': ' + checkpoint if checkpoint else ''}): {first}") from exc
    check_vit_layout(model, name)
    if layer_norm_eps > 0:
        set_layer_norm_eps(model, layer_norm_eps)
    model.requires_grad_(False)
    if source == "random":
        log.warning("BACKBONE '%s' IS RANDOMLY INITIALISED: no pretrained weights; results will be poor", name)
    identity = BackboneIdentity(
        name=name,
        source=source,
        checkpoint=str(checkpoint),
        pretrained_tag="" if source == "random" else (getattr(model, "pretrained_cfg", {}).get("tag", "") or ""),
        fingerprint=weights_fingerprint(model),
        args=dict(kwargs),
    )
    return model, identity
