"""Tiny data for the report tests, so they never need a real data set."""
from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np


def write_tiny_idx(folder: Path) -> Path:
    """Four tiny gzipped IDX files (40 train, 20 test images) in MNIST's layout."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        arrays = {"images-idx3": rng.integers(0, 255, (n, 28, 28), dtype=np.uint8),
                  "labels-idx1": (np.arange(n) % 10).astype(np.uint8)}
        for stem, a in arrays.items():
            header = bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
            folder.mkdir(parents=True, exist_ok=True)
            with gzip.open(folder / f"{prefix}-{stem}-ubyte.gz", "wb") as f:
                f.write(header + a.tobytes())
    return folder


def write_metrics(run_dir: Path, records: list[dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def common(epoch: int, nfe: float = 0.0) -> dict:
    """The fields every task logs per epoch."""
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "nfe_forward": nfe, "nfe_backward": nfe / 2,
            "peak_memory_mb": 12.5, "epoch_time_s": 3.0, "lr": 0.1}
