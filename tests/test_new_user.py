"""What a new user hit on their own data: nothing already written is lost, and every mistake is one line."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import lpt
from lpt.cli import main
from lpt.run import predict as predict_module
from lpt.utils import usable_cores
from tests.conftest import tiny_run_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_fmnist):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["--quiet", "train", "--config", "demo", "--out", str(out), *tiny_run_overrides(tiny_fmnist)]) == 0
    return out


def snapshot(folder):
    """Every file below ``folder`` (hidden ones too) with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(argv, capsys):
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in captured.err + captured.out, err
    return err


def train_into(out, root, *extra):
    return ["train", "--config", "demo", "--out", str(out), *tiny_run_overrides(root), *extra]


# ----------------------------------------------------------------------------- --out never destroys


def test_a_finished_run_is_refused_and_left_byte_identical(finished_run, tiny_fmnist, tmp_path, capsys):
    run = tmp_path / "finished"
    shutil.copytree(finished_run, run)
    (run / "analysis.json").write_text("{}")  # what a later `lpt analyze` leaves
    before = snapshot(run)
    err = one_line_error(train_into(run, tiny_fmnist), capsys)
    assert str(run) in err and "finished lpt run" in err and "--overwrite" in err
    assert snapshot(run) == before


def test_an_interrupted_run_is_refused_pointing_to_resume(finished_run, tiny_fmnist, tmp_path, capsys):
    run = tmp_path / "interrupted"
    shutil.copytree(finished_run, run)
    (run / "metrics.json").unlink()  # a run stopped before its end has a resumable state, no results
    (run / "run.json").unlink()
    before = snapshot(run)
    err = one_line_error(train_into(run, tiny_fmnist), capsys)
    assert "interrupted lpt run" in err and f"lpt train --resume {run}" in err
    assert snapshot(run) == before


