"""Atomic checkpoint files and the RNG state that makes a resumed run continue exactly where it stopped."""
from __future__ import annotations

import collections
import random
from pathlib import Path
from typing import Any

import torch

from neuralode.errors import CheckpointError
from neuralode.utils.files import write_atomic

try:
    import numpy as np
except ImportError:  # numpy is optional for torch; without it there is no numpy RNG to save
    np = None

CHECKPOINT_NAME = "last.pt"
_REQUIRED_KEYS = ("model", "epoch", "config")


def checkpoint_path(path_or_run_dir: str | Path) -> Path:
    """``<run dir>/checkpoints/last.pt`` for a run dir; the path itself for a file."""
    path = Path(path_or_run_dir).expanduser()
    if path.is_dir():
        return path / "checkpoints" / CHECKPOINT_NAME
    return path


def get_rng_state() -> dict[str, Any]:
    """Every RNG the trainer seeds, as plain objects that ``torch.load(weights_only=True)`` accepts."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        state["numpy"] = (name, keys.tolist(), int(pos), int(has_gauss), float(cached))
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state and np is not None:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file and rename it over ``path``: a kill leaves the old or the new file, never half."""
    write_atomic(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU; any problem becomes one :class:`CheckpointError` naming the file."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; pass a run dir holding checkpoints/{CHECKPOINT_NAME} "
                              "or the .pt file itself")
    try:
        # weights_only: tensors and plain containers only; MultiStepLR keeps its milestones in a Counter.
        with torch.serialization.safe_globals([collections.Counter]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for damaged files
        reason = str(e).strip().split(". ")[0].splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is damaged or not a torch file ({reason}); pass a run dir "
                              f"or its checkpoints/{CHECKPOINT_NAME}") from e
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a neuralode checkpoint (expected the keys {', '.join(_REQUIRED_KEYS)})")
    return ckpt
