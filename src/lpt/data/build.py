"""From a DataConfig to the training and evaluation datasets of a run."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from lpt.config import ConfigError, DataConfig
from lpt.data import sources as src
from lpt.data.scan import BadImage, drop_bad_images
from lpt.data.datasets import FileImageDataset, ImageDataset, Transform
from lpt.data.decode import FastCrop, FileCrops
from lpt.data.gpu_decode import DeviceDecode, EncodedCrop, collate_encoded, resolve_decode
from lpt.data.longtail import class_counts, longtail_counts, longtail_indices
from lpt.data.sources import Splits
from lpt.data.transforms import BatchNormalize, build_transform


@dataclass
class DataSplits:
    """The datasets of a run.

    Attributes:
        train: training images (after the long-tail profile), with train transforms.
        test: evaluation images, with evaluation transforms.
        classes: class names, indexed by label.
        train_counts: training images per class, indexed by label (all > 0).
        bad_images: unreadable images dropped from ``train`` and ``test`` (``data.skip_bad_images``).
    """

    train: ImageDataset
    test: ImageDataset
    classes: list[str]
    train_counts: list[int]
    bad_images: list[BadImage] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class Source:
    """One ``data.source``: three ways of reading it.

    Attributes:
        splits: ``(cfg, train_transform, test_transform) -> (train, test)``, for training.
        test: ``(cfg, test_transform) -> test``: the evaluation split alone, labelled as ``splits``
            labels it, without needing the training images (evaluating a finished run).
        train_labels: ``cfg -> (labels, class names)`` of the training split before the long-tail
            profile, read without opening an image (``lpt data-stats``).
    """

    splits: Callable[[DataConfig, Transform, Transform], Splits]
    test: Callable[[DataConfig, Transform], ImageDataset]
    train_labels: Callable[[DataConfig], tuple[list[int], list[str]]]


SOURCES: dict[str, Source] = {
    "fashion_mnist": Source(
        splits=lambda c, tr, te: src.load_fashion_mnist(c.root, c.download, tr, te),
        test=lambda c, te: src.load_fashion_mnist_test(c.root, c.download, te),
        train_labels=lambda c: src.fashion_mnist_train_labels(c.root, c.download),
    ),
    "cifar100": Source(
        splits=lambda c, tr, te: src.load_cifar100(c.root, c.download, tr, te),
        test=lambda c, te: src.load_cifar100_test(c.root, c.download, te),
        train_labels=lambda c: src.cifar100_train_labels(c.root, c.download),
    ),
    "list": Source(
        splits=lambda c, tr, te: src.load_list(c.root, c.train_list, c.test_list, tr, te,
                                               check_files=not c.skip_bad_images),
        test=lambda c, te: src.load_list_test(c.root, c.train_list, c.test_list, te),
        train_labels=lambda c: src.list_train_labels(c.train_list),
    ),
    "folder": Source(  # with data.holdout the evaluation folder is neither needed nor read
        splits=lambda c, tr, te: src.load_folder(c.root, c.train_dir, "" if c.holdout else c.test_dir, tr, te,
                                                 c.class_index),
        test=lambda c, te: src.load_folder_test(c.root, c.train_dir, c.test_dir, te, c.class_index),
        train_labels=lambda c: src.folder_train_labels(c.root, c.train_dir, c.class_index),
    ),
    "inat_json": Source(
        splits=lambda c, tr, te: src.load_inat_json(c.root, c.train_list, c.test_list, tr, te,
                                                    check_files=not c.skip_bad_images),
        test=lambda c, te: src.load_inat_json_test(c.root, c.train_list, c.test_list, te),
        train_labels=lambda c: src.inat_train_labels(c.train_list),
    ),
}


def get_source(name: str) -> Source:
    """The reader registered as ``name``, or a ConfigError listing the valid names."""
    if name not in SOURCES:
        raise ConfigError(f"config key 'data.source' is {name!r}; expected one of {', '.join(SOURCES)}")
    return SOURCES[name]


def longtail_keep(targets: list[int], classes: list[str], cfg: DataConfig) -> list[int] | None:
    """Indices of ``targets`` kept by the profile n_i = n_max * ratio^(-i/(C-1)) of ``cfg``; None: keep all.

    Applied when ``imbalance_ratio > 1`` or ``max_per_class > 0`` (the latter alone caps every
    class at max_per_class); n_max = max_per_class, or the largest class when it is 0.
    """
    if cfg.imbalance_ratio <= 1 and cfg.max_per_class <= 0:
        return None
    counts = class_counts(targets, len(classes))
    n_max = cfg.max_per_class or max(counts)
    wanted = longtail_counts(len(classes), n_max, max(cfg.imbalance_ratio, 1.0))
    short = next((c for c, (have, want) in enumerate(zip(counts, wanted)) if have < want), None)
    if short is not None:
        largest = f"data.max_per_class={n_max}" if cfg.max_per_class else f"{n_max}, the largest class"
        raise ConfigError(
            f"class {short} ({classes[short]!r}) has {counts[short]} training images; the long-tail profile "
            f"(data.imbalance_ratio={cfg.imbalance_ratio}, n_max = {largest}) asks for {wanted[short]}: lower "
            "data.max_per_class or data.imbalance_ratio"
        )
    return longtail_indices(targets, wanted, cfg.subsample_seed)


def holdout_split(targets: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of ``targets`` kept for training and held out for evaluation (``data.holdout``).

    Stratified: each class of n >= 2 images holds out n * fraction of them (rounded half up), at least
    one and at most n - 1, picked as a long-tail profile picks what it keeps (:func:`longtail_indices`: a seeded
    shuffle of each class, one ``RandomState(seed)`` across classes, in label order); a class of one image keeps
    it for training. Both lists are in dataset order.
    """
    counts = class_counts(targets, max(targets, default=-1) + 1)
    held = set(longtail_indices(targets, [min(max(int(n * fraction + 0.5), 1), n - 1) if n >= 2 else 0
                                          for n in counts], seed))
    return [i for i in range(len(targets)) if i not in held], sorted(held)


