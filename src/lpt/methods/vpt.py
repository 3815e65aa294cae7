"""VPT (Jia et al., 2022): one prompt set and the classifier; deep (a prompt per block) or shallow (input only)."""

from __future__ import annotations

from lpt.methods.base import Method


class VPT(Method):
    name = "vpt"
    label = "VPT"
    prompt_depths = ("deep", "shallow")
