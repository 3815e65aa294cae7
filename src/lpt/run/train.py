"""Training a config into a run directory: set up, train each phase of the method, write the results.

The files and their format are :mod:`lpt.run.files`; the loop is :mod:`lpt.engine`; what trains and
with which loss is the method (:mod:`lpt.methods`). This module only puts them in order, and makes
the run resumable: a resumable state after every epoch (and every ``checkpoint_every`` steps, and on
SIGINT / SIGTERM), from which ``train(..., resume=True)`` continues exactly.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lpt.version import __version__
from lpt.config import Config, ConfigError, describe, from_dict, to_dict
from lpt.data import (DataSplits, TrainImages, TrainStream, build_datasets, build_train_stream, build_transform,
                      build_val_dataset, train_images, with_eval_transform)
from lpt.data.datasets import FeatureDataset
from lpt.distributed import init_distributed
from lpt.engine.resume import StopRequest, load_resume, save_resume
from lpt.engine.step import Env
from lpt.engine.trainer import Cadence, Interrupted, PhaseTrainer
from lpt.evaluation import features
from lpt.methods import Method, check_config, get_method
from lpt.metrics import ACCURACIES, GROUPS
from lpt.model import LPT, BackboneIdentity
from lpt.model.build import check_fits, warn_mismatches
from lpt.model.lpt import GROUP_PROMPTS
from lpt.model.state import load_strict, tensors_fingerprint
from lpt.run import files
from lpt.run.head_init import init_head
from lpt.run.load import build_run_model, evaluate_with, load_trained, shot_metrics
from lpt.run.tracking import Trackers, check_trackers, open_trackers
from lpt.run.validation import Validation
from lpt.utils import log, resolve_device, set_threads


def train(cfg: Config, out_dir: str | Path, resume: bool = False, overwrite: bool = False) -> dict:
    """Train every phase of ``cfg`` into ``out_dir``; returns the final metrics (also in metrics.json).

    A fresh run needs a new or empty ``out_dir``, or one whose run never saved a step (``overwrite`` deletes any
    earlier lpt run there first, but never files lpt did not write);
    with ``resume``, it continues from ``out_dir``'s resumable state (the config must be the run's own).
    SIGINT / SIGTERM save that state at the next step boundary and raise ``Interrupted``. Config errors,
    those that depend on the backbone included, are raised before any data loads.
    """
    check_config(cfg)
    if get_method(cfg.method).retrains_init:
        _check_init_model(cfg)
    check_fits(cfg.model, cfg.data.img_size)
    check_trackers(cfg)
    warn_mismatches(cfg.model, cfg.data.mean, cfg.data.std)
    if cfg.threads:
        set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    dist, device = init_distributed(device)
    out_dir = Path(out_dir)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    # before the lock file: a refused folder is left untouched
    state = files.check_claim(out_dir, overwrite) if dist.is_main and not resume else "new"
    with files.run_lock(out_dir) if dist.is_main else nullcontext(), StopRequest().installed() as stop:
        if state != "new":  # an earlier run to delete: with overwrite, or one that never saved a step
            files.clear(out_dir)
        return _train_locked(cfg, out_dir, resume, Env(device, _precision(cfg.precision, device), dist, cfg.progress),
                             stop)


def _precision(precision: str, device: torch.device) -> str:
    """What the run computes in: mixed precision is a GPU's (lpt.utils.autocast); elsewhere fp32, said once."""
    if precision != "fp32" and device.type != "cuda":
        log.warning("precision %s applies on a GPU; this %s run computes in fp32 (run.json records it)", precision,
                    device.type)
        return "fp32"
    return precision


@dataclass
class _Training:
    """What the steps of one ``train`` call share: built by ``_set_up``, then advanced phase by phase.

    ``start`` is the resumable position the run starts from (a fresh run's: phase 0, nothing written).
    ``summary`` (per finished phase) and ``metrics`` (of the last evaluation) grow as phases finish and go
    into every resumable save; ``outputs`` are the last evaluation's arrays, for predictions.npz. ``trackers`` are
    the main process's (TensorBoard, W&B, MLflow), none on the other ranks.
    """

    cfg: Config
    out_dir: Path
    env: Env
    splits: DataSplits
    model: LPT
    identity: BackboneIdentity
    start: dict[str, Any]
    resumed: bool
    summary: dict[str, Any]
    metrics: dict | None
    val: Any = None
    outputs: dict | None = None
    text: dict | None = None  # head_init=text: the class names' embeddings, for text_embeddings.safetensors
    trackers: Trackers = field(default_factory=lambda: Trackers([]))

    def record(self, record: dict) -> None:
        """One record (an epoch's, a validation's, a phase evaluation's) to metrics.jsonl and the trackers."""
        if self.env.dist.is_main:
            files.append_record(self.out_dir, record)
        self.trackers.record(record)

    def save(self, index: int, phase_position: dict | None, **extra: Any) -> None:
        """Write the resumable state (main process): resume at phase ``index``, at ``phase_position`` within it."""
        if self.env.dist.is_main:
            save_resume(self.out_dir / files.RESUME, self.model.trained_tensors(), {
                "phase_index": index, "phase": phase_position, "summary": self.summary, "metrics": self.metrics,
                "jsonl_lines": files.count_records(self.out_dir), "config": to_dict(self.cfg)} | extra)


