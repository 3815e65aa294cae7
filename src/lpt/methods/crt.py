"""Classifier re-training (cRT; Kang et al., "Decoupling representation and classifier for long-tailed recognition",
ICLR 2020, Sec. 4): the classifier of a trained run starts afresh and trains alone, on class-balanced batches of the
run's frozen features, computed once.

The official code (facebookresearch/classifier-balancing@f162ade config/ImageNet_LT/cls_crt.yaml) re-initialises the
classifier (``stage1_weights: false``), freezes the features (``fix: true``) and trains 10 epochs with a class-aware
sampler of 4 images per class (``num_samples_cls: 4``) and plain cross-entropy (``loss/SoftmaxLoss.py``); with lpt,
``init=RUN_DIR phases=[phase1] phase1.sampling=balanced data.samples_per_class=4 loss.name=ce
loss.label_smoothing=0``, the run's model section, and ``loss.scale`` its head's (20 for a cosine head, 1 for linear).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lpt.config import Config, ConfigError
from lpt.methods.base import Method
from lpt.model.lpt import LPT


class ClassifierRetraining(Method):
    name = "crt"
    label = "cRT"
    features = True
    retrains_init = True
    prompt_depths = ("deep", "shallow")

    @classmethod
    def check(cls, cfg: Config) -> None:
        if not cfg.init:
            raise ConfigError(f"method '{cls.name}' re-trains the classifier of a trained run on its features: set "
                              "init=RUN_DIR")
        if cfg.model.head_init != "random":  # start_from_init sets the classifier; a head_init would go unused
            raise ConfigError(f"config key 'model.head_init' is {cfg.model.head_init!r}, but method '{cls.name}' "
                              "starts the classifier itself (cRT: afresh at random; LWS: the init run's); set "
                              "model.head_init=random")
        super().check(cfg)

    @classmethod
    def start_from_init(cls, model: LPT) -> None:
        """A new classifier of the run's kind, initialised as a new run's (seeded by the config's seed)."""
        fresh = type(model.head)(model.head.weight.shape[1], model.num_classes)
        model.head.load_state_dict(fresh.state_dict())

    def trained(self, model: LPT) -> list[nn.Parameter]:
        """The parameters this method trains: the classifier's."""
        return list(model.head.parameters())

    def prepare(self, model: LPT, phase: str) -> list[nn.Parameter]:
        """Everything frozen but :meth:`trained`; the model stays in the phase the run ``init`` finished."""
        model.requires_grad_(False)
        params = self.trained(model)
        for p in params:
            p.requires_grad_(True)
        return params

    def logits(self, model: LPT, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": model.classify(inputs)}
