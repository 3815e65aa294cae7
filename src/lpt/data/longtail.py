"""Exponential long-tail profiles, as used to build CIFAR-100-LT (Cao et al., LDAM-DRW, NeurIPS 2019).

Class ``i`` of ``C`` keeps ``n_i = int(n_max * ratio ** (-i / (C - 1)))`` images, so class 0 keeps
``n_max`` and class ``C - 1`` keeps ``n_max / ratio``. The kept images are the first ``n_i`` of a
seeded shuffle of each class, which reproduces LDAM-DRW's ``IMBALANCECIFAR100`` for the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lpt.config import ConfigError


def longtail_counts(num_classes: int, max_per_class: int, ratio: float) -> list[int]:
    """Images per class of the exponential profile (LDAM-DRW ``get_img_num_per_cls``, imb_factor = 1/ratio).

    Args:
        num_classes: C.
        max_per_class: n_max, the count of class 0.
        ratio: n_max / n_min, 1 or more.

    Returns:
        C counts, non-increasing; CIFAR-100 (C=100, n_max=500, ratio=100) gives 500 ... 5, 10,847 in all.
    """
    if num_classes < 1 or max_per_class < 0 or ratio < 1:
        raise ValueError(f"long-tail profile needs C >= 1, n_max >= 0, ratio >= 1; got {num_classes}, "
                         f"{max_per_class}, {ratio}")
    if num_classes == 1:
        return [int(max_per_class)]
    imb_factor = 1.0 / ratio  # written as in LDAM-DRW so that float rounding matches it exactly
    return [int(max_per_class * imb_factor ** (i / (num_classes - 1.0))) for i in range(num_classes)]


def class_counts(targets: Sequence[int], num_classes: int) -> list[int]:
    """Number of images of each label in ``[0, num_classes)``."""
    labels = np.asarray(targets, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels span [{labels.min()}, {labels.max()}], outside [0, {num_classes})")
    return np.bincount(labels, minlength=num_classes).tolist()


def longtail_indices(targets: Sequence[int], counts: Sequence[int], seed: int = 0) -> list[int]:
    """Indices of the images kept by a long-tail profile, class by class.

    For each class ``c`` in label order: its indices in dataset order, shuffled by one
    ``np.random.RandomState(seed)`` shared across classes, first ``counts[c]`` kept (LDAM-DRW's
    ``gen_imbalanced_data`` after ``np.random.seed(seed)``, without touching numpy's global state).

    Args:
        targets: label of every image.
        counts: images to keep per class, indexed by label.
        seed: seed of the shuffle.

    Returns:
        Indices into ``targets``: class 0's, then class 1's, and so on.
    """
    labels = np.asarray(targets, dtype=np.int64)
    rng = np.random.RandomState(seed)
    kept = []
    for c, n in enumerate(counts):
        idx = np.where(labels == c)[0]
        if len(idx) < n:
            raise ConfigError(f"class {c} has {len(idx)} images; the long-tail profile asks for {n}")
        rng.shuffle(idx)
        kept.append(idx[:n])
    return np.concatenate(kept).tolist() if kept else []
