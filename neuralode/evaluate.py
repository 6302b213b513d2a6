"""Evaluation: held-out metrics with NFE and time, for the trainer and for ``neuralode eval`` on a checkpoint.

``evaluate_checkpoint`` is the Python entry point for test-time solver sweeps (the paper's Figure 3)::

    from neuralode.evaluate import evaluate_checkpoint
    for tol in (1e-1, 1e-2, 1e-3):
        print(evaluate_checkpoint("outputs/mnist/model=odenet,profile=quick", {"tol": tol}))
"""
from __future__ import annotations

import fcntl
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from neuralode.config import (
    check_per_sample,
    check_step_size,
    is_fixed_step,
    solver_label,
    validate_device,
    validate_solver,
    validate_threads,
)
from neuralode.errors import CheckpointError
from neuralode.models.odeblock import SolverSpec
from neuralode.tasks import Task
from neuralode.utils.checkpoint import checkpoint_config, checkpoint_path, load_checkpoint, restore_part
from neuralode.utils.runtime import (
    build_task_from_config,
    measure_evaluation,
    resolve_device,
    resolve_solver,
    seed_everything,
)

log = logging.getLogger(__name__)


def evaluate_checkpoint(checkpoint: str | Path, solver: Mapping[str, Any] | None = None,
                        data: Mapping[str, Any] | None = None, device: str = "auto",
                        task_module: str | None = None) -> dict[str, Any]:
    """Rebuild the task of a checkpoint with solver changes, load its weights and evaluate it.

    ``checkpoint``: a run dir or a ``.pt`` file. ``solver``: keys of the solver config to change
    (``method``, ``tol``, ``rtol``, ``atol``, ``adjoint``, ``options``, ``adjoint_options``); None values
    keep the checkpoint's, options are added to the checkpoint's unless ``method`` changes (options of
    one method may mean nothing to another). ``data``: keys of the data config to change (e.g. ``root``).
    ``task_module``: the module of a plug-in task, which must be the one the checkpoint was trained with (the
    checkpoint's own word is never enough to import a module). Returns the resolved solver, the task's
    metrics, ``nfe_eval`` and ``eval_time_s``.
    """
    restored = restore_task(checkpoint, solver, data, device, task_module=task_module)
    spec, cfg = restored.solver, restored.config
    metrics = measure_evaluation(restored.task, resolve_device(device))
    return {
        "checkpoint": str(checkpoint_path(checkpoint)),
        "epoch": restored.checkpoint["epoch"],
        "task": cfg.task.name,
        "model": cfg.model.get("name"),
        "solver": solver_label(spec.method, spec.options),
        "method": spec.method,
        "rtol": spec.rtol,
        "atol": spec.atol,
        "adjoint": spec.adjoint,
        "options": spec.options,
        **metrics,
    }


class RestoredTask(NamedTuple):
    """A checkpoint's task rebuilt with its trained weights, the checkpoint, its (patched) config and the solver
    the task was built with."""

    task: Task
    checkpoint: dict[str, Any]
    config: DictConfig
    solver: SolverSpec


def restore_task(checkpoint: str | Path, solver: Mapping[str, Any] | None = None,
                 data: Mapping[str, Any] | None = None, device: str = "auto",
                 task_name: str | None = None, task_module: str | None = None) -> RestoredTask:
    """The task of a checkpoint (a run dir or ``.pt``) rebuilt with its trained weights. ``solver``, ``data`` and
    ``task_module`` as in :func:`evaluate_checkpoint`; ``task_name`` refuses, before any data loads, a checkpoint
    of another task."""
    solver = {k: v for k, v in (solver or {}).items() if v is not None}
    validate_solver(solver)
    validate_device(device)
    path = checkpoint_path(checkpoint)
    ckpt = load_checkpoint(path)
    cfg = checkpoint_config(ckpt, path, task_module)  # before anything is built from it
    if task_name is not None and cfg.task.name != task_name:
        raise CheckpointError(f"{checkpoint} is a task={cfg.task.name} checkpoint; this needs task={task_name}")
    cfg.solver = _patched_solver(cfg.solver, solver)
    check_step_size(cfg.solver)  # e.g. solver=rk4 asked of a dopri5 checkpoint, which had no step size
    check_per_sample(cfg.solver)  # e.g. per_sample=true asked of an rk4 checkpoint
    if data:
        cfg.data = OmegaConf.merge(cfg.data, dict(data))
    seed_everything(cfg.seed)  # the same subsets/augmentations as at training time, whatever the solver
    spec = resolve_solver(cfg)
    task = build_task_from_config(cfg, resolve_device(device), spec)
    restore_part(path, "model weights", lambda: task.model.load_state_dict(ckpt["model"]))
    return RestoredTask(task, ckpt, cfg, spec)


def _patched_solver(saved: DictConfig, changes: Mapping[str, Any]) -> DictConfig:
    patched = OmegaConf.to_container(saved)
    if changes.get("method", patched["method"]) != patched["method"]:
        patched["options"], patched["adjoint_options"] = {}, {}
    for key, value in changes.items():
        if key in ("options", "adjoint_options"):
            value = {**(patched.get(key) or {}), **value}
        patched[key] = value
    return OmegaConf.create(patched)


# The keys of a result that say what was evaluated, and how; the others are what was measured.
SETTING_KEYS = ("checkpoint", "epoch", "task", "model", "solver", "method", "rtol", "atol", "adjoint", "options")


def format_result(result: Mapping[str, Any]) -> str:
    """One line: the task's metrics, NFE per forward pass, time, and the solver that produced them (a fixed-step
    method by its step size, an adaptive one by its tolerances)."""
    skip = {*SETTING_KEYS, "nfe_eval", "eval_time_s"}
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in result.items() if k not in skip and isinstance(v, float))
    if is_fixed_step(result["method"]):
        options = result["options"]
        steps = (f"step_size={options['step_size']:g}" if "step_size" in options else "grid_constructor")
    else:
        steps = f"rtol={result['rtol']:g} atol={result['atol']:g}"
    return (f"{metrics}  nfe {result['nfe_eval']:.1f}  time {result['eval_time_s']:.2f} s  "
            f"[{result.get('solver', result['method'])} {steps}, epoch {result['epoch']}]")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """``neuralode eval``: evaluate ``cfg.checkpoint``, print one line, optionally record it in ``cfg.output``."""
    validate_threads(cfg.threads, "threads")
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    result = evaluate_checkpoint(cfg.checkpoint, OmegaConf.to_container(cfg.solver, resolve=True),
                                 OmegaConf.to_container(cfg.data, resolve=True), cfg.device, cfg.task_module)
    log.info(format_result(result))
    if cfg.output:
        record_result(Path(cfg.output), result)
    return result


def record_result(path: Path, result: Mapping[str, Any]) -> None:
    """Add ``result`` as one JSON line to ``path``, replacing the line of an earlier evaluation of the same
    checkpoint with the same solver settings (a rerun updates its row instead of duplicating it)."""
    setting = [result.get(k) for k in SETTING_KEYS]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # the jobs of a parallel eval sweep share the file
        f.seek(0)
        lines = f.read().splitlines()
        kept = [line for line in lines if _setting_of(line) != setting]
        if len(kept) < len(lines):
            f.seek(0)
            f.truncate()
            f.write("".join(line + "\n" for line in kept))
        f.write(json.dumps(result) + "\n")


def _setting_of(line: str) -> list[Any] | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return [row.get(k) for k in SETTING_KEYS] if isinstance(row, dict) else None
