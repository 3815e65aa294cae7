"""Readers of the image sources: Fashion-MNIST (IDX), CIFAR-100, split list files, ImageFolder.

Each ``load_*`` function returns the training and the evaluation dataset of one source, as
:class:`~lpt.data.datasets.ImageDataset` objects sharing one list of class names. Problems a
user can fix (missing files, malformed lines, unknown labels) raise a one-line ConfigError that
names the file, and the line where there is one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from lpt.config import ConfigError
from lpt.data.datasets import ArrayImageDataset, FileImageDataset, ImageDataset, Transform
from lpt.data.idx import read_idx

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CACHE_ROOT = Path("~/.cache/lpt").expanduser()
_INTEGER = re.compile(r"-?[0-9]+")

Splits = tuple[ImageDataset, ImageDataset]


# ----------------------------------------------------------------------------- Fashion-MNIST


def _find_file(folders: list[Path], name: str) -> Path | None:
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _fashion_mnist_download(dest: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import FashionMNIST

    try:
        ds = FashionMNIST(str(dest), train=train, download=True)
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"could not download Fashion-MNIST into {dest}: {exc}") from None
    return ds.data.numpy(), ds.targets.numpy()


def fashion_mnist_arrays(root: str = "", train: bool = True, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read one Fashion-MNIST split from its IDX files.

    Looks for ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (raw or ``.gz``) in ``root`` and in
    torchvision's ``root/FashionMNIST/raw``; an empty root means /usr/share/datasets/fashion-mnist,
    then ~/.cache/lpt/fashion-mnist.

    Returns:
        images: uint8 array [N, 28, 28]; labels: int64 array [N] in [0, 10).
    """
    base = Path(root).expanduser() if root else FASHION_MNIST_ROOT
    dest = base if root else CACHE_ROOT / "fashion-mnist"
    folders = [base, base / "FashionMNIST" / "raw"] + ([] if root else [dest, dest / "FashionMNIST" / "raw"])
    prefix = "train" if train else "t10k"
    image_file = _find_file(folders, f"{prefix}-images-idx3-ubyte")
    label_file = _find_file(folders, f"{prefix}-labels-idx1-ubyte")
    if image_file is None or label_file is None:
        if not download:
            raise ConfigError(
                f"Fashion-MNIST files {prefix}-images-idx3-ubyte(.gz) and {prefix}-labels-idx1-ubyte(.gz) not found "
                f"in {base}; run `apt-get install dataset-fashion-mnist` or set data.download=true"
            )
        return _fashion_mnist_download(dest, train)
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ConfigError(f"{image_file}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or labels.size and not 0 <= labels.min() <= labels.max() < 10:
        raise ConfigError(f"{label_file}: expected {len(images)} labels in [0, 10), got shape {labels.shape}")
    return images, labels.astype(np.int64)


def load_fashion_mnist(root: str, download: bool, train_transform: Transform, test_transform: Transform) -> Splits:
    """Fashion-MNIST (60,000 training and 10,000 test images, 10 classes), kept in memory."""
    splits = []
    for train, transform in ((True, train_transform), (False, test_transform)):
        images, labels = fashion_mnist_arrays(root, train, download)
        splits.append(ArrayImageDataset(images, labels.tolist(), FASHION_MNIST_CLASSES, transform))
    return splits[0], splits[1]


# ----------------------------------------------------------------------------- CIFAR-100


def load_cifar100(root: str, download: bool, train_transform: Transform, test_transform: Transform) -> Splits:
    """CIFAR-100 through torchvision (``root/cifar-100-python``; empty root: ~/.cache/lpt/cifar100)."""
    from torchvision.datasets import CIFAR100

    base = Path(root).expanduser() if root else CACHE_ROOT / "cifar100"
    if not download and not (base / "cifar-100-python").is_dir():
        raise ConfigError(
            f"CIFAR-100 not found: {base} has no cifar-100-python folder; set data.root or data.download=true"
        )
    splits = []
    for train, transform in ((True, train_transform), (False, test_transform)):
        try:
            ds = CIFAR100(str(base), train=train, download=download)
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"CIFAR-100 in {base / 'cifar-100-python'} cannot be read: {exc}") from None
        splits.append(ArrayImageDataset(ds.data, ds.targets, ds.classes, transform))
    return splits[0], splits[1]


# ----------------------------------------------------------------------------- split list files


def _parse_list_line(text: str, where: str) -> tuple[str, int]:
    fields = text.rsplit(maxsplit=1)  # the last whitespace run: paths may contain spaces
    if len(fields) != 2:
        raise ConfigError(f"{where}: expected 'relative/path label', got {text!r}")
    path, label = fields
    if not _INTEGER.fullmatch(label):
        raise ConfigError(f"{where}: label {label!r} is not an integer")
    if int(label) < 0:
        raise ConfigError(f"{where}: label {label} is negative; expected 0 or more")
    return path, int(label)


