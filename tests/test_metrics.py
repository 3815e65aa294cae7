"""Shot-split accuracy against hand computations."""

import numpy as np
import pytest

from lpt.metrics import (SCORE_METRICS, classification_metrics, flat_metrics, log_probabilities, metrics_record,
                         score_metrics, shot_accuracy, shot_groups)

BOUNDARY_COUNTS = [101, 100, 21, 20, 19]


def test_shot_groups_standard_rule_at_boundaries():
    # many n > 100, medium 20 <= n <= 100, few n < 20
    assert shot_groups(BOUNDARY_COUNTS) == ["many", "medium", "medium", "medium", "few"]
    assert shot_groups(BOUNDARY_COUNTS, "standard") == ["many", "medium", "medium", "medium", "few"]


def test_shot_groups_official_rule_at_boundaries():
    # many n > 100, medium 21..100, few n <= 20
    assert shot_groups(BOUNDARY_COUNTS, "official") == ["many", "medium", "medium", "few", "few"]


def test_shot_groups_accepts_numpy_counts():
    assert shot_groups(np.array([4980, 5], dtype=np.int64)) == ["many", "few"]


def test_shot_groups_unknown_rule():
    with pytest.raises(KeyError, match="standard, official"):
        shot_groups([1, 2], "oltr")


# Classes: 0 many (150), 1 medium (60), 2 medium under standard / few under official (20), 3 few (10), 4 few (3).
TRAIN_COUNTS = [150, 60, 20, 10, 3]
#         class 0   class 1  class 2     class 3  class 4, interleaved
LABELS = [0, 2, 1, 0, 3, 2, 4, 1, 2, 0, 3, 2]
PREDS = [0, 2, 1, 1, 3, 3, 0, 0, 2, 0, 3, 2]
# per class: 0: preds 0,1,0 -> 2/3; 1: preds 1,0 -> 1/2; 2: preds 2,3,2,2 -> 3/4; 3: 3,3 -> 2/2; 4: 0 -> 0/1
PER_CLASS = [200 / 3, 50.0, 75.0, 100.0, 0.0]


def test_shot_accuracy_equals_hand_computation():
    r = shot_accuracy(PREDS, LABELS, TRAIN_COUNTS)
    assert r["per_class"] == pytest.approx(PER_CLASS)
    assert r["overall"] == pytest.approx(200 / 3)  # (2 + 1 + 3 + 2 + 0) / 12 correct images = 8 / 12
    assert r["num_images"] == 12
    # standard: many {0}, medium {1, 2}, few {3, 4}
    assert r["many"] == pytest.approx(200 / 3)
    assert r["medium"] == pytest.approx(62.5)  # (50 + 75) / 2
    assert r["few"] == pytest.approx(50.0)  # (100 + 0) / 2
    # official: many {0}, medium {1}, few {2, 3, 4}
    assert r["official"]["many"] == pytest.approx(200 / 3)
    assert r["official"]["medium"] == pytest.approx(50.0)
    assert r["official"]["few"] == pytest.approx(175 / 3)  # (75 + 100 + 0) / 3 = 58.33
    # overall is over images (66.67), not the class mean (58.33)
    assert r["overall"] != pytest.approx(np.mean(PER_CLASS))


def test_shot_accuracy_accepts_numpy_and_returns_plain_floats():
    r = shot_accuracy(np.array(PREDS), np.array(LABELS), np.array(TRAIN_COUNTS))
    assert r == shot_accuracy(PREDS, LABELS, TRAIN_COUNTS)
    assert type(r["overall"]) is float and all(type(a) is float for a in r["per_class"])


def test_class_absent_from_evaluation_is_none_and_left_out_of_its_group():
    keep = [i for i, y in enumerate(LABELS) if y != 3]
    r = shot_accuracy([PREDS[i] for i in keep], [LABELS[i] for i in keep], TRAIN_COUNTS)
    assert r["per_class"][3] is None
    assert r["per_class"][:3] + r["per_class"][4:] == pytest.approx([200 / 3, 50.0, 75.0, 0.0])
    assert r["few"] == pytest.approx(0.0)  # class 4 alone, not (None + 0) / 2 or 0 / 2
    assert r["official"]["few"] == pytest.approx(37.5)  # (75 + 0) / 2
    assert r["overall"] == pytest.approx(60.0)  # 6 correct of 10 images
    assert r["num_images"] == 10


def test_group_without_classes_is_none():
    r = shot_accuracy([0, 1, 1], [0, 1, 0], [500, 200])  # both classes many-shot
    assert r["many"] == pytest.approx(75.0)  # class 0: 1/2 -> 50, class 1: 1/1 -> 100
    assert r["medium"] is None and r["few"] is None
    assert r["official"] == {"many": pytest.approx(75.0), "medium": None, "few": None}
    assert r["overall"] == pytest.approx(200 / 3)


