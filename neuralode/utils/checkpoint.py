"""Atomic checkpoint files, the RNG state that makes a resumed run continue exactly where it stopped, and the
checks every reader of a checkpoint goes through.

A checkpoint may come from anywhere (a copied run folder, a download), so readers take nothing from it on
trust: :func:`load_checkpoint` unpickles tensors and plain containers only and checks the contents' types;
:func:`checkpoint_config` checks the saved config against the schema and never lets it name code to import
(the plug-in ``task.module`` is taken from the caller, i.e. the command line); :func:`restore_part` turns a
part that does not fit (another model's weights, a bad RNG state) into one :class:`CheckpointError` line.
"""
from __future__ import annotations

import collections
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from neuralode.config import Config, validate
from neuralode.errors import CheckpointError, ConfigError
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
    problem = _contents_problem(ckpt)
    if problem:
        raise CheckpointError(f"checkpoint {path} is damaged or altered: {problem}; pass a run dir or "
                              f"checkpoints/{CHECKPOINT_NAME} written by neuralode train")
    return ckpt


def _contents_problem(ckpt: dict[str, Any]) -> str | None:
    """What is wrong with the types of a checkpoint's entries (None: nothing), before anything uses them."""
    epoch = ckpt["epoch"]
    if type(epoch) is not int or epoch < 1:
        return f"its epoch is {epoch!r}, not a whole number >= 1"
    model = ckpt["model"]
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        return "its model entry is not a dict of named tensors"
    config = ckpt["config"]
    if not isinstance(config, dict) or not isinstance(config.get("task"), dict) \
            or not isinstance(config["task"].get("name"), str):
        return "its config is not a dict with task.name"
    for key in ("optimizer", "rng", "metrics"):
        if key in ckpt and not isinstance(ckpt[key], dict):
            return f"its {key} entry is not a dict"
    if ckpt.get("scheduler") is not None and not isinstance(ckpt["scheduler"], dict):
        return "its scheduler entry is not a dict"
    history = ckpt.get("history")
    if history is not None and (not isinstance(history, list)
                                or [r.get("epoch") if isinstance(r, dict) else None for r in history]
                                != list(range(1, epoch + 1))):
        return f"its metrics history is not one record per epoch 1..{epoch}"
    return None


def checkpoint_config(ckpt: dict[str, Any], path: Path, task_module: str | None = None) -> DictConfig:
    """The config a checkpoint was trained with, checked against the schema like a command line's.

    Code is never selected by a file: a plug-in task's ``task.module`` must be ``task_module``, which the caller
    takes from the command line (``neuralode eval task_module=...``); shipped tasks come from the registry.
    """
    saved_module = ckpt["config"]["task"].get("module")
    if saved_module != task_module:
        if saved_module is None:
            raise CheckpointError(f"{path} is a checkpoint of the shipped task {ckpt['config']['task']['name']!r}, "
                                  f"not of the plug-in module {task_module!r}; leave the task module out")
        raise CheckpointError(f"{path} names the plug-in task module {saved_module!r}, and no module is imported on "
                              "a file's word; if you trust that module, name it yourself: task_module=<module>")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), ckpt["config"])
        validate(cfg)
    except (OmegaConfBaseException, ConfigError) as e:
        reason = getattr(e, "msg", None) or str(e)
        key = getattr(e, "full_key", None)
        reason = f"{key}: {reason}" if key and not reason.startswith(key) else reason
        raise CheckpointError(f"checkpoint {path} holds an invalid config ({reason.splitlines()[0]}); "
                              f"pass a run dir or checkpoints/{CHECKPOINT_NAME} written by neuralode train") from None
    return OmegaConf.create(OmegaConf.to_container(cfg))  # untyped, so callers may patch whole nodes (eval's solver)


def restore_part(path: Path, part: str, restore: Callable[[], Any]) -> None:
    """Apply one part of a checkpoint (``restore()``); when it does not fit, say so in one line naming the part."""
    try:
        restore()
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
        reason = str(e).strip().splitlines()[0].rstrip(".:") if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} does not fit this run: its {part} cannot be restored ({reason}); "
                              "use a checkpoint written by this task and model, or start over in another run dir") \
            from e
