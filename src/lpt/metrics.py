"""Shot-split accuracy: overall, many-, medium- and few-shot top-1, and per-class accuracy.

Two rules decide a class's group from its training count n:
- ``standard`` (OLTR, the paper's text): many n > 100, medium 20 <= n <= 100, few n < 20;
- ``official`` (the published LPT evaluation script): many n > 100, medium 21..100, few n <= 20.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SHOT_RULES = {
    "standard": lambda n: "many" if n > 100 else ("few" if n < 20 else "medium"),
    "official": lambda n: "many" if n > 100 else ("few" if n <= 20 else "medium"),
}
GROUPS = ("many", "medium", "few")
ACCURACIES = ("overall", *GROUPS)  # the accuracies of a shot table, as metrics.json keys them


def shot_groups(train_counts: Sequence[int], rule: str = "standard") -> list[str]:
    """Group name of each class from its training count."""
    if rule not in SHOT_RULES:
        raise KeyError(f"unknown shot rule '{rule}'; choose one of {', '.join(SHOT_RULES)}")
    return [SHOT_RULES[rule](int(n)) for n in train_counts]


def per_class_accuracy(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class in percent; NaN for classes absent from ``labels``."""
    total = np.bincount(labels, minlength=num_classes).astype(np.float64)
    correct = np.bincount(labels[preds == labels], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * correct / np.maximum(total, 1), np.nan)


def shot_accuracy(preds: Sequence[int], labels: Sequence[int], train_counts: Sequence[int]) -> dict:
    """Metrics record: ``overall`` (over images), ``many``/``medium``/``few`` (mean of per-class
    accuracies in each group under the standard rule), the same under ``official``, and ``per_class``.

    Group accuracies are means of per-class accuracies over the group's classes present in the evaluation
    set; a group with no such class is reported as None. The published evaluation pools the group's images
    instead (correct / images); the two are equal only when every class of the group has the same number of
    test images, as on the balanced test sets of Places-LT, ImageNet-LT, iNaturalist 2018 and CIFAR-100-LT.
    """
    preds, labels = np.asarray(preds, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    num_classes = len(train_counts)
    per_class = per_class_accuracy(preds, labels, num_classes)
    record: dict = {"overall": float(100.0 * np.mean(preds == labels)) if len(labels) else None}
    for rule in SHOT_RULES:
        groups = np.array(shot_groups(train_counts, rule))
        accs = {}
        for g in GROUPS:
            values = per_class[(groups == g) & ~np.isnan(per_class)]
            accs[g] = float(values.mean()) if len(values) else None
        if rule == "standard":
            record.update(accs)
        else:
            record["official"] = accs
    record["per_class"] = [None if np.isnan(a) else float(a) for a in per_class]
    record["num_images"] = int(len(labels))
    return record
