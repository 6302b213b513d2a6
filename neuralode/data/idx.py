"""Read the IDX files MNIST-style datasets ship in (plain or gzip-compressed)."""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from neuralode.errors import DataError

# IDX type codes (third magic byte) -> numpy dtype, big-endian as the format stores them.
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXError(DataError):
    """An IDX file is truncated, corrupt or not an IDX file at all."""


def read_idx(path: str | Path) -> torch.Tensor:
    """Return the array stored in the IDX file at ``path`` (``.gz`` is decompressed on the fly).

    The header is read first, then only the bytes it promises (plus one, to find trailing data): a damaged or
    hostile file (a gzip bomb) is refused without reading more. Only reads: nothing is written next to the file,
    so read-only dataset folders work.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            shape, dtype = _header(f, path)
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            raw = f.read(expected + 1)
    except (OSError, EOFError, zlib.error) as e:  # gzip raises BadGzipFile (an OSError), EOFError or zlib.error
        raise IDXError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) != expected:
        found = "more" if len(raw) > expected else str(len(raw))
        raise IDXError(f"{path} holds {found} data bytes, its header promises {expected} for shape {shape}")
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    # Native byte order and a writable copy, as torch.from_numpy needs both.
    return torch.from_numpy(arr.astype(dtype.newbyteorder("="), copy=True))


def _header(f: BinaryIO, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an IDX header declares; ``f`` is left at the first data byte."""
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPES:
        raise IDXError(f"{path} is not an IDX file (bad magic number)")
    ndim = magic[3]
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise IDXError(f"{path} is truncated (header cut short)")
    return struct.unpack(f">{ndim}I", dims), np.dtype(_DTYPES[magic[2]])