def _hold_out(train: ImageDataset, cfg: DataConfig, test_transform: Transform) -> Splits:
    """``train`` less its held-out images, and those images with the evaluation transform."""
    keep, held = holdout_split(train.targets, cfg.holdout, cfg.subsample_seed)
    if not held:
        raise ConfigError(f"data.holdout={cfg.holdout} holds out no image: no class has 2 training images")
    test = train.subset(held)
    test.transform = test_transform
    return train.subset(keep), test


def apply_longtail(train: ImageDataset, cfg: DataConfig) -> ImageDataset:
    """Subsample ``train`` to the long-tail profile of ``cfg`` (see :func:`longtail_keep`)."""
    keep = longtail_keep(train.targets, train.classes, cfg)
    return train if keep is None else train.subset(keep)


def _check_nonempty(counts: list[int], classes: list[str], dropped: int = 0) -> None:
    empty = [c for c, n in enumerate(counts) if n == 0]
    if empty:
        more = f" (and {len(empty) - 1} more classes)" if len(empty) > 1 else ""
        why = f" once its {dropped} unreadable training images are skipped" if dropped else ""
        raise ConfigError(f"class {empty[0]} ({classes[empty[0]]!r}) has no training images{more}{why}")


def build_datasets(cfg: DataConfig) -> DataSplits:
    """Read the source named by ``cfg.source``, apply the long-tail profile, attach transforms.

    Args:
        cfg: the data configuration.

    With ``cfg.skip_bad_images``, every image file of both splits (the training split after the
    profile) is opened and decoded once; missing or unreadable ones are dropped and listed in
    ``bad_images``. Without it, the first unreadable image raises when it is read.

    Returns:
        DataSplits whose every class has at least one training image.
    """
    source = get_source(cfg.source)
    test_transform = build_transform(cfg, train=False)
    train, test = source.splits(cfg, build_transform(cfg, train=True), test_transform)
    if cfg.holdout:
        train, test = _hold_out(train, cfg, test_transform)
    train = apply_longtail(train, cfg)
    bad: list[BadImage] = []
    if cfg.skip_bad_images:
        train, bad_train = drop_bad_images(train, "train", cfg.num_workers)
        test, bad_test = drop_bad_images(test, "test", cfg.num_workers)
        bad = bad_train + bad_test
        if not len(test):
            raise ConfigError(f"none of the {len(bad_test)} evaluation images can be read; the first: "
                              f"{bad_test[0].line()}")
    counts = class_counts(train.targets, len(train.classes))
    _check_nonempty(counts, train.classes, sum(b.split == "train" for b in bad))
    return DataSplits(train=train, test=test, classes=train.classes, train_counts=counts, bad_images=bad)


