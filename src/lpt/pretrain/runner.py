"""Pretrain a timm ViT with one recipe, save its encoder as timm-compatible fp16 safetensors, load
it back the way users will, and write the card.

The loop is the same for every recipe: AdamW, a linear warm-up then half-cosine schedule computed
up front, bf16 autocast on a GPU, gradient clipping, a log line every ``log_every`` steps, and an
abort on a non-finite loss (checked at each log line, so the GPU is not synchronised every step).
It is not lpt's training loop (lpt.engine) because that one trains a method's few parameters on a
frozen backbone over a long-tailed stream with resumable state, while this one trains a whole encoder
from scratch for a step budget with AdamW and gradient clipping, and keeps nothing to resume.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from lpt.config import ConfigError
from lpt.engine.step import TrainingError, lr_schedule
from lpt.model.backbone import BackboneError, check_vit_layout, create_backbone
from lpt.model.state import save_weights
from lpt.pretrain.card import hardware, write_card
from lpt.pretrain.config import PretrainConfig
from lpt.pretrain.recipes import build_recipe
from lpt.utils import autocast, log, resolve_device, seed_everything

WEIGHTS_FILE = "backbone.safetensors"
NO_DECAY = ("pos_embed", "cls_token", "reg_token", "mask_token")


@dataclass
class PretrainResult:
    """What :func:`pretrain` leaves: the trained encoder (fp32), the card, the weights file."""

    encoder: VisionTransformer
    card: dict[str, Any]
    weights: Path


def build_encoder(cfg: PretrainConfig) -> VisionTransformer:
    """A randomly initialised, headless, trainable timm ViT whose patches tile the image exactly."""
    try:
        encoder = timm.create_model(cfg.backbone, pretrained=False, num_classes=0, **cfg.encoder_args())
    except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
        raise BackboneError(f"backbone '{cfg.backbone}' with {cfg.encoder_args()}: {str(exc).strip()}") from exc
    check_vit_layout(encoder, cfg.backbone)
    pe = encoder.patch_embed
    if pe.grid_size[0] * pe.patch_size[0] != cfg.img_size or pe.grid_size[1] * pe.patch_size[1] != cfg.img_size:
        raise ConfigError(f"img {cfg.img_size} is not a multiple of the patch size {pe.patch_size[0]}; "
                          f"pass e.g. --backbone-arg patch_size=4")
    return encoder.requires_grad_(True)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on biases, norms, position embeddings and tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.split(".")[-1] in NO_DECAY else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_loop(recipe, lrs: list[float], cfg: PretrainConfig, device: torch.device) -> dict[str, float]:
    """Run ``len(lrs)`` optimiser steps; returns the last window's mean loss and the throughput."""
    model = recipe.model
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lrs[0], betas=recipe.betas,
                                  fused=device.type == "cuda")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    window = torch.zeros(3, device=device)  # loss sum, correct, steps since the last log line
    finite = torch.ones((), dtype=torch.bool, device=device)
    start, seen, summary = time.perf_counter(), 0, {}
    model.train()
    for step, batch in zip(range(len(lrs)), recipe.batches(len(lrs))):
        for group in optimizer.param_groups:
            group["lr"] = lrs[step]
        with autocast(device, cfg.precision):
            out = recipe.step(batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if cfg.clip_grad > 0:
            nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        optimizer.step()
        loss = out["loss"].detach()
        finite &= torch.isfinite(loss)
        window += torch.stack([loss.float(), out.get("correct", torch.zeros((), device=device)).float(),
                               torch.ones((), device=device)])
        seen += cfg.batch_size
        if (step + 1) % cfg.log_every == 0 or step + 1 == len(lrs):
            summary = _log_line(step + 1, len(lrs), window, bool(finite), lrs[step], seen, start, cfg, recipe)
            window.zero_()
    return summary


def _log_line(step: int, total: int, window: torch.Tensor, finite: bool, lr: float, seen: int, start: float,
              cfg: PretrainConfig, recipe) -> dict[str, float]:
    if not finite:
        raise TrainingError(f"non-finite {recipe.name} loss by step {step}; lower --lr (now {cfg.lr})")
    loss_sum, correct, steps = window.tolist()
    elapsed = time.perf_counter() - start
    summary = {"train_loss": loss_sum / steps, "train_seconds": elapsed, "images_per_s": seen / elapsed}
    acc = ""
    if recipe.metric == "glyph_accuracy":
        summary["train_accuracy"] = 100.0 * correct / (steps * cfg.batch_size)
        acc = f" acc {summary['train_accuracy']:.1f}%"
    log.info("pretrain %s step %d/%d loss %.4f%s lr %.2e %.0f img/s", recipe.name, step, total,
             summary["train_loss"], acc, lr, summary["images_per_s"])
    return summary


def save_backbone(encoder: VisionTransformer, path: Path, cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    """The encoder's state dict (timm key names, no head) as fp16 safetensors; returns what was written."""
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in encoder.state_dict().items()}
    save_weights(path, tensors, lpt_backbone=cfg.backbone, lpt_backbone_args=str(cfg.encoder_args()),
                 lpt_recipe=cfg.recipe)
    return tensors


def load_back(path: Path, written: dict[str, torch.Tensor], cfg: PretrainConfig):
    """Load the file with ``create_backbone`` as a user will (a strict load: every tensor present, no other)
    and insist that the written fp16 values arrived exactly."""
    model, identity = create_backbone(cfg.backbone, checkpoint=str(path), **cfg.encoder_args())
    state = model.state_dict()
    different = [k for k, v in written.items() if not torch.equal(state[k].to(torch.float16), v)]
    if different:
        raise BackboneError(f"{path}: {len(different)} tensors differ after loading, first {different[0]}")
    return model, identity


def _card(cfg: PretrainConfig, out: Path, recipe, identity, metric, summary, total_steps, warmup, device,
          wall) -> dict[str, Any]:
    args = cfg.encoder_args()
    arg_text = ", ".join(f"{k}={v!r}" for k, v in args.items())
    weights = out / WEIGHTS_FILE
    return {
        "title": f"{cfg.backbone} ({arg_text}) pretrained with the {cfg.recipe} recipe",
        "recipe": cfg.recipe,
        "final_metric": metric,
        "load": {
            "python": f"from lpt.model import create_backbone\nmodel, identity = create_backbone("
                      f"{cfg.backbone!r}, checkpoint={str(weights)!r}, {arg_text})",
            "config": shlex.join([f"model.backbone={cfg.backbone}", f"model.checkpoint={weights}",
                                  "model.backbone_args={" + ", ".join(f"{k}: {v}" for k, v in args.items()) + "}"]),
        },
        "command": cfg.command(str(out)),
        "weights": {"file": WEIGHTS_FILE, "dtype": "float16", "keys": "timm VisionTransformer state dict, no head",
                    "name": cfg.backbone, "args": args, "tensors": len(recipe.model.encoder.state_dict()),
                    "parameters": sum(p.numel() for p in recipe.model.encoder.parameters()),
                    "fingerprint": identity.fingerprint,
                    "fingerprint_of": "lpt.model.backbone.weights_fingerprint of the backbone as create_backbone "
                                      "loads it from this file"},
        "data": recipe.describe(),
        "training": {"optimizer": "AdamW", "lr": cfg.lr, "betas": list(recipe.betas),
                     "weight_decay": cfg.weight_decay,
                     "schedule": f"linear warm-up over {warmup} steps, then half-cosine to 0",
                     "steps": total_steps, "batch_size": cfg.batch_size, "images_seen": total_steps * cfg.batch_size,
                     "clip_grad": cfg.clip_grad, "seed": cfg.seed,
                     "precision": "bf16 autocast" if device.type == "cuda" and cfg.precision == "bf16" else "fp32",
                     **summary},
        "hardware": hardware(device),
        "wall_time_s": wall,
        "config": cfg.to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def pretrain(cfg: PretrainConfig, out: str | Path, images: np.ndarray | None = None) -> PretrainResult:
    """Pretrain, then write ``out``/backbone.safetensors, card.json and card.md.

    Args:
        cfg: the run's settings (validated on construction).
        out: output folder (created).
        images: MAE only: a uint8 array [N, H, W(, 3)] instead of Fashion-MNIST's training images.
    """
    wall_start = time.perf_counter()
    out = Path(out)
    try:
        device = resolve_device(cfg.device)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"device: {exc}") from None
    seed_everything(cfg.seed)
    encoder = build_encoder(cfg)
    recipe = build_recipe(cfg, encoder, device, images)
    total_steps = cfg.steps or cfg.epochs * recipe.steps_per_epoch
    warmup = round(cfg.warmup * total_steps)
    log.info("pretrain %s: %s %s, %d steps of %d images on %s", cfg.recipe, cfg.backbone, cfg.encoder_args(),
             total_steps, cfg.batch_size, device)
    summary = train_loop(recipe, lr_schedule(cfg.lr, total_steps, warmup), cfg, device)
    metric = recipe.evaluate(lambda: autocast(device, cfg.precision))
    log.info("pretrain %s: final %s %.4f", cfg.recipe, metric["name"], metric["value"])
    written = save_backbone(encoder, out / WEIGHTS_FILE, cfg)
    _, identity = load_back(out / WEIGHTS_FILE, written, cfg)
    card = _card(cfg, out, recipe, identity, metric, summary, total_steps, warmup, device,
                 time.perf_counter() - wall_start)
    write_card(out, card)
    return PretrainResult(encoder.cpu().eval(), card, out / WEIGHTS_FILE)
