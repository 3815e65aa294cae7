"""The run directory: every file lpt writes into it, how it is written and how it is read back.

================== =========================================================================
``config.yaml``    the resolved config (written first, with ``classes.json``)
``classes.json``   class names and training images per class (shot groups come from these)
``metrics.jsonl``  one record per epoch, per validation (data.val_list) and per phase evaluation
``resume.safetensors`` the resumable state (trained tensors, optimizer, RNG, position), marked
                   ``finished`` once the run is done
``model.safetensors`` what was trained (prompts, keys, classifier; the backbone for full
                   fine-tuning) with metadata: phase, backbone identity, model config
``metrics.json``   the final shot-split metrics
``run.json``       method, backbone identity, per-phase summary (accuracy, size, speed), timings
``predictions.npz`` labels, predictions, top-5 and matched groups of the final evaluation
``train.log``, ``tensorboard/``, ``bad_images.txt`` (with ``data.skip_bad_images``)
``tracking.json``  with ``log.wandb`` / ``log.mlflow``: the W&B and MLflow run ids, so that a resumed run
                   continues the same tracked runs; ``wandb/``: W&B's own files (offline mode: for ``wandb sync``)
``best_val.safetensors`` while a phase runs with ``select: best_val``: its best validation epoch so far
``backbone.safetensors`` an imported official run's ViT (``model.checkpoint`` names it relatively)
``text_embeddings.safetensors`` with ``model.head_init: text``: the class names' CLIP text embeddings
                   the classifier started from, with the prompts' names, templates and text tower
================== =========================================================================

Reports (``report.*``) and analyses (``analysis*``) are written later by ``lpt report`` and
``lpt analyze``; ``lpt demo`` trains its linear probe into ``linear_probe/``. Every file is written atomically (a
temporary file, then a rename). A fresh run only starts in a new or empty directory (:func:`check_claim`), or
over a run that never saved a step: a finished or interrupted run is only deleted with ``--overwrite``, and then
only when the directory holds nothing lpt did not write; any other non-empty folder is never written over.
"""

from __future__ import annotations

import copy
import fcntl
import fnmatch
import io
import json
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpt.config import Config, ConfigError, from_dict, read_yaml, save_config, to_dict
from lpt.methods import get_method
from lpt.model.state import META_KEY, CheckpointError, read_tensors, save_tensors
from lpt.utils import atomic_write_bytes, atomic_write_json, atomic_write_text, log
from lpt.version import __version__

CONFIG, CLASSES, METRICS, METRICS_LOG = "config.yaml", "classes.json", "metrics.json", "metrics.jsonl"
RUN_INFO, CHECKPOINT, RESUME = "run.json", "model.safetensors", "resume.safetensors"
PREDICTIONS, BACKBONE, BEST_VAL = "predictions.npz", "backbone.safetensors", "best_val.safetensors"
PREDICTION_ARRAYS = ("labels", "preds", "top5", "groups")  # what predictions.npz keeps of an evaluation
TRAIN_LOG, TENSORBOARD, BAD_IMAGES, LOCK = "train.log", "tensorboard", "bad_images.txt", ".lock"
TEXT_EMBEDDINGS, TRACKING, DEMO_PROBE = "text_embeddings.safetensors", "tracking.json", "linear_probe"
WRITTEN = (CONFIG, CLASSES, METRICS, METRICS_LOG, RUN_INFO, CHECKPOINT, RESUME, PREDICTIONS, BACKBONE, BEST_VAL,
           TRAIN_LOG, TENSORBOARD, BAD_IMAGES, LOCK, TEXT_EMBEDDINGS, TRACKING, "wandb",
           "report.html", "report.md", "report_*.png", "analysis.json", "analysis_*.png")  # lpt report, lpt analyze


# ----------------------------------------------------------------------------- claiming a directory


def _contents(run_dir: Path) -> list[Path]:
    """What a directory holds besides a (possibly stale) lock file."""
    return [p for p in run_dir.iterdir() if p.name != LOCK]


def run_state(run_dir: Path) -> str:
    """``new`` (absent or empty, a stale lock aside), ``finished``, ``interrupted`` (a resumable state),
    ``imported`` (trained weights without a training record: ``lpt import-official``), ``started`` (set up, stopped
    before its first save) or ``other`` (not an lpt run, or not a directory)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        return "other"
    if not run_dir.exists() or not _contents(run_dir):
        return "new"
    if not (run_dir / CONFIG).is_file() or not (run_dir / CLASSES).is_file():
        return "other"
    if (run_dir / METRICS).is_file() and (run_dir / RUN_INFO).is_file():
        return "finished"
    if (run_dir / RESUME).is_file():
        return "interrupted"
    return "imported" if any((run_dir / f).is_file() for f in (RUN_INFO, CHECKPOINT, BACKBONE)) else "started"


def _written_by_lpt(path: Path) -> bool:
    """Whether ``path``, in a run directory, is one of the files lpt writes there (or the temporary file of one, left
    by a kill during its atomic write), or the demo's linear probe run."""
    name = path.name
    if name.startswith(".") and name.endswith(".tmp"):  # lpt.utils.atomic_write_bytes: .NAME.XXXX.tmp
        name = name[1:].rsplit(".", 2)[0]
    if name == DEMO_PROBE and path.is_dir():
        return run_state(path) not in ("new", "other")
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in WRITTEN)


