"""Validation during training: ``data.val_list`` (``data.val_dir`` for a folder source) evaluated every
``val_every`` epochs, and with ``select: best_val`` the phase's best validation epoch kept and restored when the
phase ends.

The published script evaluates on the test list every epoch and keeps the best test epoch
(``max-va.pth``), which selects on the test set; lpt selects on a validation split or not at all.
The best epoch's trained tensors are written to ``best_val.safetensors`` (atomically, main process),
so a resumed run still knows them; every rank also keeps them in memory (their tensors are equal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lpt.config import Config
from lpt.distributed import DistContext
from lpt.metrics import ACCURACIES
from lpt.model.lpt import LPT
from lpt.model.state import load_strict, read_tensors, save_tensors
from lpt.run import files
from lpt.run.load import shot_metrics


class Validation:
    """Call ``after_epoch(epoch)`` at every epoch's end (all ranks; it returns the validation record for the run to
    keep) and ``finish()`` when the phase ends."""

    def __init__(self, cfg: Config, phase: str, model: LPT, val_set, train_counts: list[int], out_dir: Path,
                 device: torch.device, dist: DistContext):
        self.cfg, self.phase, self.model, self.val_set, self.train_counts = cfg, phase, model, val_set, train_counts
        self.out_dir, self.device, self.dist = out_dir, device, dist
        self.epochs = getattr(cfg, phase).epochs
        self.best: dict[str, Any] | None = None  # {"epoch", "overall"} of the best epoch so far
        self.best_tensors: dict[str, torch.Tensor] | None = None
        path = out_dir / files.BEST_VAL
        if cfg.select == "best_val" and path.is_file():  # a resumed run: the best epoch before it stopped
            tensors, meta = read_tensors(path)
            if meta.get("phase") == phase:
                self.best, self.best_tensors = {"epoch": meta["epoch"], "overall": meta["overall"]}, tensors

    def after_epoch(self, epoch: int) -> dict[str, Any] | None:
        """Evaluate after epoch ``epoch`` (1-based) when it is due; keep it if it is the best; return its record
        (None when no validation was due)."""
        if self.val_set is None or (epoch % self.cfg.val_every and epoch != self.epochs):
            return None
        metrics, _ = shot_metrics(self.model, self.val_set, self.train_counts, self.cfg, self.device, self.dist,
                                  f"val {self.phase} {epoch}")
        record = {"phase": self.phase, "epoch": epoch, "val": {k: metrics[k] for k in (*ACCURACIES, "num_images")}}
        if self.cfg.select == "best_val" and (self.best is None or metrics["overall"] > self.best["overall"]):
            self.best = {"epoch": epoch, "overall": metrics["overall"]}
            self.best_tensors = {k: v.detach().clone() for k, v in self.model.trained_tensors().items()}
            if self.dist.is_main:
                save_tensors(self.out_dir / files.BEST_VAL, self.best_tensors, {"phase": self.phase, **self.best})
        return record

    def finish(self) -> dict[str, Any] | None:
        """With ``select: best_val``, load the best epoch's tensors into the model and return which it was."""
        if self.best is None:
            return None
        load_strict(self.model, self.best_tensors, str(self.out_dir / files.BEST_VAL),
                    expected=self.model.trained_tensors())
        return self.best

    def cleanup(self) -> None:
        """After the phase is saved: the best epoch is the checkpoint now."""
        if self.dist.is_main:
            (self.out_dir / files.BEST_VAL).unlink(missing_ok=True)
