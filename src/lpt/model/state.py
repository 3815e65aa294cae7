"""Tensors on disk and onto modules: safetensors files with JSON metadata, and the one strict loader.

Never pickles: a run's checkpoints and resumable states are safetensors files whose metadata is
JSON. Every load of known tensors onto a module (trained prompts, a ViT's weights, a pretrained
encoder) goes through :func:`load_strict`, so a missing, extra or misshapen tensor is always an
error that names the file and the tensor.
"""

from __future__ import annotations

import hashlib
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


def tensors_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over tensor names, shapes, dtypes and bytes, in name order (16 hex digits)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` and a JSON-serialisable ``meta`` atomically to ``path``."""
    _write(path, tensors, {META_KEY: json.dumps(meta)})


def save_weights(path: Path, tensors: dict[str, torch.Tensor], **metadata: str) -> None:
    """A backbone's weights as a plain safetensors file (timm's ``load_state_dict`` reads it; ``format: pt``
    as torch's own safetensors files say), atomically. ``metadata`` notes where the weights came from."""
    _write(path, tensors, {"format": "pt", **metadata})


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of an lpt safetensors file; raise CheckpointError naming the file otherwise."""
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


def load_strict(module: nn.Module, tensors: dict[str, torch.Tensor], source: str,
                expected: dict[str, torch.Tensor] | None = None, skip: tuple[str, ...] = (), hint: str = "",
                error: type[Exception] = CheckpointError) -> None:
    """Load ``tensors`` onto ``module``: exactly the names of ``expected`` (default: the module's state dict),
    each of the expected shape, except names starting with a prefix in ``skip`` (left as they are).

    Raises ``error`` (CheckpointError unless the caller has a more precise one) naming ``source``, the
    first offending tensor and both shapes; ``hint`` is appended (what to check).
    """
    expected = module.state_dict() if expected is None else expected
    expected = {k: v for k, v in expected.items() if not k.startswith(skip)}
    tensors = {k: v for k, v in tensors.items() if not k.startswith(skip)}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        first = (f"missing tensor '{missing[0]}' {tuple(expected[missing[0]].shape)}" if missing else
                 f"unexpected tensor '{unexpected[0]}' {tuple(tensors[unexpected[0]].shape)}")
        raise error(f"{source}: {first} ({len(missing)} missing: {missing[:4]}, {len(unexpected)} "
                              f"unexpected: {unexpected[:4]}){hint}")
    for name, value in tensors.items():
        if value.shape != expected[name].shape:
            raise error(f"{source}: tensor '{name}' has shape {tuple(value.shape)}, the model expects "
                                  f"{tuple(expected[name].shape)}{hint}")
    module.load_state_dict(tensors, strict=False)
