"""Tests of lpt.data: IDX files, sources, long-tail profiles, transforms, samplers, train stream."""

from __future__ import annotations

import gzip
import json
import math
import shutil
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lpt.config import ConfigError, DataConfig, load_config
from lpt.data import (
    ArrayImageDataset, ClassBalancedSampler, InstanceSampler, build_datasets, build_train_stream, build_transform,
    class_counts, longtail_counts, longtail_indices, read_list_file,
)
from lpt.data.build import build_train_labels
from lpt.data.datasets import load_rgb
from lpt.data.folders import IMAGE_EXTENSIONS
from lpt.data.idx import read_idx
from lpt.data.sources import FASHION_MNIST_CLASSES, read_class_names

SPLITS = Path(__file__).resolve().parents[2] / "shared" / "splits"


# ----------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write an IDX file (gzipped when the name ends in .gz); uint8 or int32 arrays."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_fashion(root: Path, per_class: int, size: int = 6) -> np.ndarray:
    """Tiny Fashion-MNIST files: training image i is filled with value i % 256 (its id); labels i % 10.

    Images gzipped, labels raw, to exercise both. Returns the training labels.
    """
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 10 * per_class), ("t10k", 10)):
        images = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None], (n, size, size)).copy()
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    return np.arange(10 * per_class) % 10


def png(path: Path, color=(10, 20, 30), size=(12, 9)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def small_cfg(**kw) -> DataConfig:
    base = dict(img_size=8, train_aug="none", mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], num_workers=0)
    values = {**base, **kw}
    return DataConfig(**{"test_resize": values["img_size"], **values})  # no evaluation margin


def make_list_dataset(tmp_path: Path, train_lines: list[str], test_lines: list[str]) -> DataConfig:
    (tmp_path / "train.txt").write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    (tmp_path / "test.txt").write_text("\n".join(test_lines) + "\n", encoding="utf-8")
    return small_cfg(source="list", root=str(tmp_path / "img"), train_list=str(tmp_path / "train.txt"),
                     test_list=str(tmp_path / "test.txt"))


def pixel_id(img: Image.Image) -> int:
    """A transform returning the image's first pixel value (the image's id in the tests)."""
    return int(np.asarray(img)[0, 0, 0])


def id_dataset(n: int, num_classes: int = 5) -> ArrayImageDataset:
    """n 2x2 images whose pixel value is their index, labels i % num_classes."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, 2, 2)).copy()
    return ArrayImageDataset(images, [i % num_classes for i in range(n)], [str(c) for c in range(num_classes)],
                             pixel_id)


def interleave(shards: list[list[int]]) -> list[int]:
    merged = [None] * sum(len(s) for s in shards)
    for rank, shard in enumerate(shards):
        merged[rank::len(shards)] = shard
    return merged


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip_uint8(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, size=(4, 3, 5), dtype=np.uint8)
    out = read_idx(write_idx(tmp_path / name, images))
    assert out.dtype == np.uint8 and out.shape == (4, 3, 5)
    np.testing.assert_array_equal(out, images)


def test_idx_round_trip_int32_big_endian(tmp_path):
    values = np.array([0, 1, -2, 70000], dtype=np.int32)
    out = read_idx(write_idx(tmp_path / "v.gz", values))
    assert out.tolist() == [0, 1, -2, 70000]


def test_idx_bad_magic_names_file(tmp_path):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x01" + bytes(8))
    with pytest.raises(ConfigError, match=r"bad-idx3-ubyte: bad IDX magic"):
        read_idx(path)


def test_idx_truncated_names_file(tmp_path):
    path = write_idx(tmp_path / "short-idx3-ubyte", np.zeros((3, 4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ConfigError, match=r"short-idx3-ubyte: 59 bytes, expected 64 for an IDX array of shape"):
        read_idx(path)


def test_idx_corrupt_gzip_names_file(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x02ab")[:-6])
    with pytest.raises(ConfigError, match=r"x-idx1-ubyte.gz: cannot read IDX file"):
        read_idx(path)


# ----------------------------------------------------------------------------- Fashion-MNIST, CIFAR-100


def test_fashion_mnist_from_idx_files(tmp_path):
    write_fashion(tmp_path / "fm", per_class=3)
    splits = build_datasets(small_cfg(root=str(tmp_path / "fm"), img_size=6))
    assert splits.classes == FASHION_MNIST_CLASSES and splits.num_classes == 10
    assert len(splits.train) == 30 and len(splits.test) == 10
    assert splits.train_counts == [3] * 10
    x, y = splits.train[13]
    assert y == 3 and x.shape == (3, 6, 6) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.full((3, 6, 6), 13 / 255))  # grey made RGB, scaled to [0, 1]


def test_fashion_mnist_missing_files_explains_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"not found in .*nowhere; run `apt-get install dataset-fashion-mnist` "
                                          r"or set data.download=true"):
        build_datasets(small_cfg(root=str(tmp_path / "nowhere")))


def test_cifar100_missing_names_expected_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"cifar-100-python"):
        build_datasets(small_cfg(source="cifar100", root=str(tmp_path)))


def test_unknown_source_lists_valid_names():
    with pytest.raises(ConfigError, match=r"'mnist'; expected one of fashion_mnist, cifar100, list, folder"):
        build_datasets(small_cfg(source="mnist"))


# ----------------------------------------------------------------------------- long tail


def test_longtail_counts_cifar100_ratio100():
    counts = longtail_counts(100, 500, 100)
    assert counts[0] == 500 and counts[-1] == 5 and sum(counts) == 10_847
    assert counts == sorted(counts, reverse=True)


@pytest.mark.parametrize("ratio, total, last", [(10, 19_573, 50), (50, 12_608, 10), (100, 10_847, 5), (200, 9_502, 2)])
def test_longtail_counts_other_ratios(ratio, total, last):
    counts = longtail_counts(100, 500, ratio)
    assert counts == [int(500 * ratio ** (-i / 99)) for i in range(100)]
    assert sum(counts) == total and counts[-1] == last


def ldam_indices(targets, counts, seed):
    """LDAM-DRW's IMBALANCECIFAR gen_imbalanced_data, on numpy's global random state."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        targets_np = np.array(targets, dtype=np.int64)
        kept = []
        for the_class, the_img_num in zip(np.unique(targets_np), counts):
            idx = np.where(targets_np == the_class)[0]
            np.random.shuffle(idx)
            kept.extend(idx[:the_img_num].tolist())
        return kept
    finally:
        np.random.set_state(state)


