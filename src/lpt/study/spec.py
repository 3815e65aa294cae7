"""The study file: a base config, named variants, seeds and an optional grid, expanded into ordinary lpt runs.

A study file (YAML; every key below, nothing else)::

    name: demo_methods            # the study's name: letters, digits, '_', '-', '.'
    base:
      config: demo                # preset or YAML file (a relative path is read from the study file's folder)
      overrides: [progress=false] # key=value strings applied to every run
    variants:                     # name: overrides (a list of key=value strings, or a mapping of keys to values)
      lpt: []
      vpt: [method=vpt, "phases=[phase1]"]
    seeds: [0, 1, 2]              # each variant (and grid value) runs once per seed (config key seed)
    grid:                         # optional: keys and the values to try, every combination
      phase1.lr: [0.01, 0.04]
    select: best_val              # optional, with a grid: per variant, the grid value with the best mean validation
                                  # accuracy (data.val_list or data.val_dir, or data.holdout's held-out images);
                                  # default all
    slurm: {partition: gpu, account: "", time_min: 60, gpus: 1, cpus: 8, mem_gb: 32}   # optional defaults

Each run is the base with the variant's overrides, then the grid values, then ``seed=S``, resolved and validated
exactly as ``lpt train`` resolves them, in the directory ``runs/<variant>[__<key>-<value>...]__seed<S>``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from importlib import resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lpt.config import ConfigError, load_config, preset_names, to_dict

TOP_KEYS = ("name", "base", "variants", "seeds", "grid", "select", "slurm")
BASE_KEYS = ("config", "overrides")
SLURM_KEYS = ("partition", "account", "time_min", "gpus", "cpus", "mem_gb")
SELECT = ("all", "best_val")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class StudyRun:
    """One ordinary lpt run of a study: its directory name, what it varies, and its overrides of the base."""

    name: str
    variant: str
    seed: int
    grid: tuple[tuple[str, Any], ...]
    overrides: tuple[str, ...]

    @property
    def setting(self) -> str:
        """The grid values as ``key=value`` text (empty without a grid): the run's group with its variant."""
        return " ".join(f"{k}={_text(v)}" for k, v in self.grid)


@dataclass
class Study:
    """A validated study file."""

    name: str
    source: Path
    config: str  # a preset name or an absolute YAML path
    overrides: list[str]
    variants: dict[str, list[str]]
    seeds: list[int]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    select: str = "all"
    slurm: dict[str, Any] = field(default_factory=dict)

    def runs(self) -> list[StudyRun]:
        """Every run: variants in file order, then grid combinations, then seeds."""
        out = []
        combos = list(itertools.product(*self.grid.values())) if self.grid else [()]
        for variant, overrides in self.variants.items():
            for combo in combos:
                grid = tuple(zip(self.grid, combo))
                for seed in self.seeds:
                    name = "__".join([variant, *(f"{_slug(k)}-{_slug(_text(v))}" for k, v in grid), f"seed{seed}"])
                    out.append(StudyRun(name, variant, seed, grid, (*self.overrides, *overrides,
                                                                    *(f"{k}={_text(v)}" for k, v in grid),
                                                                    f"seed={seed}")))
        return out

    def resolve(self, run: StudyRun) -> dict:
        """The run's resolved config as a plain dict; a bad override raises ConfigError naming the study file."""
        try:
            return to_dict(load_config(self.config, list(run.overrides)))
        except ConfigError as exc:
            raise ConfigError(f"{self.source}: run {run.name} (variant '{run.variant}'): {exc}") from None

    def record(self, configs: list[dict]) -> dict:
        """What a study directory keeps of the study (``study.json``): the file's settings, every run with the
        overrides it is launched with, and a fingerprint of what makes the runs (the base config, a file's text or
        a preset's name, and each run's name and overrides), which a second ``lpt study run`` into the directory
        must match; a newer lpt with more config keys still continues the study. A run that logs to W&B or MLflow
        is put in the study's group (``log.group``: a W&B group, an MLflow parent run)."""
        runs = self.runs()
        base = self.config if self.config in preset_names() else Path(self.config).read_text()
        digest = hashlib.sha256(json.dumps([base, [[r.name, r.overrides] for r in runs]]).encode()).hexdigest()
        return {"name": self.name, "source": str(self.source), "fingerprint": digest, "config": self.config,
                "overrides": self.overrides, "variants": self.variants, "seeds": self.seeds, "grid": self.grid,
                "select": self.select,
                "runs": [{"name": r.name, "variant": r.variant, "seed": r.seed, "setting": r.setting,
                          "overrides": [*r.overrides, *([f"log.group={self.name}"] if tracking_on(c) else [])]}
                         for r, c in zip(runs, configs)]}


