"""Training crops decoded at the size they need (``data.decode=fast``), and the crop box every decode path shares.

The exact path (``data.decode=exact``) decodes every pixel of an image file, then torchvision's RandomResizedCrop
cuts a box out of it and resizes the box to ``img_size``. On an 800 x 600 JPEG much of that work is wasted: the box
holds on average about half the pixels, and resizing a large box costs as much as decoding. Here the box is drawn
first, from the image's size in the file header (its sides swapped where its EXIF orientation turns it by a
quarter) and by the very calls the exact path makes (:class:`CropDraw`, so
for one augmentation key the box and the flip are the same); libjpeg-turbo then decodes the file at the smallest of
its DCT scales 1, 1/2, 1/4, 1/8 at which the box still spans ``img_size`` pixels both ways; the box, mapped onto that
image, is resized to ``img_size`` and flipped. A photo stored sideways or mirrored (EXIF orientation 2..8) has its
box drawn on the image as shown, mapped onto the stored image for decoding, and its decoded pixels turned upright
before the resize, as ``ImageOps.exif_transpose`` turns the exact path's image.

The decode reads only the box's region where lpt's C extension ``_jpegcrop`` was built (it needs libjpeg-turbo's
headers at install): no inverse DCT outside the box, no entropy decoding below it, the same pixels as a whole decode.
Without it simplejpeg decodes the whole image at that scale, with the same result, slower on large JPEGs.

The crop differs from the exact path's by the resampling only. Where the file is decoded at full scale (the box's
shorter side is under twice ``img_size``), torch's antialiased resize replaces PIL's and agrees with it within 1
grey level; where it is decoded smaller, the DCT-domain downscale replaces part of the antialiasing filter
(tests/test_decode.py pins the bound; README gives the measured speed and difference). Files simplejpeg does not
decode (PNG, CMYK JPEGs, a JPEG it finds corrupt) are decoded whole by :func:`load_rgb`, as the exact path decodes
them, and cropped the same way.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import simplejpeg
import torch
from PIL import Image
from torch.utils.data import Dataset

from lpt.config import DataConfig
from lpt.data.datasets import DECODE_ERRORS, FileImageDataset, exif_orientation, load_rgb
from lpt.data.transforms import rrc_flip

try:
    from lpt.data import _jpegcrop
except ImportError:  # not built: no libjpeg-turbo headers where lpt was installed (pyproject.toml's ext-modules)
    _jpegcrop = None

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
# libjpeg's power-of-two reductions: 1/2 and 1/4 have SIMD inverse DCTs; 3/8 ... 7/8 decode slower than full scale
REDUCTIONS = (8, 4, 2)
# JPEG colour spaces decoded by simplejpeg (and nvJPEG); CMYK and YCCK go through PIL, which knows Adobe's inverted CMYK
DECODED_COLOURS = ("YCbCr", "Gray")


# EXIF orientation -> (transpose, flip rows, flip columns): the image as shown is the stored one transposed (rows and
# columns swapped) if so, then flipped. Pillow's ImageOps.exif_transpose: 2 FLIP_LEFT_RIGHT, 3 ROTATE_180,
# 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90 (tests/test_decode.py checks each).
ORIENTATIONS = {1: (False, False, False), 2: (False, False, True), 3: (False, True, True), 4: (False, True, False),
                5: (True, False, False), 6: (True, False, True), 7: (True, True, True), 8: (True, True, False)}


class Box(NamedTuple):
    """A crop box in pixels of the full image, as torchvision's RandomResizedCrop draws it."""

    top: int
    left: int
    height: int
    width: int


class CropDraw:
    """The random part of ``rrc_flip`` from an image's size alone: the RandomResizedCrop box and the horizontal flip,
    drawn from torch's generator by the same calls, in the same order, as the exact path makes them on the decoded
    image (``RandomResizedCrop.make_params``, then RandomHorizontalFlip's ``torch.rand(1) < p``)."""

    def __init__(self, cfg: DataConfig):
        self.crop, self.flip = rrc_flip(cfg)

    def __call__(self, height: int, width: int) -> tuple[Box, bool]:
        params = self.crop.make_params([torch.empty(0, height, width)])  # reads the size only
        return Box(params["top"], params["left"], params["height"], params["width"]), bool(torch.rand(1) < self.flip.p)


def reduction_for(box: Box, size: int) -> int:
    """The largest of 8, 4, 2 by which the image may be decoded smaller with the box still ``size`` pixels or more
    on both sides; 1: decode at full scale."""
    return next((r for r in REDUCTIONS if min(box.height, box.width) >= r * size), 1)


def read_bytes(path: str) -> bytes:
    """The file's bytes; empty where it cannot be read (:func:`load_rgb` then names the problem, as it does on the
    exact path)."""
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


