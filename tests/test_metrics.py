"""Shot-split accuracy against hand computations."""

import numpy as np
import pytest

from lpt.metrics import shot_accuracy, shot_groups

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
