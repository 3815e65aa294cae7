"""Checkpoints of what was trained (prompts, keys, classifier), in safetensors with JSON metadata.

Never pickles: the backbone is rebuilt from its recorded identity and checked against the
recorded weights fingerprint before the trained tensors are loaded strictly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load, save

from lpt.utils import atomic_write_bytes

META_KEY = "lpt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model it is loaded onto."""


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` and a JSON-serialisable ``meta`` atomically to ``path``."""
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={META_KEY: json.dumps(meta)})
    atomic_write_bytes(path, data)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of an lpt checkpoint; raise CheckpointError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raw = path.read_bytes()
    try:
        tensors = load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get(META_KEY, "null"))
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is not an lpt safetensors file ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has no lpt metadata")
    return tensors, meta


def load_trained(module: nn.Module, tensors: dict[str, torch.Tensor], source: str,
                 skip: tuple[str, ...] = ()) -> None:
    """Load trained tensors strictly: every entry of ``module.trained_tensors()`` must be present and match,
    except those whose names start with a prefix in ``skip`` (left as they are, and ignored in ``tensors``)."""
    expected = {k: v for k, v in module.trained_tensors().items() if not k.startswith(skip)}
    tensors = {k: v for k, v in tensors.items() if not k.startswith(skip)}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source}: missing tensors {missing}, unexpected tensors {unexpected}")
    for name, value in tensors.items():
        if value.shape != expected[name].shape:
            raise CheckpointError(
                f"{source}: tensor '{name}' has shape {tuple(value.shape)}, "
                f"the model expects {tuple(expected[name].shape)}"
            )
    module.load_state_dict(tensors, strict=False)
