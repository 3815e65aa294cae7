"""Feature geometry (R_i, D, gamma), cosine k-NN, LDA and the feature sources, against hand computations
and independent references (scikit-learn, timm's own forward)."""

import math

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from lpt.evaluation import evaluate, feature_sources, source_features
from lpt.analysis.geometry import class_distances, knn_accuracy, knn_predict, lda_2d
from lpt.model import LPT

# Three classes in 2-D, listed out of order:
#   class 0: (0,0), (2,0)          centre (1,0)  R_0 = (1 + 1) / 2 = 1
#   class 1: (1,3), (7,3)          centre (4,3)  R_1 = (3 + 3) / 2 = 3
#   class 2: (1,4), (1,8), (1,6)   centre (1,6)  R_2 = (2 + 2 + 0) / 3 = 4/3
# centre distances: |c0 - c1| = sqrt(3^2 + 3^2) = 3*sqrt(2), |c0 - c2| = 6, |c1 - c2| = 3*sqrt(2)
#   D = (6 + 6*sqrt(2)) / 3 = 2 + 2*sqrt(2)
#   gamma = (1 + 3 + 4/3) / (3 * D) = (16/3) / (6 + 6*sqrt(2)) = 8 / (9 * (1 + sqrt(2)))
POINTS = np.array([[1, 8], [0, 0], [7, 3], [1, 4], [2, 0], [1, 6], [1, 3]], dtype=float)
LABELS = np.array([2, 0, 1, 2, 0, 2, 1])
D_HAND = 2 + 2 * math.sqrt(2)
GAMMA_HAND = 8 / (9 * (1 + math.sqrt(2)))


def test_distances_and_gamma_equal_hand_computation():
    out = class_distances(POINTS, LABELS)
    assert out["intra"] == pytest.approx([1.0, 3.0, 4 / 3])
    assert out["mean_intra"] == pytest.approx((1 + 3 + 4 / 3) / 3)
    assert out["inter"] == pytest.approx(D_HAND)
    assert out["gamma"] == pytest.approx(GAMMA_HAND)  # 0.36817...
    assert out["num_classes"] == 3


def test_absent_classes_do_not_count():
    relabelled = np.array([0, 2, 3])[LABELS]  # the same three classes as labels 0, 2, 3; label 1 has no image
    out = class_distances(POINTS, relabelled)
    assert out["intra"][1] is None and out["intra"][3] == pytest.approx(4 / 3)
    assert out["num_classes"] == 3  # C counts present classes only, so gamma is unchanged
    assert out["inter"] == pytest.approx(D_HAND) and out["gamma"] == pytest.approx(GAMMA_HAND)


def test_single_class_has_no_inter_distance():
    out = class_distances([[0.0, 0.0], [0.0, 2.0]], [0, 0])
    assert out["intra"] == [1.0] and out["inter"] is None and out["gamma"] is None


# Memory on angles (degrees): m0 0 (label 0), m1 5.71 (label 0, ten times longer), m2 45 (1), m3 90 (1), m4 180 (2).
MEMORY = np.array([[1, 0], [10, 1], [1, 1], [0, 1], [-1, 0]], dtype=float)
MEMORY_LABELS = np.array([0, 0, 1, 1, 2])
# q0 at 11.31 deg: neighbours by angle m1 (5.60 away), m0 (11.31), m2 (33.69) -> labels 0, 0, 1
# q1 at 78.69 deg: m3 (11.31), m2 (33.69), m1 (72.98), m0 (78.69)            -> labels 1, 1, 0, 0
# q2 at 141.34 deg: m4 (38.66), m3 (51.34), m2 (96.34), m1 (135.63)          -> labels 2, 1, 1, 0
QUERIES = np.array([[1, 0.2], [0.2, 1], [-1, 0.8]])
QUERY_LABELS = np.array([0, 1, 2])


@pytest.mark.parametrize("k, preds, accuracy", [
    (1, [0, 1, 2], 100.0),       # nearest only
    (2, [0, 1, 2], 100.0),       # q2: one vote each for 2 and 1, the nearest (m4, label 2) wins the tie
    (3, [0, 1, 1], 200 / 3),     # q2: labels 2, 1, 1 -> majority 1, wrong: 2 of 3 correct
    (4, [0, 1, 1], 200 / 3),     # q1: 1, 1, 0, 0 tie -> nearest m3 (1); q2: 2, 1, 1, 0 -> 1
])
def test_knn_equals_hand_computation(k, preds, accuracy):
    assert knn_predict(MEMORY, MEMORY_LABELS, QUERIES, k).tolist() == preds
    assert knn_accuracy(MEMORY, MEMORY_LABELS, QUERIES, QUERY_LABELS, k) == pytest.approx(accuracy)


def test_knn_uses_cosine_not_euclidean():
    # (9, 9) lies at 45 deg: its cosine neighbour is m2 (1, 1), label 1 (cosine 1). In Euclidean terms m1 (10, 1) is
    # nearest: sqrt(1 + 64) = 8.06, against sqrt(64 + 64) = 11.31 for m2 and sqrt(64 + 81) = 12.04 for m0.
    query = np.array([[9.0, 9.0]])
    assert knn_predict(MEMORY, MEMORY_LABELS, query, 1).tolist() == [1]


