"""End to end through the command line: train, reload, eval, predict, and one-line errors."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

import lpt
from lpt.cli import main
from lpt.config import load_config
from lpt.model.state import CheckpointError
from lpt.run.load import build_run_model, load_trained
from lpt.model.lpt import GROUP_PROMPTS


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_fmnist):
    from tests.conftest import tiny_run_overrides

    out = tmp_path_factory.mktemp("runs") / "run"
    overrides = tiny_run_overrides(tiny_fmnist)
    assert main(["--quiet", "train", "--config", "demo", "--out", str(out), *overrides]) == 0
    return out


def test_run_directory_contents(trained_run):
    for name in ("config.yaml", "classes.json", "metrics.jsonl", "metrics.json", "run.json", "model.safetensors",
                 "train.log"):
        assert (trained_run / name).is_file(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert {"overall", "many", "medium", "few", "per_class", "official"} <= set(metrics)
    assert metrics["phase"] == 2 and len(metrics["per_class"]) == 10
    counts = json.loads((trained_run / "classes.json").read_text())["train_counts"]
    assert counts == [40, 30, 23, 18, 14, 11, 8, 6, 5, 4]  # int(40 * 10 ** (-i / 9))
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("epoch") for r in records if "epoch" in r] == [1, 2, 1]
    assert [r["phase"] for r in records if "eval" in r] == ["phase1", "phase2"]


def test_eval_reproduces_training_metrics_exactly(trained_run, capsys):
    capsys.readouterr()
    assert main(["eval", "--run", str(trained_run), "--json", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((trained_run / "metrics.json").read_text())


def test_metrics_json_other_metrics_equal_scikit_learn_on_the_run_probabilities(trained_run):
    """metrics.json's top-5, balanced accuracy, macro-F1 and NLL are those of softmax(loss.scale * logits) of the
    saved model, as scikit-learn computes them."""
    from sklearn.metrics import balanced_accuracy_score, f1_score, log_loss, top_k_accuracy_score

    from lpt.data import build_test_dataset

    run = lpt.load_run(trained_run)
    test = build_test_dataset(run.config.data)
    with torch.no_grad():
        logits = run.logit_scale * run.model(torch.stack([test[i][0] for i in range(len(test))])).double()
    probs, labels = logits.softmax(1).numpy(), np.asarray(test.targets)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    classes = np.arange(probs.shape[1])
    assert metrics["nll"] == pytest.approx(log_loss(labels, probs, labels=classes), rel=1e-5)
    assert metrics["top5"] == pytest.approx(100 * top_k_accuracy_score(labels, probs, k=5, labels=classes))
    assert metrics["balanced_accuracy"] == pytest.approx(100 * balanced_accuracy_score(labels, probs.argmax(1)))
    assert metrics["macro_f1"] == pytest.approx(100 * f1_score(labels, probs.argmax(1), average="macro"))
    assert 0 <= metrics["ece"] <= 100 and sum(metrics["reliability"]["count"]) == len(labels)


def _ensemble_accuracy(run, views) -> tuple[float, list]:
    """Overall and per-class accuracy of the mean logits of a run's model on each image's views (hand-built)."""
    from lpt.data import build_test_dataset
    from lpt.metrics import shot_accuracy

    test = build_test_dataset(run.config.data)
    test.transform = None
    x = torch.stack([torch.stack(views(test.load(i))) for i in range(len(test))])  # [N, views, 3, S, S]
    with torch.no_grad():
        logits = torch.stack([run.model(x[:, v]) for v in range(x.shape[1])]).mean(0)
    metrics = shot_accuracy(logits.argmax(1).tolist(), test.targets, run.train_counts)
    return metrics["overall"], metrics["per_class"]


def tensor(img):  # the demo's normalisation: mean 0.5, std 0.5
    return (T.functional.to_dtype(T.functional.pil_to_tensor(img), torch.float32, scale=True) - 0.5) / 0.5


def flip(img):  # 28x28 images at img_size 28: the image and its mirror
    return [tensor(img), tensor(img).flip(-1)]


def crops(img):  # LIFT: resize to 28 + 24, five 28-pixel crops
    return [tensor(c) for c in T.FiveCrop(28)(T.Resize(52, InterpolationMode.BICUBIC, antialias=True)(img))]


def test_eval_with_test_time_ensembling(trained_run, capsys):
    saved = json.loads((trained_run / "metrics.json").read_text())
    assert saved["tta"] == "none"
    capsys.readouterr()
    assert main(["eval", "--run", str(trained_run), "--json", "--device", "cpu", "--tta", "flip"]) == 0
    flipped = json.loads(capsys.readouterr().out)
    assert flipped["tta"] == "flip" and set(flipped) == set(saved)
    run = lpt.load_run(trained_run)
    assert (flipped["overall"], flipped["per_class"]) == _ensemble_accuracy(run, flip)
    cropped = lpt.evaluate_run(trained_run, device="cpu", tta="crops")
    assert cropped["tta"] == "crops"
    assert (cropped["overall"], cropped["per_class"]) == _ensemble_accuracy(run, crops)
    assert main(["eval", "--run", str(trained_run), "--device", "cpu", "--tta", "flip"]) == 0
    assert "(phase 2, tta flip)" in capsys.readouterr().out


def test_loaded_model_api(trained_run):
    run = lpt.load_run(trained_run)
    images = torch.randn(5, 3, 28, 28)
    assert not run.model.training and run.model.phase == 2
    logits = run.model(images)
    assert logits.shape == (5, 10) and float(logits.detach().abs().max()) <= 1 + 1e-6
    assert run.model.query(images).shape == (5, 32)
    groups = run.model.match(images)
    assert groups.shape == (5, 2) and groups.dtype == torch.long
    assert torch.equal(groups, run.model.forward_features(images)["groups"])


def test_predict_writes_top5_csv(trained_run, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((28, 28), 40 * i, dtype=np.uint8)).save(folder / f"img {i}.png")
    out = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(trained_run), str(folder), "--out", str(out)]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0][:3] == ["path", "class1", "score1"] and len(rows) == 4
    classes = json.loads((trained_run / "classes.json").read_text())["classes"]
    scores = [float(s) for s in rows[1][2::2]]
    assert set(rows[1][1::2]) <= set(classes) and scores == sorted(scores, reverse=True)


def test_predict_under_test_time_ensembling(trained_run, tmp_path, capsys):
    from lpt.config import ConfigError

    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (28, 28, 3), dtype=np.uint8)) for i in range(4)]
    run = lpt.load_run(trained_run)

    def expected(views):  # softmax(scale * the views' mean logits), one image at a time
        with torch.no_grad():
            logits = torch.stack([torch.stack([run.model(v[None])[0] for v in views(img)]).mean(0) for img in images])
        return (run.logit_scale * logits).softmax(1)

    plain = run.predict(images)
    torch.testing.assert_close(plain, expected(lambda img: [tensor(img)]))
    torch.testing.assert_close(run.predict(images, tta="flip"), expected(flip))
    torch.testing.assert_close(run.predict(images, tta="crops"), expected(crops))
    assert (run.predict(images, tta="flip") - plain).abs().max() > 1e-3
    run.config.tta = "crops"  # a run trained with tta=crops (the LIFT presets) predicts as it was evaluated
    torch.testing.assert_close(run.predict(images), expected(crops))
    with pytest.raises(ConfigError, match="tta=crops cuts five crops from each image"):
        run.predict(torch.stack([tensor(img) for img in images]))
    with pytest.raises(ConfigError, match="tta 'tencrop': choose from none, flip, crops"):
        run.predict(images, tta="tencrop")
    for i, img in enumerate(images):
        img.save(tmp_path / f"{i}.png")
    out = tmp_path / "flip.csv"
    assert main(["predict", "--run", str(trained_run), str(tmp_path), "--tta", "flip", "--out", str(out)]) == 0
    top1 = [float(row[2]) for row in list(csv.reader(out.open()))[1:]]
    assert top1 == pytest.approx(expected(flip).max(1).values.tolist(), abs=1e-4)  # the CSV keeps 4 decimals


def test_phase2_alone_starts_from_a_phase1_run(trained_run, tiny_overrides, tmp_path):
    out = tmp_path / "p2"
    assert main(["--quiet", "train", "--config", "demo", "--out", str(out), *tiny_overrides, "phases=[phase2]",
                 f"init={trained_run}"]) == 0
    first = lpt.load_run(trained_run).model.shared_prompt
    assert torch.equal(lpt.load_run(out).model.shared_prompt, first)  # phase 2 leaves the shared prompt frozen


def test_phase2_from_a_run_with_another_pool_size_keeps_phase1_and_starts_fresh_groups(trained_run, tiny_overrides,
                                                                                        tmp_path):
    overrides = [*tiny_overrides, "model.pool_size=6", "model.top_k=3"]  # the init run has m = 4
    model, identity = build_run_model(load_config("demo", overrides), 10)
    untrained = model.pool.prompts.detach().clone()
    load_trained(model, identity, trained_run, skip=(GROUP_PROMPTS,))
    source = lpt.load_run(trained_run).model
    assert torch.equal(model.shared_prompt, source.shared_prompt) and torch.equal(model.head.weight, source.head.weight)
    assert torch.equal(model.pool.prompts, untrained)
    assert main(["--quiet", "train", "--config", "demo", "--out", str(tmp_path / "m6"), *overrides, "phases=[phase2]",
                 f"init={trained_run}"]) == 0
    run = lpt.load_run(tmp_path / "m6").model
    assert run.pool.prompts.shape[0] == 6 and torch.equal(run.shared_prompt, source.shared_prompt)


def test_checkpoint_on_another_backbone_is_refused(trained_run, tmp_path):
    cfg = (trained_run / "config.yaml").read_text().replace("seed: 0", "seed: 1")
    other = tmp_path / "other"
    other.mkdir()
    for name in ("classes.json", "model.safetensors"):
        (other / name).write_bytes((trained_run / name).read_bytes())
    (other / "config.yaml").write_text(cfg)
    with pytest.raises(CheckpointError, match="fingerprint"):
        lpt.load_run(other)


def run_error(argv, capsys):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_error_missing_data_root(tmp_path, capsys):
    err = run_error(["train", "--config", "demo", f"data.root={tmp_path / 'nowhere'}"], capsys)
    assert "nowhere" in err


def test_error_unknown_backbone(tiny_overrides, tmp_path, capsys):
    err = run_error(["train", "--config", "demo", "--out", str(tmp_path / "r"), *tiny_overrides,
                     "model.backbone=vit_nonexistent_patch3"], capsys)
    assert "unknown backbone 'vit_nonexistent_patch3'" in err


def test_error_unknown_config_key(capsys):
    err = run_error(["train", "--config", "demo", "phase1.epoch=3"], capsys)
    assert "phase1.epoch" in err and "epochs" in err


def test_error_list_file_problems(tmp_path, capsys):
    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")
    train = tmp_path / "train.txt"
    train.write_text("a.png 0\na.png 1\n")
    test = tmp_path / "test.txt"
    test.write_text("a.png 0\nmissing.png 1\n")
    base = ["train", "--config", "demo", "data.source=list", f"data.root={root}", f"data.train_list={train}"]
    err = run_error(base + [f"data.test_list={test}"], capsys)
    assert f"{test}:2" in err and "missing.png" in err
    test.write_text("a.png 0\na.png 7\n")
    err = run_error(base + [f"data.test_list={test}"], capsys)
    assert f"{test}:2" in err and "7" in err


def test_demo_prints_linear_probe_and_both_lpt_phases(tmp_path, tiny_overrides, capsys):
    out = tmp_path / "demo"
    assert main(["--quiet", "demo", "--out", str(out), *tiny_overrides]) == 0
    printed = capsys.readouterr().out
    probe = json.loads((out / "linear_probe" / "run.json").read_text())
    lpt_run = json.loads((out / "run.json").read_text())
    assert probe["method"] == "linear" and probe["backbone"]["fingerprint"] == lpt_run["backbone"]["fingerprint"]
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "overall" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| linear probe", "| LPT phase 1", "| LPT phase 2"]
    assert rows[0].split(" | ")[1] == f"{probe['phases']['phase1']['overall']:.2f}"
    assert rows[2].split(" | ")[1] == f"{lpt_run['phases']['phase2']['overall']:.2f}"
    assert main(["--quiet", "demo", "--no-linear-probe", "--out", str(tmp_path / "lpt_only"), *tiny_overrides]) == 0
    assert not (tmp_path / "lpt_only" / "linear_probe").exists()


def test_compile_option_compiles_the_model_it_trains(tmp_path, tiny_overrides, monkeypatch):
    compiled = []
    monkeypatch.setattr(lpt.LPT, "compile_forwards", lambda self, **options: compiled.append(self))
    overrides = [*tiny_overrides, "phases=[phase1]", "phase1.epochs=1"]
    assert main(["--quiet", "train", "--config", "demo", "--out", str(tmp_path / "plain"), *overrides]) == 0
    assert compiled == []
    assert main(["--quiet", "train", "--config", "demo", "--out", str(tmp_path / "c"), *overrides, "compile=true"]) == 0
    assert len(compiled) == 1 and isinstance(compiled[0], lpt.LPT)


def test_version_is_the_installed_packages_and_python_m_lpt_is_the_command(tmp_path):
    import importlib.metadata
    import subprocess
    import sys
    from pathlib import Path

    src = Path(lpt.__file__).parents[1]  # a checkout's src/: no console script needed
    done = subprocess.run([sys.executable, "-m", "lpt", "--version"], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"lpt {importlib.metadata.version('lpt')}\n" == f"lpt {lpt.__version__}\n"
