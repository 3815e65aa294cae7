"""Frozen ViT backbones from timm: by pretrained name, from a local weights file, or at random.

The model code never opens files: this module is the only place weights are read, and it hands
back the model together with an identity record (name, weights source, fingerprint) that
checkpoints carry so that prompts are never loaded onto a backbone they were not trained on.
"""

from __future__ import annotations

import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.models import load_state_dict as timm_load_state_dict
from timm.layers import QuickGELU
from timm.models.vision_transformer import Attention, Block, VisionTransformer, checkpoint_filter_fn

from lpt.model.bundled import BUNDLED, bundled_backbone
from lpt.model.hub import hub_unreachable, offline_hint, timm_repo
from lpt.model.state import load_strict, tensors_fingerprint
from lpt.utils import first_line, log

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")


class BackboneError(ValueError):
    """The backbone cannot be built or does not have the layout lpt needs."""


@dataclass
class BackboneIdentity:
    """What a checkpoint records about the backbone its prompts were trained on."""

    name: str
    source: str  # "timm-pretrained", "file", "bundled" (shipped with lpt) or "random"
    checkpoint: str = ""
    pretrained_tag: str = ""
    fingerprint: str = ""
    args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 over parameter and buffer names, shapes, dtypes and bytes, in name order."""
    return tensors_fingerprint(module.state_dict())


def check_vit_layout(model: nn.Module, name: str = "backbone") -> None:
    """Refuse models whose blocks lpt cannot prompt (prompting calls the block's own submodules).

    Any pooling of timm's VisionTransformer works (class token, average, SigLIP's attention pool): the
    feature is timm's own ``forward_head``, and prompts are keys and values only, never pooled.
    """
    if not isinstance(model, VisionTransformer):
        raise BackboneError(f"{name}: expected a timm VisionTransformer, got {type(model).__name__} (EVA, Swin and "
                            "other families have their own blocks, which lpt cannot prompt)")
    head = model.get_classifier()
    if not isinstance(head, (nn.Linear, nn.Identity)):
        raise BackboneError(f"{name}: its head is {type(head).__name__}; lpt keeps a backbone head only as a linear "
                            "projection (CLIP's)")
    for i, block in enumerate(model.blocks):
        attn = getattr(block, "attn", None)
        if type(block) is not Block or type(attn) is not Attention:
            raise BackboneError(f"{name}: block {i} is {type(block).__name__} with {type(attn).__name__}; "
                                "lpt supports timm's standard Block with Attention")


def set_layer_norm_eps(module: nn.Module, eps: float) -> None:
    """Set ``eps`` on every LayerNorm of ``module`` (timm's ViTs use 1e-6, the official LPT model 1e-5)."""
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = eps


def load_weights_file(model: VisionTransformer, path: Path) -> None:
    """Load a local weights file strictly (timm's own pretrained path is lenient when the head differs).

    ``.npz`` is the original JAX/big_vision format (timm's converter assigns every tensor); other
    files are state dicts (safetensors, or a pickle read with ``weights_only=True``), remapped by
    timm's ViT filter (position-embedding resampling, foreign key names) and stripped of heads.
    """
    if path.suffix == ".npz":
        model.load_pretrained(str(path))
        return
    state = checkpoint_filter_fn(timm_load_state_dict(str(path), weights_only=True), model)
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist.", "fc_norm."))
             or k in model.state_dict()}
    load_strict(model, state, str(path), hint="; the weights do not fit this backbone", error=BackboneError)


def _architecture(name: str, kwargs: dict[str, Any]):
    """The bundled backbone ``name`` stands for (None: a timm name), its timm architecture, and ``kwargs`` over the
    bundle's own arguments; refuses a name that is neither."""
    bundle = bundled_backbone(name)
    arch = bundle.arch if bundle is not None else name.split(".")[0]
    if not timm.is_model(arch):
        raise BackboneError(f"unknown backbone '{name}'; see timm.list_models('vit_*') for valid names, "
                            f"or the bundled {', '.join(BUNDLED)}")
    return bundle, arch, ({**bundle.args, **kwargs} if bundle is not None else kwargs)


def _meta_model(name: str, kwargs: dict[str, Any]) -> VisionTransformer:
    """The backbone's architecture built on the meta device (no weights read or downloaded), its layout checked."""
    _, arch, kwargs = _architecture(name, kwargs)
    kwargs.pop("num_classes", None)  # a kept head (CLIP's projection) changes nothing here
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    except (RuntimeError, TypeError, KeyError, ValueError, AssertionError) as exc:
        first = first_line(exc, type(exc).__name__)
        raise BackboneError(f"backbone '{name}' with {kwargs}: {first}") from None
    check_vit_layout(model, name)
    return model


def backbone_geometry(name: str, **kwargs: Any) -> tuple[int, tuple[int, int] | None, tuple[int, int]]:
    """Depth, input size (None when the ViT takes any size) and patch size of a backbone, from its
    architecture alone."""
    model = _meta_model(name, kwargs)
    pe = model.patch_embed
    size = None if getattr(pe, "dynamic_img_size", False) else tuple(pe.img_size)
    return len(model.blocks), size, tuple(pe.patch_size)


def backbone_quick_gelu(name: str, **kwargs: Any) -> bool:
    """Whether the backbone's MLPs run QuickGELU (timm's ``_clip_quickgelu_`` names, OpenAI's CLIP) rather than
    GELU, from its architecture alone: a CLIP text tower must run the same."""
    return isinstance(_meta_model(name, kwargs).blocks[0].mlp.act, QuickGELU)


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive: a zip holding ``constants.pkl``, as ``torch.jit.save`` writes
    (the test torch.load applies before it refuses one under ``weights_only=True``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.rpartition("/")[2] == "constants.pkl" for n in archive.namelist())


