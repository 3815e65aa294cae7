"""Runs: train a config into a run directory, reload a run, evaluate it, predict with it.

A run directory holds ``config.yaml`` (resolved config), ``classes.json`` (class names and
training counts), ``metrics.jsonl`` (one record per epoch and per evaluation), ``metrics.json``
(final shot-split metrics), ``run.json`` (backbone identity, per-phase summary, timings),
``model.safetensors`` (what was trained, with metadata) and ``train.log``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lpt import __version__
from lpt.analysis.metrics import shot_accuracy
from lpt.config import Config, ConfigError, PhaseConfig, apply_overrides, from_dict, read_yaml, save_config, to_dict
from lpt.data import DataSplits, TrainStream, build_datasets, build_test_dataset, build_train_stream, build_transform
from lpt.data.transforms import BatchNormalize
from lpt.data.check import BadImage
from lpt.engine.checkpoint import CheckpointError, load_trained, read_checkpoint, save_checkpoint
from lpt.engine.resume import RESUME_FILE, StopRequest, load_resume, run_lock, save_resume
from lpt.engine.distributed import DistContext, init_distributed
from lpt.engine.evaluate import extract_features, predict
from lpt.engine.methods import LinearProbe, build_method, stream_losses
from lpt.engine.trainer import TensorBoardLog, train_phase
from lpt.model import LPT, BackboneIdentity, create_backbone
from lpt.model.lpt import GROUP_PROMPTS
from lpt.utils import atomic_write_json, atomic_write_text, log, resolve_device, seed_everything

CHECKPOINT = "model.safetensors"
METRIC_KEYS = ("overall", "many", "medium", "few", "official", "per_class", "num_images")


@dataclass
class Run:
    """A reloaded run: the model in eval mode and what it was trained with."""

    model: LPT
    config: Config
    classes: list[str]
    train_counts: list[int]
    identity: BackboneIdentity
    path: Path


def build_model(cfg: Config, num_classes: int) -> tuple[LPT, BackboneIdentity]:
    """Backbone (seeded, so a random one is rebuilt identically on reload) plus prompts and head."""
    seed_everything(cfg.seed)
    m = cfg.model
    backbone, identity = create_backbone(m.backbone, m.pretrained, m.checkpoint, layer_norm_eps=m.layer_norm_eps,
                                         **m.backbone_args)
    model = LPT(backbone, num_classes, prompt_len=m.prompt_len, pool_size=m.pool_size, split_block=m.split_block,
                top_k=m.top_k, feature_dropout=m.feature_dropout, head=m.head, prompt_depth=m.prompt_depth,
                query=m.query, train_backbone=cfg.method == "full")
    return model, identity


def load_checkpoint_into(model: LPT, identity: BackboneIdentity, path: Path,
                         skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a run's trained tensors onto ``model`` (all but those named with a prefix in ``skip``), refusing a
    different backbone; returns the metadata."""
    tensors, meta = read_checkpoint(path)
    theirs = meta.get("backbone", {})
    if theirs.get("fingerprint") != identity.fingerprint:
        raise CheckpointError(
            f"{path} was trained on backbone {theirs.get('name')} ({theirs.get('source')}, fingerprint "
            f"{theirs.get('fingerprint')}), not on {identity.name} ({identity.source}, "
            f"fingerprint {identity.fingerprint})"
        )
    load_trained(model, tensors, str(path), skip)
    model.set_phase(int(meta.get("phase", 1)))
    return meta


def _append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def _attach_log_file(out_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(out_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return handler


def _shot_metrics(model: LPT, dataset, train_counts: list[int], cfg: Config, device: torch.device,
                  dist: DistContext, desc: str) -> tuple[dict, dict]:
    out = predict(model, dataset, device=device, batch_size=cfg.eval_batch_size, precision=cfg.precision,
                  num_workers=cfg.data.num_workers, dist=dist, progress=cfg.progress, desc=desc)
    return shot_accuracy(out["preds"], out["labels"], train_counts) | {"phase": model.phase}, out


def _write_report(out_dir: Path, outputs: dict | None) -> None:
    """predictions.npz (final evaluation) and report.html / report.md; a failure only warns: the run is saved."""
    try:
        from lpt.analysis.report import write_report
        from lpt.analysis.rundir import write_predictions

        if outputs is not None:
            write_predictions(out_dir, outputs)
        write_report(out_dir)
    except Exception as exc:  # noqa: BLE001 - the report is a convenience; never lose a finished run over it
        log.warning("run %s is saved, but its report could not be written: %s: %s", out_dir, type(exc).__name__, exc)


def _truncate_lines(path: Path, keep: int) -> None:
    """Drop records written after the state a run resumes from."""
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:keep]))


