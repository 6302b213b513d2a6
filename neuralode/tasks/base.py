"""The small protocol every task implements, so one trainer can run them all."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from neuralode.config import shipped_group
from neuralode.errors import ConfigError
from neuralode.models.odeblock import SolverSpec


@dataclass
class StepOutput:
    """Result of one training step: the loss to backpropagate and per-batch metric means."""

    loss: torch.Tensor
    batch_size: int
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. {"train_acc": 0.93}


class Task(Protocol):
    """A paper experiment: data, model, loss, metrics and figures.

    The trainer owns the loop, optimiser steps, logging, checkpoints and NFE bookkeeping;
    a task owns everything specific to its experiment.
    """

    model: nn.Module
    # Optional: "step" makes the trainer advance the LR scheduler after every optimiser step; absent or
    # "epoch", after every epoch.
    lr_interval: str

    def train_batches(self, epoch: int) -> Iterable[Any]:
        """Batches (already on the task's device) for training epoch ``epoch`` (1-based).

        Randomness must come from ``cfg.seed`` and ``epoch`` (or torch's global RNG, which the trainer seeds and
        checkpoints), so that a resumed run replays the same epoch.
        """
        ...

    def training_step(self, batch: Any) -> StepOutput:
        """Forward pass and loss on one batch (no backward, no optimiser step)."""
        ...

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics (e.g. ``test_acc``, ``test_rmse``, ``test_nll``), computed under no_grad where possible."""
        ...

    def configure_optimizers(self, epochs: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """Optimiser and an optional LR scheduler (stepped as ``lr_interval`` says), as this task trains for
        ``epochs`` epochs: the run's length as the trainer resolved it (a resumed run given more epochs stretches
        a schedule over them)."""
        ...

    def save_figures(self, out_dir: Path) -> list[Path]:
        """Write the task's PNG figures into ``out_dir``; return their paths."""
        ...


class TaskBuilder(Protocol):
    """A task module's ``build``: the task from the composed config, on ``device``, integrating with ``solver``.

    The runner resolves ``solver`` once from the ``solver`` config group (``solver.tol`` or ``task.default_tol``
    into rtol/atol, and its own controller and step cap) and hands the same spec to every ODE block the task
    builds; a task does not resolve the solver config itself.
    """

    def __call__(self, cfg: Any, device: torch.device, solver: SolverSpec) -> Task:
        ...


def validated(schema: type, node: Any, where: str) -> Any:
    """The config ``node`` of the group ``where`` (``task``, ``data`` or ``model``) as the dataclass ``schema``: a
    typed object, with a type or key error as one line naming the key. The schema holds only types; a key the node
    lacks (a checkpoint saved before the key existed) takes the default of the shipped YAML of the node's option."""
    defaults = shipped_group(where, str(node.get("name"))) or {}
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), defaults, node))
    except OmegaConfBaseException as e:
        key = f"{where}.{e.full_key}" if getattr(e, "full_key", None) else where
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None


def check(ok: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` (a bad config value: one line, exit code 2) unless ``ok``."""
    if not ok:
        raise ConfigError(message)
