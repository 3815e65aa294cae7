"""`lpt compare`: a table of runs from hand-made run directories whose numbers are known."""

import csv
import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from lpt.analysis.compare import compare_runs
from lpt.run.files import trained_params
from lpt.cli import main

# Tensors of a model with D = 4, L = 3, prompt_len 2, pool 5, K = 1, C = 3:
TENSORS = {
    "shared_prompt": (3, 2, 4),  # 24
    "pool.prompts": (5, 2, 2, 4),  # 80
    "pool.keys": (5, 4),  # 20
    "head.weight": (3, 4),  # 12
}


def make_run(path, method, phase, metrics, images_per_s, backbone="vit_small_patch16_224.augreg_in21k"):
    path.mkdir()
    (path / "config.yaml").write_text(f"method: {method}\nmodel:\n  backbone: {backbone}\n")
    (path / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c"], "train_counts": [200, 50, 5]}))
    (path / "metrics.json").write_text(json.dumps(metrics | {"phase": phase}))
    phases = {"phase1": {"images_per_s": 999.0}, f"phase{phase}": {"images_per_s": images_per_s}}
    (path / "run.json").write_text(json.dumps({"method": method, "backbone": {"name": backbone}, "phases": phases,
                                               "backbone_params": 1000}))
    save_file({k: np.zeros(s, dtype=np.float32) for k, s in TENSORS.items()}, str(path / "model.safetensors"),
              metadata={"lpt": json.dumps({"phase": phase})})
    return path


SCORES = {"top5": 80.004, "balanced_accuracy": 50.5, "worst_class_accuracy": 3.25, "harmonic_mean_accuracy": 20.125,
          "macro_f1": 48.0, "nll": 1.23456, "ece": 7.5}


@pytest.fixture
def runs(tmp_path):
    lpt = make_run(tmp_path / "lpt", "lpt", 2, {"overall": 50.066, "many": 49.274, "medium": 52.3149, "few": 46.875}
                   | SCORES, images_per_s=123.456)
    vpt = make_run(tmp_path / "vpt", "vpt", 1, {"overall": 45.0, "many": 51.125, "medium": 44.5, "few": None,
                                                "tta": "crops"}, images_per_s=200.0)
    return lpt, vpt


def test_trained_params_leave_out_an_untrained_pool(runs):
    lpt, vpt = runs
    assert trained_params(lpt) == 24 + 80 + 20 + 12  # phase 2: shared prompt, pool, keys, head = 136
    assert trained_params(vpt) == 24 + 12  # phase 1: the pool never trained = 36


def test_compare_prints_and_writes_the_table(runs, tmp_path, capsys):
    lpt, vpt = runs
    assert main(["compare", str(lpt), str(vpt), "--out", str(tmp_path / "table")]) == 0
    expected = [
        "| run | method | backbone | tta | overall | many | medium | few | top-5 | balanced | worst class "
        "| harmonic mean | macro-F1 | NLL (nats) | ECE | trainable params | images/s | features/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {lpt} | LPT phase 2 | vit_small_patch16_224.augreg_in21k | none | 50.07 | 49.27 | 52.31 | 46.88 "
        "| 80.00 | 50.50 | 3.25 | 20.12 | 48.00 | 1.23 | 7.50 | 136 "
        "| 123.5 | - |",  # metrics.json without tta (written before it existed): the plain image
        f"| {vpt} | VPT | vit_small_patch16_224.augreg_in21k | crops | 45.00 | 51.12 | 44.50 | - "
        "| - | - | - | - | - | - | - | 36 | 200.0 | - |",  # written before lpt computed the other metrics
    ]
    printed = capsys.readouterr().out.splitlines()
    assert printed[:4] == expected
    assert (tmp_path / "table.md").read_text().splitlines() == expected
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [(r["method"], r["tta"]) for r in rows] == [("LPT phase 2", "none"), ("VPT", "crops")]
    assert float(rows[0]["medium"]) == 52.3149 and rows[1]["few"] == ""  # full precision; empty when unknown
    assert float(rows[0]["nll"]) == 1.23456 and rows[1]["ece"] == ""
    assert int(rows[0]["trainable_params"]) == 136 and float(rows[0]["images_per_s"]) == 123.456


def test_linear_probe_throughput_is_features_per_second_not_images(runs, tmp_path, capsys):
    lpt, _ = runs
    probe = make_run(tmp_path / "probe", "linear", 1, {"overall": 40.0, "many": 60.0, "medium": 30.0, "few": 10.0},
                     images_per_s=60341.2)  # the trainer timed cached features
    assert main(["compare", str(lpt), str(probe), "--out", str(tmp_path / "table")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[2].endswith("| 136 | 123.5 | - |")  # LPT trains on images
    assert printed[3].endswith("| 36 | - | 60341.2 |")
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert (rows[1]["images_per_s"], float(rows[1]["features_per_s"])) == ("", 60341.2)


def test_compare_rows_keep_the_order_given(runs):
    lpt, vpt = runs
    assert [r["method"] for r in compare_runs([vpt, lpt, vpt])] == ["VPT", "LPT phase 2", "VPT"]


def test_compare_refuses_a_directory_that_is_not_a_finished_run(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(runs[0]), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no config.yaml" in err


def test_compare_skips_stray_files_among_the_runs(runs, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("what I tried\n")
    lpt, vpt = runs
    assert main(["--quiet", "compare", str(lpt), str(tmp_path / "notes.txt"), str(vpt)]) == 0
    captured = capsys.readouterr()
    assert [line.split(" | ")[1] for line in captured.out.splitlines()[2:4]] == ["LPT phase 2", "VPT"]
    assert f"skipping {tmp_path / 'notes.txt'}: not a run directory" in captured.err


def test_peft_runs_are_told_apart_by_their_modules_and_loss(tmp_path):
    rows = []
    for name, modules, loss in (("adaptformer", ["adaptformer"], "ce"), ("lora", ["lora"], "ce"),
                                ("lift", ["adaptformer"], "la")):
        run = make_run(tmp_path / name, "peft", 1, {"overall": 1.0}, images_per_s=1.0)
        (run / "config.yaml").write_text(f"method: peft\nmodel:\n  peft: {modules}\nloss:\n  name: {loss}\n")
        rows.append(run)
    assert [r["method"] for r in compare_runs(rows)] == ["PEFT (adaptformer, loss ce)", "PEFT (lora, loss ce)",
                                                         "PEFT (adaptformer, loss la)"]


def test_a_run_evaluated_on_held_out_training_images_is_noted(runs, tmp_path, capsys):
    lpt, vpt = runs
    (vpt / "config.yaml").write_text("method: vpt\ndata:\n  source: folder\n  holdout: 0.2\n")
    assert main(["compare", str(lpt), str(vpt)]) == 0
    assert capsys.readouterr().out.splitlines()[4] == (
        f"note: these runs are evaluated on different images: {lpt} on its evaluation split; {vpt} on held-out 0.2 "
        "of the training images")
    assert main(["compare", str(lpt)]) == 0
    assert "note:" not in capsys.readouterr().out
