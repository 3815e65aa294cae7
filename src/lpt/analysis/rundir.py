"""Reading a finished run directory for reports and comparisons, without building a model.

A run written by ``lpt train`` holds ``config.yaml``, ``classes.json``, ``metrics.jsonl``,
``metrics.json``, ``run.json``, ``model.safetensors`` and, since reports exist, ``predictions.npz``
(labels, predictions and matched groups of the final evaluation).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lpt.config import ConfigError, read_yaml
from lpt.utils import atomic_write_bytes

PREDICTIONS = "predictions.npz"
METHOD_NAMES = {"lpt": "LPT", "lpt_joint": "LPT joint", "vpt": "VPT", "linear": "linear probe", "full": "full FT"}


@dataclass
class RunFiles:
    """What a run directory says about itself.

    Attributes:
        path: the run directory.
        config: the resolved configuration as a plain dict.
        classes: class names, indexed by label.
        train_counts: training images per class.
        metrics: ``metrics.json`` (final evaluation).
        info: ``run.json`` (backbone identity, per-phase summary, timings); empty if absent.
        epochs: per-epoch training records from ``metrics.jsonl``, in order (the last record of a
            repeated (phase, epoch) wins, as after a resumed run).
        evals: per-phase evaluation records from ``metrics.jsonl``.
        predictions: ``predictions.npz`` as arrays (``labels``, ``preds``, ``top5``, maybe ``groups``),
            or None.
    """

    path: Path
    config: dict[str, Any]
    classes: list[str]
    train_counts: list[int]
    metrics: dict[str, Any]
    info: dict[str, Any]
    epochs: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    predictions: dict[str, np.ndarray] | None

    @property
    def method(self) -> str:
        return self.info.get("method") or self.config.get("method", "lpt")

    @property
    def method_label(self) -> str:
        """Readable method name, with the phase for LPT (``LPT phase 2``)."""
        name = METHOD_NAMES.get(self.method, self.method)
        return f"{name} phase {self.metrics.get('phase', 1)}" if self.method == "lpt" else name


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc})") from None


def _read_jsonl(path: Path) -> tuple[list[dict], list[dict]]:
    epochs: dict[tuple[str, int], dict] = {}
    evals: dict[str, dict] = {}
    if not path.is_file():
        return [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "epoch" in record:
            epochs.pop((record["phase"], record["epoch"]), None)  # re-insert: a repeated epoch moves to the end
            epochs[(record["phase"], record["epoch"])] = record
        elif "eval" in record:
            evals.pop(record["phase"], None)
            evals[record["phase"]] = record
    return list(epochs.values()), list(evals.values())


def read_run(run_dir: str | Path) -> RunFiles:
    """Read a run directory; raise ConfigError naming what is missing."""
    path = Path(run_dir)
    for name in ("config.yaml", "classes.json", "metrics.json"):
        if not (path / name).is_file():
            hint = " (evaluate it with `lpt eval`, or train it to the end)" if name == "metrics.json" else ""
            raise ConfigError(f"{path} has no {name}: not a finished lpt run{hint}")
    classes = _read_json(path / "classes.json")
    info = _read_json(path / "run.json") if (path / "run.json").is_file() else {}
    epochs, evals = _read_jsonl(path / "metrics.jsonl")
    return RunFiles(path=path, config=read_yaml(path / "config.yaml"), classes=classes["classes"],
                    train_counts=[int(n) for n in classes["train_counts"]], metrics=_read_json(path / "metrics.json"),
                    info=info, epochs=epochs, evals=evals, predictions=read_predictions(path))


def write_predictions(run_dir: str | Path, outputs: dict[str, np.ndarray]) -> Path:
    """Save an evaluation's arrays (``labels``, ``preds``, ``top5``, ``groups``) as ``predictions.npz``, atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in outputs.items()})
    path = Path(run_dir) / PREDICTIONS
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_predictions(run_dir: str | Path) -> dict[str, np.ndarray] | None:
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def trained_params(run_dir: str | Path) -> int | None:
    """Parameters the run trained, from the shapes in ``model.safetensors`` (no tensor is read).

    The checkpoint holds every tensor lpt may train; the group pool (``pool.*``) only trains in
    phase 2, so a phase-1 model's pool is left out. None when there is no checkpoint.
    """
    from safetensors import safe_open

    path = Path(run_dir) / "model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads((f.metadata() or {}).get("lpt", "{}"))
        phase = int(meta.get("phase", 1))
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys()
                   if phase == 2 or not k.startswith("pool."))
