"""Run set-up shared by ``train``, ``eval`` and the report: device, seeding, the solver, building the task, timed
evaluation."""
from __future__ import annotations

import contextlib
import importlib
import random
import time
from collections.abc import Iterator
from typing import Any

import torch

from neuralode.config import ConfigError
from neuralode.models.odeblock import SolverSpec, collect_solve_stats, reset_solve_stats
from neuralode.tasks import Task, TaskBuilder, build_task
from neuralode.utils.checkpoint import get_rng_state, set_rng_state

try:
    import numpy as np
except ImportError:
    np = None


def resolve_device(name: str) -> torch.device:
    """``auto`` picks the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is available; use device=cpu or device=auto")
    return device


def seed_everything(seed: int) -> None:
    """Seed every RNG a task may draw from; tasks take their randomness (init, shuffling) from these."""
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if np is not None:
        np.random.seed(seed % 2**32)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run side work (figures) without moving the RNGs, so a resumed run matches an uninterrupted one."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def resolve_solver(cfg: Any) -> SolverSpec:
    """The run's solver, resolved once and handed to the task: the ``solver`` group with ``task.default_tol`` where
    it sets no tolerance, and the runner's policy for the adaptive methods (:meth:`SolverSpec.from_config`)."""
    solver = cfg.solver
    default_tol = cfg.task.get("default_tol")
    if default_tol is None:
        if solver.get("tol") is None and (solver.get("rtol") is None or solver.get("atol") is None):
            raise ConfigError(f"task={cfg.task.name} sets no task.default_tol and solver.tol is null; "
                              "set the tolerance, e.g. solver.tol=1e-3")
    elif not isinstance(default_tol, (int, float)) or isinstance(default_tol, bool) or not default_tol > 0:
        raise ConfigError(f"task.default_tol must be > 0, got {default_tol}")
    return SolverSpec.from_config(solver, default_tol)


def build_task_from_config(cfg: Any, device: torch.device, solver: SolverSpec) -> Task:
    """Build the task: the module named by ``task.module`` if given (a plug-in task), else ``TASKS[task.name]``;
    ``solver`` is the run's, from :func:`resolve_solver`."""
    module_name = cfg.task.get("module")
    if module_name is None:
        return build_task(cfg, device, solver)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"task.module={module_name!r} cannot be imported ({e}); "
                          "name a module on the Python path that defines build(cfg, device, solver)") from e
    builder: TaskBuilder = module.build
    return builder(cfg, device, solver)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock times measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_evaluation(task: Task, device: torch.device) -> dict[str, float]:
    """``task.evaluate()`` plus ``nfe_eval`` (forward NFE per model call) and ``eval_time_s``."""
    model = task.model
    calls = 0

    def count_call(*_: Any) -> None:
        nonlocal calls
        calls += 1

    hook = model.register_forward_hook(count_call)
    reset_solve_stats(model)
    model.eval()
    synchronize(device)
    start = time.perf_counter()
    try:
        metrics = {k: float(v) for k, v in task.evaluate().items()}
    finally:
        hook.remove()
    synchronize(device)
    elapsed = time.perf_counter() - start
    nfe = collect_solve_stats(model).nfe_forward
    # Tasks that drive sub-modules themselves never call the model: report the total instead of a mean.
    metrics["nfe_eval"] = nfe / calls if calls else float(nfe)
    metrics["eval_time_s"] = elapsed
    return metrics