@pytest.mark.parametrize("seed", [0, 7])
def test_longtail_indices_match_ldam(seed):
    targets = np.random.default_rng(1).permutation(np.arange(600) % 20).tolist()
    counts = longtail_counts(20, 30, 10)
    kept = longtail_indices(targets, counts, seed)
    assert kept == ldam_indices(targets, counts, seed)
    assert kept == longtail_indices(targets, counts, seed)  # deterministic
    assert kept != longtail_indices(targets, counts, seed + 1)
    assert class_counts([targets[i] for i in kept], 20) == counts


def test_longtail_indices_class_too_small():
    with pytest.raises(ConfigError, match=r"class 1 has 2 images; the long-tail profile asks for 3"):
        longtail_indices([0, 0, 0, 1, 1], [3, 3])


def test_build_applies_longtail_profile(tmp_path):
    targets = write_fashion(tmp_path / "fm", per_class=10)
    splits = build_datasets(small_cfg(root=str(tmp_path / "fm"), img_size=6, imbalance_ratio=10, subsample_seed=3))
    expected = [int(10 * 10 ** (-i / 9)) for i in range(10)]
    assert splits.train_counts == expected and len(splits.train) == sum(expected)
    kept = ldam_indices(targets.tolist(), expected, 3)
    assert splits.train.targets == [targets[i] for i in kept]
    ids = [round(float(splits.train[j][0][0, 0, 0]) * 255) for j in range(len(kept))]
    assert ids == kept  # images and labels stayed together
    assert len(splits.test) == 10  # the evaluation set is never subsampled


def test_build_rejects_class_emptied_by_profile(tmp_path):
    # int(5 * 10 ** (-i / 9)) is 0 from class 7 on
    write_fashion(tmp_path / "fm", per_class=10)
    cfg = small_cfg(root=str(tmp_path / "fm"), img_size=6, imbalance_ratio=10, max_per_class=5)
    with pytest.raises(ConfigError, match=r"class 7 \('Sneaker'\) has no training images \(and 2 more classes\)"):
        build_datasets(cfg)


# ----------------------------------------------------------------------------- list files


def test_list_source_with_spaces_and_non_ascii(tmp_path):
    png(tmp_path / "img" / "caf\u00e9 bar" / "\u00fcber 1.png", (200, 0, 0))
    png(tmp_path / "img" / "\u6771\u4eac" / "b.png", (0, 200, 0), size=(5, 20))
    cfg = make_list_dataset(tmp_path, ["caf\u00e9 bar/\u00fcber 1.png  0", "", "\u6771\u4eac/b.png\t1"],
                            ["\u6771\u4eac/b.png 1"])
    (tmp_path / "classnames.txt").write_text("cafe_bar Cafe bar\ntokyo Tokyo\n", encoding="utf-8")
    splits = build_datasets(cfg)
    assert splits.classes == ["cafe_bar", "tokyo"] and splits.train_counts == [1, 1]
    x, y = splits.train[0]
    assert y == 0 and x.shape == (3, 8, 8)
    torch.testing.assert_close(x[:, 4, 4], torch.tensor([200 / 255, 0.0, 0.0]))
    assert splits.test.targets == [1]


def test_read_list_file_joins_root(tmp_path):
    png(tmp_path / "a b" / "c.png")
    (tmp_path / "l.txt").write_text("a b/c.png 4\n")
    assert read_list_file(tmp_path / "l.txt", root=tmp_path) == ([str(tmp_path / "a b" / "c.png")], [4])
    assert read_list_file(tmp_path / "l.txt", check_files=False) == (["a b/c.png"], [4])


@pytest.mark.parametrize("lines, line, message", [
    (["a.png 0", "a.png"], 2, "expected 'relative/path label'"),
    (["a.png 0", "", "a.png 1.5"], 3, "label '1.5' is not an integer"),
    (["a.png x"], 1, "label 'x' is not an integer"),
    (["a.png -1"], 1, "label -1 is negative"),
    (["a.png 0", "missing.png 0"], 2, "image .*missing.png not found"),
])
def test_list_file_errors_name_file_and_line(tmp_path, lines, line, message):
    png(tmp_path / "a.png")
    path = tmp_path / "split.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=rf"split.txt:{line}: {message}"):
        read_list_file(path, root=tmp_path)


