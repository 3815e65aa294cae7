"""Training crops decoded on the device (``data.decode=gpu``), for machines whose cores cannot decode fast enough.

Loader processes only read each JPEG's bytes and draw its crop box and flip from the header's size
(:class:`lpt.data.decode.CropDraw`: the exact path's draws, on the image as its EXIF orientation shows it). The bytes
travel to the training process as they are (:func:`collate_encoded` keeps them as a list, since every file has its
own length), and :class:`DeviceDecode`, the training stream's ``finish``, decodes the whole batch on the device in
one ``torchvision.io.decode_jpeg`` call (nvJPEG on CUDA) as stored, crops the same boxes at full scale (mapped onto
the stored image, the region then turned upright as ``ImageOps.exif_transpose`` turns the exact path's image),
resizes them there (antialiased, the run's interpolation) and flips them, stacks uint8 [B, 3, S, S] and normalises
as :class:`lpt.data.transforms.BatchNormalize` does.

Files nvJPEG is not given (PNG, CMYK JPEGs: those simplejpeg does not decode either) are decoded and cropped by the
fast path in the loader process and travel as crops. Where the device cannot decode (no CUDA, or no nvJPEG in this
torchvision), :func:`resolve_decode` says so in one line and the run decodes as ``data.decode=fast``. Everything
but nvJPEG itself also runs with device cpu (``decode_jpeg`` on the CPU), which is how the tests run it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision import io as tvio

from lpt.config import DataConfig
from lpt.data.datasets import SKIP_HINT, BadImageError
from lpt.data.decode import (Box, FastCrop, JpegHeader, ends_whole, jpeg_header, read_bytes, stored_box, turn_upright,
                             whole_decode_note)
from lpt.data.transforms import BatchNormalize
from lpt.utils import log


@dataclass
class EncodedImage:
    """One training image as a loader process sends it: the JPEG file's bytes and header, its crop box (on the image
    as shown: the device decodes it as stored, and turns the box's region upright) and flip."""

    data: torch.Tensor  # uint8 [file size]
    header: JpegHeader
    box: Box
    flip: bool
    path: str  # named when the device cannot decode it


class EncodedCrop:
    """``data.decode=gpu`` in the loader processes: an image file's path -> its :class:`EncodedImage`, or for a file
    nvJPEG is not given (not a YCbCr or grey JPEG, or one cut short, which the fast path names as the exact path
    does), the fast path's crop (uint8 [3, S, S])."""

    def __init__(self, cfg: DataConfig):
        self.fast = FastCrop(cfg)

    def __call__(self, path: str) -> EncodedImage | torch.Tensor:
        data = read_bytes(path)
        header = jpeg_header(data)
        if header is None or not ends_whole(data):
            return self.fast.crop(path, data, header)
        box, flip = self.fast.draw(*header.upright)
        return EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8), header, box, flip, path)


