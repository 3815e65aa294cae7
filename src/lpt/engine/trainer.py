"""The one training loop: epochs of :class:`~lpt.engine.step.TrainStep` over a stream, with the running
tally, progress, per-epoch records and the resumable position around the step, never inside it."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from lpt.config import PhaseConfig
from lpt.engine.step import Env, TrainingError, TrainStep, phase_schedule
from lpt.methods import Method
from lpt.utils import log

FRESH = {"epoch": 0, "step": 0, "loss_sum": 0.0, "correct": 0, "seen": 0, "records": []}


class Interrupted(RuntimeError):
    """Training stopped on SIGINT / SIGTERM (``signum``) after saving a resumable state."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)


@dataclass
class Cadence:
    """When a phase saves its position (``save``): at every epoch end, every ``every`` steps, and when
    ``should_stop()`` returns the signal that asks to stop (then ``Interrupted`` is raised). ``resume`` is a saved
    position to start from."""

    save: Callable[[dict[str, Any]], None] | None = None
    every: int = 0
    should_stop: Callable[[], int | None] = lambda: None
    resume: dict[str, Any] | None = None


@dataclass
class Tally:
    """An epoch's running loss and accuracy, kept on the device (no host sync per step), and the first step
    whose loss was not finite."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int
    first_bad: torch.Tensor
    seen_at_start: int = 0
    start: float = field(default_factory=time.perf_counter)

    @classmethod
    def begin(cls, sums: dict[str, Any], device: torch.device) -> Tally:
        return cls(torch.tensor(float(sums["loss_sum"]), device=device),
                   torch.tensor(int(sums["correct"]), device=device, dtype=torch.long), int(sums["seen"]),
                   torch.full((), -1, device=device, dtype=torch.long), seen_at_start=int(sums["seen"]))

    def add(self, out: dict[str, torch.Tensor], step: int) -> None:
        loss = out["loss"].detach()
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss), step, self.first_bad)
        self.loss_sum += loss
        self.correct += (out["logits"].detach().argmax(1) == out["labels"]).sum()
        self.seen += len(out["labels"])

    def check_finite(self, desc: str, steps_per_epoch: int) -> None:
        if self.first_bad.item() >= 0:
            bad = self.first_bad.item()
            raise TrainingError(f"{desc}: loss is not finite at epoch {bad // steps_per_epoch + 1}, step {bad}; "
                                "stopping (the last checkpoint written is the last good one)")

    def images_per_s(self, world_size: int, seconds: float | None = None) -> float:
        """Images of every rank per second since the tally began (this epoch or its resumed part), over ``seconds``
        (default: until now)."""
        seconds = time.perf_counter() - self.start if seconds is None else seconds
        return (self.seen - self.seen_at_start) * world_size / max(seconds, 1e-9)


class PhaseTrainer:
    """Train ``method``'s parameters of ``model`` in ``phase`` for ``phase_cfg.epochs`` epochs over ``stream``.

    ``stream`` yields one dict of ``{stream_name: (images, labels)}`` per iteration and has
    ``set_epoch(epoch, start_step)``, ``len`` and optionally ``finish`` (applied on the device, e.g. the
    normalisation of uint8 images). ``run()`` returns one record per epoch (loss, accuracy, lr, images/s).
    """

    def __init__(self, model: nn.Module, method: Method, phase: str, stream: Iterable, phase_cfg: PhaseConfig,
                 env: Env, desc: str, cadence: Cadence = Cadence(),
                 on_epoch_end: Callable[[dict], None] | None = None, log_every: int = 10):
        params = method.prepare(model, phase)
        self.steps = len(stream)
        lrs = phase_schedule(phase_cfg, self.steps, env.dist.world_size)
        self.step = TrainStep(model, method, params, phase_cfg, lrs, env, desc)
        self.model, self.method, self.stream, self.cfg = model, method, stream, phase_cfg
        self.env, self.desc = env, desc
        self.cadence, self.on_epoch_end, self.log_every = cadence, on_epoch_end, log_every
        self.finish = getattr(stream, "finish", None) or (lambda x: x)

    def run(self) -> list[dict]:
        position = self.cadence.resume or FRESH
        if position.get("optimizer") is not None:
            self.step.optimizer.load_state_dict(position["optimizer"])
        records = list(position["records"])
        for epoch in range(position["epoch"], self.cfg.epochs):
            resumed = epoch == position["epoch"]
            tally = Tally.begin(position if resumed else FRESH, self.env.device)
            records.append(self.epoch(epoch, position["step"] if resumed else 0, tally, records))
            if self.on_epoch_end is not None:
                self.on_epoch_end(records[-1])
            if self.cadence.save is not None:
                self.cadence.save(self.position(epoch + 1, 0, records, tally))
                signum = self.cadence.should_stop()
                if signum and epoch + 1 < self.cfg.epochs:
                    raise Interrupted(f"{self.desc}: stopped after epoch {epoch + 1}", signum)
        return records

    def epoch(self, epoch: int, first: int, tally: Tally, records: list[dict]) -> dict:
        """One epoch from step ``first``: the step, the tally and the position saves; returns its record."""
        self.stream.set_epoch(epoch, start_step=first)
        self.model.train()
        self.method.train()
        bar = tqdm(self.stream, desc=f"{self.desc} {epoch + 1}/{self.cfg.epochs}", leave=False, mininterval=2.0,
                   disable=not self.env.progress or None, initial=first, total=self.steps)
        step = epoch * self.steps + first - 1
        for i, batches in enumerate(bar, start=first):
            step = epoch * self.steps + i
            batches = {k: (self.finish(x.to(self.env.device, non_blocking=True)),
                           y.to(self.env.device, non_blocking=True)) for k, (x, y) in batches.items()}
            out = self.step(batches, step, epoch)
            tally.add(out, step)
            if i % self.log_every == 0 or i == self.steps - 1:
                tally.check_finite(self.desc, self.steps)
                bar.set_postfix(loss=f"{out['loss'].item():.3f}",
                                acc=f"{100.0 * tally.correct.item() / tally.seen:.1f}",
                                img_s=f"{tally.images_per_s(self.env.dist.world_size):.0f}")
            if i + 1 < self.steps:
                self.save_within_epoch(epoch, i + 1, step, records, tally)
        tally.check_finite(self.desc, self.steps)
        return self.record(epoch, step, tally)

    def save_within_epoch(self, epoch: int, next_step: int, step: int, records: list[dict], tally: Tally) -> None:
        """Save the position on a stop request (then raise Interrupted) or every ``cadence.every`` steps."""
        if self.cadence.save is None:
            return
        signum = self.cadence.should_stop()
        if signum:
            self.cadence.save(self.position(epoch, next_step, records, tally))
            raise Interrupted(f"{self.desc}: stopped at epoch {epoch + 1}, step {step + 1}", signum)
        if self.cadence.every and (step + 1) % self.cadence.every == 0:
            self.cadence.save(self.position(epoch, next_step, records, tally))

    def position(self, next_epoch: int, next_step: int, records: list[dict], tally: Tally) -> dict[str, Any]:
        """Where a resumed run continues: the next epoch and step, the finished epochs' records, the optimizer,
        and mid-epoch the running sums."""
        tally.check_finite(self.desc, self.steps)
        mid = next_step > 0
        return {"epoch": next_epoch, "step": next_step, "records": list(records),
                "optimizer": self.step.optimizer.state_dict(), "loss_sum": tally.loss_sum.item() if mid else 0.0,
                "correct": tally.correct.item() if mid else 0, "seen": tally.seen if mid else 0}

    def record(self, epoch: int, step: int, tally: Tally) -> dict:
        seconds = time.perf_counter() - tally.start
        lrs = self.step.lrs
        record = {
            "phase": self.desc, "epoch": epoch + 1, "loss": tally.loss_sum.item() / self.steps,
            "train_acc": 100.0 * tally.correct.item() / max(tally.seen, 1), "lr": lrs[min(step, len(lrs) - 1)],
            "seconds": seconds, "images_per_s": tally.images_per_s(self.env.dist.world_size, seconds),
        }
        log.info("%s epoch %d/%d: loss %.4f, train acc %.2f%%, %.0f images/s", self.desc, epoch + 1, self.cfg.epochs,
                 record["loss"], record["train_acc"], record["images_per_s"])
        return record