class JpegHeader(NamedTuple):
    """What a JPEG's header says: its stored size and its EXIF orientation (1..8; 1: stored as shown)."""

    height: int
    width: int
    orientation: int = 1

    @property
    def upright(self) -> tuple[int, int]:
        """``(height, width)`` of the image as shown: orientations 5..8 swap the sides."""
        return (self.width, self.height) if ORIENTATIONS[self.orientation][0] else (self.height, self.width)


def jpeg_header(data: bytes) -> JpegHeader | None:
    """The header of a JPEG that simplejpeg decodes to RGB (YCbCr or grey); None otherwise. The orientation is read
    by PIL from the header alone (:func:`lpt.data.datasets.exif_orientation`, as the exact path reads it)."""
    if not data:
        return None
    try:
        height, width, colours, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colours not in DECODED_COLOURS:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return JpegHeader(height, width, exif_orientation(image))
    except DECODE_ERRORS:  # a header PIL cannot read: the exact path's decoder names the file
        return None


def stored_box(box: Box, header: JpegHeader) -> Box:
    """The box of the stored image that ``box`` of the image as shown covers."""
    transpose, flip_rows, flip_cols = ORIENTATIONS[header.orientation]
    height, width = header.upright
    top = height - box.top - box.height if flip_rows else box.top
    left = width - box.left - box.width if flip_cols else box.left
    return Box(left, top, box.width, box.height) if transpose else Box(top, left, box.height, box.width)


