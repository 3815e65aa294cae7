"""Classifier initialisation from the training data, before training (``model.head_init``, LIFT's options).

- ``class_mean``: each class's weight is the mean feature of its training images, normalised
  (LIFT ``trainer.py`` ``init_head_class_mean``);
- ``linear_probe``: the weights of a class-balanced, L2-regularised logistic regression on those
  features (scikit-learn's ``LogisticRegression(solver="lbfgs", max_iter=100, class_weight="balanced")``,
  as LIFT's ``init_head_linear_probe``), normalised.

The features are the ViT's as built, with the evaluation transform, before any prompt: LoRA,
Adapter and AdaptFormer start at identity, so with them these are the frozen ViT's exactly (LIFT
turns its modules off for this); SSF starts near identity (N(1, 0.02)).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from lpt.config import Config
from lpt.data import DataSplits, with_eval_transform
from lpt.engine.step import Env
from lpt.evaluation import source_features
from lpt.model.lpt import LPT
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
def init_head(model: LPT, splits: DataSplits, cfg: Config, env: Env) -> None:
    """Set the classifier from the training features as ``cfg.model.head_init`` says (a bias, if any, to 0)."""
    out = evaluate_with(cfg, model, with_eval_transform(splits.train, cfg.data), source_features(model, ["plain"]),
                        device=env.device, dist=env.dist, desc=f"head init ({cfg.model.head_init})")
    fit = class_means if cfg.model.head_init == "class_mean" else probe_weights
    model.head.weight.copy_(F.normalize(fit(out["plain"], out["labels"], splits.num_classes), dim=1))
    if getattr(model.head, "bias", None) is not None:
        model.head.bias.zero_()
