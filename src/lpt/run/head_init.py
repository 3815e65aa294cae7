"""Classifier initialisation before training (``model.head_init``, LIFT's options), from the training data or
from the class names.

- ``class_mean``: each class's weight is the mean feature of its training images, normalised
  (LIFT ``trainer.py`` ``init_head_class_mean``);
- ``linear_probe``: the weights of a class-balanced, L2-regularised logistic regression on those
  features (scikit-learn's ``LogisticRegression(solver="lbfgs", max_iter=100, class_weight="balanced")``,
  as LIFT's ``init_head_linear_probe``), normalised;
- ``text``: the class names' CLIP text embeddings (:mod:`lpt.model.text`, LIFT ``init_head_text_feat``). With
  ``model.projection`` the features are CLIP's image embeddings, so the cosine classifier starts as zero-shot
  CLIP exactly; without it (LIFT's way) they are the tower's features before its projection ``P`` (``[E, D]``),
  and each class starts at ``normalize(t @ P)``, LIFT's ``text_features @ proj.t()``.

The features are the ViT's as built, with the evaluation transform (resized to ``data.init_resize`` where it is
set: :func:`lpt.data.build_init_transform`), before any prompt: LoRA,
Adapter and AdaptFormer start at identity, so with them these are the frozen ViT's exactly (LIFT
turns its modules off for this); SSF starts near identity (N(1, 0.02)).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from lpt.config import Config, ConfigError
from lpt.data import DataSplits, build_init_transform, with_transform
from lpt.data.names import prompt_names
from lpt.engine.step import Env
from lpt.evaluation import source_features
from lpt.model.lpt import LPT
from lpt.model.text import class_embeddings, text_tower_weights
from lpt.run.load import evaluate_with


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Mean feature of each class, ``[C, D]`` (every class has a training image)."""
    feats, labels_t = torch.from_numpy(features), torch.from_numpy(labels).long()
    sums = torch.zeros(num_classes, feats.shape[1]).index_add_(0, labels_t, feats)
    return sums / torch.bincount(labels_t, minlength=num_classes)[:, None]


def probe_weights(features: np.ndarray, labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Logistic-regression weights ``[C, D]`` (for two classes scikit-learn fits one row: ``[-w, w]``)."""
    clf = LogisticRegression(solver="lbfgs", max_iter=100, class_weight="balanced").fit(features, labels)
    coef = torch.from_numpy(clf.coef_).float()
    return torch.cat([-coef, coef]) if num_classes == 2 else coef


@torch.no_grad()
def text_weights(model: LPT, embeddings: torch.Tensor) -> torch.Tensor:
    """The classifier rows ``[C, D]`` that class-name embeddings ``[C, E]`` give on ``model``'s features."""
    projection = model.backbone.get_classifier()
    if not model.projection and isinstance(projection, nn.Linear):
        embeddings = embeddings.to(projection.weight) @ projection.weight
    if embeddings.shape[1] != model.head.weight.shape[1]:
        raise ConfigError(f"the text embeddings have {embeddings.shape[1]} dimensions, the classifier's features "
                          f"{model.head.weight.shape[1]}: model.text does not belong with model.backbone")
    return F.normalize(embeddings.float(), dim=1)


def _text_head(model: LPT, splits: DataSplits, cfg: Config, env: Env) -> dict:
    """Set the classifier from the class names' text embeddings; return them and what made them."""
    names = prompt_names(cfg.data, splits.classes)
    embeddings, logit_scale = class_embeddings(cfg.model, names, env.device, progress=cfg.progress and env.dist.is_main)
    model.head.weight.copy_(text_weights(model, embeddings))
    m = cfg.model
    return {"embeddings": embeddings, "meta": {"names": names, "templates": m.templates, "text": m.text,
                                               "text_pretrained": text_tower_weights(m), "logit_scale": logit_scale}}


@torch.no_grad()
def init_head(model: LPT, splits: DataSplits, cfg: Config, env: Env) -> dict | None:
    """Set the classifier as ``cfg.model.head_init`` says (a bias, if any, to 0); for ``text`` return the class
    names' embeddings and their metadata, for the run directory."""
    if cfg.model.head_init == "text":
        text = _text_head(model, splits, cfg, env)
    else:
        text = None
        _fit_head(model, splits, cfg, env)
    if getattr(model.head, "bias", None) is not None:
        model.head.bias.zero_()
    return text


def _fit_head(model: LPT, splits: DataSplits, cfg: Config, env: Env) -> None:
    """The classifier rows from the training features: class means or a logistic regression's weights."""
    train = with_transform(splits.train, build_init_transform(cfg.data))
    out = evaluate_with(cfg, model, train, source_features(model, ["plain"]),
                        device=env.device, dist=env.dist, desc=f"head init ({cfg.model.head_init})")
    fit = class_means if cfg.model.head_init == "class_mean" else probe_weights
    model.head.weight.copy_(F.normalize(fit(out["plain"], out["labels"], splits.num_classes), dim=1))
