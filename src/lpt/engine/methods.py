"""Training methods: what trains, which forward, which loss. One loop (engine.trainer) runs them all.

A method turns one iteration's batches into a dict with ``loss``, ``logits`` and ``labels``.
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

    def __init__(self, phase: int, losses: nn.ModuleDict, eta: float):
        super().__init__()
        self.phase = phase
        self.losses = losses
        self.eta = eta

    def prepare(self, model: LPT) -> list[nn.Parameter]:
        """Switch the model to this phase and return its trainable parameters."""
        model.set_phase(self.phase)
        return [p for p in model.parameters() if p.requires_grad]

    def stream_weight(self, stream: str, num_streams: int, epoch: int, epochs: int) -> float:
        if num_streams == 1 or stream == "balanced":
            return 1.0
        return self.eta * (epochs - epoch) / epochs

    def forward(self, model: LPT, batches: dict[str, tuple[torch.Tensor, torch.Tensor]], epoch: int,
                epochs: int) -> dict[str, torch.Tensor]:
        names = list(batches)
        images = torch.cat([batches[n][0] for n in names])
        labels = torch.cat([batches[n][1] for n in names])
        sizes = [len(batches[n][1]) for n in names]
        out = model.forward_train(images)
        logits = out["logits"].float().split(sizes)
        key_sims = out["key_sim"].float().split(sizes) if "key_sim" in out else [None] * len(names)
        total = logits[0].new_zeros(())
        for name, lg, y, ks in zip(names, logits, labels.split(sizes), key_sims):
            term = self.losses[name](lg, y)
            if ks is not None:
                term = term + (1.0 - ks.mean())
            total = total + self.stream_weight(name, len(names), epoch, epochs) * term
        return {"loss": total, "logits": out["logits"], "labels": labels}
