"""``lpt data-check``: decode every image of a config's splits, or of one list file, before a run, and list every
unreadable one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from lpt.config import DataConfig
from lpt.data.build import build_datasets
from lpt.data.datasets import SKIP_HINT, FileImageDataset
from lpt.data.scan import BadImage, scan_images
from lpt.data.sources import _read_list, warn_duplicates


@dataclass
class DataCheck:
    """What :func:`check_config` or :func:`check_list_file` found.

    Attributes:
        files: image files scanned per split (0 for an in-memory source).
        bad: every unreadable or missing image, in split and dataset order.
        skip_bad_images: whether the check was asked to skip them (as training with ``--skip-bad-images`` would);
            without, any bad image fails the check.
    """

    files: dict[str, int]
    bad: list[BadImage]
    skip_bad_images: bool = False

    @property
    def passed(self) -> bool:
        """Whether a run on these images would start: all readable, or the unreadable ones skipped."""
        return not self.bad or self.skip_bad_images

    def summary(self) -> str:
        total = sum(self.files.values())
        splits = ", ".join(f"{k} {v:,}" for k, v in self.files.items())
        if not total:
            return "no image files to check (the images are held in memory)"
        if not self.bad:
            return f"checked {total:,} images ({splits}): all readable"
        if self.skip_bad_images:
            return f"checked {total:,} images ({splits}): {len(self.bad):,} unreadable, skipped"
        return f"checked {total:,} images ({splits}): {len(self.bad):,} unreadable; {SKIP_HINT}"


def check_config(cfg: DataConfig) -> DataCheck:
    """Build the datasets of a ``DataConfig`` as training would, then decode every image file of both splits, listing
    every unreadable or missing one (each with its list line where it has one) rather than stopping at the first.

    Raises:
        ConfigError: a problem with the list files, labels or classes (a class left without a readable training
            image among them).
    """
    splits = build_datasets(dataclasses.replace(cfg, skip_bad_images=True))
    files = {split: (len(ds) + sum(b.split == split for b in splits.bad_images)
                     if isinstance(ds, FileImageDataset) else 0)
             for split, ds in (("train", splits.train), ("test", splits.test))}
    return DataCheck(files, splits.bad_images, cfg.skip_bad_images)


def check_list_file(list_file: str, root: str, skip_bad_images: bool = False, num_workers: int = 0) -> DataCheck:
    """Decode every image of one ``relative/path label`` list file under ``root``, listing every unreadable or
    missing one as :func:`check_config` does."""
    paths, labels, linenos = _read_list(Path(list_file), root, check_files=False)
    warn_duplicates(list_file, paths, labels, linenos)
    dataset = FileImageDataset(paths, labels, [], None, [f"{list_file}:{n}" for n in linenos])
    return DataCheck({"list": len(dataset)}, scan_images(dataset, "list", num_workers), skip_bad_images)
