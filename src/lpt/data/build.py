"""From a DataConfig to the training and evaluation datasets of a run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lpt.config import ConfigError, DataConfig
from lpt.data.datasets import ImageDataset, Transform
from lpt.data.longtail import class_counts, longtail_counts, longtail_indices
from lpt.data.sources import Splits, load_cifar100, load_fashion_mnist, load_folder, load_list
from lpt.data.transforms import build_transform


@dataclass
class DataSplits:
    """The datasets of a run.

    Attributes:
        train: training images (after the long-tail profile), with train transforms.
        test: evaluation images, with evaluation transforms.
        classes: class names, indexed by label.
        train_counts: training images per class, indexed by label (all > 0).
    """

    train: ImageDataset
    test: ImageDataset
    classes: list[str]
    train_counts: list[int]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


Source = Callable[[DataConfig, Transform, Transform], Splits]

SOURCES: dict[str, Source] = {
    "fashion_mnist": lambda cfg, tr, te: load_fashion_mnist(cfg.root, cfg.download, tr, te),
    "cifar100": lambda cfg, tr, te: load_cifar100(cfg.root, cfg.download, tr, te),
    "list": lambda cfg, tr, te: load_list(cfg.root, cfg.train_list, cfg.test_list, tr, te),
    "folder": lambda cfg, tr, te: load_folder(cfg.root, cfg.train_dir, cfg.test_dir, tr, te),
}


def get_source(name: str) -> Source:
    """The reader registered as ``name``, or a ConfigError listing the valid names."""
    if name not in SOURCES:
        raise ConfigError(f"config key 'data.source' is {name!r}; expected one of {', '.join(SOURCES)}")
    return SOURCES[name]


def apply_longtail(train: ImageDataset, cfg: DataConfig) -> ImageDataset:
    """Subsample ``train`` to the profile n_i = n_max * ratio^(-i/(C-1)) of ``cfg``.

    Applied when ``imbalance_ratio > 1`` or ``max_per_class > 0`` (the latter alone caps every
    class at max_per_class); n_max = max_per_class, or the largest class when it is 0.
    """
    if cfg.imbalance_ratio <= 1 and cfg.max_per_class <= 0:
        return train
    counts = class_counts(train.targets, len(train.classes))
    n_max = cfg.max_per_class or max(counts)
    wanted = longtail_counts(len(train.classes), n_max, max(cfg.imbalance_ratio, 1.0))
    short = next((c for c, (have, want) in enumerate(zip(counts, wanted)) if have < want), None)
    if short is not None:
        raise ConfigError(
            f"class {short} ({train.classes[short]!r}) has {counts[short]} training images; the long-tail profile "
            f"(data.imbalance_ratio={cfg.imbalance_ratio}, n_max={n_max}) asks for {wanted[short]}"
        )
    return train.subset(longtail_indices(train.targets, wanted, cfg.subsample_seed))


def _check_nonempty(counts: list[int], classes: list[str]) -> None:
    empty = [c for c, n in enumerate(counts) if n == 0]
    if empty:
        more = f" (and {len(empty) - 1} more classes)" if len(empty) > 1 else ""
        raise ConfigError(f"class {empty[0]} ({classes[empty[0]]!r}) has no training images{more}")


def build_datasets(cfg: DataConfig) -> DataSplits:
    """Read the source named by ``cfg.source``, apply the long-tail profile, attach transforms.

    Args:
        cfg: the data configuration.

    Returns:
        DataSplits whose every class has at least one training image.
    """
    source = get_source(cfg.source)
    train, test = source(cfg, build_transform(cfg, train=True), build_transform(cfg, train=False))
    train = apply_longtail(train, cfg)
    counts = class_counts(train.targets, len(train.classes))
    _check_nonempty(counts, train.classes)
    return DataSplits(train=train, test=test, classes=train.classes, train_counts=counts)