def _count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def train(cfg: Config, out_dir: Path, resume: bool = False) -> dict:
    """Train every phase of ``cfg`` into ``out_dir``; returns the final metrics (also in metrics.json).

    With ``resume``, continue from ``out_dir``'s resumable state (the config must be the run's own).
    SIGINT / SIGTERM save that state at the next step boundary and raise ``Interrupted``.
    """
    device = resolve_device(cfg.device)
    dist, device = init_distributed(device)
    out_dir = Path(out_dir)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    lock = run_lock(out_dir) if dist.is_main else nullcontext()
    with lock, StopRequest().installed() as stop:
        return _train_locked(cfg, out_dir, resume, device, dist, stop)


@dataclass
class _Training:
    """What the steps of one ``train`` call share: built by ``_set_up_training``, then advanced phase by phase.

    ``start`` is the resumable position the run starts from (a fresh run's: phase 0, nothing written).
    ``summary`` (per finished phase) and ``metrics`` (of the last evaluation) grow as phases finish and go
    into every resumable save; ``outputs`` are the last evaluation's predictions, for predictions.npz.
    """

    cfg: Config
    out_dir: Path
    device: torch.device
    dist: DistContext
    splits: DataSplits
    model: LPT
    identity: BackboneIdentity
    start: dict[str, Any]
    resumed: bool
    summary: dict[str, Any]
    metrics: dict | None
    outputs: dict | None = None

    @property
    def jsonl_path(self) -> Path:
        """One record per epoch and per phase evaluation; a resumed run cuts it back to its saved state."""
        return self.out_dir / "metrics.jsonl"

    def save(self, index: int, phase_position: dict | None, **extra: Any) -> None:
        """Write the resumable state (main process): resume at phase ``index``, at ``phase_position`` within it."""
        if self.dist.is_main:
            save_resume(self.out_dir, self.model.trained_tensors(), {
                "phase_index": index, "phase": phase_position, "summary": self.summary, "metrics": self.metrics,
                "jsonl_lines": _count_lines(self.jsonl_path)} | extra)


def _train_locked(cfg: Config, out_dir: Path, resume: bool, device: torch.device, dist: DistContext,
                  stop: StopRequest) -> dict:
    """``train`` once the run lock and the signal handlers are held: set up, train the phases, write the results;
    train.log and TensorBoard are closed even when training fails."""
    started = time.time()
    run = _set_up_training(cfg, out_dir, resume, device, dist)
    handler, tensorboard = _open_run_dir(run) if dist.is_main else (None, None)
    log.info("run %s%s: %d classes, %d training and %d test images, backbone %s (%s)", out_dir,
             f" resumed at phase {run.start['phase_index'] + 1}" if run.resumed else "", run.splits.num_classes,
             len(run.splits.train), len(run.splits.test), run.identity.name, run.identity.source)
    try:
        _run_phases(run, stop, tensorboard)
        if dist.is_main:
            _write_results(run, started)
    finally:
        if tensorboard is not None:
            tensorboard.close()
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
    return run.metrics


def _set_up_training(cfg: Config, out_dir: Path, resume: bool, device: torch.device,
                     dist: DistContext) -> _Training:
    """Data and model on ``device``, restored from the resumable state with ``resume`` (a finished run is
    refused before any data loads), else from ``cfg.init`` when set. Every process runs it: it writes nothing."""
    state = load_resume(out_dir) if resume else None
    if state is not None and state[1].get("finished"):
        raise ConfigError(f"run {out_dir} already finished; its metrics are in {out_dir / 'metrics.json'}")
    splits = build_datasets(cfg.data)
    model, identity = build_model(cfg, splits.num_classes)
    if state is not None:
        load_trained(model, state[0], str(out_dir / RESUME_FILE))
        state[2]()  # RNG states of the moment the run stopped
    elif cfg.init:  # phase 1's tensors only: group prompts and keys start fresh, whatever m or k the run uses
        load_checkpoint_into(model, identity, Path(cfg.init) / CHECKPOINT, skip=(GROUP_PROMPTS,))
    model.to(device)
    if cfg.compile:
        model.compile_forwards()
    start = state[1] if state is not None else {"phase_index": 0, "phase": None, "summary": {}, "jsonl_lines": 0}
    return _Training(cfg, out_dir, device, dist, splits, model, identity, start, resumed=state is not None,
                     summary=dict(start["summary"]), metrics=start.get("metrics"))


