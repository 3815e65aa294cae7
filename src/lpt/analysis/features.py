"""Features of a trained model from three sources, for the paper's feature analyses (Tab. 2, Fig. 2).

- ``plain``: the ViT alone, ``pooled_feature(vit, vit.blocks(embed(vit, x)))`` (for full
  fine-tuning that is the fine-tuned ViT);
- ``phase1``: the phase-1 model, ``model.phase1_feature`` (shared prompt);
- ``phase2``: the phase-2 model, ``model.forward_features`` in phase 2 (shared and group prompts);
  only for a model in phase 2.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lpt.engine.evaluate import autocast
from lpt.model.lpt import LPT
from lpt.model.prompted_vit import embed, pooled_feature

SOURCES: dict[str, Callable[[LPT, torch.Tensor], torch.Tensor]] = {
    "plain": lambda model, x: pooled_feature(model.backbone, model.backbone.blocks(embed(model.backbone, x))),
    "phase1": lambda model, x: model.phase1_feature(x),
    "phase2": lambda model, x: model.forward_features(x)["feature"],
}


def available_sources(model: LPT) -> list[str]:
    """The sources a model has: plain and phase 1 always, phase 2 when the model is in phase 2."""
    return ["plain", "phase1"] + (["phase2"] if model.phase == 2 else [])


@torch.no_grad()
def extract(model: LPT, dataset: Dataset, sources: list[str], *, device: torch.device, batch_size: int = 256,
            precision: str = "fp32", num_workers: int = 0, progress: bool = True,
            desc: str = "features") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features ``{source: [N, D] float32}`` of every image of ``dataset`` (in order) and the labels ``[N]``.

    The model runs in eval mode; each batch is read once for all sources.
    """
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or ("phase2" in sources and model.phase != 2):
        raise ValueError(f"sources {sources}: choose from {available_sources(model)}")
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats: dict[str, list[torch.Tensor]] = {s: [] for s in sources}
    labels = []
    for images, y in tqdm(loader, desc=desc, disable=not progress or None, leave=False, mininterval=2.0):
        images = images.to(device)
        with autocast(device, precision):
            for s in sources:
                feats[s].append(SOURCES[s](model, images).float().cpu())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    return {s: torch.cat(v).numpy() for s, v in feats.items()}, torch.cat(labels).numpy()
