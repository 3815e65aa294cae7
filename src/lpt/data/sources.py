"""Readers of the image sources: Fashion-MNIST (IDX), CIFAR-100, split list files, iNaturalist
JSON annotations, ImageFolder (optionally through a class index file).

Each ``load_*`` function returns the training and the evaluation dataset of one source, as
:class:`~lpt.data.datasets.ImageDataset` objects sharing one list of class names; each
``load_*_test`` returns the evaluation dataset alone (evaluating a finished run needs no
training images), and each ``*_train_labels`` the training labels and class names without
opening an image. Problems a user can fix (missing files, malformed lines, unknown labels) raise
a one-line ConfigError that names the file, and the line or the JSON entry where there is one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from lpt.config import ConfigError
from lpt.data.datasets import ArrayImageDataset, FileImageDataset, ImageDataset, Transform
from lpt.data.folders import IMAGE_EXTENSIONS, Skipped, class_folders, image_files
from lpt.data.idx import read_idx
from lpt.utils import log

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


def _fashion_mnist(root: str, download: bool, train: bool, transform: Transform | None) -> ArrayImageDataset:
    images, labels = fashion_mnist_arrays(root, train, download)
    return ArrayImageDataset(images, labels.tolist(), FASHION_MNIST_CLASSES, transform)


def load_fashion_mnist(root: str, download: bool, train_transform: Transform, test_transform: Transform) -> Splits:
    """Fashion-MNIST (60,000 training and 10,000 test images, 10 classes), kept in memory."""
    return _fashion_mnist(root, download, True, train_transform), _fashion_mnist(root, download, False, test_transform)


def load_fashion_mnist_test(root: str, download: bool, test_transform: Transform) -> ImageDataset:
    """The Fashion-MNIST test split alone."""
    return _fashion_mnist(root, download, False, test_transform)


def fashion_mnist_train_labels(root: str, download: bool) -> tuple[list[int], list[str]]:
    """Training labels and class names of Fashion-MNIST."""
    return fashion_mnist_arrays(root, True, download)[1].tolist(), list(FASHION_MNIST_CLASSES)


# ----------------------------------------------------------------------------- CIFAR-100


def _cifar100(root: str, download: bool, train: bool, transform: Transform | None) -> ArrayImageDataset:
    from torchvision.datasets import CIFAR100

    base = Path(root).expanduser() if root else CACHE_ROOT / "cifar100"
    if not download and not (base / "cifar-100-python").is_dir():
        raise ConfigError(
            f"CIFAR-100 not found: {base} has no cifar-100-python folder; set data.root or data.download=true"
        )
    try:
        ds = CIFAR100(str(base), train=train, download=download)
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"CIFAR-100 in {base / 'cifar-100-python'} cannot be read: {exc}") from None
    return ArrayImageDataset(ds.data, ds.targets, ds.classes, transform)


def load_cifar100(root: str, download: bool, train_transform: Transform, test_transform: Transform) -> Splits:
    """CIFAR-100 through torchvision (``root/cifar-100-python``; empty root: ~/.cache/lpt/cifar100)."""
    return _cifar100(root, download, True, train_transform), _cifar100(root, download, False, test_transform)


def load_cifar100_test(root: str, download: bool, test_transform: Transform) -> ImageDataset:
    """The CIFAR-100 test split alone (10,000 images, 100 per class)."""
    return _cifar100(root, download, False, test_transform)


def cifar100_train_labels(root: str, download: bool) -> tuple[list[int], list[str]]:
    """Training labels (50,000, in file order) and class names of CIFAR-100."""
    ds = _cifar100(root, download, True, None)
    return ds.targets, ds.classes


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


def warn_duplicates(path: str | Path, paths: list[str], labels: list[int], linenos: list[int]) -> None:
    """Warn once about repeated images of a list file. They are kept as given: each line is one sample
    (a repeat weighs that image double), since the published splits are used as they are. Called once
    the splits are read without error, so that an error stays the only line printed."""
    first: dict[str, int] = {}
    repeats, conflicts = [], []
    for i, p in enumerate(paths):
        j = first.setdefault(p, i)
        if j != i:
            (repeats if labels[j] == labels[i] else conflicts).append((i, j))
    if repeats:
        i, j = repeats[0]
        log.warning("%s:%d: repeats line %d (%d repeated lines in all); repeats are kept, each one a sample",
                    path, linenos[i], linenos[j], len(repeats))
    if conflicts:
        i, j = conflicts[0]
        log.warning("%s:%d: image %s is labelled %d here and %d on line %d (%d lines relabel an earlier image); "
                    "both are kept", path, linenos[i], paths[i], labels[i], labels[j], linenos[j], len(conflicts))


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


def classnames_beside(list_path: str | Path) -> Path:
    """``classnames.txt`` beside a list file (Places-LT's and ImageNet-LT's ``folder readable name`` lines)."""
    return Path(list_path).parent / "classnames.txt"


def read_class_names(list_path: str | Path, num_classes: int) -> list[str]:
    """Class names for a list file: ``classnames.txt`` beside it, else the labels as strings.

    ``classnames.txt`` has one class per line, in label order; its first whitespace-separated
    field (the class folder name) is the name. Lines past ``num_classes`` are ignored.
    """
    names_file = classnames_beside(list_path)
    if not names_file.is_file():
        return [str(c) for c in range(num_classes)]
    names = [text.split()[0] for _, text in _list_lines(names_file)]
    if len(names) < num_classes:
        raise ConfigError(f"{names_file}: {len(names)} class names; {list_path} has labels up to {num_classes - 1}")
    return names[:num_classes]


def _check_labels_below(list_path: str, labels: list[int], linenos: list[int], num_classes: int, what: str) -> None:
    """Every label of a list file is below ``num_classes``; the first that is not is named with its line."""
    bad = next((i for i, y in enumerate(labels) if y >= num_classes), None)
    if bad is not None:
        raise ConfigError(f"{list_path}:{linenos[bad]}: label {labels[bad]} is outside [0, {num_classes}), the "
                          f"{num_classes} classes {what}")


def _check_train_labels(train_list: str, labels: list[int], linenos: list[int]) -> None:
    """Every training label names a class with training images: a label past ``classnames.txt`` or above an
    unused label (a typo, as 7 among 0..5) raises a ConfigError naming its line and the labels expected."""
    names_file = classnames_beside(train_list)
    if names_file.is_file():
        _check_labels_below(train_list, labels, linenos, len(_list_lines(names_file)), f"named in {names_file}")
    used = set(labels)
    gap = next((c for c in range(max(labels)) if c not in used), None)
    if gap is not None:
        above = [i for i, y in enumerate(labels) if y > gap]
        lines = f"{len(above)} lines have labels" if len(above) > 1 else "1 line has a label"
        raise ConfigError(f"{train_list}:{linenos[above[0]]}: label {labels[above[0]]} is outside [0, {gap}), the "
                          f"labels with training images: no line has label {gap} ({lines} above it)")


def _require(source: str, **keys: str) -> None:
    """Raise ConfigError naming the first empty ``data.*`` key that ``source`` needs."""
    for key, value in keys.items():
        if not value:
            raise ConfigError(f"config key 'data.{key}' is empty; data.source={source} needs it")


def _check_root(root: str) -> None:
    if not Path(root).is_dir():
        raise ConfigError(f"image root {root} (data.root) is not a folder")


def load_list(root: str, train_list: str, test_list: str, train_transform: Transform,
              test_transform: Transform, check_files: bool = True) -> Splits:
    """Images named by a training and an evaluation list file, under one image root.

    The number of classes C is the largest training label plus one; every evaluation label
    must be below C. ``check_files=False`` leaves missing images to the reader (or to the scan of
    ``data.skip_bad_images``); each dataset knows the list line of each image (``origin``).
    """
    _require("list", root=root, train_list=train_list, test_list=test_list)
    _check_root(root)
    train_paths, train_labels, train_linenos = _read_list(Path(train_list), root, check_files)
    test_paths, test_labels, test_linenos = _read_list(Path(test_list), root, check_files)
    _check_train_labels(train_list, train_labels, train_linenos)
    num_classes = max(train_labels) + 1
    _check_labels_below(test_list, test_labels, test_linenos, num_classes, "of the training list")
    classes = read_class_names(train_list, num_classes)
    warn_duplicates(train_list, train_paths, train_labels, train_linenos)
    warn_duplicates(test_list, test_paths, test_labels, test_linenos)
    return (FileImageDataset(train_paths, train_labels, classes, train_transform,
                             [f"{train_list}:{n}" for n in train_linenos]),
            FileImageDataset(test_paths, test_labels, classes, test_transform,
                             [f"{test_list}:{n}" for n in test_linenos]))


def load_list_test(root: str, train_list: str, test_list: str, test_transform: Transform) -> ImageDataset:
    """The evaluation list alone, its images checked; the training images are never looked at.

    C is the largest label of the training list plus one when that file exists (its labels are
    read, as :func:`load_list` does), else the largest evaluation label plus one.
    """
    _require("list", root=root, test_list=test_list)
    _check_root(root)
    test_paths, test_labels, test_linenos = _read_list(Path(test_list), root, check_files=True)
    if train_list and Path(train_list).is_file():
        num_classes = max(_read_list(Path(train_list), None, check_files=False)[1]) + 1
        _check_labels_below(test_list, test_labels, test_linenos, num_classes, "of the training list")
        classes = read_class_names(train_list, num_classes)
    else:
        classes = read_class_names(test_list, max(test_labels) + 1)
    origins = [f"{test_list}:{n}" for n in test_linenos]
    return FileImageDataset(test_paths, test_labels, classes, test_transform, origins)


def list_train_labels(train_list: str) -> tuple[list[int], list[str]]:
    """Labels of a training list and its class names (C = largest label + 1), without the images."""
    _require("list", train_list=train_list)
    labels = _read_list(Path(train_list), None, check_files=False)[1]
    return labels, read_class_names(train_list, max(labels) + 1)


# ----------------------------------------------------------------------------- iNaturalist JSON annotations


def _load_json(path: Path, key: str) -> dict:
    if not path.is_file():
        raise ConfigError(f"annotation file {path} ({key}) does not exist")
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid JSON (not UTF-8 text)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object with 'images', 'annotations' and 'categories', "
                          f"got {type(data).__name__}")
    return data


def _entries(data: dict, path: Path, key: str) -> list[dict]:
    """The list ``data[key]``, every entry an object, or ConfigError naming the file and the entry."""
    if key not in data:
        raise ConfigError(f"{path}: no '{key}' list; expected COCO-style 'images', 'annotations' and 'categories'")
    entries = data[key]
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: '{key}' is {type(entries).__name__}; expected a list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: {key}[{i}] is {type(entry).__name__}; expected an object")
    return entries


def _field(entry: dict, path: Path, where: str, name: str, kind: type) -> int | str:
    """``entry[name]``: an integer, or a non-empty string; ConfigError naming file, entry and field."""
    if name not in entry:
        raise ConfigError(f"{path}: {where} has no '{name}' field")
    value = entry[name]
    if kind is str and not (isinstance(value, str) and value):
        raise ConfigError(f"{path}: {where} field '{name}' is {value!r}; expected a non-empty string")
    if kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ConfigError(f"{path}: {where} field '{name}' is {value!r}; expected an integer")
    return value


def inat_categories(data: dict, path: Path) -> tuple[dict[int, int], list[str]]:
    """Labels and class names of the ``categories`` of an iNaturalist annotation file.

    The label of a category is the rank of its ``id`` among all ids, so ids 0..C-1 (iNaturalist
    2017 to 2021) are their own labels, matching the OLTR list files; the class name is ``name``.

    Returns:
        category id -> label, and the class names indexed by label.
    """
    categories = _entries(data, path, "categories")
    if not categories:
        raise ConfigError(f"{path}: 'categories' is empty")
    found: dict[int, tuple[int, str]] = {}
    for i, entry in enumerate(categories):
        cid = _field(entry, path, f"categories[{i}]", "id", int)
        name = _field(entry, path, f"categories[{i}]", "name", str)
        if cid in found:
            raise ConfigError(f"{path}: categories[{i}] repeats id {cid} (first in categories[{found[cid][0]}])")
        found[cid] = (i, name)
    ids = sorted(found)
    return {cid: label for label, cid in enumerate(ids)}, [found[cid][1] for cid in ids]


def inat_samples(data: dict, path: Path, labels_of: dict[int, int],
                 categories_file: Path | None = None) -> tuple[list[str], list[int]]:
    """``file_name`` and label of every entry of ``images``, in that order.

    Every image needs exactly one entry of ``annotations`` (``image_id``, ``category_id``); the
    category is turned into a label by ``labels_of`` (from :func:`inat_categories` of this file,
    or of ``categories_file``, the training file, for an evaluation split).
    """
    images = _entries(data, path, "images")
    annotations = _entries(data, path, "annotations")
    if not images:
        raise ConfigError(f"{path}: 'images' is empty")
    position: dict[int, int] = {}
    files = []
    for i, entry in enumerate(images):
        image_id = _field(entry, path, f"images[{i}]", "id", int)
        files.append(_field(entry, path, f"images[{i}]", "file_name", str))
        if image_id in position:
            first = position[image_id]
            raise ConfigError(f"{path}: images[{i}] repeats image id {image_id} (first in images[{first}])")
        position[image_id] = i
    labels = [-1] * len(images)
    of = f" of {categories_file}" if categories_file is not None else ""
    for j, entry in enumerate(annotations):
        where = f"annotations[{j}]"
        image_id = _field(entry, path, where, "image_id", int)
        category_id = _field(entry, path, where, "category_id", int)
        if image_id not in position:
            raise ConfigError(f"{path}: {where} field 'image_id' is {image_id}; no entry of 'images' has that id")
        if category_id not in labels_of:
            raise ConfigError(f"{path}: {where} field 'category_id' is {category_id}; not among the "
                              f"{len(labels_of)} categories{of}")
        i = position[image_id]
        if labels[i] >= 0:
            raise ConfigError(f"{path}: {where} labels image id {image_id} a second time; expected one "
                              "annotation per image")
        labels[i] = labels_of[category_id]
    unlabelled = [i for i, y in enumerate(labels) if y < 0]
    if unlabelled:
        i = unlabelled[0]
        more = f" ({len(unlabelled) - 1} more images have none)" if len(unlabelled) > 1 else ""
        raise ConfigError(f"{path}: images[{i}] (id {images[i]['id']}) has no entry in 'annotations'{more}; "
                          "every image needs a label (iNaturalist's test2018.json has none: use val2018.json)")
    return files, labels


def _join_and_check(path: Path, files: list[str], root: str | Path | None, check_files: bool) -> list[str]:
    paths = [os.path.join(root, f) for f in files] if root is not None else list(files)
    if check_files:
        missing = [i for i, p in enumerate(paths) if not os.path.isfile(p)]
        if missing:
            more = f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""
            raise ConfigError(f"{path}: images[{missing[0]}] file {paths[missing[0]]} not found{more}")
    return paths


def read_inat_json(path: str | Path, root: str | Path | None = None,
                   check_files: bool = True) -> tuple[list[str], list[int], list[str]]:
    """Read an iNaturalist annotation file (``train2018.json``, ``val2018.json``; COCO-style).

    Args:
        path: the JSON file: ``images`` (``id``, ``file_name``), ``annotations`` (``image_id``,
            ``category_id``), ``categories`` (``id``, ``name``).
        root: folder the ``file_name`` paths are relative to; None keeps them as written.
        check_files: raise on the first image that is not a file.

    Returns:
        image paths and labels in the order of ``images``, and the class names (see
        :func:`inat_categories` for the label of a category).
    """
    path = Path(path)
    data = _load_json(path, "annotation file")
    labels_of, names = inat_categories(data, path)
    files, labels = inat_samples(data, path, labels_of)
    return _join_and_check(path, files, root, check_files), labels, names


def _inat_split(json_path: str, key: str, root: str, labels_of: dict[int, int] | None = None,
                categories_file: Path | None = None,
                check_files: bool = True) -> tuple[list[str], list[int], dict[int, int], list[str]]:
    path = Path(json_path)
    data = _load_json(path, key)
    names: list[str] = []
    if labels_of is None:
        labels_of, names = inat_categories(data, path)
    files, labels = inat_samples(data, path, labels_of, categories_file)
    return _join_and_check(path, files, root, check_files), labels, labels_of, names


def _inat_origins(json_path: str, n: int) -> list[str]:
    return [f"{json_path}: images[{i}]" for i in range(n)]


def load_inat_json(root: str, train_json: str, test_json: str, train_transform: Transform,
                   test_transform: Transform, check_files: bool = True) -> Splits:
    """iNaturalist from its official annotation files (``data.train_list=train2018.json``,
    ``data.test_list=val2018.json``, ``data.root`` = the folder holding ``train_val2018/``).

    Classes are the training file's ``categories``; evaluation annotations are labelled through them.
    """
    _require("inat_json", root=root, train_list=train_json, test_list=test_json)
    _check_root(root)
    train_paths, train_labels, labels_of, classes = _inat_split(train_json, "data.train_list", root,
                                                                check_files=check_files)
    test_paths, test_labels, _, _ = _inat_split(test_json, "data.test_list", root, labels_of, Path(train_json),
                                                check_files)
    return (FileImageDataset(train_paths, train_labels, classes, train_transform,
                             _inat_origins(train_json, len(train_paths))),
            FileImageDataset(test_paths, test_labels, classes, test_transform,
                             _inat_origins(test_json, len(test_paths))))


def load_inat_json_test(root: str, train_json: str, test_json: str, test_transform: Transform) -> ImageDataset:
    """The evaluation annotation file alone; categories from the training file when it exists, else its own."""
    _require("inat_json", root=root, test_list=test_json)
    _check_root(root)
    labels_of, classes, categories_file = None, [], None
    if train_json and Path(train_json).is_file():
        categories_file = Path(train_json)
        labels_of, classes = inat_categories(_load_json(categories_file, "data.train_list"), categories_file)
    paths, labels, _, own = _inat_split(test_json, "data.test_list", root, labels_of, categories_file)
    return FileImageDataset(paths, labels, classes or own, test_transform)


def inat_train_labels(train_json: str) -> tuple[list[int], list[str]]:
    """Labels and class names of an iNaturalist training annotation file, without the images."""
    _require("inat_json", train_list=train_json)
    path = Path(train_json)
    data = _load_json(path, "data.train_list")
    labels_of, names = inat_categories(data, path)
    return inat_samples(data, path, labels_of)[1], names


# ----------------------------------------------------------------------------- ImageFolder


def _folder_classes(folder: Path, key: str, skipped: Skipped | None = None) -> list[str]:
    """The class folders of an ImageFolder split (:func:`lpt.data.folders.class_folders`: hidden ones left out)."""
    if not folder.is_dir():
        raise ConfigError(f"image folder {folder} ({key}) is not a folder")
    classes = class_folders(folder, Skipped() if skipped is None else skipped)
    if not classes:
        raise ConfigError(f"image folder {folder} ({key}) has no class subfolders")
    return classes


def _gives_labels(rows: list[list[str]]) -> bool:
    """Whether a class index's lines (split into fields) are in the ``folder_name label`` form."""
    return all(len(f) == 2 and _INTEGER.fullmatch(f[1]) for f in rows)


