"""Parameter-efficient fine-tuning without prompts (LIFT's form): the modules of ``model.peft``
(lpt.model.peft: LoRA, AdaptFormer, Adapter, SSF, BitFit, LayerNorm tuning) and the classifier train."""

from __future__ import annotations

from lpt.config import Config, ConfigError
from lpt.methods.base import Method


class PEFT(Method):
    name = "peft"
    label = "PEFT"
    prompts = False

    @classmethod
    def check(cls, cfg: Config) -> None:
        super().check(cfg)
        if not cfg.model.peft:
            raise ConfigError("method 'peft' trains the modules of model.peft: name at least one, e.g. "
                              "model.peft=[adaptformer]")
