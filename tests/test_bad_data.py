"""Bad data corpus: every case of docs/bad-data.md built in tmp_path, with the behaviour a user sees."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

from lpt import cli
from lpt.config import ConfigError, DataConfig
from lpt.data import FileImageDataset, build_datasets, build_transform
from lpt.data.check import check_list_file
from lpt.data.datasets import BadImageError
from lpt.utils import log
from tests.conftest import TINY_MODEL

S = 8  # crop side of the conversion checks


def _save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _palette() -> Image.Image:
    img = Image.new("P", (S, S), 1)
    img.putpalette([0, 0, 0, 50, 60, 70] + [0] * 762)
    return img


# name -> (image writer, expected RGB of every pixel, or None where lossy)
READABLE = {
    "rgb.png": (lambda p: _save(p, Image.new("RGB", (S, S), (200, 10, 30))), (200, 10, 30)),
    "gray.png": (lambda p: _save(p, Image.new("L", (S, S), 100)), (100, 100, 100)),
    "palette.png": (lambda p: _save(p, _palette(), transparency=0), (50, 60, 70)),
    "rgba.png": (lambda p: _save(p, Image.new("RGBA", (S, S), (10, 20, 30, 0))), (10, 20, 30)),
    "cmyk.jpg": (lambda p: _save(p, Image.new("CMYK", (S, S), (0, 0, 0, 0)), quality=95), (255, 255, 255)),
    "sixteen.png": (lambda p: _save(p, Image.new("I;16", (S, S), 65535)), (255, 255, 255)),
    "sixteen_mid.png": (lambda p: _save(p, Image.new("I;16", (S, S), 257 * 40)), (40, 40, 40)),
    "caf\u00e9 \u6771\u4eac/\u00fcber 1.png": (lambda p: _save(p, Image.new("RGB", (S, S), (1, 2, 3))), (1, 2, 3)),
}


def _truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # a valid header, half the scan data
    return path


UNREADABLE = {
    "truncated.jpg": _truncated_jpeg,
    "corrupt.png": lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
    "notes.jpg": lambda p: p.write_text("this is a text file, not a JPEG\n"),
}


@pytest.fixture
def corpus(tmp_path) -> Path:
    """tmp_path/img holding every readable and unreadable case."""
    img = tmp_path / "img"
    img.mkdir()
    for name, (write, _) in READABLE.items():
        write(img / name)
    for name, write in UNREADABLE.items():
        write(img / name)
    return img


def _eval_tensor_dataset(root: Path, names: list[str]) -> FileImageDataset:
    cfg = DataConfig(img_size=S, test_resize=S, train_aug="none", mean=[0.0] * 3, std=[1.0] * 3)
    return FileImageDataset([str(root / n) for n in names], [0] * len(names), ["a"], build_transform(cfg, False))


# ----------------------------------------------------------------------------- single images


@pytest.mark.parametrize("name", list(READABLE))
def test_every_mode_becomes_an_rgb_tensor(corpus, name):
    x, _ = _eval_tensor_dataset(corpus, [name])[0]
    assert x.shape == (3, S, S) and x.dtype == torch.float32
    expected = torch.tensor(READABLE[name][1], dtype=torch.float32) / 255
    tol = 3 / 255 if name.endswith(".jpg") else 1e-6  # JPEG is lossy
    torch.testing.assert_close(x[:, S // 2, S // 2], expected, atol=tol, rtol=0)


@pytest.mark.parametrize("name", [*UNREADABLE, "missing.png"])
def test_unreadable_image_raises_one_line_naming_the_file(corpus, name):
    dataset = _eval_tensor_dataset(corpus, ["rgb.png", name])
    dataset[0]
    with pytest.raises(BadImageError) as info:
        dataset[1]
    message = str(info.value)
    assert isinstance(info.value, OSError)
    assert message.startswith(f"{corpus / name}: cannot read image (") and "\n" not in message
    assert message.endswith("; to drop unreadable images and list them, run with --skip-bad-images "
                            "(data.skip_bad_images=true)")


def test_truncated_images_stay_errors_after_importing_everything(corpus):
    import timm  # noqa: F401 - these must not switch PIL to padding truncated files with grey
    import torchvision  # noqa: F401

    import lpt.run.train  # noqa: F401

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(BadImageError, match=r"truncated.jpg: cannot read image \(.*truncated"):
        _eval_tensor_dataset(corpus, ["truncated.jpg"])[0]


def test_worker_wrapped_error_prints_as_one_line(corpus):
    loader = DataLoader(_eval_tensor_dataset(corpus, ["corrupt.png"]), batch_size=1, num_workers=1)
    with pytest.raises(OSError) as info:
        next(iter(loader))
    assert "\n" in str(info.value)  # the worker's traceback ...
    assert cli._one_line(info.value).startswith(f"{corpus / 'corrupt.png'}: cannot read image (")  # ... cut to one line


# ----------------------------------------------------------------------------- list files and classes


def _lists(tmp_path: Path, train: list[str], test: list[str]) -> list[str]:
    (tmp_path / "train.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
    (tmp_path / "test.txt").write_text("\n".join(test) + "\n", encoding="utf-8")
    return [f"data.root={tmp_path / 'img'}", f"data.train_list={tmp_path / 'train.txt'}",
            f"data.test_list={tmp_path / 'test.txt'}", "data.imbalance_ratio=1", "data.max_per_class=0"]


def _cfg(overrides: list[str], **kw) -> DataConfig:
    values = dict(o.split("=", 1) for o in overrides)
    return DataConfig(source="list", root=values["data.root"], train_list=values["data.train_list"],
                      test_list=values["data.test_list"], img_size=S, test_resize=S, train_aug="none",
                      num_workers=0, **kw)


@pytest.mark.parametrize("train, test, message", [
    ([], ["rgb.png 0"], r"train.txt: empty list file"),
    (["rgb.png 0", "gray.png"], ["rgb.png 0"], r"train.txt:2: expected 'relative/path label'"),
    (["rgb.png 0", "gray.png one"], ["rgb.png 0"], r"train.txt:2: label 'one' is not an integer"),
    (["rgb.png -1"], ["rgb.png 0"], r"train.txt:1: label -1 is negative"),
    (["rgb.png 0", "gray.png 1"], ["rgb.png 0", "gray.png 2"],
     r"test.txt:2: label 2 is outside \[0, 2\), the 2 classes of the training list"),
    (["rgb.png 0", "gray.png 2"], ["rgb.png 1"],
     (r"train.txt:2: label 2 is outside \[0, 1\), the labels with training images: no line has label 1 "
      r"\(1 line has a label above it\)$")),
    (["rgb.png 0", "gray.png 2", "rgb.png 3"], ["rgb.png 0"],
     r"train.txt:2: label 2 is outside \[0, 1\), .* no line has label 1 \(2 lines have labels above it\)$"),
    (["rgb.png 0", "missing.png 0"], ["rgb.png 0"], r"train.txt:2: image .*missing.png not found"),
])
def test_list_problems_name_file_and_line(tmp_path, corpus, train, test, message):
    with pytest.raises(ConfigError, match=message):
        build_datasets(_cfg(_lists(tmp_path, train, test)))


def test_a_training_label_outside_the_classes_names_its_line(tmp_path, corpus, capsys):
    train = [f"rgb.png {c}" for c in (0, 1, 2, 0, 1)] + ["gray.png 4", "rgb.png 2"]  # 4: a typo for 3
    overrides = _lists(tmp_path, train, ["rgb.png 0", "gray.png 2", "rgb.png 3"])
    assert cli.main(["train", "--config", "demo", "data.source=list", *overrides]) == 2
    assert capsys.readouterr().err == (
        f"lpt train: error: {tmp_path / 'train.txt'}:6: label 4 is outside [0, 3), the labels with training "
        "images: no line has label 3 (1 line has a label above it)\n")
    (tmp_path / "classnames.txt").write_text("a\nb\nc\nd\n", encoding="utf-8")  # 4 classes named
    with pytest.raises(ConfigError, match=rf"train.txt:6: label 4 is outside \[0, 4\), the 4 classes named in "
                                          rf"{tmp_path / 'classnames.txt'}$"):
        build_datasets(_cfg(overrides))


def test_duplicate_lines_are_kept_with_one_warning(tmp_path, corpus):
    # a handler of our own: caplog's capture depends on whether an earlier test set up the CLI's logging
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    log.addHandler(handler)
    train = ["rgb.png 0", "gray.png 1", "rgb.png 0", "rgb.png 0", "gray.png 0"]
    try:
        splits = build_datasets(_cfg(_lists(tmp_path, train, ["rgb.png 0"])))
    finally:
        log.removeHandler(handler)
    assert splits.train_counts == [4, 1]  # every line is a sample
    warnings = [r.getMessage() for r in records if "train.txt" in r.getMessage()]
    assert len(warnings) == 2
    assert "train.txt:3: repeats line 1 (2 repeated lines in all)" in warnings[0]
    assert "train.txt:5: image" in warnings[1] and "labelled 0 here and 1 on line 2" in warnings[1]


def test_skip_bad_images_drops_them_with_their_list_lines(tmp_path, corpus):
    train = ["rgb.png 0", "truncated.jpg 0", "gray.png 1", "notes.jpg 1", "missing.png 0"]
    splits = build_datasets(_cfg(_lists(tmp_path, train, ["corrupt.png 0", "palette.png 1"]), skip_bad_images=True))
    assert [Path(p).name for p in splits.train.paths] == ["rgb.png", "gray.png"]
    assert splits.train_counts == [1, 1] and splits.test.targets == [1]
    lines = [b.line() for b in splits.bad_images]
    assert [line.split(": ")[0].rsplit("/", 1)[-1] for line in lines] == [
        "train.txt:2", "train.txt:4", "train.txt:5", "test.txt:1"]
    assert all("cannot read image" in line for line in lines) and "file not found" in lines[2]


def test_skipping_that_empties_a_class_names_it(tmp_path, corpus):
    overrides = _lists(tmp_path, ["rgb.png 0", "corrupt.png 1"], ["rgb.png 0"])
    with pytest.raises(ConfigError, match=r"class 1 \('1'\) has no training images once its 1 unreadable"):
        build_datasets(_cfg(overrides, skip_bad_images=True))


# ----------------------------------------------------------------------------- lpt data-check


BAD_TRAIN = ["rgb.png 0", "gray.png 1", "caf\u00e9 \u6771\u4eac/\u00fcber 1.png 1", "truncated.jpg 0",
             "cmyk.jpg 0", "notes.jpg 1", "sixteen.png 1"]


def test_data_check_lists_every_bad_image_and_fails(tmp_path, corpus, capsys):
    overrides = _lists(tmp_path, BAD_TRAIN + ["missing.png 0"], ["palette.png 0", "corrupt.png 1"])
    assert cli.main(["--quiet", "data-check", "--config", "demo", "data.source=list", *overrides]) == 1
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    assert [line.split(": ")[0] for line in out[:-1]] == [  # all four, not the first alone
        f"{tmp_path / 'train.txt'}:4", f"{tmp_path / 'train.txt'}:6", f"{tmp_path / 'train.txt'}:8",
        f"{tmp_path / 'test.txt'}:2"]
    assert out[0].startswith(f"{tmp_path / 'train.txt'}:4: {corpus / 'truncated.jpg'}: cannot read image (")
    assert "file not found" in out[2] and not captured.err
    assert out[-1] == ("checked 10 images (train 8, test 2): 4 unreadable; to drop unreadable images and list them, "
                       "run with --skip-bad-images (data.skip_bad_images=true)")


def test_data_check_skip_lists_every_bad_image(tmp_path, corpus, capsys):
    overrides = _lists(tmp_path, BAD_TRAIN + ["missing.png 0"], ["palette.png 0", "corrupt.png 1"])
    argv = ["data-check", "--config", "demo", "--skip-bad-images", "data.source=list", *overrides]
    assert cli.main(["--quiet", *argv]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert [line.split(": ")[0] for line in out[:-1]] == [
        f"{tmp_path / 'train.txt'}:4", f"{tmp_path / 'train.txt'}:6", f"{tmp_path / 'train.txt'}:8",
        f"{tmp_path / 'test.txt'}:2"]
    assert out[-1] == "checked 10 images (train 8, test 2): 4 unreadable, skipped"


def test_data_check_on_a_list_file(tmp_path, corpus, capsys):
    (tmp_path / "all.txt").write_text("rgb.png 0\nnotes.jpg 0\ngray.png 1\n", encoding="utf-8")
    argv = ["--quiet", "data-check", "--list", str(tmp_path / "all.txt"), "--root", str(corpus)]
    assert cli.main(argv) == 1
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'all.txt'}:2: {corpus / 'notes.jpg'}: cannot read image")
    report = check_list_file(str(tmp_path / "all.txt"), str(corpus), skip_bad_images=True)
    assert [b.origin for b in report.bad] == [f"{tmp_path / 'all.txt'}:2"]
    assert report.summary() == "checked 3 images (list 3): 1 unreadable, skipped"


# ----------------------------------------------------------------------------- training runs


def _tiny_list_run(tmp_path: Path, bad: list[str]) -> list[str]:
    """Three classes of four 28x28 PNGs each, plus ``bad`` (names in the corpus) in the training list."""
    img = tmp_path / "img"
    rng = np.random.default_rng(0)
    train, test = [], []
    for c in range(3):
        for i in range(4):
            pixels = rng.integers(0, 60, (28, 28), dtype=np.uint8)
            pixels[8 * c: 8 * c + 6] += 150
            _save(img / f"c{c}" / f"{i}.png", Image.fromarray(pixels))
            (test if i == 3 else train).append(f"c{c}/{i}.png {c}")
    return [*_lists(tmp_path, train[:4] + [f"{b} {k % 3}" for k, b in enumerate(bad)] + train[4:], test),
            "data.source=list", "data.img_size=28", "data.test_resize=28", "data.num_workers=0", *TINY_MODEL,
            "phase1.epochs=1", "phase2.epochs=1",
            "phase1.batch_size=4", "phase2.batch_size=4", "eval_batch_size=8", "progress=false"]


def test_train_with_skip_bad_images_lists_them_in_the_run(tmp_path, corpus, capsys):
    overrides = _tiny_list_run(tmp_path, ["truncated.jpg", "corrupt.png", "missing.png"])
    out = tmp_path / "run"
    assert cli.main(["--quiet", "train", "--config", "demo", "--out", str(out), "--skip-bad-images", *overrides]) == 0
    listed = (out / "bad_images.txt").read_text(encoding="utf-8").splitlines()
    assert [line.split(": ")[0] for line in listed] == [f"{tmp_path / 'train.txt'}:{n}" for n in (5, 6, 7)]
    assert "file not found" in listed[2]
    assert (out / "metrics.json").is_file()


def test_train_without_skip_stops_at_the_bad_image(tmp_path, corpus, capsys):
    overrides = _tiny_list_run(tmp_path, ["notes.jpg"])
    assert cli.main(["--quiet", "train", "--config", "demo", "--out", str(tmp_path / "run"), *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"lpt train: error: {corpus / 'notes.jpg'}: cannot read image (")
    assert err[-1].endswith("); to drop unreadable images and list them, run with --skip-bad-images "
                            "(data.skip_bad_images=true)")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_data_check_and_data_stats_count_gifs_and_say_what_a_folder_listing_skipped(tmp_path, capsys):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8))
    for split in ("train", "val"):
        for cls in ("ant", "bee"):
            (tmp_path / split / cls).mkdir(parents=True)
            image.save(tmp_path / split / cls / "1.png")
        (tmp_path / split / ".ipynb_checkpoints").mkdir()
        image.save(tmp_path / split / ".ipynb_checkpoints" / "1.png")
        (tmp_path / split / "bee" / "._1.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    image.save(tmp_path / "train" / "ant" / "2.gif")
    capsys.readouterr()
    assert cli.main(["data-check", "--config", "folder", f"data.root={tmp_path}"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["checked 5 images (train 3, test 2): all readable"]  # the GIF among them
    for split in ("train", "val"):
        skipped = f"{tmp_path / split}: skipped 2 hidden or macOS entries (.ipynb_checkpoints, bee/._1.png)"
        assert skipped in captured.err
    plots = tmp_path / "plots"
    assert cli.main(["data-stats", "folder", f"data.root={tmp_path}", "--out", str(plots)]) == 0
    captured = capsys.readouterr()
    assert "classes: 2\nimages: 3\n" in captured.out
    assert f"{tmp_path / 'train'}: skipped 2 hidden or macOS entries" in captured.err
