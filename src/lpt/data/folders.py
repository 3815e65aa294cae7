"""Which files below a folder are images: one list of extensions for training, evaluation, ``lpt data-check``,
``lpt data-stats`` and ``lpt predict``, and the entries every listing leaves out, each counted and said.

Left out: hidden entries (a name starting with a dot: Jupyter's ``.ipynb_checkpoints``, ``.git``, ``.DS_Store``,
macOS's AppleDouble ``._photo.jpg`` companions, which hold metadata, not pixels), macOS's ``__MACOSX`` archive folder,
files whose extension is not an image format Pillow reads, and files beside the class folders of an ImageFolder.
torchvision's ``ImageFolder`` makes a hidden folder a class (shifting every label after it), reads ``._x.jpg`` as an
image and knows no GIF; the listing here otherwise follows its order (``make_dataset``: folders sorted by path,
following links, then file names sorted).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lpt.utils import log

# Image formats Pillow reads, by extension (lower case); the formats of torchvision's IMG_EXTENSIONS and GIF, PBM/PNM,
# JFIF. An animated GIF gives its first frame.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm", ".pbm", ".pnm")
MACOS_ARCHIVE_FOLDER = "__MACOSX"


def is_hidden(name: str) -> bool:
    """Whether a folder entry is left out of every listing: hidden (``.x``, AppleDouble ``._x``) or ``__MACOSX``."""
    return name.startswith(".") or name == MACOS_ARCHIVE_FOLDER


def is_image(name: str) -> bool:
    """Whether a file name has one of :data:`IMAGE_EXTENSIONS` (any case) and is not hidden."""
    return not is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class Skipped:
    """The entries a listing left out, as paths.

    Attributes:
        hidden: hidden folders and files, AppleDouble files and ``__MACOSX`` (a folder counts once).
        not_images: files whose extension is not an image format.
        loose: files beside the class folders, in no class.
    """

    hidden: list[str] = field(default_factory=list)
    not_images: list[str] = field(default_factory=list)
    loose: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.hidden) + len(self.not_images) + len(self.loose)

    def line(self, folder: str | Path) -> str:
        """``"<folder>: skipped 2 hidden or macOS entries (.ipynb_checkpoints, ...), ..."``: what was left out."""
        parts = []
        for paths, one, many in ((self.hidden, "hidden or macOS entry", "hidden or macOS entries"),
                                 (self.not_images, "file that is not an image", "files that are not images"),
                                 (self.loose, "file outside the class folders", "files outside the class folders")):
            if paths:
                names = ", ".join(os.path.relpath(p, folder) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
                parts.append(f"{len(paths)} {one if len(paths) == 1 else many} ({names})")
        return f"{folder}: skipped " + "; ".join(parts)

    def say(self, folder: str | Path) -> None:
        """Log :meth:`line` as a warning where anything was left out."""
        if len(self):
            log.warning("%s; images: %s", self.line(folder), " ".join(IMAGE_EXTENSIONS))


def image_files(folder: str | Path, skipped: Skipped) -> list[str]:
    """The image files below ``folder`` (recursively, following links): folders sorted by path, then names sorted;
    what is left out is added to ``skipped``."""
    found = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        skipped.hidden += [os.path.join(root, d) for d in sorted(dirs) if is_hidden(d)]
        dirs[:] = [d for d in dirs if not is_hidden(d)]  # not descended into
        skipped.hidden += [os.path.join(root, n) for n in sorted(names) if is_hidden(n)]
        skipped.not_images += [os.path.join(root, n) for n in sorted(names) if not is_hidden(n) and not is_image(n)]
        found.append((root, [os.path.join(root, n) for n in sorted(names) if is_image(n)]))
    return [path for _, paths in sorted(found) for path in paths]


def class_folders(folder: str | Path, skipped: Skipped) -> list[str]:
    """The class folders of an ImageFolder split, sorted (its subfolders but hidden ones and ``__MACOSX``); hidden
    entries and loose files are added to ``skipped``."""
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    skipped.hidden += [e.path for e in entries if is_hidden(e.name)]
    skipped.loose += [e.path for e in entries if not is_hidden(e.name) and not e.is_dir()]
    return [e.name for e in entries if not is_hidden(e.name) and e.is_dir()]
