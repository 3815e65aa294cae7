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
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lpt import __version__
from lpt.analysis.metrics import shot_accuracy
from lpt.config import Config, ConfigError, apply_overrides, from_dict, read_yaml, save_config, to_dict
from lpt.data import build_datasets, build_test_dataset, build_train_stream, build_transform
from lpt.engine.checkpoint import CheckpointError, load_trained, read_checkpoint, save_checkpoint
from lpt.engine.resume import RESUME_FILE, StopRequest, load_resume, run_lock, save_resume
from lpt.engine.distributed import DistContext, init_distributed
from lpt.engine.evaluate import extract_features, predict
from lpt.engine.methods import LinearProbe, build_method, stream_losses
from lpt.engine.trainer import TensorBoardLog, train_phase
from lpt.model import LPT, BackboneIdentity, create_backbone
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


def load_checkpoint_into(model: LPT, identity: BackboneIdentity, path: Path) -> dict[str, Any]:
    """Load a run's trained tensors onto ``model``, refusing a different backbone; returns the metadata."""
    tensors, meta = read_checkpoint(path)
    theirs = meta.get("backbone", {})
    if theirs.get("fingerprint") != identity.fingerprint:
        raise CheckpointError(
            f"{path} was trained on backbone {theirs.get('name')} ({theirs.get('source')}, fingerprint "
            f"{theirs.get('fingerprint')}), not on {identity.name} ({identity.source}, "
            f"fingerprint {identity.fingerprint})"
        )
    load_trained(model, tensors, str(path))
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


