"""The metrics of an evaluation: shot-split accuracy (overall, many-, medium- and few-shot top-1, per-class
accuracy) and, from the model's scores, the other numbers long-tail papers report (top-5, balanced, worst-class
and harmonic-mean accuracy, macro-F1, negative log-likelihood, expected calibration error).

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


CALIBRATION_BINS = 15  # Guo et al. 2017 (On Calibration of Modern Neural Networks), Sec. 2: M = 15 bins
SCORE_METRICS = {  # metrics.json keys of score_metrics and their names in tables: all in percent but nll
    "top5": "top-5", "balanced_accuracy": "balanced", "worst_class_accuracy": "worst class",
    "harmonic_mean_accuracy": "harmonic mean", "macro_f1": "macro-F1", "nll": "NLL (nats)", "ece": "ECE",
}


def log_probabilities(logits: np.ndarray | None = None, probs: np.ndarray | None = None) -> np.ndarray:
    """``log softmax(logits)``, or ``log probs`` (clipped at the smallest positive float64), ``[N, C]``: exactly
    one of the two is given. Logits are those the training softmax sees (for lpt, the model's times ``loss.scale``)."""
    if (logits is None) == (probs is None):
        raise ValueError("give exactly one of logits= and probs=")
    if probs is not None:
        return np.log(np.clip(np.asarray(probs, dtype=np.float64), np.finfo(np.float64).tiny, None))
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """The reliability diagram's bins: ``bins`` equal-width intervals (i/M, (i+1)/M] of the top-1 confidence
    (the first also holds 0), each with its image ``count`` and, in percent, its ``accuracy`` and mean
    ``confidence`` (None for an empty bin), as in Guo et al. 2017, Sec. 2."""
    index = np.digitize(confidence, np.linspace(0.0, 1.0, bins + 1)[1:-1], right=True)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = 100.0 * np.bincount(index, weights=correct.astype(np.float64), minlength=bins) / count
        conf = 100.0 * np.bincount(index, weights=confidence, minlength=bins) / count
    return {"bins": bins, "count": count.tolist(),
            "accuracy": [None if n == 0 else float(a) for n, a in zip(count, acc)],
            "confidence": [None if n == 0 else float(c) for n, c in zip(count, conf)]}


def expected_calibration_error(bins: dict) -> float | None:
    """ECE in percent: ``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` over the reliability bins (Guo et al. 2017,
    eq. 3)."""
    total = sum(bins["count"])
    if not total:
        return None
    return float(sum(n / total * abs(a - c) for n, a, c in zip(bins["count"], bins["accuracy"], bins["confidence"])
                     if n))


def score_metrics(log_probs: np.ndarray, labels: np.ndarray) -> dict:
    """The metrics of :data:`SCORE_METRICS` from log-probabilities ``[N, C]`` and labels ``[N]``, and the
    ``reliability`` bins. Per-class metrics are over the classes present in ``labels`` (balanced, worst-class and
    harmonic mean; the harmonic mean is 0 when a class has none right); macro-F1 is over the classes in
    ``labels`` or predicted, as scikit-learn's ``f1_score(average="macro")``; top-5 counts an image right when
    fewer than 5 classes score strictly above its label."""
    log_probs, labels = np.asarray(log_probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    n, c = log_probs.shape
    if n == 0:
        return dict.fromkeys(SCORE_METRICS) | {"reliability": reliability(np.zeros(0), np.zeros(0, bool))}
    preds = log_probs.argmax(axis=1)
    label_scores = log_probs[np.arange(n), labels]
    present = per_class_accuracy(preds, labels, c)
    present = present[~np.isnan(present)]
    true, predicted = np.bincount(labels, minlength=c), np.bincount(preds, minlength=c)
    hits = np.bincount(labels[preds == labels], minlength=c)
    seen = (true + predicted) > 0
    bins = reliability(np.exp(log_probs.max(axis=1)), preds == labels)
    return {
        "top5": float(100.0 * np.mean((log_probs > label_scores[:, None]).sum(axis=1) < min(5, c))),
        "balanced_accuracy": float(present.mean()),
        "worst_class_accuracy": float(present.min()),
        "harmonic_mean_accuracy": 0.0 if present.min() == 0 else float(len(present) / np.sum(1.0 / present)),
        "macro_f1": float(100.0 * np.mean(2.0 * hits[seen] / (true[seen] + predicted[seen]))),
        "nll": float(-label_scores.mean()),
        "ece": expected_calibration_error(bins),
        "reliability": bins,
    }


def metrics_record(labels: Sequence[int], train_counts: Sequence[int], *, logits: np.ndarray | None = None,
                   probs: np.ndarray | None = None) -> dict:
    """metrics.json's record of an evaluation: :func:`shot_accuracy` of the top-1 predictions and
    :func:`score_metrics`, from the scores ``[N, C]`` (``logits`` as the training softmax sees them, or ``probs``)."""
    log_probs = log_probabilities(logits, probs)
    return shot_accuracy(log_probs.argmax(axis=1), labels, train_counts) | score_metrics(log_probs, labels)


def flat_metrics(record: dict) -> dict[str, float | None]:
    """The scalar metrics of a metrics.json record, flat: ``overall``, ``many``, ``medium``, ``few``,
    ``official_many`` .. ``official_few``, and those of :data:`SCORE_METRICS` present (None where absent)."""
    official = record.get("official") or {}
    return ({k: record.get(k) for k in ACCURACIES} | {f"official_{g}": official.get(g) for g in GROUPS}
            | {k: record.get(k) for k in SCORE_METRICS})


def classification_metrics(labels: Sequence[int], train_counts: Sequence[int], *, logits: np.ndarray | None = None,
                           probs: np.ndarray | None = None) -> dict[str, float | None]:
    """Every scalar metric of an evaluation in one flat dict (:func:`flat_metrics` of :func:`metrics_record`), from
    scores ``[N, C]`` (exactly one of ``logits``, ``probs``), labels ``[N]`` and the training class counts."""
    return flat_metrics(metrics_record(labels, train_counts, logits=logits, probs=probs))
