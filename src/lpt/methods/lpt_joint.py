"""Joint training (the paper's Table 9): shared prompt, group prompts, keys and classifier in one stage."""

from __future__ import annotations

import torch.nn as nn

from lpt.methods.base import Method
from lpt.model.lpt import LPT


class LPTJoint(Method):
    name = "lpt_joint"
    label = "LPT joint"
    phases = ("phase2",)

    def prepare(self, model: LPT, phase: str) -> list[nn.Parameter]:
        model.set_phase(2, train_shared=True)
        return [p for p in model.parameters() if p.requires_grad]
