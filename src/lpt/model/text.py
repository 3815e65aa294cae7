"""Class-name embeddings from a CLIP text tower (open_clip): zero-shot CLIP's classifier and LIFT's text init.

open_clip is an optional extra (``pip install 'lpt[clip]'``): only the features that embed class
names import it. The text tower runs once, before training, and is dropped afterwards; what it
gives is stored in the run directory (:mod:`lpt.run.files`), so it never trains and never stays
in memory. The embeddings are open_clip's own zero-shot classifier
(``open_clip.build_zero_shot_classifier``: every prompt embedded and normalised, averaged over the
templates, normalised again).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch

from lpt.config import ConfigError, ModelConfig
from lpt.model.backbone import WEIGHT_SUFFIXES, backbone_quick_gelu, refuse_torchscript
from lpt.model.hub import HUB_FILES, hub_unreachable, offline_hint
from lpt.utils import first_line, log

SINGLE_TEMPLATE = "a photo of a {}."  # CLIP's default prompt; LIFT's zero-shot and ``prompt: default``


def require_open_clip(feature: str = "model.text") -> ModuleType:
    """open_clip, or a one-line ConfigError saying how to install it."""
    try:
        import open_clip
    except ImportError:
        raise ConfigError(f"{feature} needs open_clip, an optional extra of lpt: pip install 'lpt[clip]'") from None
    return open_clip


def prompt_templates(kind: str) -> list:
    """``single``: CLIP's "a photo of a {}."; ``ensemble``: the 80 ImageNet templates of CLIP (open_clip ships them)."""
    if kind == "single":
        return [SINGLE_TEMPLATE]
    return list(require_open_clip("model.templates=ensemble").zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES)


def text_model_name(m: ModelConfig) -> str:
    """open_clip's name of ``model.text``: a registered model, or a model-config JSON file registered under its stem."""
    open_clip = require_open_clip()
    name = m.text
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"config key 'model.text' names the model config {path}, which does not exist")
        open_clip.add_model_config(path)
        name = path.stem
    if name not in open_clip.list_models():
        raise ConfigError(f"config key 'model.text' is {m.text!r}: not an open_clip model (see "
                          "open_clip.list_models(), e.g. ViT-B-16), nor a model-config .json file")
    return name


def text_tower_weights(m: ModelConfig) -> str:
    """The text tower's weights: ``model.text_pretrained`` if it names a file; else ``model.checkpoint``, which then
    holds both towers (open_clip saves CLIP whole), over a weights tag in ``model.text_pretrained`` (a preset's
    ``openai``), so that one file means both towers; else the tag; "" for none."""
    named = Path(m.text_pretrained)
    file = bool(m.text_pretrained) and (named.suffix in WEIGHT_SUFFIXES or named.is_file())
    return m.checkpoint if m.checkpoint and not file else m.text_pretrained


def text_quick_gelu(m: ModelConfig, name: str, weights: str) -> bool:
    """Whether the text tower ``name`` runs QuickGELU: as its open_clip config says (the ``-quickgelu`` names), else
    as its weights tag was trained (``openai``: QuickGELU), else (a file, or random) as the image tower runs, since
    CLIP's two towers were trained with one activation. Towers that would run different ones are refused."""
    open_clip = require_open_clip()
    image = backbone_quick_gelu(m.backbone, **m.backbone_args)
    tag = open_clip.get_pretrained_cfg(name, weights) if weights else {}
    if open_clip.get_model_config(name).get("quick_gelu"):
        text, why = True, f"by its open_clip config {name}"
    elif tag:
        text, why = bool(tag.get("quick_gelu")), f"as its weights {weights!r} were trained"
    else:
        return image
    if text != image:
        act = {True: "QuickGELU", False: "GELU"}
        raise ConfigError(f"CLIP's towers run one activation, but the text tower (model.text={m.text!r}) runs "
                          f"{act[text]} {why} and the image tower (model.backbone={m.backbone!r}) {act[image]}: name "
                          "both with one (QuickGELU, as OpenAI's weights: open_clip's '-quickgelu' configs, timm's "
                          "'_clip_quickgelu_' names)")
    return text


def text_tower(m: ModelConfig, name: str) -> torch.nn.Module:
    """The open_clip model ``name`` (:func:`text_model_name` of ``model.text``) with the weights
    :func:`text_tower_weights` names, or random (with a warning), running :func:`text_quick_gelu`'s activation."""
    open_clip = require_open_clip()
    weights = text_tower_weights(m)
    quick_gelu = text_quick_gelu(m, name, weights)
    if not weights:
        log.warning("TEXT TOWER '%s' IS RANDOMLY INITIALISED: no model.text_pretrained or model.checkpoint", name)
    elif m.text_pretrained and weights != m.text_pretrained:
        log.info("text tower %s: weights from model.checkpoint %s, which holds both towers, not from model."
                 "text_pretrained's tag %r", name, weights, m.text_pretrained)
    if weights and Path(weights).is_file():
        refuse_torchscript(Path(weights), "text tower weights", ConfigError)
    hub = (open_clip.get_pretrained_cfg(name, weights).get("hf_hub", "") if weights else "").strip("/").split("/")
    reason = hub_unreachable("/".join(hub[:2]), tuple(hub[2:]) or HUB_FILES) if len(hub) > 1 else None  # org/repo/file
    if reason:
        raise ConfigError(offline_hint(f"text tower {name} with weights {weights!r} (model.text_pretrained)", reason))
    try:
        return open_clip.create_model(name, pretrained=weights or None, require_pretrained=bool(weights),
                                      force_quick_gelu=quick_gelu)
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        first = first_line(exc, type(exc).__name__)
        if "loading state_dict" in first:  # open_clip loads strictly: the file is not this CLIP, or not both towers
            first += (f" {weights} does not hold open_clip's {name} whole (both towers, as open_clip saves CLIP); "
                      "an image-tower-only model.checkpoint needs the text tower's file in model.text_pretrained")
        raise ConfigError(f"text tower {name} with weights {weights!r} (model.text, model.text_pretrained, "
                          f"model.checkpoint): {first}") from None


@torch.no_grad()
def class_embeddings(m: ModelConfig, names: list[str], device: torch.device, progress: bool = False,
                     ) -> tuple[torch.Tensor, float]:
    """Unit-norm text embeddings ``[C, E]`` of the class names under ``model.templates``, and CLIP's logit scale
    (``exp`` of the learned temperature), from the text tower of ``model.text``."""
    open_clip = require_open_clip()
    name = text_model_name(m)
    model = text_tower(m, name).to(device).eval()
    tokenizer = open_clip.get_tokenizer(name)
    weights = open_clip.build_zero_shot_classifier(model, tokenizer, names, prompt_templates(m.templates),
                                                   num_classes_per_batch=10, device=device, use_tqdm=progress)
    return weights.t().float().cpu().contiguous(), float(model.logit_scale.exp())