def _open_run_dir(run: _Training) -> tuple[logging.Handler, TensorBoardLog]:
    """Main process, before training: the run directory with its logs and the files that describe the run, and
    metrics.jsonl cut back to the state the run resumes from. The caller closes the logs."""
    out_dir, splits = run.out_dir, run.splits
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = _attach_log_file(out_dir)
    tensorboard = TensorBoardLog(str(out_dir / "tensorboard"))
    save_config(run.cfg, out_dir / "config.yaml")
    atomic_write_json(out_dir / "classes.json", {"classes": splits.classes, "train_counts": splits.train_counts})
    if run.cfg.data.skip_bad_images:  # the scan ran in build_datasets; list what it dropped
        _list_bad_images(out_dir, splits.bad_images)
    _truncate_lines(run.jsonl_path, run.start["jsonl_lines"])
    return handler, tensorboard


def _list_bad_images(out_dir: Path, bad_images: list[BadImage]) -> None:
    """bad_images.txt, and a log line: a run that skipped images says so, and which (data.skip_bad_images)."""
    atomic_write_text(out_dir / "bad_images.txt", "".join(b.line() + "\n" for b in bad_images))
    log.log(logging.WARNING if bad_images else logging.INFO,
            "skipped %d unreadable images (data.skip_bad_images), listed in %s", len(bad_images),
            out_dir / "bad_images.txt")


def _run_phases(run: _Training, stop: StopRequest, tensorboard: TensorBoardLog | None) -> None:
    """Train, in order, the phases the run has not finished (a resumed run skips those before its start)."""
    losses = stream_losses(run.cfg, run.splits.train_counts).to(run.device)

    def record_epoch(record: dict) -> None:
        _append_jsonl(run.jsonl_path, record)
        tensorboard(record)

    for index, phase_name in enumerate(run.cfg.phases):
        if index >= run.start["phase_index"]:
            _run_phase(run, index, phase_name, losses, stop, record_epoch if run.dist.is_main else None)


def _run_phase(run: _Training, index: int, phase_name: str, losses: torch.nn.ModuleDict, stop: StopRequest,
               on_epoch_end: Callable[[dict], None] | None) -> None:
    """One phase: train it (from the saved position where the run stopped inside it), evaluate, record its
    summary, then save its checkpoint and a resumable state that starts at the next phase."""
    cfg, model = run.cfg, run.model
    phase, pcfg = int(phase_name[-1]), getattr(cfg, phase_name)
    method = build_method(cfg.method, phase, losses, cfg.loss.eta).to(run.device)
    records = train_phase(
        model, method, _phase_stream(run, method, pcfg), pcfg, device=run.device, precision=cfg.precision,
        dist=run.dist, progress=cfg.progress, desc=phase_name, on_epoch_end=on_epoch_end,
        resume=run.start["phase"] if index == run.start["phase_index"] else None,
        save=lambda pos: run.save(index, pos), checkpoint_every=cfg.checkpoint_every, should_stop=stop)
    run.metrics, run.outputs = _shot_metrics(model, run.splits.test, run.splits.train_counts, cfg, run.device,
                                             run.dist, f"eval {phase_name}")
    run.summary[phase_name] = _phase_summary(model, run.metrics, records)
    log.info("%s: overall %.2f, many %s, medium %s, few %s", phase_name, run.metrics["overall"],
             *(f"{run.metrics[g]:.2f}" if run.metrics[g] is not None else "-" for g in ("many", "medium", "few")))
    if run.dist.is_main:
        _append_jsonl(run.jsonl_path, {"phase": phase_name, "eval": run.summary[phase_name]})
        meta = {"lpt_version": __version__, "phase": phase, "num_classes": run.splits.num_classes,
                "backbone": run.identity.to_dict(), "model": to_dict(cfg)["model"]}
        save_checkpoint(run.out_dir / CHECKPOINT, model.trained_tensors(), meta)
    run.save(index + 1, None)


def _phase_stream(run: _Training, method: torch.nn.Module, pcfg: PhaseConfig) -> TrainStream:
    """The phase's training batches: uint8 images normalised on the device, or for a linear probe the frozen
    model's features, computed once and held in memory (so without loader workers or pinned memory)."""
    in_memory = isinstance(method, LinearProbe)
    if in_memory:
        train_set = extract_features(run.model, with_eval_transform(run.splits.train, run.cfg), device=run.device,
                                     batch_size=run.cfg.eval_batch_size, precision=run.cfg.precision,
                                     num_workers=run.cfg.data.num_workers, progress=run.cfg.progress)
    else:
        train_set = with_transform(run.splits.train, build_transform(run.cfg.data, train=True, normalize=False))
    stream = build_train_stream(train_set, pcfg.sampling, pcfg.batch_size, run.cfg.data.samples_per_class,
                                0 if in_memory else run.cfg.data.num_workers, run.cfg.seed, rank=run.dist.rank,
                                world_size=run.dist.world_size,
                                pin_memory=run.device.type == "cuda" and not in_memory)
    stream.finish = None if in_memory else BatchNormalize(run.cfg.data)
    return stream


