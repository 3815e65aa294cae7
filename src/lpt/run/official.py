"""Turn the published LPT checkpoint into an lpt run directory (reading its format is lpt.model.official)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from lpt.version import __version__
from lpt.config import Config, ConfigError, ModelConfig, apply_overrides, from_dict, load_config, to_dict
from lpt.data.sources import read_list_file
from lpt.model.backbone import BackboneIdentity
from lpt.model.lpt import LPT
from lpt.model.official import OFFICIAL_BACKBONE, OfficialCheckpointError, build_official, read_official_state
from lpt.model.state import save_weights
from lpt.run import files
from lpt.run.load import build_run_model
from lpt.utils import log


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


def read_classes_file(path: str | Path, num_classes: int) -> list[str]:
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


def _run_config(base: str | None, overrides: list[str], model: ModelConfig) -> Config:
    """Resolved config of the imported run: ``base`` (preset or YAML, else defaults) and overrides for
    data and evaluation, then the model section implied by the checkpoint."""
    owned = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] in ("model", "method", "phases", "init")]
    if owned:
        raise ConfigError(f"override '{owned[0]}': the model comes from the checkpoint; set the architecture with "
                          "--backbone and --backbone-arg, top_k with --top-k")
    data = to_dict(load_config(base, overrides)) if base else apply_overrides({}, overrides)
    data["model"] = {**data.get("model", {}), **dataclasses.asdict(model)}
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
    path, out_dir = Path(path), Path(out_dir)
    if (train_list is None) == (train_counts_file is None):
        raise ConfigError("give the training counts of the checkpoint's classes with exactly one of --train-list "
                          "(a 'relative/path label' file, e.g. Places_LT_train.txt) or --train-counts (JSON list); "
                          "evaluation needs them for the many/medium/few groups")
    if files.check_claim(out_dir) != "new":  # a run that never saved a step: `lpt train` starts it over
        raise ConfigError(f"--out {out_dir} holds a started lpt run; choose a new or empty directory (nothing was "
                          "written)")
    model, model_cfg = build_official(read_official_state(path), backbone, dict(backbone_args or {}), top_k, str(path))
    c = model.num_classes
    counts = train_counts_from_list(train_list, c) if train_list else read_train_counts(train_counts_file, c)
    classes = read_classes_file(classes_file, c) if classes_file else [str(i) for i in range(c)]
    model_cfg.checkpoint = files.BACKBONE
    _write_run(out_dir, path, model, _run_config(config, list(overrides or []), model_cfg), classes, counts)
    log.info("imported %s into %s: %s, L=%d, prompt_len %d, pool %d, K=%d, top_k %d, %d classes", path, out_dir,
             backbone, len(model.backbone.blocks), model_cfg.prompt_len, model_cfg.pool_size, model_cfg.split_block,
             top_k, c)
    return out_dir


def _write_run(out_dir: Path, path: Path, model: LPT, cfg: Config, classes: list[str], counts: list[int]) -> None:
    """backbone.safetensors, config.yaml, classes.json, model.safetensors and run.json of an imported run."""
    c = model.num_classes
    vit_state = model.backbone.state_dict()  # save_weights makes them contiguous CPU tensors
    save_weights(out_dir / files.BACKBONE, vit_state, source=str(path))
    files.write_setup(out_dir, cfg, classes, counts)
    identity = _check_reload(out_dir, vit_state, c)
    files.write_checkpoint(out_dir, model, identity, cfg)
    files.write_run_info(out_dir, {
        "lpt_version": __version__, "method": "lpt", "backbone": identity.to_dict(), "phases": {},
        "imported_from": {"path": str(path.resolve()), "sha256": _file_sha256(path), "format": "DongSky/LPT"},
        "backbone_params": sum(p.numel() for p in model.backbone.parameters()),
    })


def _check_reload(out_dir: Path, vit_state: dict[str, torch.Tensor], num_classes: int) -> BackboneIdentity:
    """The backbone's identity (fingerprint) as ``load_run`` rebuilds it from the written file, refusing an import
    that timm would not load back exactly."""
    rebuilt, identity = build_run_model(files.read_config(out_dir), num_classes)
    for key, value in rebuilt.backbone.state_dict().items():
        if not torch.equal(value, vit_state[key]):
            raise OfficialCheckpointError(f"{out_dir / files.BACKBONE}: timm changed '{key}' on loading; the import "
                                          "is not exact")
    return identity
