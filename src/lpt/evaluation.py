"""The one evaluation loop: a model's outputs on every image of a dataset, sharded across ranks and gathered.

``lpt eval``, the evaluation after each training phase, the linear probe's features, reports and
``lpt analyze`` all call :func:`evaluate` and differ only in what they ask of each batch (a function
of the model and the images returning named tensors: predictions, features, matched groups).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from lpt.config import DataConfig
from lpt.data import ImageDataset, build_transform, with_transform
from lpt.distributed import DistContext
from lpt.model.lpt import LPT
from lpt.utils import autocast, ignore_stop_signals

Outputs = Callable[[LPT, torch.Tensor], dict[str, torch.Tensor]]


def _ranked(logits: torch.Tensor, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    result = {"logits": logits, "preds": logits.argmax(1), "top5": logits.topk(min(5, logits.shape[1]), dim=1).indices}
    if "groups" in out:
        result["groups"] = out["groups"]
    return result


def predictions(model: LPT, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The float32 ``logits`` ``[B, C]``, top-1 ``preds``, ``top5`` and, in phase 2, the matched ``groups``
    ``[B, k]``."""
    out = model.forward_train(images)
    return _ranked(out["logits"].float(), out)


Views = Callable[[torch.Tensor], list[torch.Tensor]]
VIEWS: dict[str, Views] = {  # test-time ensembling (config key ``tta``): a batch -> its views, the plain one first
    "flip": lambda images: [images, images.flip(-1)],  # [B, 3, S, S]: the image and its horizontal mirror
    "crops": lambda images: list(images.unbind(1)),  # [B, 5, 3, S, S] of lpt.data.transforms.FiveCrops
}


def ensemble_logits(model: LPT, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mean float32 logits of the views and the first view's outputs. One forward per view, so that
    an ensemble needs no more memory than a plain evaluation (LIFT batches up to 5 views together)."""
    outs = [model.forward_train(v) for v in views]
    return torch.stack([o["logits"].float() for o in outs]).mean(0), outs[0]


def predictions_tta(views: Views) -> Outputs:
    """:func:`predictions` of the logits averaged over ``views(images)`` (as LIFT averages, before the argmax),
    with the matched ``groups`` of the plain view (the first)."""
    return lambda model, images: _ranked(*ensemble_logits(model, views(images)))


def tta_outputs(tta: str) -> Outputs:
    """What evaluation keeps of a batch under ``tta``: :func:`predictions`, or those of a view ensemble
    (for ``crops`` the dataset's transform must make the five crops: ``build_transform(..., expand=...)``)."""
    if tta == "none":
        return predictions
    if tta not in VIEWS:
        raise ValueError(f"tta {tta!r}: choose from none, {', '.join(VIEWS)}")
    return predictions_tta(VIEWS[tta])


def tta_transform(data: DataConfig, tta: str, expand: int) -> Callable:
    """The evaluation transform under ``tta``: for ``crops`` LIFT's resize to ``img_size + expand`` and five crops
    (an image -> ``[5, 3, S, S]``), else the plain one."""
    return build_transform(data, train=False, expand=expand if tta == "crops" else None)


def tta_evaluation(dataset: ImageDataset, data: DataConfig, tta: str, expand: int) -> tuple[ImageDataset, Outputs]:
    """The dataset and outputs of an evaluation under ``tta``. For ``crops`` the dataset's transform becomes
    LIFT's ``tte`` (shijxcs/LIFT@661ead9 trainer.py:117-122: resize to ``img_size + expand``, ``FiveCrop``; logits
    averaged at trainer.py:568-573; ``expand`` 24, ``tte_mode`` fivecrop in utils/config.py:55-57): the loader
    makes the crops per image, as there, since expanded images of other aspect ratios do not batch."""
    if tta == "crops":
        dataset = with_transform(dataset, tta_transform(data, tta, expand))
    return dataset, tta_outputs(tta)


def features(model: LPT, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The current phase's feature (what the classifier sees), e.g. for a linear probe on cached features."""
    return {"feature": model.forward_features(images)["feature"].float()}


FEATURE_SOURCES: dict[str, Callable[[LPT, torch.Tensor], torch.Tensor]] = {
    "plain": lambda model, x: model.plain_feature(x),
    "phase1": lambda model, x: model.phase1_feature(x),
    "phase2": lambda model, x: model.forward_features(x)["feature"],
}


def feature_sources(model: LPT) -> list[str]:
    """The feature sources a model has: the plain ViT and phase 1 always, phase 2 when the model is in phase 2."""
    return ["plain", "phase1"] + (["phase2"] if model.phase == 2 else [])


def source_features(model: LPT, sources: list[str]) -> Outputs:
    """Outputs of several feature sources of ``model`` at once (each batch is read once for all of them)."""
    if not set(sources) <= set(feature_sources(model)):
        raise ValueError(f"sources {sources}: choose from {feature_sources(model)}")
    return lambda model, images: {s: FEATURE_SOURCES[s](model, images).float() for s in sources}


@torch.no_grad()
def evaluate(model: LPT, dataset: Dataset, outputs: Outputs = predictions, *, device: torch.device,
             batch_size: int = 256, precision: str = "fp32", num_workers: int = 0, dist: DistContext = DistContext(),
             progress: bool = True, desc: str = "eval") -> dict[str, np.ndarray]:
    """``outputs`` of every image of ``dataset`` and its ``labels``, in dataset order, the model in eval mode.

    Rank r evaluates images r, r + W, ...; the results are gathered so that every rank returns exactly
    what a single process would. Results stay on the device until the end: no host synchronisation per batch.
    """
    was_training = model.training
    model.eval()
    indices = list(range(dist.rank, len(dataset), dist.world_size))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", worker_init_fn=ignore_stop_signals)
    parts: dict[str, list[torch.Tensor]] = {"labels": []}
    for images, labels in tqdm(loader, desc=desc, disable=not progress or None, leave=False, mininterval=2.0):
        with autocast(device, precision):
            out = outputs(model, images.to(device, non_blocking=True))
        for key, value in out.items():
            parts.setdefault(key, []).append(value)
        parts["labels"].append(torch.as_tensor(labels))
    model.train(was_training)
    local = {k: torch.cat(v).cpu().numpy() for k, v in parts.items() if v}
    local["index"] = np.asarray(indices, dtype=np.int64)
    gathered = dist.all_gather(local)
    order = np.argsort(np.concatenate([g["index"] for g in gathered]), kind="stable")
    return {k: np.concatenate([g[k] for g in gathered])[order] for k in local if k != "index"}
