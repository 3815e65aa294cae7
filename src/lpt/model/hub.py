"""The Hugging Face hub, where timm and open_clip find pretrained weights by name: whether weights that are not in
the local cache can be had at all. Offline, both libraries retry each file for about 25 s and then end in an error
that does not say how to give local weights; lpt asks once, first, and says it in one line."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
PROBE_SECONDS = 5.0


def _cached(repo_id: str, filenames: tuple[str, ...]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in filenames)


def hub_unreachable(repo_id: str, filenames: tuple[str, ...] = HUB_FILES) -> str | None:
    """Why the weights of hub repository ``repo_id`` (one of ``filenames``) cannot be had, or None: they are in
    the local cache, or the hub answers. Offline means ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set, or a
    first connection to the hub's host failing within :data:`PROBE_SECONDS`."""
    from huggingface_hub import constants

    if _cached(repo_id, filenames):
        return None
    if constants.is_offline_mode():
        return f"HF_HUB_OFFLINE is set and {repo_id} is not in the local hub cache"
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        return f"{endpoint.hostname} cannot be reached ({exc}) and {repo_id} is not in the local hub cache"
    return None


def timm_repo(name: str) -> str | None:
    """The hub repository timm downloads the pretrained weights of ``name`` from (None: a URL or no weights)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # an unknown tag: timm says so itself when asked for the model
        return None
    return getattr(cfg, "hf_hub_id", None) or None


def offline_hint(what: str, reason: str) -> str:
    """The one line that says ``what`` cannot be downloaded, why, and how to give local weights instead."""
    return (f"{what} needs pretrained weights from the Hugging Face hub, but {reason}; give local weights with "
            "model.checkpoint=PATH (a .safetensors, .pth or .npz file), or set model.pretrained=false for a random "
            "backbone")
