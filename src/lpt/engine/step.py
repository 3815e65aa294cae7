"""One optimisation step: forward and loss (the method), backward, gradient average, optimiser step.

SGD with momentum at a rate from a schedule computed up front (per step, or the published per-epoch
form); mixed precision through autocast and ``GradScaler(enabled=...)``; ``grad_accum`` micro-batches
whose losses and gradients add up to the full batch's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.scheduler import CosineLRScheduler

from lpt.config import PhaseConfig
from lpt.distributed import DistContext
from lpt.methods import Method
from lpt.utils import autocast


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, out of memory); the message says where it stopped."""


@dataclass(frozen=True)
class Env:
    """Where training runs: device, autocast precision, the torch.distributed context, progress bars."""

    device: torch.device
    precision: str = "fp32"
    dist: DistContext = DistContext()
    progress: bool = True


def lr_schedule(base_lr: float, total_steps: int, warmup_steps: int) -> list[float]:
    """Per-step learning rates: linear warm-up from base_lr / warmup_steps, then half-cosine to 0."""
    lrs = []
    for step in range(total_steps):
        if step < warmup_steps:
            lrs.append(base_lr * (step + 1) / warmup_steps)
        else:
            t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            lrs.append(0.5 * base_lr * (1.0 + math.cos(math.pi * t)))
    return lrs


def published_schedule(base_lr: float, epochs: int, steps_per_epoch: int, warmup_epochs: int) -> list[float]:
    """Per-step learning rates of the published phase-2 script (DongSky/LPT ``train_dual_dualloss.py``): timm's
    ``CosineLRScheduler(warmup_lr_init=1e-6, t_initial=epochs, cycle_decay=0.1, warmup_t=warmup_epochs)``, which
    sets the first epoch's rate at construction, stepped with ``step(epoch + 1)`` after every epoch, so each
    epoch trains at one constant rate (the warm-up epoch at 1e-6)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    scheduler = CosineLRScheduler(optimizer, warmup_lr_init=1e-6, t_initial=epochs, cycle_decay=0.1,
                                  warmup_t=warmup_epochs)
    lrs = []
    for epoch in range(epochs):
        lrs += [optimizer.param_groups[0]["lr"]] * steps_per_epoch
        scheduler.step(epoch + 1)
    return lrs


def phase_schedule(phase_cfg: PhaseConfig, steps_per_epoch: int, world_size: int) -> list[float]:
    """The rate of every step of a phase: ``phase_cfg.schedule`` is ``steps`` (lpt's per-step warm-up and
    cosine) or ``published`` (the published script's per-epoch form)."""
    base, epochs = scaled_lr(phase_cfg, world_size), phase_cfg.epochs
    if phase_cfg.schedule == "published":
        return published_schedule(base, epochs, steps_per_epoch, round(phase_cfg.warmup_epochs))
    return lr_schedule(base, epochs * steps_per_epoch, round(phase_cfg.warmup_epochs * steps_per_epoch))


def scaled_lr(phase_cfg: PhaseConfig, world_size: int) -> float:
    """Base lr is for a batch of 256 images per stream; scale linearly with the global batch."""
    return phase_cfg.lr * phase_cfg.batch_size * world_size / 256.0


def micro_batches(batches: dict[str, tuple[torch.Tensor, torch.Tensor]], n: int) -> list[dict]:
    """Split every stream's batch into ``n`` near-equal parts (gradient accumulation)."""
    parts = {k: (x.tensor_split(n), y.tensor_split(n)) for k, (x, y) in batches.items()}
    micro = [{k: (xs[i], ys[i]) for k, (xs, ys) in parts.items() if len(ys[i])} for i in range(n)]
    return [m for m in micro if m]


class TrainStep:
    """``step(batches, index, epoch)`` trains ``method``'s parameters of ``model`` on one step's batches (on the
    device) and returns the detached ``loss``, ``logits`` and ``labels``."""

    def __init__(self, model: nn.Module, method: Method, params: list[nn.Parameter], phase_cfg: PhaseConfig,
                 lrs: list[float], env: Env, desc: str):
        self.model, self.method, self.params, self.cfg, self.lrs, self.env, self.desc = (
            model, method, params, phase_cfg, lrs, env, desc)
        self.optimizer = torch.optim.SGD(params, lr=0.0, momentum=phase_cfg.momentum,
                                         weight_decay=phase_cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=env.precision == "fp16"
                                           and env.device.type == "cuda")

    def __call__(self, batches: dict[str, tuple[torch.Tensor, torch.Tensor]], index: int,
                 epoch: int) -> dict[str, torch.Tensor]:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lrs[index]
        self.optimizer.zero_grad(set_to_none=True)
        out = self.forward_backward(batches, epoch)
        self.env.dist.average_gradients(self.params)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return out

    def forward_backward(self, batches: dict, epoch: int) -> dict[str, torch.Tensor]:
        """Loss and gradients of one step in ``grad_accum`` micro-batches (each stream's term weighted by the
        micro-batch's share of that stream)."""
        losses, logits, labels = [], [], []
        try:
            for micro in micro_batches(batches, self.cfg.grad_accum):
                shares = {k: len(micro[k][1]) / len(y) if k in micro else 0.0 for k, (_, y) in batches.items()}
                with autocast(self.env.device, self.env.precision):
                    out = self.method(self.model, micro, epoch, self.cfg.epochs, shares)
                self.scaler.scale(out["loss"]).backward()
                losses.append(out["loss"].detach())
                logits.append(out["logits"].detach())
                labels.append(out["labels"])
        except torch.cuda.OutOfMemoryError:
            per_stream = max(len(y) for _, y in batches.values())
            total = sum(len(y) for _, y in batches.values())
            raise TrainingError(
                f"{self.desc}: GPU out of memory at batch size {per_stream} per stream ({total} images per step); "
                f"lower {self.desc}.batch_size or set {self.desc}.grad_accum={2 * self.cfg.grad_accum} (same batch, "
                "less memory)"
            ) from None
        return {"loss": torch.stack(losses).sum(), "logits": torch.cat(logits), "labels": torch.cat(labels)}
