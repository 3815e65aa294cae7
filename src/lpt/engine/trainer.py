"""The one training loop: SGD with momentum, warm-up + cosine schedule computed up front, mixed
precision through autocast and ``GradScaler(enabled=...)``, abort on a non-finite loss."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from lpt.config import PhaseConfig
from lpt.engine.distributed import DistContext
from lpt.engine.evaluate import autocast
from lpt.utils import log


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss); the message says where it stopped."""


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


def scaled_lr(phase_cfg: PhaseConfig, world_size: int) -> float:
    """Base lr is for a batch of 256 images per stream; scale linearly with the global batch."""
    return phase_cfg.lr * phase_cfg.batch_size * world_size / 256.0


def _micro_batches(batches: dict[str, tuple[torch.Tensor, torch.Tensor]], n: int) -> list[dict]:
    """Split every stream's batch into ``n`` near-equal parts (gradient accumulation)."""
    parts = {k: (x.tensor_split(n), y.tensor_split(n)) for k, (x, y) in batches.items()}
    micro = [{k: (xs[i], ys[i]) for k, (xs, ys) in parts.items() if len(ys[i])} for i in range(n)]
    return [m for m in micro if m]


def _forward_backward(method: nn.Module, model: nn.Module, batches: dict, epoch: int, phase_cfg: PhaseConfig,
                      scaler: torch.amp.GradScaler, device: torch.device, precision: str, desc: str) -> dict:
    """Loss and gradients of one step, in ``grad_accum`` micro-batches whose losses and gradients add
    up to the full batch's (each stream's term is weighted by the micro-batch's share of that stream)."""
    total = sum(len(y) for _, y in batches.values())
    losses, logits, labels = [], [], []
    try:
        for micro in _micro_batches(batches, phase_cfg.grad_accum):
            shares = {k: len(micro[k][1]) / len(y) if k in micro else 0.0 for k, (_, y) in batches.items()}
            with autocast(device, precision):
                out = method(model, micro, epoch, phase_cfg.epochs, shares)
            scaler.scale(out["loss"]).backward()
            losses.append(out["loss"].detach())
            logits.append(out["logits"].detach())
            labels.append(out["labels"])
    except torch.cuda.OutOfMemoryError:
        per_stream = max(len(y) for _, y in batches.values())
        raise TrainingError(
            f"{desc}: GPU out of memory at batch size {per_stream} per stream ({total} images per step); lower "
            f"{desc}.batch_size or set {desc}.grad_accum={2 * phase_cfg.grad_accum} (same batch, less memory)"
        ) from None
    return {"loss": torch.stack(losses).sum(), "logits": torch.cat(logits), "labels": torch.cat(labels)}


class Interrupted(RuntimeError):
    """Training stopped on SIGINT / SIGTERM after saving a resumable state."""