class EncodedBatch:
    """A batch as the loader processes send it under ``data.decode=gpu``: per image an :class:`EncodedImage` or a crop
    decoded in the loader. ``to`` and ``pin_memory`` return it as it is (``decode_jpeg`` moves the bytes itself), so
    that the trainer and the DataLoader handle it as they handle a batch of images."""

    def __init__(self, items: Sequence[EncodedImage | torch.Tensor]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def to(self, *args, **kwargs) -> EncodedBatch:
        return self

    def pin_memory(self, *args, **kwargs) -> EncodedBatch:
        return self


def collate_encoded(samples: Sequence[tuple[EncodedImage | torch.Tensor, int]]) -> tuple[EncodedBatch, torch.Tensor]:
    """The DataLoader's ``collate_fn`` under ``data.decode=gpu``: images as a list, labels as int64 [B]."""
    images, labels = zip(*samples)
    return EncodedBatch(images), torch.tensor(labels, dtype=torch.int64)


def _codec_warnings_off() -> warnings.catch_warnings:
    """torchvision 0.29 deprecates its image codecs in favour of TorchCodec and warns on every call; lpt keeps them
    (pinned, and the batched nvJPEG call it needs) and silences that warning around each call."""
    return warnings.catch_warnings(action="ignore", category=DeprecationWarning)


def decode_jpeg(data: torch.Tensor | list[torch.Tensor], device: torch.device) -> torch.Tensor | list[torch.Tensor]:
    """``torchvision.io.decode_jpeg`` to RGB on ``device``."""
    with _codec_warnings_off():
        return tvio.decode_jpeg(data, mode=tvio.ImageReadMode.RGB, device=device)


def decode_all(jpegs: Sequence[EncodedImage], device: torch.device) -> list[torch.Tensor]:
    """The JPEGs decoded on ``device`` in one call, uint8 [3, H, W] each; where that fails, one at a time, so that the
    message names the file the device cannot decode."""
    if not jpegs:
        return []
    try:
        return decode_jpeg([j.data for j in jpegs], device)
    except RuntimeError:
        for j in jpegs:
            try:
                decode_jpeg(j.data, device)
            except RuntimeError as exc:
                reason = " ".join(str(exc).split())
                raise BadImageError(f"{j.path}: cannot read image on {device} ({reason}); {SKIP_HINT}, or decode "
                                    "on the CPU with data.decode=fast") from exc
        raise


class DeviceDecode:
    """The training stream's ``finish`` under ``data.decode=gpu``: an :class:`EncodedBatch` -> normalised float32
    [B, 3, S, S] on ``device``."""

    def __init__(self, cfg: DataConfig, device: torch.device | str):
        self.size, self.mode, self.device = cfg.img_size, cfg.interpolation, torch.device(device)
        self.normalize = BatchNormalize(cfg)

    def __call__(self, batch: EncodedBatch) -> torch.Tensor:
        decoded = iter(decode_all([x for x in batch.items if isinstance(x, EncodedImage)], self.device))
        crops = [self.crop(next(decoded), x) if isinstance(x, EncodedImage) else x.to(self.device) for x in batch.items]
        return self.normalize(torch.stack(crops))

    def crop(self, image: torch.Tensor, encoded: EncodedImage) -> torch.Tensor:
        """The box of a decoded image (stored as the file stores it: the box is mapped onto it and the region turned
        upright), resized (in float32: CUDA has no uint8 antialiased resize) and rounded back to uint8 as PIL
        rounds, then flipped."""
        b = stored_box(encoded.box, encoded.header)
        region = image[:, b.top:b.top + b.height, b.left:b.left + b.width]
        region = turn_upright(region, encoded.header.orientation).float().contiguous()
        out = torch.nn.functional.interpolate(region[None], size=(self.size, self.size), mode=self.mode,
                                              antialias=True)[0]
        out = out.round_().clamp_(0, 255).to(torch.uint8)
        return out.flip(-1) if encoded.flip else out


@functools.cache
def gpu_decode_problem(device: torch.device) -> str | None:
    """Why ``device`` cannot decode JPEGs (no CUDA device, or a torchvision without nvJPEG); None when it can."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"no CUDA device (the run's device is {device})"
    try:
        with _codec_warnings_off():
            tiny = tvio.encode_jpeg(torch.zeros(3, 16, 16, dtype=torch.uint8))
        decode_jpeg(tiny, device)
    except (RuntimeError, TypeError, ValueError) as exc:
        return f"no nvJPEG decode on {device} ({' '.join(str(exc).split())})"
    return None


@functools.cache
def resolve_decode(decode: str, device: torch.device, applies: bool = True) -> str:
    """The decode path a run takes for ``data.decode``: exact where no other applies (``applies`` False: images held
    in memory, or a train_aug other than rrc_flip), fast in place of gpu where the device cannot decode JPEGs; each
    said in one line, once per process (both phases ask), as is a fast path that decodes JPEGs whole."""
    if decode != "exact" and not applies:
        log.info("data.decode=%s applies to train_aug=rrc_flip on image files; these training images are decoded "
                 "exactly", decode)
        return "exact"
    if decode == "gpu" and (problem := gpu_decode_problem(device)) is not None:
        log.warning("data.decode=gpu: %s; decoding on the CPU as data.decode=fast", problem)
        decode = "fast"
    if decode == "fast" and (note := whole_decode_note()) is not None:
        log.info("data.decode=fast: %s", note)
    return decode