def _train_locked(cfg: Config, out_dir: Path, resume: bool, env: Env, stop: StopRequest) -> dict:
    """``train`` once the run lock and the signal handlers are held: set up, train the phases, write the results;
    train.log is closed and the tracked runs end (finished, interrupted or failed) even when training fails."""
    started = time.time()
    run = _set_up(cfg, out_dir, resume, env)
    handler = _open_run_dir(run) if env.dist.is_main else None
    log.info("run %s%s: %d classes, %d training and %d test images, backbone %s (%s)", out_dir,
             f" resumed at phase {run.start['phase_index'] + 1}" if run.resumed else "", run.splits.num_classes,
             len(run.splits.train), len(run.splits.test), run.identity.name, run.identity.source)
    status = "failed"
    try:
        if env.dist.is_main:
            run.trackers = open_trackers(cfg, out_dir)
        _run_phases(run, stop)
        if env.dist.is_main:
            _write_results(run, started)
        status = "finished"
    except Interrupted:
        status = "interrupted"
        raise
    finally:
        run.trackers.close(status)
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
    return run.metrics


def _set_up(cfg: Config, out_dir: Path, resume: bool, env: Env) -> _Training:
    """Data and model on the device, restored from the resumable state with ``resume`` (a finished run is
    refused before any data loads), else from ``cfg.init`` when set. Every process runs it: it writes nothing."""
    state = _read_resume(out_dir, cfg) if resume else None
    splits = build_datasets(cfg.data)
    model, identity = build_run_model(cfg, splits.num_classes)
    if state is not None:
        load_strict(model, state[0], str(out_dir / files.RESUME), expected=model.trained_tensors())
        state[2]()  # RNG states of the moment the run stopped
    elif cfg.init and get_method(cfg.method).retrains_init:  # the whole run (cRT, LWS); its phase too
        load_trained(model, identity, Path(cfg.init), skip=("class_scale",))
        get_method(cfg.method).start_from_init(model)
    elif cfg.init:  # phase 1's tensors only: group prompts and keys start fresh, whatever m or k the run uses
        load_trained(model, identity, Path(cfg.init), skip=(GROUP_PROMPTS,))
    model.to(env.device)
    text = None
    if state is None and not cfg.init and cfg.model.head_init != "random":
        text = init_head(model, splits, cfg, env)
    if cfg.compile:
        model.compile_forwards()
    start = state[1] if state is not None else {"phase_index": 0, "phase": None, "summary": {}, "jsonl_lines": 0}
    return _Training(cfg, out_dir, env, splits, model, identity, start, resumed=state is not None,
                     summary=dict(start["summary"]), metrics=start.get("metrics"), val=build_val_dataset(cfg.data),
                     text=text)


# model keys that may differ from the init run's for crt / lws: how the classifier trains and starts (it is the run's),
# and where the backbone's weights are read (load_trained checks their fingerprint)
FREE_MODEL_KEYS = ("checkpoint", "feature_dropout", "head_init", "text", "text_pretrained", "templates")


def _check_init_model(cfg: Config) -> None:
    """A method that re-trains the classifier of the run ``init`` builds that run's model: refuse another model
    section (but for :data:`FREE_MODEL_KEYS`), naming the first key that differs."""
    theirs = to_dict(files.read_config(Path(cfg.init)).model)
    for key, value in to_dict(cfg.model).items():
        if key not in FREE_MODEL_KEYS and theirs.get(key) != value:
            raise ConfigError(f"config key 'model.{key}' is {value!r}, but the run init={cfg.init} has "
                              f"{theirs.get(key)!r}; method '{cfg.method}' re-trains that run's classifier on its "
                              f"model: set model.{key}={theirs.get(key)}")