def train_phase(
    model: nn.Module,
    method: nn.Module,
    stream: Iterable,
    phase_cfg: PhaseConfig,
    *,
    device: torch.device,
    precision: str = "fp32",
    dist: DistContext = DistContext(),
    progress: bool = True,
    desc: str = "train",
    on_epoch_end: Callable[[dict], None] | None = None,
    log_every: int = 10,
    resume: dict[str, Any] | None = None,
    save: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_every: int = 0,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[dict]:
    """Train ``method``'s parameters of ``model`` for ``phase_cfg.epochs`` epochs over ``stream``.

    ``stream`` yields one dict of ``{stream_name: (images, labels)}`` per iteration and has
    ``set_epoch(epoch, start_step)`` and ``len``. Returns one record per epoch (loss, accuracy,
    lr, images/s).

    Resumable: ``save`` receives the position (epoch, next step, running sums, finished records,
    optimizer state) at the end of every epoch, every ``checkpoint_every`` steps, and when
    ``should_stop()`` turns true (then ``Interrupted`` is raised); ``resume`` is such a position.
    """
    params = method.prepare(model)
    opt = torch.optim.SGD(params, lr=0.0, momentum=phase_cfg.momentum, weight_decay=phase_cfg.weight_decay)
    steps_per_epoch = len(stream)
    warmup = round(phase_cfg.warmup_epochs * steps_per_epoch)
    lrs = lr_schedule(scaled_lr(phase_cfg, dist.world_size), phase_cfg.epochs * steps_per_epoch, warmup)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")
    resume = resume or {"epoch": 0, "step": 0, "loss_sum": 0.0, "correct": 0, "seen": 0, "records": []}
    if resume.get("optimizer") is not None:
        opt.load_state_dict(resume["optimizer"])
    records = list(resume["records"])
    for epoch in range(resume["epoch"], phase_cfg.epochs):
        first = resume["step"] if epoch == resume["epoch"] else 0
        stream.set_epoch(epoch, start_step=first)
        model.train()
        method.train()
        sums = resume if epoch == resume["epoch"] else {"loss_sum": 0.0, "correct": 0, "seen": 0}
        loss_sum = torch.tensor(float(sums["loss_sum"]), device=device)
        correct = torch.tensor(int(sums["correct"]), device=device, dtype=torch.long)
        first_bad = torch.full((), -1, device=device, dtype=torch.long)  # first non-finite step, kept on device
        seen, start = int(sums["seen"]), time.perf_counter()
        seen_at_start = seen

        def check_finite() -> None:
            if first_bad.item() >= 0:
                bad = first_bad.item()
                raise TrainingError(f"{desc}: loss is not finite at epoch {bad // steps_per_epoch + 1}, step "
                                    f"{bad}; stopping (the last checkpoint written is the last good one)")

        def position(next_epoch: int, next_step: int, finished: list[dict]) -> dict[str, Any]:
            check_finite()
            mid = next_step > 0
            return {"epoch": next_epoch, "step": next_step, "records": finished, "optimizer": opt.state_dict(),
                    "loss_sum": loss_sum.item() if mid else 0.0, "correct": correct.item() if mid else 0,
                    "seen": seen if mid else 0}

        finish = getattr(stream, "finish", None) or (lambda x: x)  # e.g. normalisation of uint8 images
        bar = tqdm(stream, desc=f"{desc} {epoch + 1}/{phase_cfg.epochs}", disable=not progress or None,
                   leave=False, mininterval=2.0, initial=first, total=steps_per_epoch)
        step = epoch * steps_per_epoch + first - 1
        for i, batches in enumerate(bar, start=first):
            step = epoch * steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = lrs[step]
            batches = {k: (finish(x.to(device, non_blocking=True)), y.to(device, non_blocking=True))
                       for k, (x, y) in batches.items()}
            opt.zero_grad(set_to_none=True)
            out = _forward_backward(method, model, batches, epoch, phase_cfg, scaler, device, precision, desc)
            dist.average_gradients(params)
            scaler.step(opt)
            scaler.update()
            loss = out["loss"].detach()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
            loss_sum += loss
            correct += (out["logits"].detach().argmax(1) == out["labels"]).sum()
            seen += len(out["labels"])
            if i % log_every == 0 or i == steps_per_epoch - 1:
                check_finite()
                bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{100.0 * correct.item() / seen:.1f}",
                                img_s=f"{(seen - seen_at_start) * dist.world_size / (time.perf_counter() - start):.0f}")
            if i + 1 < steps_per_epoch and save is not None:
                if should_stop():
                    save(position(epoch, i + 1, records))
                    raise Interrupted(f"{desc}: stopped at epoch {epoch + 1}, step {step + 1}")
                if checkpoint_every and (step + 1) % checkpoint_every == 0:
                    save(position(epoch, i + 1, records))
        check_finite()
        seconds = time.perf_counter() - start
        record = {
            "phase": desc, "epoch": epoch + 1, "loss": loss_sum.item() / steps_per_epoch,
            "train_acc": 100.0 * correct.item() / max(seen, 1), "lr": lrs[min(step, len(lrs) - 1)],
            "seconds": seconds, "images_per_s": (seen - seen_at_start) * dist.world_size / max(seconds, 1e-9),
        }
        log.info("%s epoch %d/%d: loss %.4f, train acc %.2f%%, %.0f images/s", desc, epoch + 1, phase_cfg.epochs,
                 record["loss"], record["train_acc"], record["images_per_s"])
        records.append(record)
        if on_epoch_end is not None:
            on_epoch_end(record)
        if save is not None:
            save(position(epoch + 1, 0, records))
            if should_stop() and epoch + 1 < phase_cfg.epochs:
                raise Interrupted(f"{desc}: stopped after epoch {epoch + 1}")
    return records


class TensorBoardLog:
    """Per-epoch records to TensorBoard under ``log_dir``, when ``tensorboard`` is installed (the optional
    extra); otherwise it does nothing. Each numeric field becomes the scalar ``<phase>/<field>`` at
    step ``epoch``.
    """

    def __init__(self, log_dir: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            self.writer = None
        else:
            self.writer = SummaryWriter(str(log_dir))

    def __call__(self, record: dict) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key not in ("phase", "epoch") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{record['phase']}/{key}", value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
