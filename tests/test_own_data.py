"""Own data in one command: the folder preset, data.holdout when there is no val folder."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL
from PIL import Image

from lpt.cli import main
from lpt.config import ConfigError, load_config
from lpt.data.build import build_datasets, holdout_split

COUNTS = [12, 8, 6, 4, 2]  # long-tailed training images per class
HELD = [3, 2, 2, 1, 1]  # 25% of each, rounded half up, at least one: 12 * 0.25 = 3, 6 * 0.25 = 1.5 -> 2, 2 -> 1


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """DIR/train/<class>/<i>.png, 28x28 PNGs whose bright band depends on the class; no DIR/val."""
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    for c, n in enumerate(COUNTS):
        (root / "train" / f"class_{c}").mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 60, (28, 28, 3), dtype=np.uint8)
            pixels[5 * c: 5 * c + 4] += 150
            Image.fromarray(pixels).save(root / "train" / f"class_{c}" / f"{i}.png")
    return root


def test_holdout_split_is_disjoint_stratified_and_seeded():
    targets = [c for c, n in enumerate([10, 7, 3, 2, 1]) for _ in range(n)]
    np.random.default_rng(1).shuffle(targets)
    keep, held = holdout_split(targets, 0.3, seed=5)
    assert sorted(keep + held) == list(range(len(targets))) and not set(keep) & set(held)
    assert Counter(targets[i] for i in held) == {0: 3, 1: 2, 2: 1, 3: 1}  # the single image of class 4 trains
    assert (keep, held) == holdout_split(targets, 0.3, seed=5)
    assert holdout_split(targets, 0.3, seed=6)[1] != held
    assert keep == sorted(keep) and held == sorted(held)


def test_holdout_takes_the_evaluation_split_from_training_images(image_folder):
    cfg = load_config("folder", [f"data.root={image_folder}", "data.holdout=0.25", "data.num_workers=0"])
    splits = build_datasets(cfg.data)
    assert not set(splits.train.paths) & set(splits.test.paths)
    assert Counter(splits.test.targets) == dict(enumerate(HELD))
    assert splits.train_counts == [n - h for n, h in zip(COUNTS, HELD)]
    assert splits.test.transform is not splits.train.transform  # evaluated with the evaluation transform


def test_folder_preset_trains_on_own_images_in_one_command(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--config", "folder", f"data.root={image_folder}", "data.holdout=0.25", "--out", str(out),
            "--quiet", "phase1.epochs=1", "phase2.epochs=1", "phase1.batch_size=8", "phase2.batch_size=8",
            "data.num_workers=0", "progress=false", *TINY_MODEL]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == sum(HELD)
    capsys.readouterr()
    assert main(["eval", "--run", str(out), "--json"]) == 0  # the run's evaluation split is found again
    again = json.loads(capsys.readouterr().out)
    assert (again["num_images"], again["overall"]) == (metrics["num_images"], metrics["overall"])


def test_folder_without_val_and_without_holdout_says_what_to_set(image_folder, capsys):
    assert main(["train", "--config", "folder", f"data.root={image_folder}"]) == 2
    assert capsys.readouterr().err == (
        f"lpt train: error: evaluation folder {image_folder / 'val'} (data.root/data.test_dir) is not a folder; "
        "without one, set data.holdout=0.2 (say) to evaluate on held-out training images\n")


@pytest.mark.parametrize("value", ["1.0", "-0.1", "1.5"])
def test_holdout_outside_zero_one_is_refused(value):
    with pytest.raises(ConfigError, match=rf"config key 'data.holdout' is {value}; expected a fraction in \[0, 1\)"):
        load_config("folder", [f"data.holdout={value}"])


def test_long_tail_profile_error_names_its_keys_in_full(image_folder):
    cfg = load_config("folder", [f"data.root={image_folder}", "data.holdout=0.25", "data.imbalance_ratio=2"])
    with pytest.raises(ConfigError, match=r"class 1 \('class_1'\) has 6 training images; the long-tail profile "
                                          r"\(data.imbalance_ratio=2.0, n_max = 9, the largest class\) asks for 7: "
                                          r"lower data.max_per_class or data.imbalance_ratio$"):
        build_datasets(cfg.data)  # 9, 6, 4, 3, 1 after the hold-out; the profile: int(9 * 2 ** -0.25) = 7
    cfg.data.max_per_class = 8
    with pytest.raises(ConfigError, match=r"class 2 \('class_2'\) has 4 training images; .*\(data.imbalance_ratio=2.0, "
                                          r"n_max = data.max_per_class=8\) asks for 5"):
        build_datasets(cfg.data)  # the profile: 8, 6, 5, 4, 4
