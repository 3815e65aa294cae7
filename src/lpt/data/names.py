"""Readable class names for text prompts (zero-shot CLIP and text-initialised classifiers, ``model.text``).

A source names its classes as it stores them: Places and ImageNet folders (``airfield``,
``n01440764``), iNaturalist species, CIFAR's ``aquarium_fish``. A prompt needs words, so the
names come, in this order, from:

- ``data.class_names``: a file of one name a line, in label order;
- ``data.source=list``: ``classnames.txt`` beside the training list (Places-LT's and ImageNet-LT's
  ``folder readable name`` lines), as it gives the training list's class names;
- ``data.source=folder`` with ``data.class_index`` in that form: the index's readable part (an index of
  ``folder label`` lines gives none);
- otherwise the source's own names (iNaturalist's species, CIFAR-100's, Fashion-MNIST's, folder names).

A line ``folder readable name`` whose first field is the class's stored name gives the rest of the
line; any other line is the name as it stands. Then underscores become spaces and Places365's
``/a/`` category prefix goes. A WordNet id is refused: it would put ``n01440764`` into a prompt.
"""

from __future__ import annotations

import re
from pathlib import Path

from lpt.config import ConfigError, DataConfig
from lpt.data.sources import classnames_beside, index_names_classes

WORDNET_ID = re.compile(r"n\d{8}")


def names_file(cfg: DataConfig) -> Path | None:
    """The file the readable names are read from, or None when the source's own names serve."""
    if cfg.class_names:
        path = Path(cfg.class_names)
        if not path.is_file():
            raise ConfigError(f"class names file {path} (data.class_names) does not exist")
        return path
    if cfg.source == "list" and cfg.train_list:
        beside = classnames_beside(cfg.train_list)
        return beside if beside.is_file() else None
    if cfg.source == "folder" and cfg.class_index and index_names_classes(cfg.class_index):
        return Path(cfg.class_index)  # lines in label order; a 'folder label' index names no class
    return None


def _from_line(text: str, stored: str) -> str:
    fields = text.split(maxsplit=1)
    return fields[1] if len(fields) == 2 and fields[0] == stored else text.strip()


def clean_name(name: str) -> str:
    """A class name as a prompt takes it: ``/a/abbey`` -> ``abbey``, ``aquarium_fish`` -> ``aquarium fish``."""
    name = re.sub(r"^/[a-z]/", "", name.strip())
    return " ".join(name.replace("_", " ").split())


def prompt_names(cfg: DataConfig, classes: list[str]) -> list[str]:
    """The readable name of every class, indexed by label (``classes``: the source's stored names)."""
    path = names_file(cfg)
    where = f"{path}" if path is not None else f"the class names of data.source={cfg.source}"
    if path is not None:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(lines) < len(classes):
            raise ConfigError(f"{path}: {len(lines)} class names; the data has {len(classes)} classes (one name a "
                              "line, in label order)")
        classes = [_from_line(line, stored) for line, stored in zip(lines, classes)]
    names = [clean_name(c) for c in classes]
    for label, name in enumerate(names):
        if not name or WORDNET_ID.fullmatch(name):
            raise ConfigError(f"class {label} is named {name!r} in {where}; text prompts need a readable name: set "
                              "data.class_names to a file of one name a line, in label order (ImageNet-LT's "
                              "classnames.txt has them)")
    return names
