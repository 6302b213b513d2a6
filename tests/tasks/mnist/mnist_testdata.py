"""Tiny IDX datasets for the MNIST tests, so they never need the real (or any system) dataset."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

N_TRAIN, N_TEST = 40, 20


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8) as an IDX file; gzip-compressed when ``path`` ends in ``.gz``."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def tiny_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose brightest 4x4 patch position encodes the label, so a model can learn something."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    for i, y in enumerate(labels):
        r, c = 4 + 2 * (y // 5) * 4, 4 + (y % 5) * 4
        images[i, r:r + 4, c:c + 4] = 255
    return images, labels


def write_dataset(folder: Path, gz: bool = True) -> Path:
    """The four MNIST IDX files directly in ``folder`` (Debian's layout; torchvision's raw/ folder too)."""
    ext = ".gz" if gz else ""
    for prefix, n, seed in (("train", N_TRAIN, 0), ("t10k", N_TEST, 1)):
        images, labels = tiny_split(n, seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return folder
