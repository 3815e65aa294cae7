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


def text_tower(m: ModelConfig, name: str) -> torch.nn.Module:
    """The open_clip model ``name`` (:func:`text_model_name` of ``model.text``) with weights
    ``model.text_pretrained`` (a tag such as ``openai``, or a file), else ``model.checkpoint`` (an open_clip
    checkpoint holds both towers), else random (with a warning)."""
    open_clip = require_open_clip()
    weights = m.text_pretrained or m.checkpoint
    if not weights:
        log.warning("TEXT TOWER '%s' IS RANDOMLY INITIALISED: no model.text_pretrained or model.checkpoint", name)
    quick_gelu = bool(open_clip.get_pretrained_cfg(name, weights).get("quick_gelu", False)) if weights else False
    try:  # a tag trained with QuickGELU (OpenAI's) gets it, as open_clip's "-quickgelu" model names do
        return open_clip.create_model(name, pretrained=weights or None, require_pretrained=bool(weights),
                                      force_quick_gelu=quick_gelu)
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        first = first_line(exc, type(exc).__name__)
        raise ConfigError(f"text tower {name} with weights {weights!r} (model.text, model.text_pretrained): "
                          f"{first}") from None


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
