"""A run directory keeps what the run was: resumed only under the config it started with, its checkpoint the one it
trained, deleted by --overwrite only where lpt wrote everything, started over when it never saved a step, and
no lock file left behind; and a device or hub weights this machine lacks are one line."""

import json
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from lpt.cli import main
from lpt.engine.resume import StopRequest
from lpt.model.state import save_tensors
from lpt.run.files import CHECKPOINT, CONFIG, LOCK, read_checkpoint
from tests.conftest import TINY_MODEL, tiny_run_overrides
from tests.test_new_user import one_line_error, snapshot, train_into

pytestmark = pytest.mark.usefixtures("one_thread")


def error_after_warnings(argv, capsys):
    """The one-line error of a command that fails after building a random backbone (which warns, even --quiet)."""
    capsys.readouterr()
    assert main(["--quiet", *argv]) == 2
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if " lpt WARNING " not in line]
    assert len(said) == 1 and "Traceback" not in captured.err + captured.out, captured.err
    return said[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_fmnist):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["--quiet", "train", "--config", "demo", "--out", str(out), *tiny_run_overrides(tiny_fmnist)]) == 0
    return out


def interrupted_run(out, root, monkeypatch):
    """A run stopped (as by SIGTERM) after its first step, with its resumable state saved."""
    with monkeypatch.context() as patch:
        patch.setattr(StopRequest, "__call__", lambda self: signal.SIGTERM)
        assert main(["--quiet", *train_into(out, root)]) != 0 and (out / "resume.safetensors").is_file()
    return out


# ----------------------------------------------------------------------------- the config a run started with


def test_resume_after_config_yaml_was_edited_is_refused_naming_the_keys(tiny_fmnist, tmp_path, monkeypatch,
                                                                        capsys):
    run = interrupted_run(tmp_path / "run", tiny_fmnist, monkeypatch)
    config = (run / CONFIG).read_text()
    edited = config.replace("epochs: 2", "epochs: 5", 1).replace("lr: 0.5", "lr: 0.1", 1)
    assert edited.count("epochs: 5") == 1 and edited.count("lr: 0.1") == 1
    (run / CONFIG).write_text(edited)
    before = snapshot(run)
    err = one_line_error(["train", "--resume", str(run)], capsys)
    assert f"{run / CONFIG} differs from the config the run started with" in err
    assert "phase1.epochs (2, now 5)" in err and "phase1.lr (0.5, now 0.1)" in err and "phase2" not in err
    assert snapshot(run) == before  # nothing written, no lock file left
    (run / CONFIG).write_text(config)
    assert main(["--quiet", "train", "--resume", str(run)]) == 0
    assert [json.loads(r).get("epoch") for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, None, 1,
                                                                                                     None]


# ----------------------------------------------------------------------------- the checkpoint a run trained


def test_eval_of_a_run_whose_checkpoint_was_replaced_is_refused(finished_run, tmp_path, capsys):
    run = tmp_path / "replaced"
    shutil.copytree(finished_run, run)
    tensors, meta = read_checkpoint(run)
    tensors["head.weight"] = torch.roll(tensors["head.weight"], 1, dims=0)  # same shapes, another run's values
    save_tensors(run / CHECKPOINT, tensors, meta)
    err = error_after_warnings(["eval", "--run", str(run)], capsys)
    assert f"{run / CHECKPOINT} holds other tensors than the run trained" in err
    assert main(["--quiet", "eval", "--run", str(finished_run)]) == 0  # its own checkpoint loads


def test_class_folders_differing_only_in_case_are_warned_about(tmp_path, caplog):
    from lpt.data.sources import folder_classes

    for name in ("Dress", "dress", "shirt"):
        (tmp_path / "train" / name).mkdir(parents=True)
    assert folder_classes(str(tmp_path), "train")[1] == ["Dress", "dress", "shirt"]
    assert "class folders Dress and dress differ only in case" in caplog.text


# ----------------------------------------------------------------------------- what --overwrite deletes


def test_overwrite_refuses_a_run_with_the_users_own_files_naming_them(finished_run, tiny_fmnist, tmp_path, capsys):
    run = tmp_path / "mine"
    shutil.copytree(finished_run, run)
    (run / "my_notes.txt").write_text("what I tried\n")
    (run / "myplots").mkdir()
    (run / "myplots" / "a.png").write_bytes(b"plot")
    before = snapshot(run)
    err = one_line_error(train_into(run, tiny_fmnist, "--overwrite"), capsys)
    assert err.endswith(f"--out {run} holds a finished lpt run and files lpt did not write: my_notes.txt, myplots/; "
                        "move them away or choose a new directory (nothing was deleted)")
    assert snapshot(run) == before


def test_overwrite_deletes_what_lpt_wrote_there_reports_and_leftovers_included(finished_run, tiny_fmnist, tmp_path):
    run = tmp_path / "again"
    shutil.copytree(finished_run, run)
    for name in ("report.html", "report.md", "report_curves.png", "analysis.json", ".metrics.json.x1y2.tmp"):
        (run / name).write_text("old")
    assert main(["--quiet", *train_into(run, tiny_fmnist, "phases=[phase1]", "phase1.epochs=1"), "--overwrite"]) == 0
    assert not (run / "analysis.json").exists() and not (run / ".metrics.json.x1y2.tmp").exists()
    assert (run / "report.html").read_text() != "old"  # the new run's report


# ----------------------------------------------------------------------------- a run that never saved a step


