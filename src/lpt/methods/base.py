"""What every training method shares: its registry entry, its config rules, and LPT's loss composition.

A method is one subclass of :class:`Method` in its own module of this package, with a ``name`` (the
config's ``method``); defining the class registers it. The class says, before any data loads, which
phases the method runs and which config settings it refuses; built for a run (with the training
class counts) it holds one loss per sampling stream, switches the model to a phase and returns what
trains there (``prepare``), and turns one step's batches into a weighted loss (``forward``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from lpt.config import PHASES, Config, ConfigError
from lpt.losses import build_loss
from lpt.model.lpt import LPT

STREAMS = ("balanced", "instance")
REGISTRY: dict[str, type[Method]] = {}


def stream_losses(cfg: Config, class_counts: list[int]) -> nn.ModuleDict:
    """One loss per sampling stream; A-GCL's focusing differs between the two (docs/method.md, dual sampling)."""
    lc = cfg.loss
    gammas = {
        "balanced": (lc.gamma_pos_balanced, lc.gamma_neg_balanced),
        "instance": (lc.gamma_pos_instance, lc.gamma_neg_instance),
    }
    return nn.ModuleDict({
        s: build_loss(lc.name, class_counts, margin=lc.margin, scale=lc.scale, noise_mul=lc.noise_mul,
                      label_smoothing=lc.label_smoothing, gamma_pos=gammas[s][0], gamma_neg=gammas[s][1],
                      tau=lc.tau, max_margin=lc.max_margin, drw_epoch=lc.drw_epoch, cb_beta=lc.cb_beta,
                      focal_gamma=lc.focal_gamma, grw_exp_scale=lc.grw_exp_scale, lade_lambda=lc.lade_lambda,
                      lade_weight=lc.lade_weight)
        for s in STREAMS
    })


class Method(nn.Module):
    """A training method of prompts, classifier (and, for full fine-tuning, the backbone) on a frozen ViT.

    Class attributes describe it to the config check, the run and the tables:
        name: the config's ``method`` value; label: its name in tables.
        phases: the stages it may run, in order; one-stage methods use the ``phase1`` (or ``phase2``) section.
        trains_backbone: full fine-tuning (the backbone is saved with the trained tensors).
        prompts: whether it has prompts (without, ``model.prompt_len`` must be 0).
        prompt_depths: the ``model.prompt_depth`` values it accepts.
        features: trains on the frozen model's features, computed once, instead of images.
        retrains_init: starts from the whole trained run ``init`` (prompts, group prompts, PEFT modules, classifier,
            its phase) and re-trains only its classifier on its features; the model section must be the run's.
        class_scales: the model has a learnt scale per class on its logits (LWS).

    With dual sampling every iteration has a class-balanced batch (weight 1) and an
    instance-balanced batch (weight ``beta = eta * (E - e) / E``); in phase 2 each batch's term also
    carries the key loss ``1 - 0.5 * sum_{j in topk} cos(q, k_j)``, averaged over the batch: the
    published script's ``-0.5 * reduced_sim`` plus a constant 1 (so at k = 2 it is ``1 - mean cos``).
    Both batches go through one forward pass: the ViT has no batch statistics, so this equals two.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    phases: ClassVar[tuple[str, ...]] = ("phase1",)
    trains_backbone: ClassVar[bool] = False
    prompts: ClassVar[bool] = True
    prompt_depths: ClassVar[tuple[str, ...]] = ("deep",)
    features: ClassVar[bool] = False
    retrains_init: ClassVar[bool] = False
    class_scales: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # its own name: a subclass that only changes the forward stays unregistered
            REGISTRY[cls.name] = cls

    @classmethod
    def check(cls, cfg: Config) -> None:
        """Refuse settings this method cannot run with; raise ConfigError naming the key."""
        if cls.phases and not cfg.phases:
            raise ConfigError(f"config key 'phases' is []; method '{cls.name}' trains {', '.join(cls.phases)}")
        if len(cls.phases) == 1 and cfg.phases != list(cls.phases):
            raise ConfigError(f"method '{cls.name}' has one stage: set phases=[{cls.phases[0]}] "
                              f"(its optimisation settings are the '{cls.phases[0]}' section)")
        if not set(cfg.phases) <= set(cls.phases):
            raise ConfigError(f"config key 'phases' is {cfg.phases!r}; method '{cls.name}' runs "
                              f"{', '.join(cls.phases)}")
        if not cls.prompts and cfg.model.prompt_len != 0:
            raise ConfigError(f"method '{cls.name}' uses no prompts: set model.prompt_len=0")
        if cls.features and cfg.model.peft and not cls.retrains_init:
            raise ConfigError(f"method '{cls.name}' trains on features computed once: model.peft cannot train there; "
                              "set model.peft=[]")
        if cfg.model.prompt_depth not in cls.prompt_depths:
            raise ConfigError(f"model.prompt_depth={cfg.model.prompt_depth} is not available with method "
                              f"'{cls.name}' (VPT-Shallow needs method=vpt)")

    @classmethod
    def start_from_init(cls, model: LPT) -> None:
        """Change ``model`` just after the run ``init``'s tensors are loaded into it (cRT re-initialises the
        classifier)."""

    def __init__(self, cfg: Config, class_counts: list[int]):
        super().__init__()
        self.losses = stream_losses(cfg, class_counts)
        self.eta = cfg.loss.eta

    def prepare(self, model: LPT, phase: str) -> list[nn.Parameter]:
        """Switch the model to ``phase`` (a name of PHASES) and return the parameters that train there."""
        model.set_phase(PHASES.index(phase) + 1)
        return [p for p in model.parameters() if p.requires_grad]

    def logits(self, model: LPT, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return model.forward_train(inputs)

    def stream_weight(self, stream: str, num_streams: int, epoch: int, epochs: int) -> float:
        if num_streams == 1 or stream == "balanced":
            return 1.0
        return self.eta * (epochs - epoch) / epochs

    def forward(self, model: LPT, batches: dict[str, tuple[torch.Tensor, torch.Tensor]], epoch: int,
                epochs: int, shares: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
        """Weighted loss of one step. ``shares`` scales each stream's term by the fraction of that stream's
        batch these images are (gradient accumulation), so micro-batch losses add up to the full one. Losses with
        a ``set_epoch`` hook (LDAM's deferred re-weighting) are told the epoch first."""
        for loss in self.losses.values():
            if hasattr(loss, "set_epoch"):
                loss.set_epoch(epoch)
        names = list(batches)
        images = torch.cat([batches[n][0] for n in names])
        labels = torch.cat([batches[n][1] for n in names])
        sizes = [len(batches[n][1]) for n in names]
        out = self.logits(model, images)
        logits = out["logits"].float().split(sizes)
        key_sims = out["key_sim"].float().split(sizes) if "key_sim" in out else [None] * len(names)
        total = logits[0].new_zeros(())
        for name, lg, y, ks in zip(names, logits, labels.split(sizes), key_sims):
            term = self.losses[name](lg, y)
            if ks is not None:  # the published weighting: 0.5 per selected key, whatever k is
                term = term + (1.0 - 0.5 * ks.sum(dim=1).mean())
            share = 1.0 if shares is None else shares[name]
            total = total + share * self.stream_weight(name, len(shares or names), epoch, epochs) * term
        return {"loss": total, "logits": out["logits"], "labels": labels}
