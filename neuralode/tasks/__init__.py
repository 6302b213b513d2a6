"""One module per paper experiment, each exposing ``build(cfg, device) -> Task``."""
from __future__ import annotations

import importlib
from typing import Any

import torch

from neuralode.errors import ConfigError
from neuralode.tasks.base import StepOutput, Task

# Task name -> module providing ``build(cfg, device)``; imported lazily so one task's deps don't slow another.
TASKS: dict[str, str] = {
    "mnist": "neuralode.tasks.mnist",
    "spiral": "neuralode.tasks.spiral",
    "cnf": "neuralode.tasks.cnf",
    "cnf_match": "neuralode.tasks.cnf_match",
    "poisson": "neuralode.tasks.poisson",
    "dynamics": "neuralode.tasks.dynamics",
}


def build_task(cfg: Any, device: torch.device) -> Task:
    """Build the task named by ``cfg.task.name`` from the composed config."""
    name = cfg.task.name
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
    return importlib.import_module(TASKS[name]).build(cfg, device)


__all__ = ["TASKS", "StepOutput", "Task", "build_task"]