@pytest.fixture
def folder_with_a_bad_image(tmp_path):
    root = tmp_path / "own"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in range(3):
            (root / split / f"class_{c}").mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(
                    root / split / f"class_{c}" / f"{i}.png")
    (root / "train" / "class_1" / "broken.png").write_bytes(b"not a png")
    return root


def test_a_run_stopped_by_a_bad_image_before_its_first_save_is_started_over(folder_with_a_bad_image, tmp_path,
                                                                            capsys):
    root, out = folder_with_a_bad_image, tmp_path / "run"
    argv = ["train", "--config", "folder", f"data.root={root}", "--out", str(out), "phase1.epochs=1",
            "phase2.epochs=1", "phase1.batch_size=4", "phase2.batch_size=4", "data.num_workers=0", "progress=false",
            *TINY_MODEL]
    err = error_after_warnings(argv, capsys)
    assert "broken.png" in err and (out / CONFIG).is_file()  # the run had set up its directory
    err = one_line_error(["train", "--resume", str(out)], capsys)
    assert "nothing to resume" in err and f"lpt train --config {out / CONFIG} --out {out}" in err
    (root / "train" / "class_1" / "broken.png").unlink()
    assert main(["--quiet", *argv]) == 0  # the same command again: no --overwrite needed
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 6


# ----------------------------------------------------------------------------- the lock file


def test_no_lock_file_is_left_after_a_run_nor_after_resuming_a_finished_one(finished_run, tmp_path, capsys):
    run = tmp_path / "done"
    shutil.copytree(finished_run, run)
    assert not (finished_run / LOCK).exists()
    assert "already finished" in one_line_error(["train", "--resume", str(run)], capsys)
    assert not (run / LOCK).exists()


# ----------------------------------------------------------------------------- devices and hub weights


@pytest.mark.parametrize("device, says", [
    ("tpu", "device 'tpu' is not a torch device; expected auto, cpu, cuda, cuda:N or mps"),
    ("cuda", "device 'cuda' was asked for but CUDA is not available on this machine"),
    ("cuda:7", "device 'cuda:7' was asked for but CUDA is not available on this machine"),
])
def test_a_device_this_machine_lacks_is_one_line(finished_run, tiny_fmnist, tmp_path, monkeypatch, capsys, device,
                                                 says):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    assert says in one_line_error(train_into(out, tiny_fmnist, f"device={device}"), capsys)
    assert not out.exists()
    assert says in one_line_error(["--quiet", "eval", "--run", str(finished_run), "--device", device], capsys)


def test_hub_weights_offline_are_one_line_saying_how_to_give_local_weights(tiny_fmnist, tmp_path, monkeypatch,
                                                                           capsys):
    """An own YAML without model.backbone falls back to the hub's ViT-B/16; offline, nothing is downloaded."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    own = tmp_path / "own.yaml"
    own.write_text(f"data:\n  source: fashion_mnist\n  root: {tiny_fmnist}\n")
    err = one_line_error(["train", "--config", str(own), "--out", str(tmp_path / "run")], capsys)
    assert "backbone 'vit_base_patch16_224.augreg_in21k' (model.backbone) needs pretrained weights" in err
    assert "HF_HUB_OFFLINE is set" in err and "model.checkpoint=PATH" in err


def test_an_unreachable_hub_is_found_by_one_connection(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from lpt.model.hub import hub_unreachable

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    reason = hub_unreachable("timm/vit_tiny_patch16_224.augreg_in21k")
    assert reason.startswith("127.0.0.1 cannot be reached (") and "not in the local hub cache" in reason


# ----------------------------------------------------------------------------- smaller traps


def test_predict_refuses_topk_below_one_and_an_existing_out_file(finished_run, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(image)
    assert one_line_error(["predict", "--run", str(finished_run), str(image), "--topk", "0"], capsys).endswith(
        "--topk is 0; expected 1 or more classes per image")
    mine = tmp_path / "mine.csv"
    mine.write_text("my table\n")
    err = one_line_error(["predict", "--run", str(finished_run), str(image), "--out", str(mine)], capsys)
    assert err.endswith(f"--out {mine} already exists; choose another file, or add --overwrite to replace it")
    assert mine.read_text() == "my table\n"
    assert main(["--quiet", "predict", "--run", str(finished_run), str(image), "--out", str(mine), "--overwrite"]) == 0
    assert mine.read_text().startswith("path,class1,score1")


def test_a_batch_above_the_training_images_and_bf16_on_the_cpu_are_said_and_recorded(tiny_fmnist, tmp_path,
                                                                                     caplog):
    out = tmp_path / "run"
    assert main(["--quiet", *train_into(out, tiny_fmnist, "phases=[phase1]", "phase1.epochs=1",
                                        "phase1.batch_size=200", "precision=bf16", "device=cpu")]) == 0
    assert ("phase1.batch_size 200 (x 1 processes) is above the 159 training images: each instance batch holds all "
            "159 while the learning rate is scaled for 200") in caplog.text
    assert "precision bf16 applies on a GPU; this cpu run computes in fp32" in caplog.text
    assert json.loads((out / "run.json").read_text())["precision"] == "fp32"


def test_the_refusal_of_an_interrupted_run_reads_an_interrupted(tmp_path):
    from lpt.config import ConfigError
    from lpt.run.files import CLASSES, RESUME, check_claim

    for name in (CONFIG, CLASSES, RESUME):
        (tmp_path / name).write_text("")
    with pytest.raises(ConfigError, match=f"--out {tmp_path} already holds an interrupted lpt run; continue it"):
        check_claim(tmp_path)
