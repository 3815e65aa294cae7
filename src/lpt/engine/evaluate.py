"""Evaluation: predictions, labels and matched groups of a dataset, sharded across ranks and gathered."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from lpt.engine.distributed import DistContext
from lpt.model.lpt import LPT

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """Mixed precision where asked for on a GPU; plain fp32 otherwise."""
    if precision == "fp32" or device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=DTYPES[precision])


@torch.no_grad()
def predict(
    model: LPT,
    dataset: Dataset,
    *,
    device: torch.device,
    batch_size: int = 256,
    precision: str = "fp32",
    num_workers: int = 0,
    dist: DistContext = DistContext(),
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, np.ndarray]:
    """Top-1 predictions ``preds``, ``labels``, ``top5`` and, in phase 2, ``groups`` ``[N, k]`` of every
    image, in dataset order. Rank r evaluates images r, r + W, ...; the results are gathered so that
    every rank returns exactly what a single process would."""
    was_training = model.training
    model.eval()
    indices = list(range(dist.rank, len(dataset), dist.world_size))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    # results stay on the device until the end: no host synchronisation per batch
    parts: dict[str, list[torch.Tensor]] = {"preds": [], "labels": [], "top5": [], "groups": []}
    for images, labels in tqdm(loader, desc=desc, disable=not progress or None, leave=False, mininterval=2.0):
        with autocast(device, precision):
            out = model.forward_train(images.to(device, non_blocking=True))
        logits = out["logits"].float()
        parts["preds"].append(logits.argmax(1))
        parts["top5"].append(logits.topk(min(5, logits.shape[1]), dim=1).indices)
        parts["labels"].append(labels)
        if "groups" in out:
            parts["groups"].append(out["groups"])
    model.train(was_training)
    local = {k: torch.cat(v).cpu().numpy() for k, v in parts.items() if v}
    local["index"] = np.asarray(indices, dtype=np.int64)
    gathered = dist.all_gather(local)
    order = np.argsort(np.concatenate([g["index"] for g in gathered]), kind="stable")
    return {k: np.concatenate([g[k] for g in gathered])[order] for k in local if k != "index"}


class FeatureDataset(Dataset):
    """Precomputed features with their labels; ``targets`` lets the samplers balance classes."""

    def __init__(self, features: torch.Tensor, targets: list[int]):
        self.features = features
        self.targets = list(targets)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.features[index], self.targets[index]


@torch.no_grad()
def extract_features(model: LPT, dataset: Dataset, *, device: torch.device, batch_size: int = 256,
                     precision: str = "fp32", num_workers: int = 0, progress: bool = True) -> FeatureDataset:
    """The model's current-phase features of every image, once (for the linear probe)."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    feats = []
    for images, _ in tqdm(loader, desc="features", disable=not progress or None, leave=False, mininterval=2.0):
        with autocast(device, precision):
            feats.append(model.forward_features(images.to(device, non_blocking=True))["feature"].float())
    model.train(was_training)
    return FeatureDataset(torch.cat(feats), dataset.targets)
