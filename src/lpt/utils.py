"""Small helpers shared across lpt: atomic file writes, seeding, device choice, autocast, logging."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("lpt")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (a handler bound at first use breaks once that
    stream is replaced or closed, as in embedding applications and test runners)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s lpt %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def first_line(exc: BaseException, default: str = "") -> str:
    """The first line of an exception's message, ``default`` where it has none: timm's, torch's and open_clip's
    messages can run over many lines, and lpt's errors are one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else default


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: leave SIGINT and SIGTERM to the main process. ``timeout``, Ctrl-C and Slurm
    signal the whole process group; a worker that died of it would fail the main process's next batch before
    the main process could save its state and stop (its loader ends the workers itself)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """Mixed precision where asked for on a GPU; plain fp32 otherwise (the CPU always runs fp32)."""
    if precision == "fp32" or device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=DTYPES[precision])


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def set_threads(n: int) -> int:
    """Set torch's intra-op threads to ``n`` (0: :func:`usable_cores`) and return the number set; torch's own
    default counts every core of the machine, which oversubscribes a shared or CPU-limited one."""
    if n < 0:
        raise ValueError(f"threads is {n}; expected 0 (the usable cores) or more")
    n = n or usable_cores()
    torch.set_num_threads(n)
    return n


class DeviceError(ValueError):
    """A device this machine or torch does not have (the command line turns it into one line)."""


DEVICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` (config key ``device``, ``--device``) stands for; ``auto`` is the GPU if there is
    one. DeviceError for a name torch does not know and for a device this machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device '{name}' is not a torch device; expected {DEVICES}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device '{name}' was asked for but CUDA is not available on this machine "
                          f"(torch {torch.__version__}); use device=cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DeviceError(f"device '{name}': this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device '{name}' was asked for but MPS is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device '{name}': lpt runs on {DEVICES}")
    return device
