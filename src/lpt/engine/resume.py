"""Resumable training state: what a run needs to continue exactly where it stopped.

A run's resumable state (``resume.safetensors`` in its directory; ``lpt.run.files``) holds the
trained tensors, the optimizer's tensors and the torch RNG states as tensors, and everything else
(phase, epoch, step, running sums, finished epochs' records, numpy and Python RNG states) as JSON
metadata. Written atomically, so
a run killed at any moment leaves the previous state intact.
"""

from __future__ import annotations

import random
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpt.model.state import read_tensors, save_tensors
from lpt.utils import STOP_SIGNALS


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every generator lpt draws from: torch CPU (and CUDA) as tensors, numpy and Python as JSON."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = state
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    meta = {"numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": [py_version, list(py_state), py_gauss]}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng/cuda"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, keys, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))


def _split_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, plain = {}, {}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{name}"] = value
            else:
                plain[f"{idx}/{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["plain"].items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_resume(path: Path, trained: dict[str, torch.Tensor], position: dict[str, Any]) -> None:
    """Write the resumable state. ``position`` holds the phase index, the summary of finished phases
    and, under ``phase``, the trainer's position (epoch, step, sums, records, optimizer state dict)."""
    position = dict(position)
    rng_tensors, rng_meta = capture_rng()
    tensors = {f"model/{k}": v for k, v in trained.items()} | rng_tensors
    phase = position.get("phase")
    if phase is not None and phase.get("optimizer") is not None:
        phase = dict(phase)
        opt_tensors, phase["optimizer"] = _split_optimizer(phase["optimizer"])
        tensors |= opt_tensors
        position["phase"] = phase
    save_tensors(path, tensors, {"position": position, "rng": rng_meta})


def load_resume(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Any]:
    """Trained tensors, position (with ``optimizer`` rebuilt) and a callable restoring every RNG
    (call it once the model is built, since building reseeds)."""
    tensors, meta = read_tensors(path)
    position = meta["position"]
    phase = position.get("phase")
    if phase is not None and phase.get("optimizer") is not None:
        phase["optimizer"] = _join_optimizer(tensors, phase["optimizer"])
    trained = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    return trained, position, lambda: restore_rng(tensors, meta["rng"])


class StopRequest:
    """Turns SIGINT / SIGTERM into a flag the training loop reads at the next step boundary: calling it returns
    the signal received (None before one)."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> int | None:
        return self.signal

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    @contextmanager
    def installed(self):
        previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
