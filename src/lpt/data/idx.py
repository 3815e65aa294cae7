"""Reader of the IDX format of MNIST and Fashion-MNIST (LeCun et al.), raw or gzipped.

An IDX file is a 4-byte magic number ``0x00 0x00 <type code> <ndim>``, then ``ndim`` big-endian
uint32 dimensions, then the values in C order.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from lpt.config import ConfigError

# type code -> big-endian numpy dtype
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as exc:
        raise ConfigError(f"{path}: cannot read IDX file ({exc})") from None


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an IDX file.

    Args:
        data: the whole (decompressed) file.
        name: what error messages call the file.

    Returns:
        Array of shape ``dims`` in native byte order (uint8 for the usual image and label files).
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise ConfigError(f"{name}: bad IDX magic number {data[:4].hex() or '(empty)'}; expected 0000<type><ndim>")
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ConfigError(f"{name}: truncated IDX header; expected {ndim} dimensions")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ConfigError(f"{name}: {len(data)} bytes, expected {expected} for an IDX array of shape {dims}")
    values = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return values.astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file; a name ending in ``.gz`` is decompressed first."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))
