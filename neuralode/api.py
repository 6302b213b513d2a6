"""The Python API, for notebooks and scripts: train from the CLI's overrides, load a run dir, evaluate it at
another solver or tolerance.

    from neuralode import api

    run = api.train("task=mnist", "model=odenet", "data=digits", "profile=smoke")   # as `neuralode train ...`
    run.metrics[-1]["test_acc"], run.config.solver.method, run.model
    run.evaluate(tol=1e-1)                                       # the same weights at a looser tolerance
    run.evaluate(solver="rk4", options={"step_size": 0.25})      # ... or with another method
    api.load_run("outputs/mnist/data=digits,model=odenet,profile=smoke")  # a run trained earlier

Bad input raises :class:`~neuralode.config.ConfigError` (a ``ValueError``) with the CLI's one-line message.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from neuralode.config import SOLVER_PRESETS, config_dir, register_configs
from neuralode.evaluate import evaluate_checkpoint, restore_task
from neuralode.tasks import Task
from neuralode.utils.metrics import MetricsFile


@dataclass
class Run:
    """A trained run: its dir, the resolved config it trained with, its per-epoch metrics and its task (data and
    model with the trained weights)."""

    run_dir: Path
    config: DictConfig
    metrics: list[dict[str, Any]]
    task: Task = field(repr=False)
    task_module: str | None = None  # a plug-in task's module, as given by the caller (never read from a file)

    @property
    def model(self) -> nn.Module:
        return self.task.model

    def evaluate(self, solver: str | None = None, *, tol: float | None = None, rtol: float | None = None,
                 atol: float | None = None, options: dict[str, Any] | None = None, adjoint: bool | None = None,
                 device: str = "auto") -> dict[str, Any]:
        """Test metrics, NFE and time of the trained weights with another ``solver`` (any ``solver=<name>`` of the
        CLI) or tolerance; what is not given keeps the run's setting. The dict ``neuralode eval`` records."""
        changes: dict[str, Any] = {"tol": tol, "rtol": rtol, "atol": atol, "adjoint": adjoint}
        if solver is not None:
            preset = SOLVER_PRESETS.get(solver, {"method": solver, "options": {}})
            changes.update(method=preset["method"], options=dict(preset["options"]))
        if options:
            changes["options"] = {**changes.get("options", {}), **options}
        return evaluate_checkpoint(self.run_dir, changes, device=device, task_module=self.task_module)


def compose(*overrides: str) -> tuple[DictConfig, Path]:
    """The config ``neuralode train <overrides>`` trains with, and the run dir it would train into (relative to
    the current directory, as the CLI's)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from neuralode.cli import rewrite_override

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[rewrite_override(o, "train") for o in overrides],
                            return_hydra_config=True)
    run_dir = Path(cfg.hydra.run.dir)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, run_dir


def train(*overrides: str, run_dir: str | Path | None = None) -> Run:
    """Train as ``neuralode train <overrides>`` does, in this process: the same run dir (or ``run_dir``), the
    same resume of an earlier run there. Returns the trained run."""
    from neuralode.train import train as train_run

    cfg, default_dir = compose(*overrides)
    run_dir = Path(run_dir) if run_dir is not None else default_dir
    train_run(cfg, run_dir)
    return load_run(run_dir, task_module=cfg.task.get("module"))  # the module the overrides chose, if a plug-in


def load_run(run_dir: str | Path, device: str = "auto", task_module: str | None = None) -> Run:
    """The run trained into ``run_dir``: config and weights from its last checkpoint, metrics from metrics.jsonl.
    ``task_module``: a plug-in task's module, which a checkpoint's own word never selects (shipped tasks need
    none)."""
    task, ckpt, _, _ = restore_task(run_dir, device=device, task_module=task_module)
    return Run(run_dir=Path(run_dir), config=OmegaConf.create(ckpt["config"]),
               metrics=MetricsFile(Path(run_dir) / "metrics.jsonl").records(), task=task, task_module=task_module)