def test_list_file_empty(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(ConfigError, match=r"empty.txt: empty list file"):
        read_list_file(tmp_path / "empty.txt")


def test_test_list_label_outside_training_classes(tmp_path):
    png(tmp_path / "img" / "a.png")
    cfg = make_list_dataset(tmp_path, ["a.png 0", "a.png 1", "a.png 2"], ["a.png 1", "a.png 3"])
    with pytest.raises(ConfigError, match=r"test.txt:2: label 3 is outside \[0, 3\)"):
        build_datasets(cfg)


def test_list_class_without_training_images(tmp_path):
    png(tmp_path / "img" / "a.png")
    cfg = make_list_dataset(tmp_path, ["a.png 0", "a.png 2"], ["a.png 0"])
    with pytest.raises(ConfigError, match=r"train.txt:2: label 2 is outside \[0, 1\), .* no line has label 1"):
        build_datasets(cfg)


def test_list_missing_image_root(tmp_path):
    cfg = make_list_dataset(tmp_path, ["a.png 0"], ["a.png 0"])
    with pytest.raises(ConfigError, match=rf"image root {tmp_path / 'img'} \(data.root\) is not a folder"):
        build_datasets(cfg)


def test_places_lt_train_list():
    path = SPLITS / "places_lt" / "Places_LT_train.txt"
    if not path.is_file():
        pytest.skip(f"{path} not present (the shared split lists sit beside the repository)")
    paths, labels = read_list_file(path, check_files=False)
    counts = class_counts(labels, max(labels) + 1)
    assert len(paths) == 62_500 and len(counts) == 365
    assert max(counts) == 4_980 and min(counts) == 5
    assert paths[0] == "train/airfield/00004851.jpg"
    names = read_class_names(path, 365)
    assert len(names) == 365 and names[0] == "airfield"


# ----------------------------------------------------------------------------- ImageFolder


def test_image_folder_test_labels_follow_training_classes(tmp_path):
    for cls in ("ant", "bee", "cat"):
        png(tmp_path / "train" / cls / "1.png")
    png(tmp_path / "val" / "bee" / "1.png")
    png(tmp_path / "val" / "cat" / "1.PNG")
    splits = build_datasets(small_cfg(source="folder", root=str(tmp_path)))
    assert splits.classes == ["ant", "bee", "cat"] and splits.train_counts == [1, 1, 1]
    assert splits.test.targets == [1, 2]
    assert splits.test[1][0].shape == (3, 8, 8)


def test_image_folder_test_class_not_in_training(tmp_path):
    png(tmp_path / "train" / "ant" / "1.png")
    png(tmp_path / "val" / "ant" / "1.png")
    png(tmp_path / "val" / "dog" / "1.png")
    with pytest.raises(ConfigError, match=r"class folder 'dog' is not among the 1 training classes"):
        build_datasets(small_cfg(source="folder", root=str(tmp_path)))


def test_image_folder_missing_root(tmp_path):
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'train'} .* is not a folder"):
        build_datasets(small_cfg(source="folder", root=str(tmp_path)))


def stray_entries(split: Path) -> None:
    """What a notebook, a Mac and a zip leave in an ImageFolder split: a checkpoint folder (sorted before every
    class), a ``__MACOSX`` folder, AppleDouble companions, a hidden file, notes, a loose file."""
    png(split / ".ipynb_checkpoints" / "1.png")
    png(split / "__MACOSX" / "bee" / "._1.png")
    (split / "bee" / "._1.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble, not an image")
    (split / "bee" / ".DS_Store").write_bytes(b"\x00")
    (split / "bee" / "notes.txt").write_text("taken in May")
    (split / "README.md").write_text("my data")


def test_image_folder_skips_hidden_and_macos_entries_and_says_so(tmp_path, caplog):
    for cls in ("ant", "bee"):
        png(tmp_path / "train" / cls / "1.png")
        png(tmp_path / "val" / cls / "1.png")
    stray_entries(tmp_path / "train")
    stray_entries(tmp_path / "val")
    with caplog.at_level("WARNING", logger="lpt"):
        splits = build_datasets(small_cfg(source="folder", root=str(tmp_path)))
    assert splits.classes == ["ant", "bee"] and splits.train_counts == [1, 1]  # no '.ipynb_checkpoints' class
    assert splits.train.targets == [0, 1] and splits.test.targets == [0, 1]
    assert [Path(p).name for p in splits.train.paths] == ["1.png", "1.png"]  # no '._1.png'
    train = tmp_path / "train"
    assert f"{train}: skipped 4 hidden or macOS entries (.ipynb_checkpoints, __MACOSX, bee/.DS_Store, ...); " \
           "1 file that is not an image (bee/notes.txt); 1 file outside the class folders (README.md); " \
           "images: .jpg" in caplog.text
    assert caplog.text.count(": skipped ") == 2  # once per split
    assert build_train_labels(small_cfg(source="folder", root=str(tmp_path))) == ([0, 1], ["ant", "bee"])


def test_image_folder_trains_on_gifs_and_every_format_pillow_reads(tmp_path):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    formats = Image.registered_extensions()
    for i, ext in enumerate(IMAGE_EXTENSIONS):  # the extension in either case
        (image.convert("1") if ext == ".pbm" else image).save(folder / f"{i}{ext.upper() if i % 2 else ext}",
                                                              format=formats[ext])
    png(tmp_path / "val" / "a" / "1.png")
    splits = build_datasets(small_cfg(source="folder", root=str(tmp_path)))
    assert sorted(Path(p).suffix.lower() for p in splits.train.paths) == sorted(IMAGE_EXTENSIONS)  # GIF among them
    assert all(splits.train[i][0].shape == (3, 8, 8) for i in range(len(splits.train)))


# ----------------------------------------------------------------------------- images and transforms


