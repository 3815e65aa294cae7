"""Training methods, one module each; defining a :class:`Method` subclass with a ``name`` registers it.

Adding a method is one new module here (a subclass of Method: its phases, what trains, its data,
its loss, its config rules) plus a preset; every module of this package is imported below, so
nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil

from lpt.config import Config, ConfigError
from lpt.methods.base import REGISTRY, Method, stream_losses

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``; ConfigError listing the valid names otherwise."""
    if name not in REGISTRY:
        raise ConfigError(f"config key 'method' is {name!r}; expected one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def check_config(cfg: Config) -> Config:
    """The method's own config rules (the config itself is validated when it is read); returns ``cfg``."""
    get_method(cfg.method).check(cfg)
    return cfg


__all__ = ["REGISTRY", "Method", "check_config", "get_method", "stream_losses"]