def build_val_dataset(cfg: DataConfig) -> ImageDataset | None:
    """The validation split ``data.val_list`` (a list file or iNaturalist JSON) or ``data.val_dir`` (a folder of
    class folders), read as the source reads its test split, with evaluation transforms; None without one. Never the
    test split."""
    if cfg.val_dir:
        split = dataclasses.replace(cfg, test_dir=cfg.val_dir)
    elif cfg.val_list:
        split = dataclasses.replace(cfg, test_list=cfg.val_list)
    else:
        return None
    return get_source(cfg.source).test(split, build_transform(cfg, train=False))


def build_test_dataset(cfg: DataConfig) -> ImageDataset:
    """The evaluation split of ``cfg`` alone, with evaluation transforms; no training image is needed.

    Labels and class names (``dataset.classes``) are those :func:`build_datasets` gives; where
    the training data is absent, each source says how it labels (``data.class_index`` for a
    folder, the evaluation file itself for a list or iNaturalist JSON). With ``data.holdout`` it is
    the held-out part of the training split, which is then read.
    """
    source, transform = get_source(cfg.source), build_transform(cfg, train=False)
    if cfg.holdout:
        return _hold_out(source.splits(cfg, transform, transform)[0], cfg, transform)[1]
    return source.test(cfg, transform)


def build_train_labels(cfg: DataConfig) -> tuple[list[int], list[str]]:
    """Labels of the training split after the hold-out and the long-tail profile, and the class names, without opening
    an image (list and JSON files are read, folders listed, in-memory arrays loaded)."""
    labels, classes = get_source(cfg.source).train_labels(cfg)
    if cfg.holdout:
        labels = [labels[i] for i in holdout_split(labels, cfg.holdout, cfg.subsample_seed)[0]]
    keep = longtail_keep(labels, classes, cfg)
    return (labels if keep is None else [labels[i] for i in keep]), classes


def with_transform(dataset: ImageDataset, transform: Transform) -> ImageDataset:
    """A shallow copy of ``dataset`` (the same images and labels) that applies ``transform``."""
    clone = copy.copy(dataset)
    clone.transform = transform
    return clone


def with_eval_transform(dataset: ImageDataset, cfg: DataConfig) -> ImageDataset:
    """The same images with the deterministic evaluation transform (features of training images, not crops)."""
    return with_transform(dataset, build_transform(cfg, train=False))


@dataclass
class TrainImages:
    """The training images of a run as ``data.decode`` makes them: the dataset the loader processes read, the
    DataLoader's ``collate_fn`` (None: PyTorch's default) and the ``finish`` the training stream applies on the
    device (normalisation; under ``gpu`` the decoding too)."""

    dataset: Dataset
    finish: Callable[[Any], torch.Tensor] | None
    collate: Callable | None = None


def train_images(dataset: ImageDataset, cfg: DataConfig, device: torch.device | str) -> TrainImages:
    """``dataset`` (a run's training split) with the training augmentation, decoded as ``cfg.decode`` says.

    ``exact`` applies the PIL transform of :func:`build_transform` (uint8, normalised on the device). ``fast``
    (:mod:`lpt.data.decode`) and ``gpu`` (:mod:`lpt.data.gpu_decode`) draw the same boxes and flips; they apply to
    ``train_aug=rrc_flip`` on image files, and anything else (images held in memory, other augmentations) is
    decoded exactly. ``gpu`` becomes ``fast``, said in one line, where ``device`` cannot decode JPEGs.
    """
    applies = isinstance(dataset, FileImageDataset) and cfg.train_aug == "rrc_flip"
    decode = resolve_decode(cfg.decode, torch.device(device), applies)
    if decode == "fast":
        return TrainImages(FileCrops(dataset, FastCrop(cfg)), BatchNormalize(cfg))
    if decode == "gpu":
        return TrainImages(FileCrops(dataset, EncodedCrop(cfg)), DeviceDecode(cfg, device), collate_encoded)
    return TrainImages(with_transform(dataset, build_transform(cfg, train=True, normalize=False)), BatchNormalize(cfg))
