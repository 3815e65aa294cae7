"""``lpt data-check``: decode every image of a config's splits, or of one list file, before a run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lpt.data.build import build_datasets
from lpt.data.datasets import FileImageDataset
from lpt.data.scan import BadImage, scan_images
from lpt.data.sources import _read_list, warn_duplicates


@dataclass
class DataCheck:
    """What :func:`check_config` or :func:`check_list_file` found.

    Attributes:
        files: image files scanned per split (0 for an in-memory source).
        bad: the unreadable ones, skipped (only with ``skip_bad_images``; otherwise the first one raised).
    """

    files: dict[str, int]
    bad: list[BadImage]

    def summary(self) -> str:
        total = sum(self.files.values())
        splits = ", ".join(f"{k} {v:,}" for k, v in self.files.items())
        if not total:
            return "no image files to check (the images are held in memory)"
        if not self.bad:
            return f"checked {total:,} images ({splits}): all readable"
        return f"checked {total:,} images ({splits}): {len(self.bad):,} unreadable, skipped"


def check_config(cfg) -> DataCheck:
    """Build the datasets of a ``DataConfig`` as training would, then decode every image file of both splits.

    Raises:
        ConfigError: a problem with the list files, labels or classes, or (without
            ``cfg.skip_bad_images``) a missing image.
        BadImageError: without ``cfg.skip_bad_images``, the first unreadable image, with its list line.
    """
    splits = build_datasets(cfg)
    if not cfg.skip_bad_images:
        for split, dataset in (("train", splits.train), ("test", splits.test)):
            scan_images(dataset, split, cfg.num_workers, stop_at_first=True)
    files = {split: (len(ds) + sum(b.split == split for b in splits.bad_images)
                     if isinstance(ds, FileImageDataset) else 0)
             for split, ds in (("train", splits.train), ("test", splits.test))}
    return DataCheck(files, splits.bad_images)


def check_list_file(list_file: str, root: str, skip_bad_images: bool = False, num_workers: int = 0) -> DataCheck:
    """Decode every image of one ``relative/path label`` list file under ``root``.

    Raises as :func:`check_config` does; with ``skip_bad_images`` missing images are listed, not raised.
    """
    paths, labels, linenos = _read_list(Path(list_file), root, check_files=not skip_bad_images)
    warn_duplicates(list_file, paths, labels, linenos)
    dataset = FileImageDataset(paths, labels, [], None, [f"{list_file}:{n}" for n in linenos])
    bad = scan_images(dataset, "list", num_workers, stop_at_first=not skip_bad_images)
    return DataCheck({"list": len(dataset)}, bad)