def _list_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of a UTF-8 file."""
    if not path.is_file():
        raise ConfigError(f"list file {path} does not exist")
    lines = []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"{path}:{lineno}: not valid UTF-8") from None
        if text:
            lines.append((lineno, text))
    return lines


def _read_list(path: Path, root: str | Path | None, check_files: bool) -> tuple[list[str], list[int], list[int]]:
    """Paths, labels and line numbers of a list file; see :func:`read_list_file`."""
    lines = _list_lines(path)
    if not lines:
        raise ConfigError(f"{path}: empty list file; expected lines 'relative/path label'")
    paths, labels = [], []
    for lineno, text in lines:
        rel, label = _parse_list_line(text, f"{path}:{lineno}")
        paths.append(os.path.join(root, rel) if root is not None else rel)
        labels.append(label)
    linenos = [n for n, _ in lines]
    if check_files:
        _check_files(path, paths, linenos)
    return paths, labels, linenos


def read_list_file(path: str | Path, root: str | Path | None = None,
                   check_files: bool = True) -> tuple[list[str], list[int]]:
    """Read a split list: one ``relative/path label`` per line (Places-LT, ImageNet-LT, iNat 2018).

    A path may contain spaces: the label is the last whitespace-separated field.

    Args:
        path: the list file (UTF-8; blank lines are skipped).
        root: folder the listed paths are relative to; None keeps them as written.
        check_files: raise on the first listed image that is not a file.

    Returns:
        paths (joined to ``root``) and integer labels, one each per listed image.
    """
    paths, labels, _ = _read_list(Path(path), root, check_files)
    return paths, labels


def _check_files(list_path: Path, paths: list[str], linenos: list[int]) -> None:
    missing = [i for i, p in enumerate(paths) if not os.path.isfile(p)]
    if missing:
        first = missing[0]
        more = f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise ConfigError(f"{list_path}:{linenos[first]}: image {paths[first]} not found{more}")


def read_class_names(list_path: str | Path, num_classes: int) -> list[str]:
    """Class names for a list file: ``classnames.txt`` beside it, else the labels as strings.

    ``classnames.txt`` has one class per line, in label order; its first whitespace-separated
    field (the class folder name) is the name. Lines past ``num_classes`` are ignored.
    """
    names_file = Path(list_path).parent / "classnames.txt"
    if not names_file.is_file():
        return [str(c) for c in range(num_classes)]
    names = [text.split()[0] for _, text in _list_lines(names_file)]
    if len(names) < num_classes:
        raise ConfigError(f"{names_file}: {len(names)} class names; {list_path} has labels up to {num_classes - 1}")
    return names[:num_classes]


def _check_test_labels(test_list: str, labels: list[int], linenos: list[int], num_classes: int) -> None:
    bad = next((i for i, y in enumerate(labels) if y >= num_classes), None)
    if bad is not None:
        raise ConfigError(f"{test_list}:{linenos[bad]}: label {labels[bad]} is outside [0, {num_classes}), "
                          f"the {num_classes} classes of the training list")


def load_list(root: str, train_list: str, test_list: str, train_transform: Transform,
              test_transform: Transform) -> Splits:
    """Images named by a training and an evaluation list file, under one image root.

    The number of classes C is the largest training label plus one; every evaluation label
    must be below C.
    """
    for key, value in (("data.root", root), ("data.train_list", train_list), ("data.test_list", test_list)):
        if not value:
            raise ConfigError(f"config key '{key}' is empty; data.source=list needs it")
    if not Path(root).is_dir():
        raise ConfigError(f"image root {root} (data.root) is not a folder")
    train_paths, train_labels, _ = _read_list(Path(train_list), root, check_files=True)
    test_paths, test_labels, test_linenos = _read_list(Path(test_list), root, check_files=True)
    num_classes = max(train_labels) + 1
    _check_test_labels(test_list, test_labels, test_linenos, num_classes)
    classes = read_class_names(train_list, num_classes)
    return (FileImageDataset(train_paths, train_labels, classes, train_transform),
            FileImageDataset(test_paths, test_labels, classes, test_transform))


# ----------------------------------------------------------------------------- ImageFolder


def _folder_samples(folder: Path, class_to_idx: dict[str, int] | None, allow_empty: bool) -> list[tuple[str, int]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    try:
        return make_dataset(str(folder), class_to_idx, IMG_EXTENSIONS, allow_empty=allow_empty)
    except FileNotFoundError as exc:
        raise ConfigError(f"{folder}: {exc}".replace("\n", " ")) from None


def _folder_classes(folder: Path, key: str) -> list[str]:
    from torchvision.datasets.folder import find_classes

    if not folder.is_dir():
        raise ConfigError(f"image folder {folder} ({key}) is not a folder")
    try:
        return find_classes(str(folder))[0]
    except FileNotFoundError:
        raise ConfigError(f"image folder {folder} ({key}) has no class subfolders") from None


def load_folder(root: str, train_dir: str, test_dir: str, train_transform: Transform,
                test_transform: Transform) -> Splits:
    """ImageFolder layout: ``root/train_dir/<class>/<image>`` and ``root/test_dir/<class>/<image>``.

    Classes are the training subfolders in sorted order (torchvision's ImageFolder rule); the
    evaluation folder may hold a subset of them, labelled with the training indices.
    """
    train_root, test_root = Path(root) / train_dir, Path(root) / test_dir
    classes = _folder_classes(train_root, "data.root/data.train_dir")
    test_classes = _folder_classes(test_root, "data.root/data.test_dir")
    extra = sorted(set(test_classes) - set(classes))
    if extra:
        raise ConfigError(f"{test_root}: class folder '{extra[0]}' is not among the {len(classes)} training "
                          f"classes of {train_root}")
    class_to_idx = {c: i for i, c in enumerate(classes)}
    train = _folder_samples(train_root, class_to_idx, allow_empty=False)
    test = _folder_samples(test_root, {c: class_to_idx[c] for c in test_classes}, allow_empty=True)
    return (FileImageDataset([p for p, _ in train], [y for _, y in train], classes, train_transform),
            FileImageDataset([p for p, _ in test], [y for _, y in test], classes, test_transform))
