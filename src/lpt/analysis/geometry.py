"""Feature geometry of a split: intra-class distance, inter-class distance, gamma, k-NN accuracy, LDA.

LPT (Dong et al., ICLR 2023), Tab. 2 and Fig. 2: a feature space that separates classes has small
mean intra-class distances ``R_i`` (mean Euclidean distance of class ``i``'s features to their
centre) relative to the inter-class distance ``D`` (mean distance between class centres over all
pairs); ``gamma = (1 / (C * D)) * sum_i R_i`` summarises both (lower is better). k-NN accuracy
with cosine similarity measures the same from the classifier-free side.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _as_tensor(x, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def class_distances(features, labels) -> dict:
    """Intra-class distances, inter-class distance and gamma of features ``[N, D]`` with labels ``[N]``.

    Only classes present in ``labels`` count (``C`` is their number); absent classes get ``None``
    in ``intra``. Computed in float64.

    Returns:
        ``intra`` (R_i per label, None where absent), ``mean_intra`` (mean of R_i over present
        classes), ``inter`` (D), ``gamma`` and ``num_classes`` (C). With fewer than two classes
        ``inter`` and ``gamma`` are None.
    """
    x = _as_tensor(features)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"need features [N, D] and labels [N] with N > 0, got {tuple(x.shape)} and {tuple(y.shape)}")
    num_labels = int(y.max()) + 1
    counts = torch.bincount(y, minlength=num_labels).to(x.dtype)
    centres = torch.zeros(num_labels, x.shape[1], dtype=x.dtype).index_add_(0, y, x)
    present = counts > 0
    centres[present] /= counts[present, None]
    dist = (x - centres[y]).norm(dim=1)
    intra = torch.zeros(num_labels, dtype=x.dtype).index_add_(0, y, dist)
    intra[present] /= counts[present]
    r = intra[present]
    inter = mean_pairwise_distance(centres[present])
    return {
        "intra": [float(v) if p else None for v, p in zip(intra.tolist(), present.tolist())],
        "mean_intra": float(r.mean()),
        "inter": inter,
        "gamma": float(r.sum() / (len(r) * inter)) if inter else None,
        "num_classes": int(present.sum()),
    }


def mean_pairwise_distance(points: torch.Tensor, chunk: int = 1024) -> float | None:
    """Mean Euclidean distance over all unordered pairs of rows of ``points`` ``[C, D]`` (None if C < 2);
    computed in row chunks so that thousands of classes fit in memory."""
    c = len(points)
    if c < 2:
        return None
    total = 0.0
    for start in range(0, c, chunk):
        d = torch.cdist(points[start:start + chunk], points)
        total += float(d.sum())
    return total / (c * (c - 1))  # every pair counted twice, the zero diagonal once


@torch.no_grad()
def knn_predict(train_features, train_labels, test_features, k: int = 10, chunk: int = 1024,
                device: str | torch.device = "cpu") -> np.ndarray:
    """k-NN predictions with cosine similarity: train features are the memory, test features the queries.

    Each query takes its ``k`` most similar memory items; the majority label wins; a tie in votes
    goes to the tied label whose neighbour is the most similar (the nearest).

    Args:
        train_features: ``[N, D]`` memory.
        train_labels: ``[N]`` integer labels.
        test_features: ``[M, D]`` queries.
        k: neighbours per query (at most N).
        chunk: queries per block (bounds memory to ``chunk x N`` similarities).
        device: where the similarities are computed (a GPU for large splits).

    Returns:
        predicted labels ``[M]``.
    """
    memory = F.normalize(_as_tensor(train_features, torch.float32).to(device), dim=1)
    queries = F.normalize(_as_tensor(test_features, torch.float32).to(device), dim=1)
    labels = torch.as_tensor(np.asarray(train_labels), dtype=torch.long, device=device)
    if not 1 <= k <= len(memory):
        raise ValueError(f"k must be in [1, {len(memory)}] (the memory size), got {k}")
    num_labels = int(labels.max()) + 1
    preds = []
    for start in range(0, len(queries), chunk):
        sim = queries[start:start + chunk] @ memory.t()
        nearest = labels[sim.topk(k, dim=1).indices]  # [B, k], most similar first
        votes = torch.zeros(len(nearest), num_labels, dtype=torch.long, device=device).scatter_add_(
            1, nearest, torch.ones_like(nearest))
        tied = votes == votes.max(dim=1, keepdim=True).values
        first = tied.gather(1, nearest).int().argmax(dim=1)  # first (nearest) neighbour whose label is tied
        preds.append(nearest.gather(1, first[:, None])[:, 0].cpu())
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)


def knn_accuracy(train_features, train_labels, test_features, test_labels, k: int = 10) -> float:
    """Top-1 accuracy (%) of :func:`knn_predict` on the test labels."""
    preds = knn_predict(train_features, train_labels, test_features, k)
    return float(100.0 * np.mean(preds == np.asarray(test_labels)))


def lda_2d(train_features, train_labels, test_features) -> np.ndarray:
    """Test features projected to 2-D by scikit-learn's LinearDiscriminantAnalysis fitted on the
    training features (the paper's Fig. 2); with two classes the second coordinate is 0."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    n = min(2, len(np.unique(train_labels)) - 1)
    if n < 1:
        raise ValueError("LDA needs at least two classes")
    lda = LinearDiscriminantAnalysis(n_components=n).fit(np.asarray(train_features, dtype=np.float64),
                                                         np.asarray(train_labels))
    z = lda.transform(np.asarray(test_features, dtype=np.float64))
    return np.pad(z, ((0, 0), (0, 2 - n)))
