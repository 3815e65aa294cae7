"""Learnable weight scaling (LWS; Kang et al., ICLR 2020, Sec. 4): the classifier of a trained run stays, and one
scale per class, multiplying its logits, trains alone on class-balanced batches of the run's frozen features.

The official classifier (facebookresearch/classifier-balancing@f162ade models/TauNormClassifier.py:22-28) freezes the
linear layer and multiplies its output, bias included, by ``scales``, ones at first; its config
(config/ImageNet_LT/cls_lws.yaml) trains 5 epochs with a class-aware sampler of 4 images per class and plain
cross-entropy. With lpt the scales multiply any head's logits (a cosine head's cosines too): ``method=lws`` with the
settings of :mod:`lpt.methods.crt` and ``phase1.epochs=5``.
"""

from __future__ import annotations

import torch.nn as nn

from lpt.methods.crt import ClassifierRetraining
from lpt.model.lpt import LPT


class LearnableWeightScaling(ClassifierRetraining):
    name = "lws"
    label = "LWS"
    class_scales = True

    @classmethod
    def start_from_init(cls, model: LPT) -> None:
        """The run's classifier as it is; the scales start at one (the model builds them so)."""

    def trained(self, model: LPT) -> list[nn.Parameter]:
        return [model.class_scale]
