"""One module per paper experiment, each exposing ``build(cfg, device, solver) -> Task`` (tasks/base.py)."""
from __future__ import annotations

import importlib
from typing import Any

import torch

from neuralode.errors import ConfigError
from neuralode.models.odeblock import SolverSpec
from neuralode.tasks.base import StepOutput, Task, TaskBuilder

# Task name -> module providing ``build(cfg, device, solver)``; imported lazily so one task's deps don't slow another.
TASKS: dict[str, str] = {
    "mnist": "neuralode.tasks.mnist",
    "spiral": "neuralode.tasks.spiral",
    "cnf": "neuralode.tasks.cnf",
    "cnf_match": "neuralode.tasks.cnf_match",
    "poisson": "neuralode.tasks.poisson",
    "dynamics": "neuralode.tasks.dynamics",
}


def build_task(cfg: Any, device: torch.device, solver: SolverSpec) -> Task:
    """Build the task named by ``cfg.task.name`` from the composed config and the run's resolved solver."""
    name = cfg.task.name
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
    builder: TaskBuilder = importlib.import_module(TASKS[name]).build
    return builder(cfg, device, solver)


__all__ = ["TASKS", "StepOutput", "Task", "TaskBuilder", "build_task"]
