"""Import the published LPT checkpoint (DongSky/LPT, ``LPT_places.pth``) into lpt.

The official model (``phase2_test/PromptModels_pool_eval/structure.py``) subclasses timm's
VisionTransformer, so its state dict holds the ViT under timm's own names (``cls_token``,
``pos_embed``, ``patch_embed.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``,
``norm.*``; its ViT head is Identity) plus four tensors of its ``prompt_learner``:

==========================================  =====================  ============================
official                                    shape                  lpt
==========================================  =====================  ============================
``prompt_learner.Prompt_Tokens``            ``[L, P, D]``          ``shared_prompt``
``prompt_learner.Prompt_Tokens_pool``       ``[m, L - K, P, D]``   ``pool.prompts``
``prompt_learner.Prompt_Keys``              ``[m, D]``             ``pool.keys``
``prompt_learner.head.weight``              ``[D, C]``             ``head.weight`` ``[C, D]``
==========================================  =====================  ============================

The official cosine classifier (``NormedLinear``) normalises W over D, column by column; lpt's
normalises rows of ``[C, D]``, so the transpose is the whole conversion. The file is
``{"state_dict": ...}`` with keys prefixed ``module.`` when saved from DataParallel (the official
evaluation strips it the same way). The official blocks use nn.LayerNorm's eps 1e-5 where timm's
ViT uses 1e-6; the import keeps 1e-5 (``model.layer_norm_eps``). It is read with
``torch.load(weights_only=True)``: a pickle that would build anything but tensors is refused.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import yaml
from safetensors.torch import save as safetensors_bytes

from lpt import __version__
from lpt.config import ConfigError, apply_overrides, from_dict, load_config, save_config, to_dict
from lpt.data.sources import read_list_file
from lpt.engine.checkpoint import CheckpointError, load_trained, save_checkpoint
from lpt.model import LPT, BackboneError
from lpt.model.backbone import check_vit_layout, set_layer_norm_eps
from lpt.utils import atomic_write_bytes, atomic_write_json, log

# The published checkpoint's ViT: ViT-B/16 at 224, started from timm's (0.5) vit_base_patch16_224_in21k, the
# AugReg ImageNet-21k weights, which timm 1.x names with this tag. Only the architecture is used; weights come
# from the checkpoint.
OFFICIAL_BACKBONE = "vit_base_patch16_224.augreg_in21k"
OFFICIAL_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, used by the official blocks
BACKBONE_FILE = "backbone.safetensors"
PREFIX = "prompt_learner."
SHARED, POOL, KEYS, HEAD = (PREFIX + n for n in ("Prompt_Tokens", "Prompt_Tokens_pool", "Prompt_Keys", "head.weight"))
PROMPT_KEYS = (SHARED, POOL, KEYS, HEAD)
DROPPED_PREFIXES = ("head.", "head_dist.")  # ViT classifier heads (Identity in the official model): not the backbone


class OfficialCheckpointError(CheckpointError):
    """An official LPT checkpoint that cannot be read safely or does not have the published layout."""


@dataclass(frozen=True)
class OfficialLayout:
    """Sizes read off the prompt tensors."""

    depth: int  # L
    prompt_len: int  # P
    dim: int  # D
    pool_size: int  # m
    split_block: int  # K = L - (second dim of the pool)
    num_classes: int  # C


# ----------------------------------------------------------------------------- reading


def read_official_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat state dict of an official checkpoint, ``module.`` prefixes stripped.

    Accepts ``{"state_dict": {...}}`` (the published format) or a bare mapping of tensors.
    Raises OfficialCheckpointError for a missing or unreadable file and for a pickle that holds
    anything but tensors and plain containers (it is never executed).
    """
    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"official checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
        what = f"builds {found.group(1)}" if found else "holds objects other than tensors"
        raise OfficialCheckpointError(
            f"refusing {path}: its pickle {what}, which torch.load(weights_only=True) does not allow since it "
            "could run code; only tensors and plain containers are read (re-save the state_dict alone where the "
            "file is trusted)"
        ) from None
    except (RuntimeError, ValueError, KeyError, EOFError, AttributeError) as exc:
        raise OfficialCheckpointError(f"{path} is not a readable torch checkpoint ({type(exc).__name__}: "
                                      f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state:
        raise OfficialCheckpointError(f"{path}: expected a dict with a 'state_dict' mapping of tensors")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = str(key)
        while name.startswith("module."):  # DataParallel / DDP
            name = name[len("module."):]
        if not isinstance(value, torch.Tensor):
            raise OfficialCheckpointError(f"{path}: state_dict entry '{key}' is a {type(value).__name__}, not a tensor")
        if name in out:
            raise OfficialCheckpointError(f"{path}: '{name}' appears twice once 'module.' prefixes are stripped")
        out[name] = value
    return out


def _shape(t: torch.Tensor | tuple) -> str:
    return str(tuple(t.shape if isinstance(t, torch.Tensor) else t))


def official_layout(state: dict[str, torch.Tensor], source: str = "checkpoint") -> OfficialLayout:
    """Check the four prompt tensors against each other and return the sizes they imply.

    Raises OfficialCheckpointError naming the key and both shapes on any disagreement.
    """
    extra = sorted(k for k in state if k.startswith(PREFIX) and k not in PROMPT_KEYS)
    if extra:
        raise OfficialCheckpointError(f"{source}: unexpected tensor '{extra[0]}' {_shape(state[extra[0]])}; "
                                      f"the official prompt learner holds only {', '.join(PROMPT_KEYS)}")
    missing = [k for k in PROMPT_KEYS if k not in state]
    if missing:
        raise OfficialCheckpointError(f"{source}: missing tensor '{missing[0]}'; an official LPT checkpoint holds "
                                      f"{', '.join(PROMPT_KEYS)}")
    shared, pool, keys, head = (state[k] for k in PROMPT_KEYS)
    if shared.ndim != 3:
        raise OfficialCheckpointError(f"{source}: '{SHARED}' has shape {_shape(shared)}; expected [L, P, D]")
    depth, plen, dim = shared.shape
    m = pool.shape[0] if pool.ndim else "m"
    checks = (
        (POOL, pool, 4, lambda s: s[1] <= depth and s[1] >= 1 and tuple(s[2:]) == (plen, dim),
         f"(m, 1..{depth}, {plen}, {dim})"),
        (KEYS, keys, 2, lambda s: s[0] == m and s[1] == dim, f"({m}, {dim})"),
        (HEAD, head, 2, lambda s: s[0] == dim and s[1] >= 1, f"({dim}, C)"),
    )
    for key, tensor, ndim, ok, expected in checks:
        if tensor.ndim != ndim or not ok(tensor.shape):
            context = f"'{SHARED}' {_shape(shared)}" + (f" and '{POOL}' {_shape(pool)}" if key == KEYS else "")
            raise OfficialCheckpointError(
                f"{source}: '{key}' has shape {_shape(tensor)}, expected {expected} to fit {context}"
            )
    return OfficialLayout(depth=depth, prompt_len=plen, dim=dim, pool_size=pool.shape[0],
                          split_block=depth - pool.shape[1], num_classes=head.shape[1])


def split_official_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """ViT weights (timm names, classifier heads dropped) and lpt's trained tensors, by lpt name."""
    vit = {k: v for k, v in state.items() if not k.startswith(PREFIX) and not k.startswith(DROPPED_PREFIXES)}
    dropped = sorted(k for k in state if k.startswith(DROPPED_PREFIXES))
    if dropped:
        log.info("official checkpoint: dropping ViT head tensors %s (not part of the frozen backbone)", dropped)
    trained = {
        "shared_prompt": state[SHARED],
        "pool.prompts": state[POOL],
        "pool.keys": state[KEYS],
        "head.weight": state[HEAD].t(),  # [D, C] normalised over D == [C, D] normalised over rows
    }
    return vit, {k: v.detach().float().contiguous() for k, v in trained.items()}


# ----------------------------------------------------------------------------- building the model


def _official_backbone(name: str, backbone_args: dict[str, Any]) -> torch.nn.Module:
    """Headless timm ViT of architecture ``name`` (no weights loaded yet) with the official LayerNorm eps."""
    if not timm.is_model(name.split(".")[0]):
        raise BackboneError(f"unknown backbone '{name}'; see timm.list_models('vit_*') for valid names")
    try:
        vit = timm.create_model(name, pretrained=False, num_classes=0, **backbone_args)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise BackboneError(f"backbone '{name}' with {backbone_args}: {str(exc).strip().splitlines()[0]}") from exc
    check_vit_layout(vit, name)
    set_layer_norm_eps(vit, OFFICIAL_LAYER_NORM_EPS)
    return vit.requires_grad_(False)


def _load_vit_strict(vit: torch.nn.Module, weights: dict[str, torch.Tensor], name: str, source: str) -> None:
    expected = vit.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        first = (f"missing ViT tensor '{missing[0]}' {_shape(expected[missing[0]])}" if missing else
                 f"unexpected tensor '{unexpected[0]}' {_shape(weights[unexpected[0]])}")
        raise OfficialCheckpointError(f"{source}: {first} for backbone '{name}' ({len(missing)} missing, "
                                      f"{len(unexpected)} unexpected); check the backbone name and its arguments")
    for key, value in weights.items():
        if value.shape != expected[key].shape:
            raise OfficialCheckpointError(f"{source}: '{key}' has shape {_shape(value)} in the checkpoint, backbone "
                                          f"'{name}' expects {_shape(expected[key])}; check the backbone name and "
                                          "its arguments")
    vit.load_state_dict(weights, strict=True)


def _build(state: dict[str, torch.Tensor], backbone: str, backbone_args: dict[str, Any], top_k: int,
           source: str) -> tuple[LPT, OfficialLayout]:
    """The phase-2 LPT model of an official state dict, in eval mode, and its layout."""
    layout = official_layout(state, source)
    if not 1 <= top_k <= layout.pool_size:
        raise ConfigError(f"top_k is {top_k}; expected 1..{layout.pool_size} (the pool size of {source})")
    vit_weights, trained = split_official_state(state)
    vit = _official_backbone(backbone, backbone_args)
    _load_vit_strict(vit, vit_weights, backbone, source)
    if len(vit.blocks) != layout.depth or vit.embed_dim != layout.dim:
        raise OfficialCheckpointError(f"{source}: '{SHARED}' has shape {_shape(trained['shared_prompt'])}, backbone "
                                      f"'{backbone}' has {len(vit.blocks)} blocks of width {vit.embed_dim}")
    model = LPT(vit, layout.num_classes, prompt_len=layout.prompt_len, pool_size=layout.pool_size,
                split_block=layout.split_block, top_k=top_k)
    load_trained(model, trained, source)
    model.set_phase(2)
    return model.eval(), layout


def load_official_checkpoint(path: str | Path, backbone: str = OFFICIAL_BACKBONE, top_k: int = 2,
                             **backbone_kwargs: Any) -> LPT:
    """The published LPT checkpoint as an lpt model, in eval mode and phase 2.

    Nothing is downloaded: the ViT weights come from the checkpoint, ``backbone`` only names the
    architecture. LayerNorm eps is the official 1e-5.

    Args:
        path: the ``.pth`` file (``{"state_dict": ...}``, ``module.`` prefixes allowed).
        backbone: timm architecture of the checkpoint's ViT (default ViT-B/16 at 224, the published one).
        top_k: groups selected per image (k; the official code uses 2).
        **backbone_kwargs: ``timm.create_model`` arguments (img_size, patch_size, embed_dim, depth, ...).

    Raises:
        OfficialCheckpointError: an unsafe or unreadable file, or tensors that do not fit the layout.
    """
    return _build(read_official_state(path), backbone, backbone_kwargs, top_k, str(path))[0]


# ----------------------------------------------------------------------------- run directory


def parse_backbone_args(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` strings (values parsed as YAML) into timm.create_model keyword arguments."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"backbone argument '{item}' is not of the form name=value (e.g. img_size=384)")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"backbone argument '{item}': the value is not valid YAML") from None
    return out


def train_counts_from_list(path: str | Path, num_classes: int) -> list[int]:
    """Training images per class, counted from a list file of ``relative/path label`` lines."""
    _, labels = read_list_file(path, check_files=False)
    if max(labels) >= num_classes:
        raise ConfigError(f"{path}: label {max(labels)} is outside [0, {num_classes}), the checkpoint's classes")
    counts = torch.bincount(torch.tensor(labels), minlength=num_classes).tolist()
    absent = [c for c, n in enumerate(counts) if n == 0]
    if absent:
        raise ConfigError(f"{path}: no training image of class {absent[0]} ({len(absent)} classes absent); "
                          f"the checkpoint has {num_classes} classes")
    return counts


def read_train_counts(path: str | Path, num_classes: int) -> list[int]:
    """Training counts from a JSON file: a list of C integers, or an lpt ``classes.json``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"train counts file {path}: {exc}") from None
    counts = data.get("train_counts") if isinstance(data, dict) else data
    if (not isinstance(counts, list) or len(counts) != num_classes
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in counts)):
        raise ConfigError(f"train counts file {path}: expected a JSON list of {num_classes} positive integers "
                          "(or a classes.json holding one)")
    return counts


def read_class_names(path: str | Path, num_classes: int) -> list[str]:
    """Class names, one per non-blank line, in label order."""
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"classes file {path}: {exc}") from None
    if len(names) != num_classes:
        raise ConfigError(f"classes file {path} names {len(names)} classes; the checkpoint has {num_classes}")
    return names


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _run_config(base: str | None, overrides: list[str], model: dict[str, Any]):
    """Resolved config of the imported run: ``base`` (preset or YAML, else defaults) and overrides for
    data and evaluation, then the model section implied by the checkpoint."""
    owned = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] in ("model", "method", "phases", "init")]
    if owned:
        raise ConfigError(f"override '{owned[0]}': the model comes from the checkpoint; set the architecture with "
                          "--backbone and --backbone-arg, top_k with --top-k")
    data = to_dict(load_config(base, overrides)) if base else apply_overrides({}, overrides)
    data["model"] = {**data.get("model", {}), **model}
    data.update(method="lpt", phases=["phase1", "phase2"], init="")
    return from_dict(data)


def import_official(
    path: str | Path,
    out_dir: str | Path,
    backbone: str = OFFICIAL_BACKBONE,
    backbone_args: dict[str, Any] | None = None,
    top_k: int = 2,
    classes_file: str | None = None,
    train_list: str | None = None,
    train_counts_file: str | None = None,
    config: str | None = None,
    overrides: list[str] | None = None,
) -> Path:
    """Turn an official LPT checkpoint into an lpt run directory that ``lpt eval`` and ``lpt.load_run`` load.

    Writes ``backbone.safetensors`` (the checkpoint's ViT weights, which ``model.checkpoint`` names
    relative to the run directory, so the directory can be moved), ``config.yaml`` (phase 1 and 2 of
    method lpt, sizes from the tensors, ``layer_norm_eps: 1e-5``), ``classes.json``,
    ``model.safetensors`` (phase 2, lpt's checkpoint format) and ``run.json`` (where it came from).

    Shot groups need the training count of every class, so exactly one of ``train_list`` (a
    ``relative/path label`` file whose labels are counted, e.g. Places_LT_train.txt) and
    ``train_counts_file`` (JSON list) is required.

    Args:
        path: the official ``.pth``.
        out_dir: the run directory to write.
        backbone: timm architecture of the checkpoint's ViT.
        backbone_args: ``timm.create_model`` arguments.
        top_k: k.
        classes_file: class names, one per line; default "0".."C-1".
        train_list: list file whose labels give the training counts.
        train_counts_file: JSON list of the training counts (or an lpt classes.json).
        config: preset or YAML whose data and evaluation settings the run keeps (e.g. ``places_lt``).
        overrides: ``dotted.key=value`` settings outside ``model`` (e.g. ``data.root=...``).

    Returns:
        ``out_dir``.
    """
    from lpt.engine.runner import CHECKPOINT, build_model, resolve_run_checkpoint  # runner imports the whole engine

    path, out_dir = Path(path), Path(out_dir)
    if (train_list is None) == (train_counts_file is None):
        raise ConfigError("give the training counts of the checkpoint's classes with exactly one of --train-list "
                          "(a 'relative/path label' file, e.g. Places_LT_train.txt) or --train-counts (JSON list); "
                          "evaluation needs them for the many/medium/few groups")
    backbone_args = dict(backbone_args or {})
    model, layout = _build(read_official_state(path), backbone, backbone_args, top_k, str(path))
    c = layout.num_classes
    counts = train_counts_from_list(train_list, c) if train_list else read_train_counts(train_counts_file, c)
    classes = read_class_names(classes_file, c) if classes_file else [str(i) for i in range(c)]
    backbone_file = out_dir / BACKBONE_FILE
    cfg = _run_config(config, list(overrides or []), {
        "backbone": backbone, "pretrained": False, "checkpoint": BACKBONE_FILE, "backbone_args": backbone_args,
        "prompt_len": layout.prompt_len, "pool_size": layout.pool_size, "split_block": layout.split_block,
        "top_k": top_k, "feature_dropout": 0.1, "head": "cosine", "prompt_depth": "deep", "query": "shared",
        "layer_norm_eps": OFFICIAL_LAYER_NORM_EPS,
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    vit_state = {k: v.detach().contiguous() for k, v in model.backbone.state_dict().items()}
    atomic_write_bytes(backbone_file, safetensors_bytes(vit_state, metadata={"format": "pt", "source": str(path)}))
    save_config(cfg, out_dir / "config.yaml")
    atomic_write_json(out_dir / "classes.json", {"classes": classes, "train_counts": counts})
    # The identity (fingerprint) is that of the backbone exactly as load_run rebuilds it from the file.
    rebuilt, identity = build_model(resolve_run_checkpoint(cfg, out_dir), c)
    for key, value in rebuilt.backbone.state_dict().items():
        if not torch.equal(value, vit_state[key]):
            raise OfficialCheckpointError(f"{backbone_file}: timm changed '{key}' on loading; the import is not exact")
    meta = {"lpt_version": __version__, "phase": 2, "num_classes": c, "backbone": identity.to_dict(),
            "model": to_dict(cfg)["model"]}
    save_checkpoint(out_dir / CHECKPOINT, model.trained_tensors(), meta)
    atomic_write_json(out_dir / "run.json", {
        "lpt_version": __version__, "method": "lpt", "backbone": identity.to_dict(), "phases": {},
        "imported_from": {"path": str(path.resolve()), "sha256": _file_sha256(path), "format": "DongSky/LPT"},
        "backbone_params": sum(p.numel() for p in model.backbone.parameters()),
    })
    log.info("imported %s into %s: %s, L=%d, D=%d, prompt_len %d, pool %d, K=%d, top_k %d, %d classes", path, out_dir,
             backbone, layout.depth, layout.dim, layout.prompt_len, layout.pool_size, layout.split_block, top_k, c)
    return out_dir
