"""A validation split during training (data.val_list) and the checkpoint it selects (select: best_val)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import lpt
from lpt.analysis.report import _kept, write_report
from lpt.cli import main
from lpt.config import ConfigError, load_config
from lpt.model.state import read_tensors
from lpt.run import validation
from lpt.run.files import read_run
from tests.conftest import TINY_MODEL, class_images

pytestmark = pytest.mark.usefixtures("one_thread")


def overrides(root, *extra):
    return ["data.source=list", "data.imbalance_ratio=1", "data.max_per_class=0", f"data.root={root}",
            f"data.train_list={root / 'train.txt'}", f"data.test_list={root / 'test.txt'}",
            f"data.val_list={root / 'val.txt'}", *TINY_MODEL,
            "phases=[phase1]", "phase1.epochs=4", "phase1.batch_size=16", "phase1.lr=0.5", "eval_batch_size=40",
            "data.num_workers=0", "progress=false", *extra]


def test_validation_records_a_shot_table_every_val_every_epochs(list_data, tmp_path):
    lpt.train(load_config("demo", overrides(list_data, "val_every=3")), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if "val" in r]
    assert [r["epoch"] for r in vals] == [3, 4]  # every third epoch, and the phase's last
    assert all(r["val"]["num_images"] == 40 and set(r["val"]) >= {"overall", "many", "medium", "few"} for r in vals)
    assert [r["epoch"] for r in records if "epoch" in r and "val" not in r] == [1, 2, 3, 4]
    run = read_run(tmp_path / "run")  # what reports plot: the training records, and the validations apart
    assert [r["epoch"] for r in run.epochs] == [1, 2, 3, 4] and all("loss" in r for r in run.epochs)
    assert run.vals == vals
    again = vals[0] | {"val": vals[0]["val"] | {"overall": 99.0}}  # as a run resumed before epoch 3 writes it again
    with (tmp_path / "run" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(again) + "\n")
    assert read_run(tmp_path / "run").vals == [vals[1], again]


def test_best_val_keeps_the_best_epoch_not_the_last(list_data, tmp_path, monkeypatch, capsys):
    scripted, kept = iter([30.0, 70.0, 50.0, 60.0]), []
    real = validation.shot_metrics

    def scored(model, *args):  # the real evaluation, then a scripted accuracy: the best epoch is the second
        metrics, out = real(model, *args)
        kept.append({k: v.clone() for k, v in model.trained_tensors().items()})
        return metrics | {"overall": next(scripted)}, out

    monkeypatch.setattr(validation, "shot_metrics", scored)
    out = tmp_path / "run"
    lpt.train(load_config("demo", overrides(list_data, "select=best_val")), out)
    saved, _ = read_tensors(out / "model.safetensors")
    assert all(torch.equal(saved[k], kept[1][k]) for k in saved)
    assert not all(torch.equal(saved[k], kept[3][k]) for k in saved)  # the last epoch differs
    summary = json.loads((out / "run.json").read_text())["phases"]["phase1"]
    assert summary["selected"] == {"epoch": 2, "overall": 70.0}
    assert not (out / "best_val.safetensors").exists()
    _, md_path = write_report(out)  # the report shows each epoch's validation accuracy and the epoch kept
    rows = [line.split(" | ") for line in md_path.read_text().splitlines() if line.startswith("| phase1 | ")]
    rows = [row for row in rows if len(row) == 7]  # the epoch table: phase, epoch, loss, accuracy, lr, speed, val
    assert [row[-1].rstrip(" |") for row in rows] == ["30.00", "70.00", "50.00", "60.00"]
    assert "phase1 kept its best validation epoch, 2 (validation accuracy 70.00), not its last" in md_path.read_text()
    had_it_been_the_last = _kept("phase1", {"epoch": 4, "overall": 60.0}, read_run(out).epochs)
    assert "epoch, 4 (validation accuracy 60.00), its last too" in had_it_been_the_last
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["eval", "--run", str(out), "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((out / "metrics.json").read_text())


def test_best_val_needs_a_validation_split_never_the_test_list():
    with pytest.raises(ConfigError, match="select.*best_val.*data.val_list.*never used"):
        load_config("demo", ["select=best_val"])
    with pytest.raises(ConfigError, match="data.val_list.*data.source=list"):
        load_config("demo", ["data.val_list=val.txt"])


def test_a_folder_source_validates_on_its_own_folder_and_selects_on_it(tmp_path):
    rng = np.random.default_rng(1)
    for split, count in (("train", 6), ("test", 3), ("check", 2)):
        labels = np.repeat(np.arange(3), count)
        for i, (image, label) in enumerate(zip(class_images(labels, rng), labels)):
            (tmp_path / split / f"c{label}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(tmp_path / split / f"c{label}" / f"{i}.png")
    folder = ["data.source=folder", f"data.root={tmp_path}", "data.test_dir=test", "data.val_dir=check", *TINY_MODEL,
              "data.imbalance_ratio=1", "data.max_per_class=0",
              "phases=[phase1]", "phase1.epochs=2", "phase1.batch_size=6", "data.num_workers=0", "progress=false",
              "select=best_val"]
    lpt.train(load_config("demo", folder), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val"]["num_images"] for r in records if "val" in r] == [6, 6]  # the check/ folder, each epoch
    assert json.loads((tmp_path / "run" / "run.json").read_text())["phases"]["phase1"]["selected"]["epoch"] in (1, 2)
    with pytest.raises(ConfigError, match=r"'data.val_dir' is 'test', the test folder \(data.test_dir\)"):
        load_config("demo", [*folder, "data.val_dir=test"])
    with pytest.raises(ConfigError, match=r"'data.val_dir' is set but data.source is 'fashion_mnist'"):
        load_config("demo", ["data.val_dir=check"])
