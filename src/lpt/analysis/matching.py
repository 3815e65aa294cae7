"""Prompt matching statistics of phase-2 LPT (the paper's Fig. 4): which groups each class's images pick.

For every class, the share of its evaluation images whose best match (rank 0 of the top-k keys)
is group ``j``, and the same for the second-best match; and how evenly the ``m`` groups are used
overall (normalised entropy of usage, unused groups).
"""

from __future__ import annotations

import numpy as np


def rank_shares(groups: np.ndarray, labels: np.ndarray, num_classes: int, pool_size: int, rank: int) -> np.ndarray:
    """``[C, m]``: row ``c`` is the share of class ``c``'s images whose ``rank``-th match is each group.

    Rows sum to 1 for classes with images and are NaN for classes without.

    Args:
        groups: ``[N, k]`` selected groups per image, most similar first.
        labels: ``[N]`` true labels.
        num_classes: C.
        pool_size: m.
        rank: 0 for the best match, 1 for the second best.
    """
    groups, labels = np.asarray(groups, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    counts = np.zeros((num_classes, pool_size))
    np.add.at(counts, (labels, groups[:, rank]), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        return np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)


def normalised_entropy(counts: np.ndarray) -> float | None:
    """Entropy of the distribution ``counts / sum`` divided by ``log(len(counts))``: 1 when every group is
    used equally, 0 when one group takes everything; None for a single group or no counts."""
    counts = np.asarray(counts, dtype=np.float64)
    if len(counts) < 2 or counts.sum() == 0:
        return None
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum() / np.log(len(counts)))


def matching_stats(groups: np.ndarray, labels: np.ndarray, num_classes: int, pool_size: int) -> dict:
    """Matching statistics of an evaluation.

    Returns:
        ``best`` and ``second`` (``[C, m]`` shares, see :func:`rank_shares`; ``second`` is None when
        k = 1), ``usage_best`` (images whose best match is each group), ``usage_topk`` (selections of
        each group over all k ranks), ``entropy_best`` / ``entropy_topk`` (normalised entropies of
        those usages), ``unused_best`` / ``unused_topk`` (groups never selected), ``top_k``,
        ``pool_size``.
    """
    groups = np.asarray(groups, dtype=np.int64)
    if groups.ndim != 2 or len(groups) != len(labels):
        raise ValueError(f"groups must be [N, k] for N = {len(labels)} labels, got {groups.shape}")
    usage_best = np.bincount(groups[:, 0], minlength=pool_size)
    usage_topk = np.bincount(groups.ravel(), minlength=pool_size)
    return {
        "best": rank_shares(groups, labels, num_classes, pool_size, 0),
        "second": rank_shares(groups, labels, num_classes, pool_size, 1) if groups.shape[1] > 1 else None,
        "usage_best": usage_best,
        "usage_topk": usage_topk,
        "entropy_best": normalised_entropy(usage_best),
        "entropy_topk": normalised_entropy(usage_topk),
        "unused_best": int((usage_best == 0).sum()),
        "unused_topk": int((usage_topk == 0).sum()),
        "top_k": int(groups.shape[1]),
        "pool_size": int(pool_size),
    }