def test_group_whose_classes_are_all_absent_is_none():
    r = shot_accuracy([0, 0], [0, 0], [500, 5])
    assert r["per_class"] == [100.0, None]
    assert r["few"] is None and r["official"]["few"] is None


def test_empty_evaluation():
    r = shot_accuracy([], [], [500, 50, 5])
    assert r["overall"] is None and r["num_images"] == 0
    assert r["per_class"] == [None, None, None]
    assert r["many"] is None and r["medium"] is None and r["few"] is None


def _random_scores(seed: int, n: int = 400, c: int = 12):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, c))
    labels = rng.integers(0, c - 2, size=n)  # the last two classes never in the labels: absent classes count
    return logits, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_metrics_equal_scikit_learn_on_random_predictions(seed):
    from sklearn.metrics import balanced_accuracy_score, f1_score, log_loss, top_k_accuracy_score

    logits, labels = _random_scores(seed)
    c = logits.shape[1]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    preds = logits.argmax(1)
    m = score_metrics(log_probabilities(logits=logits), labels)
    assert m["top5"] == pytest.approx(100 * top_k_accuracy_score(labels, logits, k=5, labels=np.arange(c)))
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        expected_balanced = balanced_accuracy_score(labels, preds)
    assert m["balanced_accuracy"] == pytest.approx(100 * expected_balanced)
    assert m["macro_f1"] == pytest.approx(100 * f1_score(labels, preds, average="macro"))
    assert m["nll"] == pytest.approx(log_loss(labels, probs, labels=np.arange(c)))
    # the same from probabilities instead of logits
    assert score_metrics(log_probabilities(probs=probs), labels)["nll"] == pytest.approx(m["nll"])


def test_per_class_summaries_equal_hand_computation():
    m = score_metrics(log_probabilities(logits=np.eye(5)[PREDS]), np.array(LABELS))
    # PER_CLASS = [66.67, 50, 75, 100, 0]: mean, min, and a harmonic mean that one class at 0 makes 0
    assert m["balanced_accuracy"] == pytest.approx(np.mean(PER_CLASS))
    assert m["worst_class_accuracy"] == 0.0 and m["harmonic_mean_accuracy"] == 0.0
    m = score_metrics(log_probabilities(logits=np.eye(4)[[0, 1, 1, 2, 3, 3]]), np.array([0, 0, 1, 2, 3, 3]))
    assert m["worst_class_accuracy"] == pytest.approx(50.0)
    assert m["harmonic_mean_accuracy"] == pytest.approx(4 / (1 / 50 + 3 / 100))  # classes 50, 100, 100, 100


def test_ece_and_reliability_bins_equal_hand_computation():
    # top-1 confidences 0.95, 0.9, 0.5, 0.5, 0.05-ish; two classes so the confidence is the larger probability
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.5, 0.5], [0.4, 0.6], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 0, 1])  # right, wrong, right (tie -> class 0), wrong, right
    m = score_metrics(log_probabilities(probs=probs), labels)
    bins = m["reliability"]
    assert bins["bins"] == 15 and sum(bins["count"]) == 5
    # 15 bins of width 1/15, right-closed: 0.5 in (7/15, 8/15] = bin 7, 0.6 in bin 8, 0.7 in bin 10,
    # 0.9 in (13/15, 14/15] = bin 13, 0.95 in bin 14
    assert [i for i, n in enumerate(bins["count"]) if n] == [7, 8, 10, 13, 14]
    assert bins["accuracy"][13] == 0.0 and bins["confidence"][14] == pytest.approx(95.0)
    assert bins["accuracy"][0] is None
    # ECE = 1/5 (|100 - 50| + |0 - 60| + |100 - 70| + |0 - 90| + |100 - 95|) in percent
    assert m["ece"] == pytest.approx((50 + 60 + 30 + 90 + 5) / 5)


def test_classification_metrics_is_one_flat_dict_of_the_record():
    logits, labels = _random_scores(3)
    counts = [300, 150, 90, 60, 40, 30, 25, 20, 15, 10, 5, 3]
    flat = classification_metrics(labels, counts, logits=logits)
    record = metrics_record(labels, counts, logits=logits)
    assert all(isinstance(v, float) for v in flat.values())
    assert flat["overall"] == pytest.approx(100 * np.mean(logits.argmax(1) == labels))
    assert flat["few"] == record["few"] and flat["official_few"] == record["official"]["few"]
    assert flat["ece"] == record["ece"] and set(SCORE_METRICS) <= set(flat)
    assert flat == flat_metrics(record)
    with pytest.raises(ValueError, match="exactly one"):
        classification_metrics(labels, counts)


def test_flat_metrics_of_an_older_metrics_json_has_none_for_the_score_metrics():
    old = shot_accuracy(PREDS, LABELS, TRAIN_COUNTS)
    flat = flat_metrics(old)
    assert flat["overall"] == old["overall"] and flat["nll"] is None and flat["top5"] is None
