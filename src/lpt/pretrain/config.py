"""Settings of one pretraining run, typed and validated before any data loads; the card records
them, and :meth:`PretrainConfig.command` writes the ``lpt pretrain`` line that repeats the run."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lpt.config import ConfigError

RECIPE_NAMES = ("mae", "glyphs")  # lpt.pretrain.recipes.RECIPES implements these
PRECISIONS = ("bf16", "fp32")


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run.

    Exactly one of ``steps`` and ``epochs`` is > 0. An MAE epoch is one pass over the images; a
    glyph epoch is ``images_per_class`` freshly rendered images per class (glyph images never repeat).
    """

    recipe: str
    backbone: str = "vit_tiny_patch16_224"  # timm architecture; its weights here start random
    backbone_args: dict[str, Any] = field(default_factory=dict)  # timm.create_model arguments
    img_size: int = 28
    steps: int = 0
    epochs: int = 0
    batch_size: int = 512
    lr: float = 1e-3  # peak AdamW learning rate (not scaled with the batch)
    weight_decay: float = 0.05  # not on biases, norms, position embeddings and tokens
    warmup: float = 0.05  # fraction of the steps with a linear warm-up
    clip_grad: float = 1.0  # max gradient norm; 0 turns clipping off
    device: str = "auto"
    precision: str = "bf16"  # autocast dtype on a GPU; the CPU always runs fp32
    seed: int = 0
    log_every: int = 50
    workers: int = -1  # glyph rendering processes; -1: the cores but one, at most 16
    # mae
    data_root: str = ""  # Fashion-MNIST IDX folder; empty: /usr/share/datasets/fashion-mnist
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 4
    decoder_heads: int = 4
    norm_pix_loss: bool = True
    crop_scale_min: float = 0.35  # random-resized-crop area range [crop_scale_min, 1]
    eval_images: int = 2048  # the fixed training images the final MAE loss is measured on
    # glyphs
    num_classes: int = 1000
    font_dirs: tuple[str, ...] = ()  # empty: the system font folders
    images_per_class: int = 100  # per epoch
    eval_per_class: int = 10  # held-out generated images per class

    def __post_init__(self) -> None:
        if self.recipe not in RECIPE_NAMES:
            raise ConfigError(f"unknown recipe '{self.recipe}'; expected one of {', '.join(RECIPE_NAMES)}")
        if (self.steps > 0) == (self.epochs > 0) or min(self.steps, self.epochs) < 0:
            raise ConfigError(f"give exactly one of steps ({self.steps}) and epochs ({self.epochs}), and it > 0")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision '{self.precision}'; expected one of {', '.join(PRECISIONS)}")
        if self.backbone_args.get("img_size", self.img_size) != self.img_size:
            raise ConfigError(f"backbone argument img_size={self.backbone_args['img_size']} contradicts "
                              f"img {self.img_size}; set the size with --img only")
        for name in ("img_size", "batch_size", "log_every", "decoder_dim", "decoder_depth", "decoder_heads",
                     "eval_images", "images_per_class", "eval_per_class"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} is {getattr(self, name)}; expected 1 or more")
        checks = {
            "num_classes": self.num_classes >= 2, "lr": self.lr > 0, "weight_decay": self.weight_decay >= 0,
            "warmup": 0 <= self.warmup < 1, "clip_grad": self.clip_grad >= 0, "workers": self.workers >= -1,
            "seed": self.seed >= 0,
            "mask_ratio": 0 < self.mask_ratio < 1, "crop_scale_min": 0 < self.crop_scale_min <= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"{name} is {getattr(self, name)}, out of range (see lpt pretrain --help)")

    def encoder_args(self) -> dict[str, Any]:
        """The timm.create_model arguments of the backbone, image size included."""
        return {**self.backbone_args, "img_size": self.img_size}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"font_dirs": list(self.font_dirs)}

    def command(self, out: str) -> str:
        """The ``lpt pretrain`` command line that repeats this run, every setting spelled out."""
        args = ["lpt", "pretrain", "--recipe", self.recipe, "--out", str(out), "--backbone", self.backbone]
        for key, value in self.backbone_args.items():
            if key != "img_size":
                args += ["--backbone-arg", f"{key}={json.dumps(value)}"]
        args += ["--img", str(self.img_size)]
        args += ["--steps", str(self.steps)] if self.steps else ["--epochs", str(self.epochs)]
        args += ["--batch", str(self.batch_size), "--lr", repr(self.lr), "--device", self.device,
                 "--seed", str(self.seed)]
        defaults = PretrainConfig(recipe=self.recipe, steps=1)
        library_only = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SPELLED_OUT or value == getattr(defaults, f.name):
                continue
            if f.name not in CLI_FLAGS:
                library_only.append(f"{f.name}={value!r}")
            elif f.name == "font_dirs":
                args += [a for d in value for a in (CLI_FLAGS[f.name], d)]
            else:
                args += [CLI_FLAGS[f.name], str(value)]
        line = shlex.join(args)
        return line + (f"  # library-only settings: {', '.join(library_only)}" if library_only else "")


SPELLED_OUT = ("recipe", "backbone", "backbone_args", "img_size", "steps", "epochs", "batch_size", "lr", "device",
               "seed")
# Settings with a flag of their own, written only when they differ from the default.
CLI_FLAGS = {
    "weight_decay": "--weight-decay", "log_every": "--log-every", "workers": "--workers", "data_root": "--data-root",
    "mask_ratio": "--mask-ratio", "num_classes": "--num-classes", "font_dirs": "--font-dir",
}
