"""A run reloaded for use: its model on the device, its config, classes, evaluation transform and predictions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from lpt.config import CHOICES, Config, ConfigError, apply_overrides, from_dict, to_dict
from lpt.data import build_test_dataset, build_transform
from lpt.data.transforms import UprightRGB
from lpt.distributed import DistContext
from lpt.evaluation import VIEWS, Outputs, evaluate, predictions, tta_evaluation, tta_transform
from lpt.methods import get_method
from lpt.methods.zeroshot import ZeroShot
from lpt.metrics import metrics_record
from lpt.model import LPT, BackboneIdentity
from lpt.model.build import build_model
from lpt.model.state import CheckpointError, load_strict, tensors_fingerprint
from lpt.run import files
from lpt.run.predict import predict_images
from lpt.utils import resolve_device


@dataclass
class Run:
    """A reloaded run: the model in eval mode and what it was trained with.

    ``run.model(images)`` takes float images ``[B, 3, S, S]`` at the run's size S
    (``config.data.img_size``), normalised with ``config.data.mean`` / ``std``, as ``run.transform``
    makes them from a PIL image, and returns unscaled logits: cosines in [-1, 1] for the cosine head.
    ``run.predict`` returns probabilities, ``softmax(run.logit_scale * logits)`` (the views' mean logits under the
    run's ``tta``), as ``lpt predict`` prints.
    """

    model: LPT
    config: Config
    classes: list[str]
    train_counts: list[int]
    identity: BackboneIdentity
    path: Path

    @property
    def transform(self) -> v2.Compose:
        """The evaluation transform of the run (any PIL image -> normalised float tensor ``[3, S, S]``): the image
        turned to RGB as shown (:class:`lpt.data.transforms.UprightRGB`), then run.json's ``eval_transform``."""
        return v2.Compose([UprightRGB(), build_transform(self.config.data, train=False)])

    @property
    def logit_scale(self) -> float:
        """What the softmax multiplies the model's logits by: the training softmax's ``loss.scale`` (the losses apply
        it), or in a zero-shot run, which trained nothing, CLIP's own (stored with the text embeddings; 100 for
        OpenAI's CLIP), so that its probabilities are CLIP's."""
        if self.config.method == ZeroShot.name:
            return float(files.read_text_embeddings(self.path)[1]["logit_scale"])
        return self.config.loss.scale

    def predict(self, images: Sequence[Any] | str | Path | torch.Tensor, batch_size: int = 64, tta: str | None = None,
                workers: int = 0, progress: bool = False) -> torch.Tensor:
        """Class probabilities ``[N, C]`` of image paths, PIL images (one path or image: ``[1, C]``), or a batch
        already made by ``transform``, under the test-time ensembling ``tta`` (none, flip, crops; default the run's
        ``config.tta``, as its evaluation). ``crops`` cuts its views from the images, so it takes paths or PIL images
        only. ``workers`` loader processes decode image files; ``progress`` shows a bar on a terminal."""
        tta = self.config.tta if tta is None else tta
        if tta not in CHOICES["tta"]:
            raise ConfigError(f"tta {tta!r}: choose from {', '.join(CHOICES['tta'])}")
        if tta == "crops" and isinstance(images, torch.Tensor):
            raise ConfigError("tta=crops cuts five crops from each image: give image paths or PIL images, or predict "
                              "a batch made by run.transform with tta='none'")
        transform = tta_transform(self.config.data, tta, self.config.tta_expand)
        return predict_images(self.model, transform, self.logit_scale, images, batch_size, views=VIEWS.get(tta),
                              workers=workers, progress=progress)


def load_trained(model: LPT, identity: BackboneIdentity, run_dir: Path, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a run's trained tensors (model.safetensors) onto ``model``, all but those named with a prefix in
    ``skip``, refusing a different backbone and tensors other than those the run's run.json records; sets the
    model's phase and returns the metadata."""
    tensors, meta = files.read_checkpoint(run_dir)
    path = Path(run_dir) / files.CHECKPOINT
    recorded = files.read_info(run_dir).get("trained_fingerprint")
    found = tensors_fingerprint(tensors) if recorded else None
    if found != recorded:
        raise CheckpointError(f"{path} holds other tensors than the run trained (fingerprint {found}, its "
                              f"{files.RUN_INFO} records {recorded}): it was replaced, by another run's perhaps; "
                              "copy a run directory whole")
    theirs = meta.get("backbone", {})
    if theirs.get("fingerprint") != identity.fingerprint:
        raise CheckpointError(
            f"{path} was trained on backbone {theirs.get('name')} ({theirs.get('source')}, fingerprint "
            f"{theirs.get('fingerprint')}), not on {identity.name} ({identity.source}, "
            f"fingerprint {identity.fingerprint})"
        )
    load_strict(model, tensors, str(path), expected=model.trained_tensors(), skip=skip)
    model.set_phase(int(meta.get("phase", 1)))
    return meta


def build_run_model(cfg: Config, num_classes: int) -> tuple[LPT, BackboneIdentity]:
    """The model of a run's config: the method decides whether the backbone trains and whether the logits have
    per-class scales."""
    method = get_method(cfg.method)
    return build_model(cfg.model, num_classes, cfg.seed, train_backbone=method.trains_backbone,
                       class_scales=method.class_scales)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Reload a run directory: rebuild the backbone, check its fingerprint, load what was trained.

    Returns the model in eval mode, in the phase it finished.
    """
    run_dir = Path(run_dir)
    cfg = files.read_config(run_dir)
    classes, counts = files.read_classes(run_dir)
    model, identity = build_run_model(cfg, len(classes))
    load_trained(model, identity, run_dir)
    model.to(device).eval()
    return Run(model, cfg, classes, counts, identity, run_dir)


def with_data_overrides(cfg: Config, overrides: list[str] | None, command: str) -> Config:
    """A run's config with ``data.*`` overrides applied (another split, root or list); other keys are refused."""
    if not overrides:
        return cfg
    bad = [o for o in overrides if not o.startswith("data.")]
    if bad:
        raise ConfigError(f"{command} override '{bad[0]}' must set a data.* key")
    return from_dict(apply_overrides(to_dict(cfg), overrides))


def evaluate_with(cfg: Config, model: LPT, dataset, outputs: Outputs = predictions, *, device: torch.device,
                  dist: DistContext = DistContext(), desc: str = "eval") -> dict:
    """:func:`lpt.evaluation.evaluate` with a run config's batch size, precision, loader processes and progress."""
    return evaluate(model, dataset, outputs, device=device, batch_size=cfg.eval_batch_size, precision=cfg.precision,
                    num_workers=cfg.data.num_workers, dist=dist, progress=cfg.progress, desc=desc)


def evaluate_predictions(cfg: Config, model: LPT, dataset, *, device: torch.device, dist: DistContext = DistContext(),
                         desc: str = "eval") -> dict:
    """The arrays of predictions.npz for ``model`` on ``dataset`` under the run's test-time ensembling ``cfg.tta``."""
    dataset, outputs = tta_evaluation(dataset, cfg.data, cfg.tta, cfg.tta_expand)
    return evaluate_with(cfg, model, dataset, outputs, device=device, dist=dist, desc=desc)


def shot_metrics(model: LPT, dataset, train_counts: list[int], cfg: Config, device: torch.device,
                 dist: DistContext = DistContext(), desc: str = "eval", logit_scale: float | None = None
                 ) -> tuple[dict, dict]:
    """The metrics of ``model`` on ``dataset`` (:func:`lpt.metrics.metrics_record` of the logits times
    ``logit_scale``, by default ``loss.scale``: see :attr:`Run.logit_scale`; the model's phase and the test-time
    ensembling ``cfg.tta``) and the evaluation's arrays."""
    out = evaluate_predictions(cfg, model, dataset, device=device, dist=dist, desc=desc)
    scale = cfg.loss.scale if logit_scale is None else logit_scale
    record = metrics_record(out["labels"], train_counts, logits=scale * out["logits"])
    return record | {"phase": model.phase, "tta": cfg.tta}, out


def load_for_eval(run_dir: str | Path, data_overrides: list[str] | None = None, device: str = "auto",
                  tta: str | None = None) -> tuple[Run, Config, Any]:
    """A run reloaded for ``lpt eval``, its config with ``data.*`` overrides and ``tta`` (when given) applied, and
    the test split they name (refused when its classes are not the run's)."""
    run = load_run(run_dir, resolve_device(device))
    cfg = with_data_overrides(run.config, data_overrides, "eval")
    if tta is not None:
        cfg = from_dict(to_dict(cfg) | {"tta": tta})
    test = build_test_dataset(cfg.data)
    if len(test.classes) != run.model.num_classes:
        raise ConfigError(f"evaluation data has {len(test.classes)} classes, the run was trained on "
                          f"{run.model.num_classes}")
    return run, cfg, test


def evaluate_run(run_dir: str | Path, data_overrides: list[str] | None = None, device: str = "auto",
                 tta: str | None = None) -> dict:
    """Metrics of a run on its test split (or another, through ``data.*`` overrides), as in metrics.json;
    ``tta`` replaces the run's test-time ensembling (config key ``tta``).

    Shot groups always come from the run's own training counts.
    """
    run, cfg, test = load_for_eval(run_dir, data_overrides, device, tta)
    return shot_metrics(run.model, test, run.train_counts, cfg, next(run.model.parameters()).device,
                        logit_scale=run.logit_scale)[0]
