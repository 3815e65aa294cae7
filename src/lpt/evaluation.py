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

from lpt.distributed import DistContext
from lpt.model.lpt import LPT
from lpt.model.prompted_vit import embed, plain_blocks, pooled_feature
from lpt.utils import autocast

Outputs = Callable[[LPT, torch.Tensor], dict[str, torch.Tensor]]


def predictions(model: LPT, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Top-1 ``preds``, ``top5`` and, in phase 2, the matched ``groups`` ``[B, k]``."""
    out = model.forward_train(images)
    logits = out["logits"].float()
    result = {"preds": logits.argmax(1), "top5": logits.topk(min(5, logits.shape[1]), dim=1).indices}
    if "groups" in out:
        result["groups"] = out["groups"]
    return result


def features(model: LPT, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The current phase's feature (what the classifier sees), e.g. for a linear probe on cached features."""
    return {"feature": model.forward_features(images)["feature"].float()}


FEATURE_SOURCES: dict[str, Callable[[LPT, torch.Tensor], torch.Tensor]] = {
    "plain": lambda model, x: pooled_feature(model.backbone, plain_blocks(model.backbone, embed(model.backbone, x))),
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
                        pin_memory=device.type == "cuda")
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