def foreign_files(run_dir: Path) -> list[str]:
    """What an lpt run directory holds that lpt did not write (folders with a trailing ``/``), sorted."""
    return sorted(p.name + ("/" if p.is_dir() else "") for p in _contents(Path(run_dir)) if not _written_by_lpt(p))


def _a(state: str) -> str:
    return f"{'an' if state[0] in 'aeiou' else 'a'} {state}"


def check_claim(run_dir: Path, overwrite: bool = False) -> str:
    """Refuse a directory a fresh run may not write into, touching nothing; returns its state. New or empty
    directories are fine, and so is a run that never saved a step (``started``: a failed start, deleted by
    :func:`clear`); a finished or interrupted run only with ``overwrite``; never a folder that holds files lpt did
    not write."""
    state = run_state(run_dir)
    if state == "other":
        what = "a non-empty folder that is not an lpt run" if Path(run_dir).is_dir() else "a file, not a folder"
        raise ConfigError(f"--out {run_dir} is {what}; choose a new or empty directory (nothing was written)")
    if state in ("finished", "interrupted", "imported") and not overwrite:
        hint = (f"continue it with `lpt train --resume {run_dir}`, " if state == "interrupted" else "")
        raise ConfigError(f"--out {run_dir} already holds {_a(state)} lpt run; {hint}choose a new directory, or add "
                          "--overwrite to delete it first (nothing was written)")
    mine = foreign_files(run_dir) if state != "new" else []
    if mine:
        raise ConfigError(f"--out {run_dir} holds {_a(state)} lpt run and files lpt did not write: {', '.join(mine)}; "
                          "move them away or choose a new directory (nothing was deleted)")
    return state


def clear(run_dir: Path) -> None:
    """Delete an earlier lpt run's files (``--overwrite``, or a run that never saved a step), so that none of them
    survives beside the new run's; refuses, deleting nothing, when the directory holds files lpt did not write."""
    state = check_claim(run_dir, overwrite=True)
    if state != "new":
        log.warning("deleting the %s run in %s%s", state, run_dir,
                    " (it never saved a step)" if state == "started" else " (--overwrite)")
    for child in _contents(Path(run_dir)):
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


@contextmanager
def run_lock(run_dir: Path):
    """Hold an exclusive lock on the run directory; refuse one that another process holds. The lock file goes
    when the lock is released, and the directory too if it was made here and nothing else was written (a start
    that failed).

    A POSIX record lock (``lockf``), not ``flock``: loader processes forked from the holder do not inherit it, so
    a run killed with SIGKILL can be resumed at once, while its orphaned workers are still shutting down."""
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = _acquire(run_dir / LOCK)
    try:
        yield
    finally:
        (run_dir / LOCK).unlink(missing_ok=True)  # still holding the lock: no one else is here
        if created and not _contents(run_dir):
            run_dir.rmdir()
        fcntl.lockf(fh, fcntl.LOCK_UN)
        fh.close()


def _acquire(path: Path):
    """The lock file ``path`` opened and locked, holding this process's id; ConfigError if another process holds
    it. A file its holder deleted on release while this process opened it is not the lock: open the new one."""
    while True:
        fh = open(path, "a+")
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "unknown"
            fh.close()
            raise ConfigError(f"run directory {path.parent} is in use by another lpt process (pid {owner})") from None
        if path.is_file() and os.path.samestat(os.fstat(fh.fileno()), path.stat()):
            break
        fh.close()
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def in_use(run_dir: Path) -> bool:
    """Whether a process holds the run directory's lock (:func:`run_lock`), that is, trains or evaluates into it."""
    path = Path(run_dir) / LOCK
    if not path.is_file():
        return False
    with open(path, "a+") as fh:
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.lockf(fh, fcntl.LOCK_UN)
        return False


# ----------------------------------------------------------------------------- writing


def write_setup(run_dir: Path, cfg: Config, classes: list[str], train_counts: list[int]) -> None:
    """The files that describe a run before it trains: config.yaml and classes.json."""
    save_config(cfg, run_dir / CONFIG)
    atomic_write_json(run_dir / CLASSES, {"classes": classes, "train_counts": train_counts})


