"""Read the IDX files MNIST-style datasets ship in (plain or gzip-compressed)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

# IDX type codes (third magic byte) -> numpy dtype, big-endian as the format stores them.
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXError(ValueError):
    """An IDX file is truncated, corrupt or not an IDX file at all."""


def read_idx(path: str | Path) -> torch.Tensor:
    """Return the array stored in the IDX file at ``path`` (``.gz`` is decompressed on the fly).

    Only reads: nothing is written next to the file, so read-only dataset folders work.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises BadGzipFile (an OSError) or EOFError on damage
        raise IDXError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise IDXError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXError(f"{path} is truncated (header cut short)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IDXError(f"{path} holds {len(raw) - header} data bytes, its header promises {expected} for shape {shape}")
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    # Native byte order and a writable copy, as torch.from_numpy needs both.
    return torch.from_numpy(arr.astype(dtype.newbyteorder("="), copy=True))
