"""The demo task as PNG files and list files, so that a demo run can be given a validation split:
``python bench/demo_val_split.py OUT [PER_CLASS]`` writes OUT/train.txt (the long-tailed training images the demo
preset keeps), OUT/val.txt (PER_CLASS images of each class, default 100, drawn with seed 0 from the training images
the long-tail profile leaves out, so never trained on) and OUT/test.txt (the official test set), with their PNGs.
Then ``lpt eval --run RUN --data source=list root=OUT train_list=OUT/train.txt test_list=OUT/test.txt
val_list=OUT/val.txt ...`` evaluates a demo run as on the in-memory images (the same pixels) with a validation split
(``--posthoc-tau auto``, ``--tau-norm auto``)."""

import sys
from pathlib import Path

import numpy as np

from lpt.config import load_config
from lpt.data.build import longtail_keep
from lpt.data.sources import load_fashion_mnist


def write_split(out: Path, name: str, dataset, indices) -> None:
    (out / name).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in indices:
        dataset.load(int(i)).save(out / name / f"{i}.png")
        lines.append(f"{name}/{i}.png {dataset.targets[i]}")
    (out / f"{name}.txt").write_text("\n".join(lines) + "\n")


def main(out: Path, per_class: int = 100) -> None:
    data = load_config("demo").data
    train, test = load_fashion_mnist(data.root, data.download, None, None)
    keep = longtail_keep(train.targets, train.classes, data)
    left = np.setdiff1d(np.arange(len(train)), keep)
    rng = np.random.default_rng(0)
    targets = np.asarray(train.targets)
    val = np.concatenate([rng.choice(left[targets[left] == c], per_class, replace=False)
                          for c in range(len(train.classes))])
    write_split(out, "train", train, keep)
    write_split(out, "val", train, np.sort(val))
    write_split(out, "test", test, range(len(test)))


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(int(a) for a in sys.argv[2:]))