def _read_resume(out_dir: Path, cfg: Config):
    """The resumable state of ``out_dir``; ConfigError for a run that never saved one, that already finished, or
    whose config differs from ``cfg`` (config.yaml edited since)."""
    if not (out_dir / files.RESUME).is_file():
        raise ConfigError(f"{out_dir} has no {files.RESUME}: nothing to resume (the run never saved a step); start it "
                          f"over with `lpt train --config {out_dir / files.CONFIG} --out {out_dir}`")
    state = load_resume(out_dir / files.RESUME)
    if state[1].get("finished"):
        raise ConfigError(f"run {out_dir} already finished; its metrics are in {out_dir / files.METRICS}")
    if "config" in state[1]:  # a state written by an older lpt carries none
        _check_unchanged(cfg, from_dict(state[1]["config"]), out_dir)
    return state


def _check_unchanged(cfg: Config, started: Config, out_dir: Path) -> None:
    """Refuse to resume under a config other than the one the run started with: the rest of the run would train
    on another schedule than its first part, and config.yaml would no longer say what trained."""
    now, then = dict((k, v) for k, v, _ in describe(cfg)), dict((k, v) for k, v, _ in describe(started))
    changed = [f"{k} ({then.get(k)!r}, now {now.get(k)!r})" for k in then | now if now.get(k) != then.get(k)]
    if changed:
        config = out_dir / files.CONFIG
        raise ConfigError(f"{config} differs from the config the run started with: {', '.join(changed)}; restore it "
                          f"to resume, or train a new run with `lpt train --config {config} --out NEW_DIR`")


def _open_run_dir(run: _Training) -> logging.Handler:
    """Main process, before training: the run directory with its log and the files that describe the run, and
    metrics.jsonl cut back to the state the run resumes from. The caller closes the log."""
    out_dir, splits = run.out_dir, run.splits
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = files.open_train_log(out_dir)
    files.write_setup(out_dir, run.cfg, splits.classes, splits.train_counts)
    if run.text is not None:
        files.write_text_embeddings(out_dir, run.text["embeddings"], run.text["meta"])
    if run.cfg.data.skip_bad_images:  # the scan ran in build_datasets; list what it dropped
        listed = files.write_bad_images(out_dir, [b.line() for b in splits.bad_images])
        log.log(logging.WARNING if splits.bad_images else logging.INFO,
                "skipped %d unreadable images (data.skip_bad_images), listed in %s", len(splits.bad_images), listed)
    files.truncate_records(out_dir, run.start["jsonl_lines"])
    return handler


def _run_phases(run: _Training, stop: StopRequest) -> None:
    """Train, in order, the phases the run has not finished (a resumed run skips those before its start)."""
    method = get_method(run.cfg.method)(run.cfg, run.splits.train_counts).to(run.env.device)
    if not run.cfg.phases and run.start["phase_index"] == 0:  # a method that trains nothing: the model as built
        run.model.requires_grad_(False)
        _finish_phase(run, 0, method.name, [], None)
    for index, phase in enumerate(run.cfg.phases):
        if index >= run.start["phase_index"]:
            _run_phase(run, method, index, phase, stop)


def _run_phase(run: _Training, method: Method, index: int, phase: str, stop: StopRequest) -> None:
    """One phase: train it (from the saved position where the run stopped inside it; validating as it goes),
    restore its best validation epoch with ``select: best_val``, evaluate, record its summary, then save its
    checkpoint and a resumable state that starts at the next phase."""
    cfg, model, env = run.cfg, run.model, run.env
    pcfg = getattr(cfg, phase)
    _warn_batch_above_images(phase, pcfg, len(run.splits.train), env.dist.world_size)
    validation = Validation(cfg, phase, model, run.val, run.splits.train_counts, run.out_dir, env.device, env.dist)

    def on_epoch_end(record: dict) -> None:
        run.record(record)
        validated = validation.after_epoch(record["epoch"])
        if validated is not None:
            run.record(validated)

    cadence = Cadence(save=lambda pos: run.save(index, pos), every=cfg.checkpoint_every, should_stop=stop,
                      resume=run.start["phase"] if index == run.start["phase_index"] else None)
    records = PhaseTrainer(model, method, phase, _phase_stream(run, method, pcfg), pcfg, env, desc=phase,
                           cadence=cadence, on_epoch_end=on_epoch_end).run()
    _finish_phase(run, index, phase, records, validation.finish())
    validation.cleanup()


