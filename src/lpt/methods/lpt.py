"""LPT (Dong et al., ICLR 2023): phase 1 trains a shared prompt and the classifier, phase 2 the group
prompts and keys with the phase-1 model as query function."""

from __future__ import annotations

from lpt.config import Config, ConfigError
from lpt.methods.base import Method


class LPT(Method):
    name = "lpt"
    label = "LPT"
    phases = ("phase1", "phase2")

    @classmethod
    def check(cls, cfg: Config) -> None:
        super().check(cfg)
        if cfg.phases[0] == "phase2" and not cfg.init:
            raise ConfigError("config 'phases' starts at phase2 but 'init' names no phase-1 run directory to "
                              "start from")