def open_train_log(run_dir: Path) -> logging.Handler:
    """train.log beside the console log; the caller removes and closes the handler."""
    handler = logging.FileHandler(run_dir / TRAIN_LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return handler


def write_bad_images(run_dir: Path, lines: list[str]) -> Path:
    atomic_write_text(run_dir / BAD_IMAGES, "".join(line + "\n" for line in lines))
    return run_dir / BAD_IMAGES


def append_record(run_dir: Path, record: dict) -> None:
    """One line of metrics.jsonl (an epoch's or a phase evaluation's record)."""
    with (run_dir / METRICS_LOG).open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def count_records(run_dir: Path) -> int:
    path = run_dir / METRICS_LOG
    return len(path.read_text().splitlines()) if path.is_file() else 0


def truncate_records(run_dir: Path, keep: int) -> None:
    """Drop the records written after the state a run resumes from."""
    path = run_dir / METRICS_LOG
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:keep]))


def write_checkpoint(run_dir: Path, model, identity, cfg: Config) -> None:
    """model.safetensors: what ``model`` (an LPT) trained, with the lpt version, its ``phase`` and ``num_classes``,
    the ``backbone``'s identity and the config's ``model`` section."""
    meta = {"lpt_version": __version__, "phase": model.phase, "num_classes": model.num_classes,
            "backbone": identity.to_dict(), "model": to_dict(cfg)["model"]}
    save_tensors(run_dir / CHECKPOINT, model.trained_tensors(), meta)


def write_text_embeddings(run_dir: Path, embeddings: torch.Tensor, meta: dict[str, Any]) -> None:
    """text_embeddings.safetensors: the class names' unit-norm text embeddings ``[C, E]`` (tensor ``embeddings``) and
    what made them (``names``, ``templates``, ``text``, ``text_pretrained``: the weights the text tower read,
    ``logit_scale``)."""
    save_tensors(run_dir / TEXT_EMBEDDINGS, {"embeddings": embeddings}, meta)