def _random_set(rng, n, num_classes, dim=8):
    labels = rng.integers(0, num_classes, n)
    centres = rng.normal(size=(num_classes, dim))
    x = centres[labels] + rng.normal(scale=1.2, size=(n, dim)) + 0.8  # offset: angles and distances disagree
    return x * rng.uniform(0.2, 5.0, size=(n, 1)), labels  # varied norms: cosine ignores them, Euclid does not


@pytest.mark.parametrize("k", [1, 5, 9])
def test_knn_equals_sklearn_cosine_on_two_classes(k):
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(k)
    x_train, y_train = _random_set(rng, 300, 2)
    x_test, _ = _random_set(rng, 200, 2)
    ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(x_train, y_train)
    ours = knn_predict(x_train, y_train, x_test, k, chunk=37)  # several query chunks
    assert np.array_equal(ours, ref.predict(x_test))  # odd k, two classes: no tie in votes
    euclid = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(x_train, y_train).predict(x_test)
    assert not np.array_equal(ours, euclid)  # the data tells the metrics apart, so the comparison means something


def test_knn_equals_sklearn_cosine_on_many_classes_where_votes_do_not_tie():
    from sklearn.neighbors import KNeighborsClassifier

    k, rng = 5, np.random.default_rng(7)
    x_train, y_train = _random_set(rng, 400, 6)
    x_test, _ = _random_set(rng, 300, 6)
    ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(x_train, y_train)
    neighbours = y_train[ref.kneighbors(x_test, return_distance=False)]
    votes = np.stack([np.bincount(row, minlength=6) for row in neighbours])
    untied = (votes == votes.max(1, keepdims=True)).sum(1) == 1
    assert untied.sum() > 250
    ours = knn_predict(x_train, y_train, x_test, k)
    assert np.array_equal(ours[untied], ref.predict(x_test)[untied])
    # where votes tie, the tied label of the nearest neighbour wins
    for i in np.flatnonzero(~untied):
        tied = set(np.flatnonzero(votes[i] == votes[i].max()))
        assert ours[i] == next(label for label in neighbours[i] if label in tied)


def test_knn_rejects_k_larger_than_memory():
    with pytest.raises(ValueError, match="k must be in"):
        knn_predict(MEMORY, MEMORY_LABELS, QUERIES, 6)


def test_lda_separates_classes_that_differ_along_two_directions():
    rng = np.random.default_rng(0)
    means = np.zeros((3, 6))
    means[1, 0], means[2, 1] = 4.0, 4.0  # classes differ only in dims 0 and 1; dims 2..5 are noise
    y_train, y_test = rng.integers(0, 3, 300), rng.integers(0, 3, 90)
    x_train = means[y_train] + rng.normal(size=(300, 6)) * [1, 1, 5, 5, 5, 5]
    x_test = means[y_test] + rng.normal(size=(90, 6)) * [1, 1, 5, 5, 5, 5]
    z = lda_2d(x_train, y_train, x_test)
    assert z.shape == (90, 2)
    centres = np.stack([z[y_test == c].mean(0) for c in range(3)])
    nearest = np.argmin(((z[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == y_test).mean() > 0.9  # noisy dims 2..5 (std 5) would drown the classes without LDA


def test_lda_with_two_classes_pads_a_zero_axis():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 20)
    z = lda_2d(rng.normal(size=(40, 3)) + y[:, None], y, rng.normal(size=(5, 3)))
    assert z.shape == (5, 2) and np.all(z[:, 1] == 0)


def _tiny_lpt(prompt_len=2):
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=28, patch_size=7, embed_dim=32, depth=3, num_heads=2, num_classes=0)
    return LPT(vit, num_classes=4, prompt_len=prompt_len, pool_size=4, split_block=1, top_k=2).eval()


def _images(n=7):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(3, 28, 28, generator=g), i % 4) for i in range(n)]


def test_feature_sources_equal_their_definitions():
    model, data = _tiny_lpt(), _images()
    model.set_phase(2)
    model.eval()
    assert feature_sources(model) == ["plain", "phase1", "phase2"]
    feats = evaluate(model, data, source_features(model, ["plain", "phase1", "phase2"]), device=torch.device("cpu"),
                     batch_size=3, progress=False)
    labels = feats.pop("labels")
    x = torch.stack([img for img, _ in data])
    vit = model.backbone
    with torch.no_grad():
        plain = vit.forward_head(vit.forward_features(x), pre_logits=True)  # timm's own forward: no prompt
        phase1, phase2 = model.phase1_feature(x), model.forward_features(x)["feature"]
    assert labels.tolist() == [i % 4 for i in range(7)]
    torch.testing.assert_close(torch.from_numpy(feats["plain"]), plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(feats["phase1"]), phase1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(feats["phase2"]), phase2, atol=1e-5, rtol=1e-5)
    assert not np.allclose(feats["plain"], feats["phase1"]) and not np.allclose(feats["phase1"], feats["phase2"])


def test_phase1_model_has_no_phase2_features():
    model = _tiny_lpt()
    assert feature_sources(model) == ["plain", "phase1"]
    with pytest.raises(ValueError, match="choose from"):
        source_features(model, ["phase2"])