def _phase_summary(model: LPT, metrics: dict, records: list[dict]) -> dict:
    """A finished phase's entry in run.json and metrics.jsonl: its shot-split accuracy, size and speed."""
    return {k: metrics[k] for k in ("overall", "many", "medium", "few")} | {
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_seconds": sum(r["seconds"] for r in records),
        "images_per_s": records[-1]["images_per_s"] if records else None,
    }


def _write_results(run: _Training, started: float) -> None:
    """Main process, once every phase is trained: metrics.json, run.json, the resumable state marked finished
    (so a second --resume is refused), then the report."""
    atomic_write_json(run.out_dir / "metrics.json", run.metrics)
    atomic_write_json(run.out_dir / "run.json", {
        "lpt_version": __version__, "method": run.cfg.method, "backbone": run.identity.to_dict(),
        "phases": run.summary, "backbone_params": sum(p.numel() for p in run.model.backbone.parameters()),
        "device": str(run.device), "world_size": run.dist.world_size, "wall_seconds": time.time() - started,
    })
    run.save(len(run.cfg.phases), None, finished=True)
    _write_report(run.out_dir, run.outputs)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Reload a run directory: rebuild the backbone, check its fingerprint, load what was trained.

    Returns the model in eval mode, in the phase it finished.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not an lpt run directory (no config.yaml)")
    cfg = resolve_run_checkpoint(from_dict(read_yaml(run_dir / "config.yaml")), run_dir)
    classes_file = run_dir / "classes.json"
    info = json.loads(classes_file.read_text()) if classes_file.is_file() else None
    if info is None:
        raise ConfigError(f"{run_dir} has no classes.json; the run did not finish setting up")
    model, identity = build_model(cfg, len(info["classes"]))
    load_checkpoint_into(model, identity, run_dir / CHECKPOINT)
    model.to(device).eval()
    return Run(model, cfg, info["classes"], info["train_counts"], identity, run_dir)


def resolve_run_checkpoint(cfg: Config, run_dir: Path) -> Config:
    """A relative ``model.checkpoint`` that names a file inside the run directory is read from there (an
    imported official run carries its backbone), so a run directory can be moved or copied whole."""
    path = Path(cfg.model.checkpoint)
    if cfg.model.checkpoint and not path.is_absolute() and (run_dir / path).is_file():
        cfg = copy.deepcopy(cfg)
        cfg.model.checkpoint = str(run_dir / path)
    return cfg


def with_data_overrides(cfg: Config, overrides: list[str] | None, command: str) -> Config:
    """A run's config with ``data.*`` overrides applied (another split, root or list); other keys are refused."""
    if not overrides:
        return cfg
    bad = [o for o in overrides if not o.startswith("data.")]
    if bad:
        raise ConfigError(f"{command} override '{bad[0]}' must set a data.* key")
    return from_dict(apply_overrides(to_dict(cfg), overrides))


def with_transform(dataset, transform):
    """A shallow copy of ``dataset`` (the same images and labels) that applies ``transform``."""
    clone = copy.copy(dataset)
    clone.transform = transform
    return clone


def with_eval_transform(dataset, cfg: Config):
    """The same images with the deterministic evaluation transform (features, not random crops)."""
    return with_transform(dataset, build_transform(cfg.data, train=False))


def evaluate_run(run_dir: str | Path, data_overrides: list[str] | None = None, device: str = "auto") -> dict:
    """Metrics of a run on its test split (or another, through ``data.*`` overrides), as in metrics.json.

    Shot groups always come from the run's own training counts.
    """
    run = load_run(run_dir, resolve_device(device))
    cfg = with_data_overrides(run.config, data_overrides, "eval")
    test = build_test_dataset(cfg.data)
    if len(test.classes) != run.model.num_classes:
        raise ConfigError(f"evaluation data has {len(test.classes)} classes, the run was trained on "
                          f"{run.model.num_classes}")
    device = next(run.model.parameters()).device
    return _shot_metrics(run.model, test, run.train_counts, cfg, device, DistContext(), "eval")[0]