def _text(value: Any) -> str:
    """A value as an override's right-hand side (JSON is YAML; strings as they are)."""
    return value if isinstance(value, str) else json.dumps(value)


def _slug(text: str) -> str:
    """Readable in a directory name: anything but letters, digits, '.', '+' and '-' becomes '-'."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; a study file with two variants of one name is an
    error."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: '{key}' is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"study file {path} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(f"{path} {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with the keys {', '.join(TOP_KEYS)}")
    return data


def _keys(path: Path, where: str, data: Any, valid: tuple[str, ...]) -> dict:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: '{where}' must be a mapping with the keys {', '.join(valid)}")
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' in {where}; valid keys: {', '.join(valid)}")
    return data


def _overrides(path: Path, where: str, value: Any) -> list[str]:
    """A list of key=value strings, or a mapping of keys to values, as key=value strings."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}={_text(v)}" for k, v in value.items()]
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ConfigError(f"{path}: {where} must be a list of key=value strings or a mapping of config keys to values")
    return list(value)


def shipped_studies() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("lpt.presets").joinpath("studies").iterdir()
                  if p.name.endswith(".yaml"))


def load_study(path: str | Path) -> Study:
    """Read and validate a study file (or a shipped study, by name: ``demo_methods``); a bad key or value is
    refused here, before anything is written (every run's config is resolved by :func:`directory.prepare`)."""
    if not Path(path).exists() and str(path) in shipped_studies():
        path = Path(str(resources.files("lpt.presets").joinpath("studies", f"{path}.yaml")))
    path = Path(path).resolve()
    data = _keys(path, "the top level", _read(path), TOP_KEYS)
    for key in ("name", "base", "variants", "seeds"):
        if key not in data:
            raise ConfigError(f"{path}: missing key '{key}'")
    name = data["name"]
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"{path}: name {name!r} must be letters, digits, '_', '-' or '.' (it names directories)")
    base = _keys(path, "base", data["base"], BASE_KEYS)
    config = base.get("config")
    if not isinstance(config, str) or not config:
        raise ConfigError(f"{path}: base.config must name a preset ({', '.join(preset_names())}) or a YAML file")
    if config not in preset_names():
        config = str((path.parent / config).resolve())
    variants = data["variants"]
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{path}: variants must be a non-empty mapping of names to overrides")
    for v in variants:
        if not isinstance(v, str) or not NAME.match(v) or "__" in v:
            raise ConfigError(f"{path}: variant name {v!r} must be letters, digits, '_', '-' or '.', without '__'")
    seeds = data["seeds"]
    if (not isinstance(seeds, list) or not seeds or not all(type(s) is int and s >= 0 for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"{path}: seeds must be a non-empty list of distinct whole numbers >= 0, not {seeds!r}")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: grid must map config keys to non-empty lists of values")
    select = data.get("select", "all")
    if select not in SELECT:
        raise ConfigError(f"{path}: select is {select!r}; expected one of {', '.join(SELECT)}")
    study = Study(name=name, source=path, config=config, overrides=_overrides(path, "base.overrides",
                                                                              base.get("overrides")),
                  variants={v: _overrides(path, f"variant '{v}'", o) for v, o in variants.items()},
                  seeds=seeds, grid=grid, select=select,
                  slurm=dict(_keys(path, "slurm", data.get("slurm") or {}, SLURM_KEYS)))
    _check_names(study)
    return study


def _check_names(study: Study) -> None:
    names = [r.name for r in study.runs()]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise ConfigError(f"{study.source}: two runs would share the directory {twice}; make the grid values differ "
                          "in letters or digits")


def check_selectable(study: Study, configs: list[dict]) -> None:
    """``select: best_val`` chooses on validation numbers only: every run needs data.val_list (data.val_dir for a
    folder) or data.holdout."""
    if study.select != "best_val":
        return
    for run, cfg in zip(study.runs(), configs):
        if not (cfg["data"]["val_list"] or cfg["data"]["val_dir"] or cfg["data"]["holdout"]):
            raise ConfigError(f"{study.source}: select: best_val needs validation numbers, but run {run.name} has "
                              "neither data.val_list (data.val_dir) nor data.holdout")


def tracking_on(cfg: dict) -> bool:
    """Whether a resolved config logs to W&B or MLflow (the ``log`` section, where this lpt has it)."""
    log = cfg.get("log") or {}
    return bool((log.get("wandb") or {}).get("project") or (log.get("mlflow") or {}).get("tracking_uri"))
