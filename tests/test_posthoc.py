"""Post-hoc logit adjustment and τ-normalisation (lpt eval --posthoc-tau / --tau-norm): the published formulas, and
τ chosen on the validation split only."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import lpt
from lpt.cli import main
from lpt.config import load_config
from lpt.data import build_test_dataset
from lpt.metrics import metrics_record
from lpt.run.posthoc import TAU_GRID, adjusted_logits, choose_tau, tau_normalised
from tests.conftest import TINY_MODEL, class_images

pytestmark = pytest.mark.usefixtures("one_thread")
TRAIN = [30, 24, 18, 14, 10, 8, 6, 5, 4, 3]


def test_adjusted_logits_subtract_tau_log_prior():
    logits = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    # prior 0.6, 0.3, 0.1: f - tau * log(pi)
    expected = logits - 0.7 * np.log([0.6, 0.3, 0.1])
    assert adjusted_logits(logits, [60, 30, 10], 0.7) == pytest.approx(expected)
    assert adjusted_logits(logits, [60, 30, 10], 0.0) == pytest.approx(logits)


def test_tau_normalised_divides_each_row_by_its_norm_to_the_tau():
    w = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # norms 5 and 2
    assert torch.allclose(tau_normalised(w, 1.0), torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    assert torch.allclose(tau_normalised(w, 0.5), torch.tensor([[3 / 5 ** 0.5, 4 / 5 ** 0.5], [0.0, 2 / 2 ** 0.5]]))
    assert torch.equal(tau_normalised(w, 0.0), w)


def test_choose_tau_takes_the_best_balanced_accuracy_smallest_on_ties():
    # two classes, logits [0, t]: class 1 wins once t > 0; labels all class 1, so every t > 0 is best
    labels = np.array([1, 1, 1])
    tau, tried = choose_tau(lambda t: np.tile([0.0, t], (3, 1)), labels)
    assert tau == 0.1 and [t for t, _ in tried] == list(TAU_GRID)
    assert tried[0] == [0.0, 0.0] and tried[1] == [0.1, 100.0]  # at 0 argmax takes class 0: 0% right
    assert choose_tau(lambda t: np.tile([t, 1.0], (3, 1)), np.array([0, 0, 0]))[0] == 1.0  # argmax: class 0 at t = 1


@pytest.fixture(scope="module")
def list_data(tmp_path_factory):
    """PNG images with list files: 10 classes, long-tailed training split, balanced val and test; and one-class
    lists of the most frequent class's validation images and the rarest class's test images."""
    root = tmp_path_factory.mktemp("posthoc")
    rng = np.random.default_rng(0)
    for split, counts in (("train", TRAIN), ("val", [4] * 10), ("test", [6] * 10)):
        labels = np.repeat(np.arange(10), counts)
        lines = []
        (root / split).mkdir()
        for i, (image, label) in enumerate(zip(class_images(labels, rng), labels)):
            Image.fromarray(image).save(root / split / f"{i}.png")
            lines.append(f"{split}/{i}.png {label}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
        rarest, most = [x for x in lines if x.endswith(" 9")], [x for x in lines if x.endswith(" 0")]
        (root / f"{split}_head.txt").write_text("\n".join(most) + "\n")
        (root / f"{split}_tail.txt").write_text("\n".join(rarest) + "\n")
    return root


def data_overrides(root):
    return ["data.source=list", "data.imbalance_ratio=1", "data.max_per_class=0", f"data.root={root}",
            f"data.train_list={root / 'train.txt'}", f"data.test_list={root / 'test.txt'}",
            f"data.val_list={root / 'val.txt'}", "data.num_workers=0", "eval_batch_size=64", "progress=false"]


@pytest.fixture(scope="module")
def linear_run(list_data, tmp_path_factory):
    """A linear probe with a linear head on instance-balanced batches (a classifier biased to the head classes)."""
    out = tmp_path_factory.mktemp("runs") / "linear"
    cfg = load_config("demo", data_overrides(list_data) + TINY_MODEL + [
        "method=linear", "phases=[phase1]", "model.prompt_len=0", "model.head=linear", "loss.name=ce",
        "loss.scale=1", "loss.label_smoothing=0", "phase1.sampling=instance", "phase1.epochs=6",
        "phase1.batch_size=16", "phase1.lr=0.5"])
    lpt.train(cfg, out)
    return out


def _eval(capsys, run, *args):
    capsys.readouterr()
    assert main(["--quiet", "eval", "--run", str(run), "--json", "--device", "cpu", *args]) == 0
    return json.loads(capsys.readouterr().out)


def _test_logits(run_dir, test_list=None):
    run = lpt.load_run(run_dir)
    data = run.config.data
    if test_list:
        data.test_list = str(test_list)
    test = build_test_dataset(data)
    x = torch.stack([test[i][0] for i in range(len(test))])
    with torch.no_grad():
        feats = run.model.forward_features(x)["feature"].double()
        return run, run.logit_scale * run.model(x).double().numpy(), feats, np.asarray(test.targets)


def test_posthoc_tau_given_equals_metrics_of_hand_adjusted_logits(linear_run, capsys):
    run, logits, _, labels = _test_logits(linear_run)
    got = _eval(capsys, linear_run, "--posthoc-tau", "1.5")
    prior = np.array(TRAIN) / sum(TRAIN)
    expected = metrics_record(labels, run.train_counts, logits=logits - 1.5 * np.log(prior))
    assert got["posthoc"] == {"method": "logit_adjustment", "tau": 1.5, "chosen_on": "given"}
    for key in ("overall", "few", "balanced_accuracy", "nll", "ece"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6), key
    assert got["nll"] != pytest.approx(_eval(capsys, linear_run)["nll"])  # the correction changed the probabilities


def test_posthoc_tau_auto_chooses_on_validation_where_test_would_choose_otherwise(linear_run, list_data, capsys):
    # validation: the most frequent class only, where adjusting can only cost (best tau 0); test: the rarest class
    # only, where it can only help
    run, val_logits, _, val_labels = _test_logits(linear_run, list_data / "val_head.txt")
    _, test_logits, _, test_labels = _test_logits(linear_run, list_data / "test_tail.txt")
    on_val = choose_tau(lambda t: adjusted_logits(val_logits, TRAIN, t), val_labels)[0]
    on_test = choose_tau(lambda t: adjusted_logits(test_logits, TRAIN, t), test_labels)[0]
    assert on_val == 0.0 and on_test > 0.0  # the two splits disagree
    got = _eval(capsys, linear_run, "--posthoc-tau", "auto", "--data", f"val_list={list_data / 'val_head.txt'}",
                f"test_list={list_data / 'test_tail.txt'}")
    assert got["posthoc"]["tau"] == on_val and "val_head.txt" in got["posthoc"]["chosen_on"]
    assert len(got["posthoc"]["validation_balanced_accuracy"]) == len(TAU_GRID)
    assert got["num_images"] == 6  # and evaluated on the test list


def test_posthoc_tau_auto_without_a_validation_split_is_refused(linear_run, capsys):
    assert main(["--quiet", "eval", "--run", str(linear_run), "--posthoc-tau", "auto", "--data", "val_list=",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--data val_list=FILE (a folder source: --data val_dir=FOLDER" in err


def test_tau_norm_given_equals_hand_normalised_weights_without_bias(linear_run, capsys):
    run, _, feats, labels = _test_logits(linear_run)
    w = run.model.head.weight.detach().double()
    logits = feats @ (w / w.norm(dim=1, keepdim=True) ** 0.6).t()  # classifier-balancing tau_norm.py: no bias
    expected = metrics_record(labels, run.train_counts, logits=logits.numpy())
    got = _eval(capsys, linear_run, "--tau-norm", "0.6")
    assert got["posthoc"]["method"] == "tau_norm"
    for key in ("overall", "medium", "few", "macro_f1", "nll"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6), key


def test_tau_norm_auto_chooses_on_the_validation_split(linear_run, list_data, capsys):
    run, _, feats, labels = _test_logits(linear_run, list_data / "val.txt")
    w = run.model.head.weight.detach().double()
    on_val = choose_tau(lambda t: (feats @ (w / w.norm(dim=1, keepdim=True) ** t).t()).numpy(), labels)[0]
    got = _eval(capsys, linear_run, "--tau-norm", "auto")
    assert got["posthoc"]["tau"] == on_val and "val.txt" in got["posthoc"]["chosen_on"]


def test_tau_norm_of_a_cosine_head_and_both_corrections_at_once_are_refused(linear_run, tiny_fmnist, tmp_path,
                                                                             capsys):
    from tests.conftest import tiny_run_overrides

    cosine = tmp_path / "cosine"
    lpt.train(load_config("demo", tiny_run_overrides(tiny_fmnist) + ["phases=[phase1]", "method=vpt"]), cosine)
    capsys.readouterr()  # the training's own warnings
    assert main(["--quiet", "eval", "--run", str(cosine), "--tau-norm", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.head=cosine, whose weights are normalised already" in err
    assert main(["--quiet", "eval", "--run", str(linear_run), "--tau-norm", "1", "--posthoc-tau", "1"]) == 2
    assert "give one" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--run", str(linear_run), "--tau-norm", "big"])