def _train_locked(cfg: Config, out_dir: Path, resume: bool, device: torch.device, dist: DistContext,
                  stop: StopRequest) -> dict:
    started = time.time()
    state = load_resume(out_dir) if resume else None
    if state is not None and state[1].get("finished"):
        raise ConfigError(f"run {out_dir} already finished; its metrics are in {out_dir / 'metrics.json'}")
    splits = build_datasets(cfg.data)
    model, identity = build_model(cfg, splits.num_classes)
    if state is not None:
        load_trained(model, state[0], str(out_dir / RESUME_FILE))
        state[2]()  # RNG states of the moment the run stopped
    elif cfg.init:
        load_checkpoint_into(model, identity, Path(cfg.init) / CHECKPOINT)
    model.to(device)
    position = state[1] if state is not None else {"phase_index": 0, "phase": None, "summary": {}, "jsonl_lines": 0}
    jsonl_path = out_dir / "metrics.jsonl"
    handler = tensorboard = outputs = None
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        handler = _attach_log_file(out_dir)
        tensorboard = TensorBoardLog(str(out_dir / "tensorboard"))
        save_config(cfg, out_dir / "config.yaml")
        atomic_write_json(out_dir / "classes.json", {"classes": splits.classes, "train_counts": splits.train_counts})
        if cfg.data.skip_bad_images:  # the scan ran in build_datasets; list what it dropped
            atomic_write_text(out_dir / "bad_images.txt", "".join(b.line() + "\n" for b in splits.bad_images))
            log.log(logging.WARNING if splits.bad_images else logging.INFO,
                    "skipped %d unreadable images (data.skip_bad_images), listed in %s", len(splits.bad_images),
                    out_dir / "bad_images.txt")
        _truncate_lines(jsonl_path, position["jsonl_lines"])
    log.info("run %s%s: %d classes, %d training and %d test images, backbone %s (%s)", out_dir,
             f" resumed at phase {position['phase_index'] + 1}" if state else "", splits.num_classes,
             len(splits.train), len(splits.test), identity.name, identity.source)
    losses = stream_losses(cfg, splits.train_counts).to(device)
    summary: dict[str, Any] = dict(position["summary"])
    metrics = position.get("metrics")

    def save(index: int, phase_position: dict | None, **extra: Any) -> None:
        if dist.is_main:
            save_resume(out_dir, model.trained_tensors(), {"phase_index": index, "phase": phase_position,
                                                           "summary": summary, "metrics": metrics,
                                                           "jsonl_lines": _count_lines(jsonl_path)} | extra)

    try:
        for index, phase_name in enumerate(cfg.phases):
            if index < position["phase_index"]:
                continue
            phase, pcfg = int(phase_name[-1]), getattr(cfg, phase_name)
            method = build_method(cfg.method, phase, losses, cfg.loss.eta).to(device)
            train_set = splits.train
            if isinstance(method, LinearProbe):
                train_set = extract_features(model, with_eval_transform(splits.train, cfg), device=device,
                                             batch_size=cfg.eval_batch_size, precision=cfg.precision,
                                             num_workers=cfg.data.num_workers, progress=cfg.progress)
            in_memory = train_set is not splits.train
            stream = build_train_stream(train_set, pcfg.sampling, pcfg.batch_size, cfg.data.samples_per_class,
                                        0 if in_memory else cfg.data.num_workers, cfg.seed, rank=dist.rank,
                                        world_size=dist.world_size, pin_memory=device.type == "cuda" and not in_memory)
            jsonl = (lambda r: (_append_jsonl(jsonl_path, r), tensorboard(r))) if dist.is_main else None
            records = train_phase(
                model, method, stream, pcfg, device=device, precision=cfg.precision, dist=dist,
                progress=cfg.progress, desc=phase_name, on_epoch_end=jsonl,
                resume=position["phase"] if index == position["phase_index"] else None,
                save=lambda pos, index=index: save(index, pos), checkpoint_every=cfg.checkpoint_every,
                should_stop=stop)
            metrics, outputs = _shot_metrics(model, splits.test, splits.train_counts, cfg, device, dist,
                                             f"eval {phase_name}")
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            summary[phase_name] = {k: metrics[k] for k in ("overall", "many", "medium", "few")} | {
                "trainable_params": trainable,
                "train_seconds": sum(r["seconds"] for r in records),
                "images_per_s": records[-1]["images_per_s"] if records else None,
            }
            log.info("%s: overall %.2f, many %s, medium %s, few %s", phase_name, metrics["overall"],
                     *(f"{metrics[g]:.2f}" if metrics[g] is not None else "-" for g in ("many", "medium", "few")))
            if dist.is_main:
                _append_jsonl(jsonl_path, {"phase": phase_name, "eval": summary[phase_name]})
                meta = {"lpt_version": __version__, "phase": phase, "num_classes": splits.num_classes,
                        "backbone": identity.to_dict(), "model": to_dict(cfg)["model"]}
                save_checkpoint(out_dir / CHECKPOINT, model.trained_tensors(), meta)
            save(index + 1, None)
        if dist.is_main:
            atomic_write_json(out_dir / "metrics.json", metrics)
            atomic_write_json(out_dir / "run.json", {
                "lpt_version": __version__, "method": cfg.method, "backbone": identity.to_dict(), "phases": summary,
                "backbone_params": sum(p.numel() for p in model.backbone.parameters()),
                "device": str(device), "world_size": dist.world_size, "wall_seconds": time.time() - started,
            })
            save(len(cfg.phases), None, finished=True)
            _write_report(out_dir, outputs)
    finally:
        if tensorboard is not None:
            tensorboard.close()
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
    return metrics


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Reload a run directory: rebuild the backbone, check its fingerprint, load what was trained.

    Returns the model in eval mode, in the phase it finished.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not an lpt run directory (no config.yaml)")
    cfg = from_dict(read_yaml(run_dir / "config.yaml"))
    classes_file = run_dir / "classes.json"
    info = json.loads(classes_file.read_text()) if classes_file.is_file() else None
    if info is None:
        raise ConfigError(f"{run_dir} has no classes.json; the run did not finish setting up")
    model, identity = build_model(cfg, len(info["classes"]))
    load_checkpoint_into(model, identity, run_dir / CHECKPOINT)
    model.to(device).eval()
    return Run(model, cfg, info["classes"], info["train_counts"], identity, run_dir)


def with_data_overrides(cfg: Config, overrides: list[str] | None, command: str) -> Config:
    """A run's config with ``data.*`` overrides applied (another split, root or list); other keys are refused."""
    if not overrides:
        return cfg
    bad = [o for o in overrides if not o.startswith("data.")]
    if bad:
        raise ConfigError(f"{command} override '{bad[0]}' must set a data.* key")
    return from_dict(apply_overrides(to_dict(cfg), overrides))


def with_eval_transform(dataset, cfg: Config):
    """The same images with the deterministic evaluation transform (features, not random crops)."""
    clone = copy.copy(dataset)
    clone.transform = build_transform(cfg.data, train=False)
    return clone


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
