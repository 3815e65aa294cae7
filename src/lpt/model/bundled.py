"""Backbones that ship inside the lpt package, accepted by ``model.backbone`` like timm names.

No pretrained ViT can be downloaded offline, so the demo's backbone travels with the package:
a ViT-Tiny-width model (6 blocks, 7 px patches, 28 px images) pretrained by ``lpt pretrain
--recipe glyphs`` on a GPU. Its card (``lpt/weights/<name>.card.md``) records data, recipe,
command, hardware and the weights' fingerprint; loading checks the fingerprint, so a damaged
file is refused instead of silently giving poor features. The same architecture with random
weights stays available by name for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

DEMO_ARCH = "vit_tiny_patch16_224"
DEMO_ARGS = {"img_size": 28, "patch_size": 7, "depth": 6}


@dataclass(frozen=True)
class BundledBackbone:
    """A named timm architecture with fixed arguments, and optionally weights shipped in ``lpt/weights``."""

    name: str
    arch: str
    args: dict[str, Any] = field(default_factory=dict)
    weights: str = ""  # file name under lpt/weights; empty: random weights (seeded by the run)
    fingerprint: str = ""  # lpt.model.backbone.weights_fingerprint of the loaded weights (from the card)

    def weights_path(self) -> Path:
        return Path(str(resources.files("lpt") / "weights" / self.weights))

    def card_path(self) -> Path:
        return self.weights_path().with_suffix(".card.json")


BUNDLED = {
    b.name: b
    for b in (
        BundledBackbone("demo_vit_glyphs", DEMO_ARCH, DEMO_ARGS, weights="demo_vit_glyphs.safetensors",
                        fingerprint="2bb8a3b2cbde7f79"),  # pretrained on 1,000 rendered glyph classes
        BundledBackbone("demo_vit_random", DEMO_ARCH, DEMO_ARGS),  # the same architecture, random weights
    )
}


def bundled_backbone(name: str) -> BundledBackbone | None:
    """The bundled backbone called ``name``, or None for any other (timm) name."""
    return BUNDLED.get(name)
