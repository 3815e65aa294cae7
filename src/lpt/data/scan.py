"""Scan the image files of a dataset: open, decode and convert each one, as training would.

``data.skip_bad_images`` drops the unreadable ones before training (listing them in
``bad_images.txt``); ``lpt data-check`` (``check.py``) lists them before a run, and ``lpt predict
--skip-bad-images`` leaves them out.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import DataLoader, Dataset

from lpt.data.datasets import BadImageError, FileImageDataset, ImageDataset, load_rgb
from lpt.utils import ignore_stop_signals


@dataclass(frozen=True)
class BadImage:
    """One unreadable image.

    Attributes:
        split: ``"train"`` or ``"test"``.
        index: its position in the scanned dataset.
        origin: where it is listed (``"train.txt:12"``), or its path.
        message: ``"<path>: cannot read image (<reason>)"``.
    """

    split: str
    index: int
    origin: str
    message: str

    def line(self) -> str:
        """One line naming the list line (when known), the file and the reason."""
        return self.message if self.message.startswith(self.origin) else f"{self.origin}: {self.message}"


class _Probe(Dataset):
    """``probe[i]`` is None when image i reads, else the one-line reason it does not."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> str | None:
        try:
            load_rgb(self.paths[index])
        except BadImageError as exc:
            return str(exc)
        return None


def _results(probe: _Probe, num_workers: int):
    if num_workers <= 0:
        return (probe[i] for i in range(len(probe)))
    # Workers decode in parallel; results come back in order, so the first bad image is the first listed.
    loader = DataLoader(probe, batch_size=32, num_workers=num_workers, collate_fn=list,
                        worker_init_fn=ignore_stop_signals)  # a stop signal is the main process's to handle
    return (r for batch in loader for r in batch)


def scan_images(dataset: ImageDataset, split: str, num_workers: int = 0) -> list[BadImage]:
    """The unreadable images of ``dataset`` (an in-memory dataset has none), in dataset order.

    Args:
        dataset: the dataset to scan; only a :class:`FileImageDataset` reads files.
        split: name used in the results (``"train"``, ``"test"``, ``"predict"``).
        num_workers: decoding processes; 0 decodes in this process.
    """
    if not isinstance(dataset, FileImageDataset):
        return []
    return [BadImage(split, index, dataset.origin(index), message)
            for index, message in enumerate(_results(_Probe(dataset.paths), num_workers)) if message is not None]


def drop_bad_images(dataset: ImageDataset, split: str, num_workers: int = 0) -> tuple[ImageDataset, list[BadImage]]:
    """``dataset`` without its unreadable images, and the list of those."""
    bad = scan_images(dataset, split, num_workers)
    if not bad:
        return dataset, bad
    dropped = {b.index for b in bad}
    return dataset.subset([i for i in range(len(dataset)) if i not in dropped]), bad