def index_names_classes(path: str | Path) -> bool:
    """Whether a class index file is in the ``folder_name [readable name ...]`` form, one line a label in order
    (:func:`read_class_index`), rather than ``folder_name label``."""
    return not _gives_labels([text.split() for _, text in _list_lines(Path(path))])


def read_class_index(path: str | Path) -> tuple[dict[str, int], list[str]]:
    """Read a class index file: which label each class folder name stands for (``data.class_index``).

    Two forms, told apart by the whole file (blank lines are skipped):

    - ``folder_name label`` (e.g. ``n01440764 0``): when every line has exactly two
      whitespace-separated fields and every second field is an integer, that integer is the label;
    - ``folder_name [readable name ...]`` (e.g. ImageNet-LT's ``classnames.txt``,
      ``n01440764 tench``): otherwise the label is the line's position among the non-blank lines,
      counted from 0, and the rest of the line is ignored.

    Either way folder names are unique and the labels are exactly 0..C-1, each used once; the
    class name of a label is its folder name.

    Returns:
        folder name -> label, and the folder names indexed by label.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"class index file {path} (data.class_index) does not exist")
    rows = [(lineno, text.split()) for lineno, text in _list_lines(path)]
    if not rows:
        raise ConfigError(f"{path}: empty class index; expected lines 'folder_name label' or 'folder_name name'")
    explicit = _gives_labels([f for _, f in rows])
    label_of: dict[str, int] = {}
    line_of: dict[str, int] = {}
    folder_of: dict[int, str] = {}
    for position, (lineno, fields) in enumerate(rows):
        folder, label = fields[0], int(fields[1]) if explicit else position
        if folder in label_of:
            raise ConfigError(f"{path}:{lineno}: class folder '{folder}' is listed again (first on line "
                              f"{line_of[folder]})")
        if label < 0:
            raise ConfigError(f"{path}:{lineno}: label {label} is negative; expected 0 or more")
        if label in folder_of:
            first = folder_of[label]
            raise ConfigError(f"{path}:{lineno}: label {label} is given again (first to '{first}' on line "
                              f"{line_of[first]})")
        label_of[folder], line_of[folder], folder_of[label] = label, lineno, folder
    num_classes = len(rows)
    missing = next((y for y in range(num_classes) if y not in folder_of), None)
    if missing is not None:
        raise ConfigError(f"{path}: no class folder has label {missing}; the {num_classes} labels must be "
                          f"0..{num_classes - 1}, each used once")
    return label_of, [folder_of[y] for y in range(num_classes)]


def folder_classes(root: str, train_dir: str, class_index: str = "") -> tuple[dict[str, int], list[str], str]:
    """Class folder name -> label, class names, and what they came from (for error messages).

    With a class index file (:func:`read_class_index`) the labels are the index's; without one
    they are the training folder's class subfolders in sorted order (torchvision's ImageFolder rule).
    """
    if class_index:
        label_of, names = read_class_index(class_index)
        return label_of, names, f"classes of the class index {class_index}"
    train_root = Path(root) / train_dir
    classes = _folder_classes(train_root, "data.root/data.train_dir")
    warn_case_twins(classes, train_root)
    return {c: i for i, c in enumerate(classes)}, classes, f"training classes of {train_root}"


def warn_case_twins(classes: list[str], folder: Path) -> None:
    """Warn about class folders whose names differ only in case (``Dress``, ``dress``): each is a class of its own,
    which is rarely what was meant (and on a case-insensitive file system they would be one folder)."""
    by_lower: dict[str, list[str]] = {}
    for name in classes:
        by_lower.setdefault(name.casefold(), []).append(name)
    twins = [names for names in by_lower.values() if len(names) > 1]
    if twins:
        log.warning("%s: class folders %s differ only in case; each is a class of its own (merge them if they are "
                    "one class)", folder, "; ".join(" and ".join(names) for names in twins))


def _folder_labels(folder: Path, key: str, label_of: dict[str, int], known: str, skipped: Skipped) -> dict[str, int]:
    """Label of each class subfolder of ``folder``; every subfolder must be a known class."""
    found = _folder_classes(folder, key, skipped)
    extra = sorted(set(found) - set(label_of))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ConfigError(f"{folder}: class folder '{extra[0]}'{more} is not among the {len(label_of)} {known}")
    return {c: label_of[c] for c in found}


def _folder_dataset(folder: Path, key: str, label_of: dict[str, int], known: str, classes: list[str],
                    transform: Transform | None, allow_empty: bool) -> FileImageDataset:
    """The images of an ImageFolder split, class folders in name order (torchvision's ``make_dataset`` order); what
    its listing left out (:mod:`lpt.data.folders`) is said in one line."""
    skipped = Skipped()
    files = {name: image_files(folder / name, skipped) for name in sorted(_folder_labels(folder, key, label_of, known,
                                                                                          skipped))}
    empty = [name for name, paths in files.items() if not paths]
    if empty and not allow_empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise ConfigError(f"{folder}: class folder '{empty[0]}'{more} holds no image file "
                          f"({', '.join(IMAGE_EXTENSIONS)}; hidden files are skipped)")
    skipped.say(folder)
    return FileImageDataset([p for paths in files.values() for p in paths],
                            [label_of[name] for name, paths in files.items() for _ in paths], classes, transform)


def _check_index_classes(class_index: str, train: FileImageDataset, train_root: Path) -> None:
    """Every class of a class index has training images; else a ConfigError naming its line of the index."""
    used = set(train.targets)
    empty = next((y for y in range(len(train.classes)) if y not in used), None)
    if empty is not None:
        name = train.classes[empty]
        lineno = next(n for n, text in _list_lines(Path(class_index)) if text.split()[0] == name)
        raise ConfigError(f"{class_index}:{lineno}: class '{name}' (label {empty}) has no training images: "
                          f"{train_root / name} is missing or holds no image file")


def load_folder(root: str, train_dir: str, test_dir: str, train_transform: Transform,
                test_transform: Transform, class_index: str = "") -> Splits:
    """ImageFolder layout: ``root/train_dir/<class>/<image>`` and ``root/test_dir/<class>/<image>``.

    Classes are the training subfolders in sorted order (torchvision's ImageFolder rule), or the
    classes of ``class_index`` (see :func:`read_class_index`); the evaluation folder may hold a
    subset of them, labelled the same way. An empty ``test_dir`` reads no evaluation folder (``data.holdout``
    evaluates on training images instead) and gives an empty evaluation dataset.
    """
    label_of, classes, known = folder_classes(root, train_dir, class_index)
    train = _folder_dataset(Path(root) / train_dir, "data.root/data.train_dir", label_of, known, classes,
                            train_transform, allow_empty=False)
    if class_index:
        _check_index_classes(class_index, train, Path(root) / train_dir)
    if not test_dir:
        return train, FileImageDataset([], [], classes, test_transform)
    if not (Path(root) / test_dir).is_dir():
        raise ConfigError(f"evaluation folder {Path(root) / test_dir} (data.root/data.test_dir) is not a folder; "
                          "without one, set data.holdout=0.2 (say) to evaluate on held-out training images")
    test = _folder_dataset(Path(root) / test_dir, "data.root/data.test_dir", label_of, known, classes,
                           test_transform, allow_empty=True)
    return train, test


def load_folder_test(root: str, train_dir: str, test_dir: str, test_transform: Transform,
                     class_index: str = "") -> ImageDataset:
    """The evaluation folder alone (ImageNet-Sketch: ``test_dir=sketch`` with a class index).

    Without ``class_index`` the training folder must exist, since its subfolders name the classes;
    its images are never listed.
    """
    train_root = Path(root) / train_dir
    if not class_index and not train_root.is_dir():
        raise ConfigError(f"image folder {train_root} (data.root/data.train_dir) is not a folder; without "
                          "data.class_index its subfolders name the classes")
    label_of, classes, known = folder_classes(root, train_dir, class_index)
    return _folder_dataset(Path(root) / test_dir, "data.root/data.test_dir", label_of, known, classes,
                           test_transform, allow_empty=True)


def folder_train_labels(root: str, train_dir: str, class_index: str = "") -> tuple[list[int], list[str]]:
    """Labels of the training folder's images (files are listed, not opened) and the class names."""
    label_of, classes, known = folder_classes(root, train_dir, class_index)
    train = _folder_dataset(Path(root) / train_dir, "data.root/data.train_dir", label_of, known, classes, None,
                            allow_empty=False)
    return train.targets, classes