@pytest.mark.parametrize("mode, value, suffix, rgb", [
    ("L", 100, "png", (100, 100, 100)),
    ("1", 1, "png", (255, 255, 255)),
    ("RGBA", (10, 20, 30, 0), "png", (10, 20, 30)),
    ("LA", (70, 255), "png", (70, 70, 70)),
    ("CMYK", (0, 0, 0, 0), "tif", (255, 255, 255)),
    ("I;16", 257 * 100, "png", (100, 100, 100)),
    ("I;16", 65535, "png", (255, 255, 255)),
])
def test_load_rgb_converts_modes(tmp_path, mode, value, suffix, rgb):
    path = tmp_path / f"img.{suffix}"
    Image.new(mode, (4, 3), value).save(path)
    img = load_rgb(str(path))
    assert img.mode == "RGB" and img.size == (4, 3) and img.getpixel((1, 1)) == rgb


def test_load_rgb_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 50, 60, 70] + [0] * 762)
    img.save(tmp_path / "p.png", transparency=0)
    out = load_rgb(str(tmp_path / "p.png"))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (50, 60, 70)


def test_load_rgb_names_unreadable_file(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(OSError, match=r"broken.jpg: cannot read image"):
        load_rgb(str(tmp_path / "broken.jpg"))


@pytest.mark.parametrize("aug", ["rrc_flip", "crop_flip", "none"])
@pytest.mark.parametrize("train", [True, False])
def test_transform_shape_and_range(aug, train):
    cfg = DataConfig(img_size=16, test_resize=20, train_aug=aug)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8))
    x = build_transform(cfg, train)(img)
    assert type(x) is torch.Tensor and x.dtype == torch.float32 and x.shape == (3, 16, 16)
    assert -1.0 <= x.min() and x.max() <= 1.0  # mean 0.5, std 0.5 maps [0, 1] to [-1, 1]


def test_eval_transform_normalises_per_channel():
    cfg = DataConfig(img_size=8, test_resize=12, mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 2.0])
    x = build_transform(cfg, train=False)(Image.new("RGB", (20, 10), (255, 0, 51)))
    expected = torch.tensor([(1 - 0.1) / 0.5, (0 - 0.2) / 0.25, (0.2 - 0.3) / 2.0])
    torch.testing.assert_close(x, expected[:, None, None].expand(3, 8, 8))


@pytest.mark.parametrize("test_resize, border_seen", [(32, False), (0, True), (16, True), (8, True)])
def test_eval_transform_resizes_then_centre_crops(test_resize, border_seen):
    img = np.full((32, 32, 3), 255, np.uint8)
    img[8:24, 8:24] = 0  # white 8-pixel frame around a black 16x16 centre
    cfg = small_cfg(img_size=16, test_resize=test_resize)
    x = build_transform(cfg, train=False)(Image.fromarray(img))
    assert x.shape == (3, 16, 16)
    assert bool(x.max() > 0.5) == border_seen  # 0 resizes to 18 (16 * 256 / 224), 8 to img_size: frame kept


def test_eval_resize_modes_match_torchvision_on_a_wide_image():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2 as T

    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 60, 3), dtype=np.uint8))  # 60 wide, 24 tall

    def reference(resize, interpolation=InterpolationMode.BICUBIC):
        geometry = T.Compose([T.Resize(resize, interpolation=interpolation, antialias=True), T.CenterCrop(16)])
        return (T.functional.to_dtype(T.functional.to_image(geometry(img)), torch.float32, scale=True) - 0.5) / 0.5

    shorter = build_transform(DataConfig(img_size=16, test_resize=20), train=False)(img)
    square = build_transform(DataConfig(img_size=16, test_resize=20, test_resize_mode="square"), train=False)(img)
    torch.testing.assert_close(shorter, reference(20))  # 60x24 -> 50x20, centre 16x16: the middle of the image
    torch.testing.assert_close(square, reference((20, 20)))  # 60x24 -> 20x20 squeezed, as the official script
    assert (shorter - square).abs().max() > 0.1
    cfg = DataConfig(img_size=16, test_resize=20, test_resize_mode="square", interpolation="bilinear")
    official = reference((20, 20), T.Resize((20, 20)).interpolation)  # eval_phase2.py's: the default interpolation
    torch.testing.assert_close(build_transform(cfg, train=False)(img), official)
    with pytest.raises(ConfigError, match="data.test_resize_mode.*shorter, square"):
        load_config("demo", ["data.test_resize_mode=stretch"])


@pytest.mark.parametrize("aug", ["rrc_flip", "crop_flip", "none"])
def test_uint8_images_normalised_in_batch_equal_the_float_transform(aug):
    from lpt.data.transforms import BatchNormalize

    cfg = DataConfig(img_size=16, test_resize=20, train_aug=aug, mean=[0.1, 0.5, 0.9], std=[0.2, 0.5, 1.5])
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)) for _ in range(4)]
    torch.manual_seed(7)
    floats = torch.stack([build_transform(cfg, train=True)(img) for img in images])
    torch.manual_seed(7)  # the same random crops and flips
    raw = torch.stack([build_transform(cfg, train=True, normalize=False)(img) for img in images])
    assert raw.dtype == torch.uint8 and raw.shape == (4, 3, 16, 16)
    assert torch.equal(BatchNormalize(cfg)(raw), floats)  # the same arithmetic, bit for bit
    assert BatchNormalize(cfg)(floats) is floats


# ----------------------------------------------------------------------------- samplers


def test_instance_sampler_is_seeded_permutation():
    sampler = InstanceSampler(10, seed=5)
    sampler.set_epoch(2)
    assert list(sampler) == torch.randperm(10, generator=torch.Generator().manual_seed(7)).tolist()
    assert list(sampler) == list(sampler) and len(sampler) == 10
    sampler.set_epoch(3)
    assert sorted(sampler) == list(range(10)) and list(sampler) != list(InstanceSampler(10, seed=5))