def _warn_batch_above_images(phase: str, pcfg, images: int, world_size: int) -> None:
    """The learning rate is scaled for ``batch_size`` (lr * batch / 256) while an instance batch above the training
    set holds only the set's images: say so (the balanced stream's batches are full, its images repeated)."""
    if pcfg.sampling != "balanced" and pcfg.batch_size * world_size > images:
        log.warning("%s.batch_size %d (x %d processes) is above the %d training images: each instance batch holds "
                    "all %d while the learning rate is scaled for %d (lr * batch / 256); set %s.batch_size=%d to "
                    "scale it for the images that train", phase, pcfg.batch_size, world_size, images, images,
                    pcfg.batch_size * world_size, phase, max(images // world_size, 1))


def _finish_phase(run: _Training, index: int, phase: str, records: list[dict], selected: dict | None) -> None:
    """Evaluate the model a phase left, record its summary, then save its checkpoint and a resumable state that
    starts at the next phase."""
    cfg, model, env = run.cfg, run.model, run.env
    zero_shot = not cfg.phases and run.text is not None  # CLIP's classifier, CLIP's own logit scale (Run.logit_scale)
    run.metrics, run.outputs = shot_metrics(model, run.splits.test, run.splits.train_counts, cfg, env.device,
                                            env.dist, f"eval {phase}",
                                            logit_scale=run.text["meta"]["logit_scale"] if zero_shot else None)
    run.summary[phase] = _phase_summary(model, run.metrics, records) | ({"selected": selected} if selected else {})
    log.info("%s: overall %.2f, many %s, medium %s, few %s", phase, run.metrics["overall"],
             *(f"{run.metrics[g]:.2f}" if run.metrics[g] is not None else "-" for g in GROUPS))
    run.record({"phase": phase, "eval": run.summary[phase]})
    if run.env.dist.is_main:
        files.write_checkpoint(run.out_dir, model, run.identity, cfg)
    run.save(index + 1, None)


def _phase_stream(run: _Training, method: Method, pcfg) -> TrainStream:
    """The phase's training batches: uint8 images normalised on the device (decoded there with data.decode=gpu),
    or for a method that trains on features (the linear probe) the frozen model's features, computed once and
    held in memory (so without loader workers or pinned memory)."""
    cfg, env = run.cfg, run.env
    if method.features:
        out = evaluate_with(cfg, run.model, with_eval_transform(run.splits.train, cfg.data), features,
                            device=env.device, desc="features")  # every rank all of them: no dist
        train_set = FeatureDataset(torch.from_numpy(out["feature"]), run.splits.train.targets)
        images = TrainImages(train_set, finish=None)
    else:
        images = train_images(run.splits.train, cfg.data, env.device)  # as data.decode says
    stream = build_train_stream(images.dataset, pcfg.sampling, pcfg.batch_size, cfg.data.samples_per_class,
                                0 if method.features else cfg.data.num_workers, cfg.seed, rank=env.dist.rank,
                                world_size=env.dist.world_size,
                                pin_memory=env.device.type == "cuda" and not method.features, keyed=not method.features,
                                collate=images.collate, epochs=pcfg.epochs)
    stream.finish = images.finish
    return stream


def _phase_summary(model: LPT, metrics: dict, records: list[dict]) -> dict:
    """A finished phase's entry in run.json and metrics.jsonl: its shot-split accuracy, size and speed."""
    by_part = model.trainable_by_part()
    return {k: metrics[k] for k in ACCURACIES} | {
        "trainable_params": sum(by_part.values()),
        "trainable_by_part": by_part,
        "train_seconds": sum(r["seconds"] for r in records),
        "images_per_s": records[-1]["images_per_s"] if records else None,
    }


def _write_results(run: _Training, started: float) -> None:
    """Main process, once every phase is trained: metrics.json, run.json, predictions.npz, and the resumable
    state marked finished (so a second --resume is refused). Reports are written by the caller (lpt.cli)."""
    files.write_metrics(run.out_dir, run.metrics)
    files.write_run_info(run.out_dir, {
        "lpt_version": __version__, "method": run.cfg.method, "backbone": run.identity.to_dict(),
        "phases": run.summary, "backbone_params": sum(p.numel() for p in run.model.backbone.parameters()),
        "device": str(run.env.device), "precision": run.env.precision, "world_size": run.env.dist.world_size,
        "wall_seconds": time.time() - started,
        "eval_transform": str(build_transform(run.cfg.data, train=False)),
        "trained_fingerprint": tensors_fingerprint(run.model.trained_tensors()),  # of model.safetensors' tensors
    })
    if run.outputs is not None:
        files.write_predictions(run.out_dir, run.outputs)
    run.trackers.finish(run.metrics, files.run_trained_params(run.out_dir, run.cfg.method))
    run.save(len(run.cfg.phases), None, finished=True)