def read_text_embeddings(run_dir: Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """The class names' text embeddings of a run that started its classifier from them, and their metadata."""
    tensors, meta = read_tensors(Path(run_dir) / TEXT_EMBEDDINGS)
    return tensors["embeddings"], meta


def write_tracking(run_dir: Path, ids: dict[str, str]) -> None:
    """tracking.json: the run's id in each experiment tracker (``wandb``, ``mlflow``)."""
    atomic_write_json(run_dir / TRACKING, ids)


def read_tracking(run_dir: Path) -> dict[str, str]:
    """The tracked run ids of tracking.json; empty for a run that has none yet."""
    path = Path(run_dir) / TRACKING
    return _read_json(path) if path.is_file() else {}


def write_metrics(run_dir: Path, metrics: dict) -> None:
    """metrics.json: the final evaluation's shot-split metrics."""
    atomic_write_json(run_dir / METRICS, metrics)


def write_run_info(run_dir: Path, info: dict) -> None:
    """run.json: method, backbone identity, per-phase summary, timings (or, imported, where the run came from)."""
    atomic_write_json(run_dir / RUN_INFO, info)


def write_predictions(run_dir: str | Path, outputs: dict[str, np.ndarray]) -> Path:
    """Save an evaluation's arrays (``labels``, ``preds``, ``top5``, ``groups``) as ``predictions.npz``; its
    ``logits`` stay out (``[N, C]`` floats: 0.8 GB on iNaturalist 2018's test set)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in outputs.items() if k in PREDICTION_ARRAYS})
    path = Path(run_dir) / PREDICTIONS
    atomic_write_bytes(path, buf.getvalue())
    return path


# ----------------------------------------------------------------------------- reading


def read_config(run_dir: Path) -> Config:
    """A run's config. A relative ``model.checkpoint`` that names a file inside the run directory is read from
    there (an imported official run carries its backbone), so a run directory can be moved or copied whole."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"{run_dir} is not an lpt run directory (no {CONFIG})")
    cfg = from_dict(read_yaml(run_dir / CONFIG))
    path = Path(cfg.model.checkpoint)
    if cfg.model.checkpoint and not path.is_absolute() and (run_dir / path).is_file():
        cfg = copy.deepcopy(cfg)
        cfg.model.checkpoint = str(run_dir / path)
    return cfg


def read_classes(run_dir: Path) -> tuple[list[str], list[int]]:
    """Class names and training counts; ConfigError if the run never finished setting up."""
    if not (Path(run_dir) / CLASSES).is_file():
        raise ConfigError(f"{run_dir} has no {CLASSES}; the run did not finish setting up")
    info = _read_json(Path(run_dir) / CLASSES)
    return info["classes"], [int(n) for n in info["train_counts"]]


def read_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The trained tensors and metadata of model.safetensors."""
    return read_tensors(Path(run_dir) / CHECKPOINT)


def _registered(method: str):
    """The method class a run names, or None for a name no longer registered (a run of another lpt version)."""
    try:
        return get_method(method)
    except ConfigError:
        return None


def trains_on_features(method: str) -> bool:
    """Whether a method trains on features computed once (its throughput counts features, not images)."""
    cls = _registered(method)
    return cls is not None and cls.features


def trains_anything(method: str) -> bool:
    """False for a method without a phase (zero-shot CLIP: its classifier is computed, not trained)."""
    cls = _registered(method)
    return cls is None or bool(cls.phases)


def method_label(method: str, phase: int | None = None) -> str:
    """Readable method name, with the phase for a two-phase method (``LPT phase 2``)."""
    cls = _registered(method)
    if cls is None:
        return method
    return f"{cls.label} phase {phase}" if phase and len(cls.phases) > 1 else cls.label


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
        vals: validation records (``data.val_list``) from ``metrics.jsonl``, in order (the last of a repeated
            (phase, epoch) wins).
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
    vals: list[dict[str, Any]]
    predictions: dict[str, np.ndarray] | None

    @property
    def method(self) -> str:
        return self.info.get("method") or self.config.get("method", "lpt")

    @property
    def method_label(self) -> str:
        """Readable method name, with the phase for LPT (``LPT phase 2``)."""
        return method_label(self.method, self.metrics.get("phase", 1))

    @property
    def trained_params(self) -> int | None:
        """Parameters the run trained (:func:`trained_params`); 0 for a method that trains nothing (zero-shot
        CLIP, whose checkpoint holds its computed classifier)."""
        return run_trained_params(self.path, self.method)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc})") from None


def _read_jsonl(path: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """The training, evaluation and validation records of metrics.jsonl. A resumed run repeats the records of the
    epochs it trained again: the last of each wins, and moves to the end."""
    kinds: dict[str, dict[Any, dict]] = {"epoch": {}, "eval": {}, "val": {}}
    lines = path.read_text().splitlines() if path.is_file() else []
    for record in (json.loads(line) for line in lines if line.strip()):
        kind = "val" if "val" in record else "epoch" if "epoch" in record else "eval" if "eval" in record else None
        if kind is not None:
            key = record["phase"] if kind == "eval" else (record["phase"], record["epoch"])
            kinds[kind].pop(key, None)
            kinds[kind][key] = record
    return tuple(list(records.values()) for records in kinds.values())


def read_run(run_dir: str | Path) -> RunFiles:
    """Read a run directory; raise ConfigError naming what is missing."""
    path = Path(run_dir)
    for name in (CONFIG, CLASSES, METRICS):
        if not (path / name).is_file():
            hint = " (evaluate it with `lpt eval`, or train it to the end)" if name == METRICS else ""
            raise ConfigError(f"{path} has no {name}: not a finished lpt run{hint}")
    classes, counts = read_classes(path)
    epochs, evals, vals = _read_jsonl(path / METRICS_LOG)
    return RunFiles(path=path, config=read_yaml(path / CONFIG), classes=classes, train_counts=counts,
                    metrics=_read_json(path / METRICS), info=read_info(path), epochs=epochs, evals=evals, vals=vals,
                    predictions=read_predictions(path))


def read_info(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` (backbone identity, per-phase summary, timings); empty if absent."""
    path = Path(run_dir) / RUN_INFO
    return _read_json(path) if path.is_file() else {}


def read_predictions(run_dir: str | Path) -> dict[str, np.ndarray] | None:
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable predictions file ({exc}); delete it and run `lpt report` "
                          "to compute it again") from None


def run_trained_params(run_dir: str | Path, method: str) -> int | None:
    """Parameters a run of ``method`` trained (:func:`trained_params`); 0 for a method that trains nothing; for cRT
    and LWS, whose checkpoint holds the run they started from too, those their phase trained (run.json)."""
    cls = _registered(method)
    if cls is not None and cls.retrains_init:
        return sum(p["trainable_params"] for p in (read_info(run_dir).get("phases") or {}).values())
    return trained_params(run_dir) if trains_anything(method) else 0


def trained_params(run_dir: str | Path) -> int | None:
    """Parameters the run trained, from the shapes in ``model.safetensors`` (no tensor is read).

    The checkpoint holds every tensor lpt may train; the group pool (``pool.*``) only trains in
    phase 2, so a phase-1 model's pool is left out. None when there is no checkpoint.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
            phase = int(meta.get("phase", 1))
            return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys()
                       if phase == 2 or not k.startswith("pool."))
    except (SafetensorError, ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({exc})") from None