@pytest.mark.parametrize("world_size", [2, 3])
def test_instance_sampler_shards(world_size):
    n = 10
    single = list(InstanceSampler(n, seed=1, rank=0, world_size=1))
    shards = [list(InstanceSampler(n, seed=1, rank=r, world_size=world_size)) for r in range(world_size)]
    total = math.ceil(n / world_size) * world_size
    assert all(len(s) == total // world_size for s in shards)
    assert interleave(shards) == (single + single)[:total]  # padded by wrapping around
    assert set().union(*shards) == set(range(n))
    even = [set(InstanceSampler(12, rank=r, world_size=world_size)) for r in range(world_size)]
    assert sum(len(s) for s in even) == 12 and set().union(*even) == set(range(12))  # disjoint when N divides


def test_class_balanced_sampler_uniform_over_classes():
    sizes = {0: 1000, 1: 100, 2: 10, 3: 1, 5: 3}  # class 4 has no images
    targets = [c for c, n in sizes.items() for _ in range(n)]
    sampler = ClassBalancedSampler(targets, samples_per_class=4, num_samples=4 * 5 * 60, seed=0)
    picked = Counter(targets[i] for i in sampler)
    assert picked == {c: 240 for c in sizes}  # 60 full passes over the 5 non-empty classes
    runs = list(sampler)
    assert all(len({targets[i] for i in runs[k:k + 4]}) == 1 for k in range(0, len(runs), 4))
    per_image = Counter(i for i in runs if targets[i] == 2)  # a class's images are cycled evenly
    assert set(per_image.values()) == {24}


def test_class_balanced_sampler_near_uniform_default_length():
    targets = [0] * 500 + [1] * 50 + [2] * 5 + [3] * 1
    picked = Counter(targets[i] for i in ClassBalancedSampler(targets, samples_per_class=3, seed=4))
    assert len(ClassBalancedSampler(targets)) == 556 and sum(picked.values()) == 556
    assert max(picked.values()) - min(picked.values()) <= 2 * 3  # within one pass of perfectly uniform


@pytest.mark.parametrize("world_size", [2, 3])
def test_class_balanced_sampler_shards(world_size):
    targets = [0] * 20 + [1] * 5 + [2] * 1
    single = list(ClassBalancedSampler(targets, 2, num_samples=30, seed=3, rank=0, world_size=1))
    shards = [list(ClassBalancedSampler(targets, 2, num_samples=30, seed=3, rank=r, world_size=world_size))
              for r in range(world_size)]
    assert [len(s) for s in shards] == [30 // world_size] * world_size
    assert interleave(shards) == single


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [1, 2, 5, 7, 13])
def test_sampler_shards_partition_global_sequence(n, world_size):
    targets = [i % 3 for i in range(n)]
    for spc, seed, epoch in ((1, 0, 0), (3, 5, 2), (5, 9, 1)):
        for make in (lambda r: InstanceSampler(n, seed, r, world_size),
                     lambda r: ClassBalancedSampler(targets, spc, None, seed, r, world_size)):
            samplers = [make(r) for r in range(world_size)]
            for s in samplers:
                s.set_epoch(epoch)
            shards = [list(s) for s in samplers]
            assert {len(s) for s in shards} == {math.ceil(n / world_size)}
            assert interleave(shards) == samplers[0].global_order()


def test_class_balanced_sampler_epochs_differ_and_repeat():
    sampler = ClassBalancedSampler([0] * 10 + [1] * 10, seed=2)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


# ----------------------------------------------------------------------------- train stream


def test_dual_stream_batches():
    stream = build_train_stream(id_dataset(50), "dual", batch_size=8, samples_per_class=2, num_workers=0, seed=0)
    steps = list(stream)
    assert len(stream) == 7 and len(steps) == 7
    for step in steps:
        assert set(step) == {"balanced", "instance"}
        for ids, labels in step.values():
            assert ids.shape == (8,) and labels.shape == (8,) and labels.dtype == torch.int64
            assert (labels == ids % 5).all()
    seen = torch.cat([s["instance"][0] for s in steps]).tolist()
    assert set(seen) == set(range(50)) and len(seen) == 56  # every image, then 6 wrapped to fill the last batch


def test_dual_stream_with_images():
    ds = ArrayImageDataset(np.zeros((12, 5, 5), np.uint8), [0] * 10 + [1] * 2, ["a", "b"],
                           build_transform(small_cfg(img_size=4), train=True))
    step = next(iter(build_train_stream(ds, "dual", 4, 2, 0, seed=0)))
    assert step["balanced"][0].shape == (4, 3, 4, 4) and step["instance"][0].shape == (4, 3, 4, 4)
    assert step["balanced"][1].tolist().count(1) == 2  # both classes picked once: 2 images each


@pytest.mark.parametrize("sampling, keys", [("instance", {"instance"}), ("balanced", {"balanced"})])
def test_single_mode_streams(sampling, keys):
    stream = build_train_stream(id_dataset(20), sampling, 8, 4, 0, seed=0)
    steps = list(stream)
    assert len(steps) == len(stream) == 3 and all(set(s) == keys for s in steps)


def test_stream_world_size_two_covers_dataset():
    streams = [build_train_stream(id_dataset(50), "dual", 8, 2, 0, seed=4, rank=r, world_size=2) for r in (0, 1)]
    assert [len(s) for s in streams] == [4, 4]  # ceil(50 / 16)
    seen = []
    for stream in streams:
        for step in stream:
            assert step["balanced"][0].shape == (8,) and step["instance"][0].shape == (8,)
            seen += step["instance"][0].tolist()
    assert set(seen) == set(range(50)) and len(seen) == 64


def test_stream_smaller_than_batch():
    step, = list(build_train_stream(id_dataset(5), "dual", 8, 2, 0, seed=0))
    assert sorted(step["instance"][0].tolist()) == [0, 1, 2, 3, 4]
    assert step["balanced"][0].shape == (8,)


def test_stream_set_epoch_reshuffles_both():
    stream = build_train_stream(id_dataset(40), "dual", 8, 2, 0, seed=0)

    def epoch(e):
        stream.set_epoch(e)
        return [(s["balanced"][0].tolist(), s["instance"][0].tolist()) for s in stream]

    first, second = epoch(0), epoch(1)
    for stream_key in (0, 1):  # balanced, instance
        assert [s[stream_key] for s in first] != [s[stream_key] for s in second]
    assert epoch(0) == first


def test_stream_with_worker_matches_main_process():
    def ids(num_workers):
        stream = build_train_stream(id_dataset(24), "dual", 8, 2, num_workers, seed=1)
        return [(s["balanced"][0].tolist(), s["instance"][0].tolist()) for s in stream]

    assert ids(1) == ids(0)


def test_stream_rejects_unknown_sampling():
    with pytest.raises(ConfigError, match=r"'both'; expected one of dual, instance, balanced"):
        build_train_stream(id_dataset(4), "both", 2, 1, 0, seed=0)


# ----------------------------------------------------------------------------- CIFAR-100-LT at the published ratios


def cifar_like_targets() -> list[int]:
    """50,000 labels, 500 per class, in a seeded random order (CIFAR-100's training set has no class order)."""
    return np.random.default_rng(2019).permutation(np.arange(50_000) % 100).tolist()


@pytest.mark.parametrize("ratio, total, last", [(10, 19_573, 50), (50, 12_608, 10), (100, 10_847, 5), (200, 9_502, 2)])
def test_cifar100_lt_profile_counts_and_ldam_selection(ratio, total, last):
    from lpt.data.build import longtail_keep

    targets = cifar_like_targets()
    cfg = DataConfig(source="cifar100", imbalance_ratio=ratio, max_per_class=500)
    kept = longtail_keep(targets, [str(c) for c in range(100)], cfg)
    expected = [int(500 * ratio ** (-i / 99)) for i in range(100)]
    assert class_counts([targets[i] for i in kept], 100) == expected
    assert len(kept) == total and expected[0] == 500 and expected[-1] == last
    assert kept == ldam_indices(targets, expected, 0)  # LDAM-DRW's images, not only its counts


def test_cifar100_lt_preset_builds_ldam_training_labels(monkeypatch):
    import lpt.data.sources as sources
    from lpt.config import load_config
    from lpt.data import build_train_labels

    targets = cifar_like_targets()
    monkeypatch.setattr(sources, "cifar100_train_labels",
                        lambda root, download: (targets, [f"c{i}" for i in range(100)]))
    labels, classes = build_train_labels(load_config("cifar100_lt").data)
    expected = [int(500 * 100 ** (-i / 99)) for i in range(100)]
    assert len(labels) == 10_847 and classes[99] == "c99"
    assert class_counts(labels, 100) == expected
    assert labels == [targets[i] for i in ldam_indices(targets, expected, 0)]


# ----------------------------------------------------------------------------- iNaturalist JSON


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def inat_files(tmp_path: Path, category_ids=(0, 1, 2)) -> tuple[Path, Path]:
    """A train and a val JSON in iNaturalist 2018's layout; images under tmp_path/img/train_val2018/."""
    cats = [{"id": cid, "name": f"species {cid}", "supercategory": "Plantae"} for cid in category_ids]
    train_cat = [category_ids[2], category_ids[0], category_ids[1], category_ids[0]]
    images, anns = [], []
    for i, cid in enumerate(train_cat):
        name = f"train_val2018/Plantae/{cid}/img{i}.jpg"
        png(tmp_path / "img" / name, (40 * i, 0, 0))
        images.append({"id": 100 + i, "file_name": name, "width": 12, "height": 9})
        anns.append({"id": i, "image_id": 100 + i, "category_id": cid})
    train = write_json(tmp_path / "train2018.json", {
        "info": {}, "images": images, "annotations": anns[::-1], "categories": cats, "licenses": []})
    val_name = f"train_val2018/Plantae/{category_ids[1]}/val0.jpg"
    png(tmp_path / "img" / val_name)
    val = write_json(tmp_path / "val2018.json", {
        "images": [{"id": 7, "file_name": val_name}],
        "annotations": [{"id": 0, "image_id": 7, "category_id": category_ids[1]}], "categories": cats})
    return train, val


def inat_cfg(tmp_path: Path, train: Path, val: Path) -> DataConfig:
    return small_cfg(source="inat_json", root=str(tmp_path / "img"), train_list=str(train), test_list=str(val))


def test_inat_json_source_labels_are_category_ids(tmp_path):
    train, val = inat_files(tmp_path)
    splits = build_datasets(inat_cfg(tmp_path, train, val))
    assert splits.classes == ["species 0", "species 1", "species 2"]
    assert splits.train.targets == [2, 0, 1, 0]  # order of 'images', whatever the order of 'annotations'
    assert splits.train_counts == [2, 1, 1]
    assert splits.train.paths[0] == str(tmp_path / "img" / "train_val2018/Plantae/2/img0.jpg")
    torch.testing.assert_close(splits.train[1][0][:, 4, 4], torch.tensor([40 / 255, 0.0, 0.0]))
    assert splits.test.targets == [1] and splits.test[0][0].shape == (3, 8, 8)


def test_inat_json_category_ids_not_contiguous_are_ranked(tmp_path):
    train, val = inat_files(tmp_path, category_ids=(30, 7, 12))
    splits = build_datasets(inat_cfg(tmp_path, train, val))
    assert splits.classes == ["species 7", "species 12", "species 30"]
    assert splits.train.targets == [1, 2, 0, 2] and splits.test.targets == [0]


def test_read_inat_json_without_images(tmp_path):
    from lpt.data import read_inat_json

    train, _ = inat_files(tmp_path)
    paths, labels, names = read_inat_json(train, check_files=False)
    assert paths[0] == "train_val2018/Plantae/2/img0.jpg" and labels == [2, 0, 1, 0] and names[2] == "species 2"


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    write_json(path, data)


INAT_ERRORS = [  # (file edited, edit, message)
    ("train", lambda d: d.pop("images"), r"train2018.json: no 'images' list"),
    ("train", lambda d: d["images"][1].pop("file_name"), r"train2018.json: images\[1\] has no 'file_name' field"),
    ("train", lambda d: d["images"][2].update(id="7"),
     r"train2018.json: images\[2\] field 'id' is '7'; expected an integer"),
    ("train", lambda d: d["images"][3].update(id=100),
     r"train2018.json: images\[3\] repeats image id 100 \(first in images\[0\]\)"),
    ("train", lambda d: d["annotations"][0].pop("category_id"),
     r"train2018.json: annotations\[0\] has no 'category_id' field"),
    ("train", lambda d: d["annotations"][1].update(image_id=55),
     r"train2018.json: annotations\[1\] field 'image_id' is 55; no entry of 'images'"),
    ("train", lambda d: d["categories"][1].pop("name"), r"train2018.json: categories\[1\] has no 'name' field"),
    ("train", lambda d: d["categories"].append({"id": 2, "name": "again"}),
     r"train2018.json: categories\[3\] repeats id 2"),
    ("val", lambda d: d["annotations"][0].update(category_id=9),
     r"val2018.json: annotations\[0\] field 'category_id' is 9; not among the 3 categories of .*train2018.json"),
    ("val", lambda d: d.update(annotations=[]),
     r"val2018.json: images\[0\] \(id 7\) has no entry in 'annotations'.*test2018.json"),
    ("val", lambda d: d["annotations"].append({"image_id": 7, "category_id": 0}),
     r"val2018.json: annotations\[1\] labels image id 7 a second time"),
]


@pytest.mark.parametrize("which, edit, message", INAT_ERRORS)
def test_inat_json_errors_name_file_entry_and_field(tmp_path, which, edit, message):
    train, val = inat_files(tmp_path)
    edit_json(train if which == "train" else val, edit)
    with pytest.raises(ConfigError, match=message):
        build_datasets(inat_cfg(tmp_path, train, val))


def test_inat_json_file_problems(tmp_path):
    train, val = inat_files(tmp_path)
    train.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(ConfigError, match=r"train2018.json:2: not valid JSON"):
        build_datasets(inat_cfg(tmp_path, train, val))
    with pytest.raises(ConfigError, match=r"annotation file .*nope.json \(data.train_list\) does not exist"):
        build_datasets(inat_cfg(tmp_path, tmp_path / "nope.json", val))
    train, val = inat_files(tmp_path)
    (tmp_path / "img" / "train_val2018/Plantae/1/img2.jpg").unlink()
    with pytest.raises(ConfigError, match=r"train2018.json: images\[2\] file .*img2.jpg not found"):
        build_datasets(inat_cfg(tmp_path, train, val))
    with pytest.raises(ConfigError, match=r"config key 'data.test_list' is empty; data.source=inat_json needs it"):
        build_datasets(small_cfg(source="inat_json", root=str(tmp_path / "img"), train_list=str(train)))


def test_inat_json_test_split_alone(tmp_path):
    from lpt.data import build_test_dataset

    train, val = inat_files(tmp_path, category_ids=(30, 7, 12))
    shutil.rmtree(tmp_path / "img" / "train_val2018/Plantae/30")  # training images are not needed
    test = build_test_dataset(inat_cfg(tmp_path, train, val))
    assert test.targets == [0] and test.classes == ["species 7", "species 12", "species 30"]


# ----------------------------------------------------------------------------- list: evaluation split alone


def test_list_test_split_alone_uses_training_classes(tmp_path):
    from lpt.data import build_test_dataset

    png(tmp_path / "img" / "t.png")
    cfg = make_list_dataset(tmp_path, ["absent.png 0", "absent.png 4"], ["t.png 3"])
    test = build_test_dataset(cfg)
    assert test.targets == [3] and test.classes == ["0", "1", "2", "3", "4"]
    (tmp_path / "test.txt").write_text("t.png 5\n")
    with pytest.raises(ConfigError, match=r"test.txt:1: label 5 is outside \[0, 5\)"):
        build_test_dataset(cfg)


def test_train_labels_of_a_list_config_need_no_images(tmp_path):
    from lpt.data import build_train_labels

    (tmp_path / "train.txt").write_text("".join(f"x/{i}.jpg {i % 10}\n" for i in range(300)))
    cfg = small_cfg(source="list", train_list=str(tmp_path / "train.txt"), imbalance_ratio=10, max_per_class=30)
    labels, classes = build_train_labels(cfg)
    assert class_counts(labels, 10) == [30, 23, 17, 13, 10, 8, 6, 5, 3, 3]  # int(30 * 10 ** (-i / 9))
    assert classes == [str(c) for c in range(10)]


# ----------------------------------------------------------------------------- class index (ImageNet-Sketch)


def test_class_index_with_explicit_labels(tmp_path):
    from lpt.data import read_class_index

    (tmp_path / "index.txt").write_text("n02 1\n\nn01 0\n")
    assert read_class_index(tmp_path / "index.txt") == ({"n02": 1, "n01": 0}, ["n01", "n02"])


def test_class_index_with_readable_names_uses_line_order(tmp_path):
    from lpt.data import read_class_index

    (tmp_path / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\n\nn01484850 great white shark\n")
    label_of, names = read_class_index(tmp_path / "classnames.txt")
    assert label_of == {"n01440764": 0, "n01443537": 1, "n01484850": 2}
    assert names == ["n01440764", "n01443537", "n01484850"]
    (tmp_path / "mixed.txt").write_text("a 1\nb x\n")  # not every line is 'folder integer': line order
    assert read_class_index(tmp_path / "mixed.txt")[0] == {"a": 0, "b": 1}


@pytest.mark.parametrize("text, message", [
    ("a 0\nb 1\na 2\n", r"index.txt:3: class folder 'a' is listed again \(first on line 1\)"),
    ("a 0\n\nb 0\n", r"index.txt:3: label 0 is given again \(first to 'a' on line 1\)"),
    ("a 0\nb 2\n", r"index.txt: no class folder has label 1; the 2 labels must be 0..1"),
    ("a -1\n", r"index.txt:1: label -1 is negative"),
    ("\n \n", r"index.txt: empty class index"),
])
def test_class_index_errors_name_file_and_line(tmp_path, text, message):
    from lpt.data import read_class_index

    (tmp_path / "index.txt").write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_class_index(tmp_path / "index.txt")


def sketch_folder(tmp_path: Path) -> DataConfig:
    """ImageNet-Sketch's layout: root/sketch/<wnid>/*.JPEG, for 2 of the 3 classes of the index."""
    png(tmp_path / "sk" / "sketch" / "n01484850" / "sketch_0.JPEG", (0, 0, 200))
    png(tmp_path / "sk" / "sketch" / "n01440764" / "sketch_0.JPEG")
    png(tmp_path / "sk" / "sketch" / "n01440764" / "sketch_1.jpeg")
    (tmp_path / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\nn01484850 great white shark\n")
    return small_cfg(source="folder", root=str(tmp_path / "sk"), test_dir="sketch",
                     class_index=str(tmp_path / "classnames.txt"))


def test_image_folder_test_split_through_class_index(tmp_path):
    from lpt.data import build_test_dataset

    test = build_test_dataset(sketch_folder(tmp_path))  # no training folder at all
    assert test.classes == ["n01440764", "n01443537", "n01484850"]
    assert test.targets == [0, 0, 2]
    torch.testing.assert_close(test[2][0][:, 4, 4], torch.tensor([0.0, 0.0, 200 / 255]), atol=0.02, rtol=0)  # JPEG


def test_image_folder_class_index_errors(tmp_path):
    from lpt.data import build_test_dataset

    cfg = sketch_folder(tmp_path)
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'sk' / 'train'} \(data.root/data.train_dir\) is not a folder"):
        build_datasets(cfg)  # training needs the training folder
    png(tmp_path / "sk" / "sketch" / "n99999999" / "x.png")
    with pytest.raises(ConfigError, match=r"sketch: class folder 'n99999999' is not among the 3 classes of the "
                                          r"class index .*classnames.txt"):
        build_test_dataset(cfg)
    cfg.class_index = ""
    with pytest.raises(ConfigError, match=r"sk/train \(data.root/data.train_dir\) is not a folder; without "
                                          r"data.class_index its subfolders name the classes"):
        build_test_dataset(cfg)


def test_image_folder_training_classes_through_class_index(tmp_path):
    for cls in ("ant", "zebra"):
        png(tmp_path / "train" / cls / "1.png")
    png(tmp_path / "train" / "zebra" / "2.png")
    png(tmp_path / "val" / "ant" / "1.png")
    (tmp_path / "index.txt").write_text("zebra 0\nant 1\n")
    splits = build_datasets(small_cfg(source="folder", root=str(tmp_path), class_index=str(tmp_path / "index.txt")))
    assert splits.classes == ["zebra", "ant"] and splits.train_counts == [2, 1]
    assert splits.test.targets == [1]


def test_image_folder_class_of_the_index_without_training_images_names_its_line(tmp_path):
    png(tmp_path / "train" / "ant" / "1.png")
    png(tmp_path / "val" / "ant" / "1.png")
    (tmp_path / "index.txt").write_text("ant 0\n\nzebra 1\n")
    with pytest.raises(ConfigError, match=rf"index.txt:3: class 'zebra' \(label 1\) has no training images: "
                                          rf"{tmp_path / 'train' / 'zebra'} is missing or holds no image file$"):
        build_datasets(small_cfg(source="folder", root=str(tmp_path), class_index=str(tmp_path / "index.txt")))


def test_imagenet_lt_classnames_index_matches_the_split_labels():
    names_file = SPLITS / "imagenet_lt" / "classnames.txt"
    if not names_file.is_file():
        pytest.skip(f"{names_file} not present (the shared split lists sit beside the repository)")
    from lpt.data import read_class_index

    label_of, names = read_class_index(names_file)
    assert len(names) == 1000 and label_of["n01440764"] == 0 and names[999] == "n15075141"
    paths, labels = read_list_file(SPLITS / "imagenet_lt" / "ImageNet_LT_val.txt", check_files=False)
    assert [label_of[p.split("/")[1]] for p in paths] == labels  # a wnid folder gets its ImageNet-LT label