def refuse_torchscript(path: Path, key: str, error: type[Exception]) -> None:
    """Refuse a TorchScript archive (OpenAI's original CLIP ``.pt`` releases) with the one command that converts an
    OpenAI CLIP archive to a state dict lpt reads (open_clip rebuilds the model from the archive's tensors)."""
    if is_torchscript(path):
        out = path.with_suffix(".safetensors")
        raise error(f"{key} {path} is a TorchScript archive (as OpenAI's original CLIP .pt files are); lpt reads "
                    f"state dicts ({', '.join(WEIGHT_SUFFIXES)}): convert an OpenAI CLIP once with open_clip: "
                    f"python -c \"import open_clip, safetensors.torch as st; st.save_file(open_clip.load_openai_model("
                    f"'{path}', device='cpu').state_dict(), '{out}')\"")


def _weights_source(name: str, bundle, checkpoint: str, pretrained: bool) -> tuple[Path | None, str]:
    """The weights file to load (None: timm's hub or random) and the identity's ``source``; refuses a missing
    or unknown file."""
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise BackboneError(f"backbone checkpoint {path} does not exist")
        if path.suffix not in WEIGHT_SUFFIXES:
            raise BackboneError(f"backbone checkpoint {path}: expected one of {', '.join(WEIGHT_SUFFIXES)}")
        refuse_torchscript(path, "backbone checkpoint", BackboneError)
        return path, "file"
    if bundle is not None and bundle.weights:
        path = bundle.weights_path()
        if not path.is_file():
            raise BackboneError(f"backbone '{name}': its weights {path} are missing from the lpt installation; "
                                "reinstall lpt")
        return path, "bundled"
    return None, "timm-pretrained" if pretrained else "random"


def create_backbone(
    name: str, pretrained: bool = True, checkpoint: str = "", layer_norm_eps: float = 0.0, keep_head: bool = False,
    **kwargs: Any
) -> tuple[VisionTransformer, BackboneIdentity]:
    """Build a frozen timm ViT, headless unless ``keep_head``, and its identity.

    Args:
        name: timm model name, ideally with its weights tag (``vit_base_patch16_224.augreg_in21k``), or
            a backbone bundled with lpt (``demo_vit_glyphs``, ``demo_vit_random``; lpt.model.bundled).
        pretrained: load timm's pretrained weights for ``name`` (hub download, cached). A bundled name
            decides its weights itself and ignores this.
        checkpoint: local weights file (.safetensors, .pth, .npz); takes precedence over ``pretrained``
            and over a bundled name's weights.
        layer_norm_eps: > 0 sets the eps of every LayerNorm after creation; 0 keeps timm's.
        keep_head: keep the head timm's pretrained configuration gives the name (or ``num_classes`` in
            ``kwargs``): for a CLIP image tower, its projection into the joint space with the text embeddings.
        **kwargs: passed to ``timm.create_model`` (img_size, patch_size, embed_dim, depth, ...).
    """
    bundle, arch, merged = _architecture(name, kwargs)
    if bundle is not None:
        clash = {k: v for k, v in kwargs.items() if k in bundle.args and bundle.args[k] != v}
        if clash:
            raise BackboneError(f"backbone '{name}' is fixed at {bundle.args}; drop the arguments {clash}")
        pretrained = False  # never a hub download: the weights are in the package, or random by name
    kwargs = merged
    if layer_norm_eps < 0:
        raise BackboneError(f"layer_norm_eps is {layer_norm_eps}; expected 0 (timm's default) or a positive number")
    path, source = _weights_source(name, bundle, checkpoint, pretrained)
    if source == "timm-pretrained":
        repo = timm_repo(name)
        reason = hub_unreachable(repo) if repo else None
        if reason:
            raise BackboneError(offline_hint(f"backbone '{name}' (model.backbone)", reason))
    try:
        model = timm.create_model(arch if bundle is not None else name, pretrained=pretrained and path is None,
                                  **({} if keep_head else {"num_classes": 0}), **kwargs)
        if path is not None:
            load_weights_file(model, path)
    except (RuntimeError, OSError, TypeError, KeyError, ValueError) as exc:
        if isinstance(exc, BackboneError):
            raise
        first = first_line(exc, type(exc).__name__)
        raise BackboneError(f"backbone '{name}' ({source}{': ' + checkpoint if checkpoint else ''}): {first}") from exc
    check_vit_layout(model, name)
    if layer_norm_eps > 0:
        set_layer_norm_eps(model, layer_norm_eps)
    model.requires_grad_(False)
    if source == "random":
        log.warning("BACKBONE '%s' IS RANDOMLY INITIALISED: no pretrained weights; results will be poor", name)
    fingerprint = weights_fingerprint(model)
    if source == "bundled" and fingerprint != bundle.fingerprint:
        raise BackboneError(f"backbone '{name}': {path} has fingerprint {fingerprint}, its card says "
                            f"{bundle.fingerprint}; the file is damaged or was replaced: reinstall lpt")
    tag = (getattr(model, "pretrained_cfg", {}).get("tag", "") or "") if source == "timm-pretrained" else ""
    return model, BackboneIdentity(name=name, source=source, checkpoint=str(checkpoint), pretrained_tag=tag,
                                   fingerprint=fingerprint, args=dict(kwargs))
