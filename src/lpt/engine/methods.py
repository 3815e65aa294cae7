"""Training methods: what trains, which forward, which loss. One loop (engine.trainer) runs them all.

A method turns one iteration's batches into a dict with ``loss``, ``logits`` and ``labels``.
LPT's phases, joint training, VPT and full fine-tuning differ only in what ``prepare`` unfreezes
and in the model's options; the linear probe trains the head on features computed once.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lpt.config import Config
from lpt.losses import build_loss
from lpt.model.lpt import LPT

STREAMS = ("balanced", "instance")


def stream_losses(cfg: Config, class_counts: list[int]) -> nn.ModuleDict:
    """One loss per sampling stream; A-GCL's focusing differs between the two (DESIGN.md)."""
    lc = cfg.loss
    gammas = {
        "balanced": (lc.gamma_pos_balanced, lc.gamma_neg_balanced),
        "instance": (lc.gamma_pos_instance, lc.gamma_neg_instance),
    }
    return nn.ModuleDict({
        s: build_loss(lc.name, class_counts, margin=lc.margin, scale=lc.scale, noise_mul=lc.noise_mul,
                      label_smoothing=lc.label_smoothing, gamma_pos=gammas[s][0], gamma_neg=gammas[s][1])
        for s in STREAMS
    })


class LPTPhase(nn.Module):
    """LPT phase 1 (shared prompt + classifier) or phase 2 (group prompts, keys + classifier).

    With dual sampling every iteration has a class-balanced batch (weight 1) and an
    instance-balanced batch (weight ``beta = eta * (E - e) / E``); in phase 2 each batch's term
    also carries the key loss ``1 - mean_{j in topk} cos(q, k_j)``. Both batches go through one
    forward pass: the ViT has no batch statistics, so this equals two passes.

    Args:
        phase: 1 or 2.
        losses: one loss module per stream name.
        eta: initial weight of the instance-balanced batch.
    """

    def __init__(self, phase: int, losses: nn.ModuleDict, eta: float, train_shared: bool | None = None):
        super().__init__()
        self.phase = phase
        self.losses = losses
        self.eta = eta
        self.train_shared = train_shared

    def prepare(self, model: LPT) -> list[nn.Parameter]:
        """Switch the model to this phase and return its trainable parameters."""
        model.set_phase(self.phase, train_shared=self.train_shared)
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
        batch these images are (gradient accumulation), so micro-batch losses add up to the full one."""
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
            if ks is not None:
                term = term + (1.0 - ks.mean())
            share = 1.0 if shares is None else shares[name]
            total = total + share * self.stream_weight(name, len(shares or names), epoch, epochs) * term
        return {"loss": total, "logits": out["logits"], "labels": labels}


class LinearProbe(LPTPhase):
    """Linear (or cosine) probe: the stream yields features computed once, so only the head runs.

    The features are the frozen model's phase-1 features (``prompt_len=0``: the plain ViT)."""

    def __init__(self, losses: nn.ModuleDict, eta: float):
        super().__init__(1, losses, eta)

    def prepare(self, model: LPT) -> list[nn.Parameter]:
        model.set_phase(1)
        model.shared_prompt.requires_grad_(False)
        return list(model.head.parameters())

    def logits(self, model: LPT, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": model.head(model.dropout(inputs))}


def build_method(name: str, phase: int, losses: nn.ModuleDict, eta: float) -> LPTPhase:
    """The method object of one training stage; raises KeyError listing the valid names."""
    if name not in METHODS:
        raise KeyError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}")
    return METHODS[name](phase, losses, eta)


METHODS = {
    "lpt": lambda phase, losses, eta: LPTPhase(phase, losses, eta),
    "lpt_joint": lambda phase, losses, eta: LPTPhase(2, losses, eta, train_shared=True),
    "vpt": lambda phase, losses, eta: LPTPhase(1, losses, eta),
    "full": lambda phase, losses, eta: LPTPhase(1, losses, eta),
    "linear": lambda phase, losses, eta: LinearProbe(losses, eta),
}