def turn_upright(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """Stored pixels ``[C, H, W]`` as shown: transposed and flipped as ``ImageOps.exif_transpose`` turns them."""
    transpose, flip_rows, flip_cols = ORIENTATIONS[orientation]
    pixels = pixels.transpose(1, 2) if transpose else pixels
    dims = [d for d, flip in ((1, flip_rows), (2, flip_cols)) if flip]
    return pixels.flip(dims) if dims else pixels


def decode_reduced(data: bytes, size: tuple[int, int], reduction: int) -> np.ndarray | None:
    """RGB pixels ``[ceil(H / r), ceil(W / r), 3]`` of a JPEG decoded at DCT scale ``1 / r``; None where libjpeg-turbo
    finds the data corrupt or truncated (PIL then decodes it, or names it unreadable, as on the exact path)."""
    shape = (-(-size[0] // reduction), -(-size[1] // reduction))
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=shape[0], min_width=shape[1])
    except ValueError:
        return None
    return pixels if pixels.shape[:2] == shape else None


def whole_decode_note() -> str | None:
    """Why ``data.decode=fast`` decodes each JPEG whole, where it does; None where it decodes the box only."""
    if _jpegcrop is None:
        return ("lpt's cropped JPEG decoder is not built (libjpeg-turbo's headers were missing when lpt was "
                "installed: README, Performance); JPEGs are decoded whole at the reduced scale, the same crops, slower")
    return None


def ends_whole(data: bytes) -> bool:
    """Whether a JPEG holds its end-of-image marker after its last start-of-scan: one that does not was cut short, and
    a decoder that stops above the cut, or one that does not check (nvJPEG), would not notice. Entropy-coded data
    cannot hold either marker (a 0xFF byte there is followed by 0x00), so bytes after the end do not matter."""
    return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") >= 0


def decode_box(data: bytes, size: tuple[int, int], box: Box, reduction: int) -> tuple[np.ndarray | None, Box]:
    """The pixels of the JPEG at DCT scale ``1 / reduction`` that ``box`` covers (its hull in whole scaled pixels)
    and ``box`` moved to match them; (None, box) where libjpeg-turbo finds the data corrupt. With ``_jpegcrop``
    only the hull is decoded, but only for a file that :func:`ends_whole`: a truncated file is decoded whole, so
    that it is named whatever the box (libjpeg would not notice a truncation below the box)."""
    if _jpegcrop is None or not ends_whole(data):
        return decode_reduced(data, size, reduction), box
    y0, x0 = box.top // reduction, box.left // reduction
    y1 = min(-(-(box.top + box.height) // reduction), -(-size[0] // reduction))
    x1 = min(-(-(box.left + box.width) // reduction), -(-size[1] // reduction))
    pixels = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    try:
        _jpegcrop.decode_region(data, pixels, reduction, y0, x0, y1 - y0, x1 - x0)
    except ValueError:
        return None, box
    return pixels, box._replace(top=box.top - y0 * reduction, left=box.left - x0 * reduction)


class Region(NamedTuple):
    """A box in pixels of a decoded image; its edges are fractional where the image was decoded at a reduced scale."""

    top: float
    left: float
    bottom: float
    right: float


def box_hull(pixels: np.ndarray, box: Box, reduction: int) -> tuple[torch.Tensor, Region]:
    """The whole pixels of ``pixels`` (the image decoded at ``1 / reduction``, [H, W, 3]) that ``box`` (in full-image
    pixels) covers, as uint8 [3, h, w] (strided as [h, w, 3]), and the box in them."""
    top, left = box.top / reduction, box.left / reduction
    bottom, right = (box.top + box.height) / reduction, (box.left + box.width) / reduction
    y0, x0 = math.floor(top), math.floor(left)
    hull = torch.from_numpy(pixels[y0:math.ceil(bottom), x0:math.ceil(right)]).permute(2, 0, 1)
    return hull, Region(top - y0, left - x0, bottom - y0, right - x0)


def hull_upright(hull: torch.Tensor, region: Region, orientation: int) -> tuple[torch.Tensor, Region]:
    """A stored image's hull ``[3, h, w]`` and the region in it, both as shown (:func:`turn_upright`)."""
    transpose, flip_rows, flip_cols = ORIENTATIONS[orientation]
    if transpose:
        region = Region(region.left, region.top, region.right, region.bottom)
    height, width = (hull.shape[2], hull.shape[1]) if transpose else (hull.shape[1], hull.shape[2])
    if flip_rows:
        region = region._replace(top=height - region.bottom, bottom=height - region.top)
    if flip_cols:
        region = region._replace(left=width - region.right, right=width - region.left)
    return turn_upright(hull, orientation), region


def resize_region(hull: torch.Tensor, region: Region, reduction: int, size: int, interpolation: str) -> torch.Tensor:
    """``region`` of ``hull`` (uint8 [3, h, w], decoded at ``1 / reduction``) resized to ``size`` x ``size``: uint8
    [3, size, size], strided as [size, size, 3] (collating copies it anyway).

    At full scale with torch's antialiased resize, 3-4x faster than PIL's and within 1 grey level of it (on the
    channels-last layout, whatever the orientation turned, so that its uint8 kernel is the one that runs). On a
    reduced image the region has fractional edges, which PIL's ``resize(box=...)`` takes exactly; torch's kernel
    anchors its grid at a whole pixel (a half-pixel shift costs more on noisy images than PIL's time saves). Either
    resamples the region's pixels only, as the exact path's crop-then-resize does."""
    if reduction == 1:
        top, left, bottom, right = map(int, region)  # whole pixels at full scale
        crop = hull[None, :, top:bottom, left:right].contiguous(memory_format=torch.channels_last)
        return torch.nn.functional.interpolate(crop, size=(size, size), mode=interpolation, antialias=True)[0]
    image = Image.fromarray(np.ascontiguousarray(hull.permute(1, 2, 0).numpy()))
    box = (region.left, region.top, region.right, region.bottom)
    out = image.resize((size, size), RESAMPLE[interpolation], box=box)
    return torch.from_numpy(np.array(out)).permute(2, 0, 1)


class FastCrop:
    """``data.decode=fast``: an image file's path -> its training crop, uint8 [3, img_size, img_size] (the box and
    flip of :class:`CropDraw`, drawn on the image as shown, the JPEG decoded at the scale the box needs; module
    docstring)."""

    def __init__(self, cfg: DataConfig):
        self.draw, self.size, self.interpolation = CropDraw(cfg), cfg.img_size, cfg.interpolation

    def __call__(self, path: str) -> torch.Tensor:
        data = read_bytes(path)
        return self.crop(path, data, jpeg_header(data))

    def crop(self, path: str, data: bytes, header: JpegHeader | None) -> torch.Tensor:
        """The crop of the file at ``path`` whose bytes are ``data`` and whose :func:`jpeg_header` is ``header``: the
        box drawn on the image as shown, mapped onto the stored image, decoded there, then turned upright."""
        pixels = None
        if header is not None:
            box, flip = self.draw(*header.upright)
            reduction = reduction_for(box, self.size)
            stored = stored_box(box, header)
            pixels, stored = decode_box(data, (header.height, header.width), stored, reduction)
        if pixels is None:  # decoded whole by PIL, as the exact path decodes it (or named unreadable)
            image = load_rgb(path)  # upright
            if header is None:
                box, flip = self.draw(image.height, image.width)
            hull, region = box_hull(np.array(image), box, 1)
            reduction = 1
        else:
            hull, region = hull_upright(*box_hull(pixels, stored, reduction), header.orientation)
        out = resize_region(hull, region, reduction, self.size, self.interpolation)
        return out.flip(-1) if flip else out


class FileCrops(Dataset):
    """``(reader(path), label)`` for the files of a :class:`FileImageDataset`: a training set whose reader decodes
    and crops (``data.decode`` fast or gpu) in place of the dataset's PIL transform; an unreadable file raises as
    the dataset's own ``load`` does. Same length, labels and classes."""

    def __init__(self, files: FileImageDataset, reader: Callable[[str], Any]):
        self.files, self.reader = files, reader
        self.targets, self.classes = files.targets, files.classes

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.files.read(index, self.reader), self.targets[index]