def test_a_folder_that_is_not_a_run_is_refused_even_with_overwrite(tiny_fmnist, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own config\n")
    (mine / "report.html").write_text("<p>my report</p>")
    before = snapshot(mine)
    for extra in ([], ["--overwrite"]):
        err = one_line_error(train_into(mine, tiny_fmnist) + extra, capsys)
        assert str(mine) in err and "not an lpt run" in err
        assert snapshot(mine) == before  # not even a lock file


def test_a_file_as_out_is_refused_naming_it(tiny_fmnist, tmp_path, capsys):
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes\n")
    for extra in ([], ["--overwrite"]):
        err = one_line_error(train_into(mine, tiny_fmnist) + extra, capsys)
        assert err.endswith(f"--out {mine} is a file, not a folder; choose a new or empty directory (nothing was "
                            "written)")
        assert mine.read_text() == "my notes\n"


def test_overwrite_deletes_the_earlier_run_first(finished_run, tiny_fmnist, tmp_path):
    run = tmp_path / "again"
    shutil.copytree(finished_run, run)
    (run / "analysis.json").write_text("{}")
    (run / "analysis_lda.png").write_bytes(b"old plot")
    overrides = ["phases=[phase1]", "phase1.epochs=1"]
    assert main(["--quiet", *train_into(run, tiny_fmnist, *overrides), "--overwrite"]) == 0
    assert not (run / "analysis.json").exists() and not (run / "analysis_lda.png").exists()
    assert json.loads((run / "run.json").read_text())["phases"].keys() == {"phase1"}
    assert lpt.load_run(run).model.phase == 1


def test_a_failed_start_leaves_nothing_behind(tmp_path, capsys):
    new = tmp_path / "new"
    one_line_error(["train", "--config", "demo", "--out", str(new), f"data.root={tmp_path / 'nowhere'}"], capsys)
    assert not new.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(["train", "--config", "demo", "--out", str(empty), f"data.root={tmp_path / 'nowhere'}"], capsys)
    assert empty.is_dir() and not any(empty.iterdir())


# ----------------------------------------------------------------------------- one-line errors, before any data


def test_split_block_not_below_the_depth_is_refused_before_any_data_loads(tmp_path, capsys):
    # the demo backbone has 6 blocks; the data root does not exist, so reaching the data would say so instead
    err = one_line_error(["train", "--config", "demo", "--out", str(tmp_path / "r"), "model.split_block=6",
                          f"data.root={tmp_path / 'nowhere'}"], capsys)
    assert "'model.split_block' is 6" in err and "0..5" in err and "demo_vit_glyphs" in err
    assert not (tmp_path / "r").exists()


def test_img_size_other_than_the_backbones_is_refused_before_any_data_loads(tmp_path, capsys):
    err = one_line_error(["train", "--config", "demo", "data.img_size=32", "data.test_resize=32",
                          f"data.root={tmp_path / 'nowhere'}"], capsys)
    assert "'data.img_size' is 32" in err and "28x28" in err


@pytest.mark.parametrize("command", ["report", "compare"])
def test_report_and_compare_on_a_truncated_checkpoint_are_one_line(finished_run, tmp_path, capsys, command):
    run = tmp_path / "truncated"
    shutil.copytree(finished_run, run)
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    err = one_line_error([command, str(run)], capsys)
    assert "model.safetensors" in err


# ----------------------------------------------------------------------------- the Python API


def test_run_predict_equals_lpt_predict(finished_run, tmp_path, capsys):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(np.full((28, 28), 60 * i, dtype=np.uint8)).save(paths[-1])
    run = lpt.load_run(finished_run)
    probs = run.predict(paths)
    assert probs.shape == (3, 10) and torch.allclose(probs.sum(1), torch.ones(3))
    by_hand = (run.config.loss.scale * run.model(torch.stack([run.transform(Image.open(p)) for p in paths])))
    torch.testing.assert_close(probs, by_hand.softmax(1))
    torch.testing.assert_close(run.predict([Image.open(p) for p in paths]), probs)
    capsys.readouterr()
    assert main(["predict", "--run", str(finished_run), *map(str, paths), "--topk", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    for line, p in zip(printed, probs):
        assert line.endswith(f"{run.classes[int(p.argmax())]} ({float(p.max()):.3f})")


def test_run_predict_refuses_what_the_model_would_misread(finished_run):
    run = lpt.load_run(finished_run)
    with pytest.raises(lpt.config.ConfigError, match=r"torch.uint8; the model takes normalised float images"):
        run.predict(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(lpt.config.ConfigError, match=r"shape \(2, 3, 32, 32\); the model takes \[N, 3, 28, 28\]"):
        run.predict(torch.zeros(2, 3, 32, 32))


def test_run_predict_decodes_files_in_loader_processes_in_order(finished_run, tmp_path, capsys, monkeypatch):
    folder, paths = tmp_path / "imgs", []
    folder.mkdir()
    for i in range(7):  # three batches of 3
        paths.append(folder / f"img{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (28, 28), dtype=np.uint8)).save(paths[-1])
    run = lpt.load_run(finished_run)
    alone = run.predict(paths, batch_size=3)
    started, real = [], predict_module.DataLoader

    def loader(*args, **kwargs):  # records how many loader processes each prediction starts
        started.append(kwargs["num_workers"])
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_module, "DataLoader", loader)
    assert torch.equal(run.predict(paths, batch_size=3, workers=2), alone)
    run.predict(paths[:3], batch_size=3, workers=2)  # one batch: decoded here
    run.predict(paths, batch_size=3, workers=8)  # no more processes than batches (3) and cores
    assert started == [2, 0, min(3, usable_cores())]
    monkeypatch.undo()
    with pytest.raises(lpt.config.ConfigError, match="cannot predict on a int; give image paths, PIL images"):
        run.predict([paths[0], 7])
    paths[3].write_bytes(b"not an image")
    for i in range(7, 65):  # more than lpt predict's batch of 64: its run's loader processes decode them
        shutil.copy(paths[0], folder / f"img{i}.png")
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    config = copy / "config.yaml"
    assert "\n  num_workers: 0\n" in config.read_text()
    config.write_text(config.read_text().replace("\n  num_workers: 0\n", "\n  num_workers: 2\n"))
    capsys.readouterr()
    assert main(["predict", "--run", str(copy), str(folder)]) == 2
    err = capsys.readouterr().err  # the random backbone's warning, then the error in one line
    assert "Traceback" not in err and err.splitlines()[-1].startswith(f"lpt predict: error: {paths[3]}: cannot read")
    assert main(["predict", "--run", str(copy), str(folder), "--skip-bad-images", "--topk", "1"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 64 and f"{paths[3]}:" not in captured.out  # the 64 readable ones
    assert f"lpt WARNING skipped {paths[3]}: cannot read image (" in captured.err


def test_run_transform_and_predict_take_any_pil_image_one_path_and_refuse_none(finished_run, tmp_path, capsys):
    run = lpt.load_run(finished_run)
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 36, 3), dtype=np.uint8))
    for image in (rgb.convert("RGBA"), rgb.convert("CMYK"), rgb.convert("P"), rgb.convert("L")):
        assert torch.equal(run.transform(image), run.transform(image.convert("RGB"))), image.mode
    # a photo stored sideways (EXIF orientation 6), as a PIL image and as a file: read as the image it shows
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    shown = Image.open(tmp_path / "sideways.jpg")
    upright = Image.fromarray(np.array(shown.transpose(Image.Transpose.ROTATE_270)))  # exif_transpose's turn, no EXIF
    upright.save(tmp_path / "upright.png")
    assert torch.equal(run.transform(shown), run.transform(upright))
    expected = run.predict([tmp_path / "upright.png"])
    torch.testing.assert_close(run.predict([shown]), expected)
    torch.testing.assert_close(run.predict(str(tmp_path / "sideways.jpg")), expected)  # one path, not its letters
    torch.testing.assert_close(run.predict(tmp_path / "sideways.jpg"), expected)
    with pytest.raises(lpt.config.ConfigError, match=r"^no images to predict: give image paths"):
        run.predict([])
    # lpt predict on a folder: hidden entries left out, and said
    (tmp_path / ".ipynb_checkpoints").mkdir()
    upright.save(tmp_path / ".ipynb_checkpoints" / "upright.png")
    (tmp_path / "._upright.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    capsys.readouterr()
    assert main(["predict", "--run", str(finished_run), str(tmp_path), "--topk", "1"]) == 0
    captured = capsys.readouterr()
    assert [line.split(":")[0] for line in captured.out.splitlines()] == [str(tmp_path / "sideways.jpg"),
                                                                          str(tmp_path / "upright.png")]
    assert "skipped 2 hidden or macOS entries (.ipynb_checkpoints, ._upright.png)" in captured.err


def test_the_run_records_its_evaluation_transform(finished_run):
    run = lpt.load_run(finished_run)
    recorded = json.loads((finished_run / "run.json").read_text())["eval_transform"]
    assert recorded == str(run.transform.transforms[-1]) and "CenterCrop(size=(28, 28))" in recorded


def test_match_on_a_phase1_model_is_refused(finished_run):
    model = lpt.load_run(finished_run).model
    model.set_phase(1)
    with pytest.raises(ValueError, match="phase-2 model; this one is in phase 1"):
        model.match(torch.randn(2, 3, 28, 28))


def test_config_threads_set_torch_threads_for_training(tiny_fmnist, tmp_path):
    torch.set_num_threads(2)
    cfg = lpt.config.load_config("demo", [*tiny_run_overrides(tiny_fmnist), "threads=1", "phases=[phase1]",
                                          "phase1.epochs=1"])
    lpt.train(cfg, tmp_path / "run")
    assert torch.get_num_threads() == 1
