"""The CNF tasks built in-process from the YAML configs: protocol, metrics, errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from neuralode.config import solver_defaults
from neuralode.tasks import Task, build_task
from neuralode.utils.runtime import resolve_solver

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def compose(task: str, model: str, data: str, **task_overrides: object) -> OmegaConf:
    task_cfg = OmegaConf.load(CONFIGS / "task" / f"{task}.yaml").task
    cfg = OmegaConf.create({
        "task": task_cfg, "model": OmegaConf.load(CONFIGS / "model" / f"{model}.yaml"),
        "data": OmegaConf.load(CONFIGS / "data" / f"{data}.yaml"),
        "solver": solver_defaults("dopri5"), "seed": 0,
    })
    cfg.task.update(task_overrides)
    cfg.model.update({"width": 4} if model == "cnf" else {"flows": 4})
    return cfg


def build_on_cpu(cfg: OmegaConf) -> Task:
    """The task as the runner builds it: with the solver it resolved from the config."""
    return build_task(cfg, torch.device("cpu"), resolve_solver(cfg))


def test_max_likelihood_step_and_eval() -> None:
    task = build_on_cpu(compose("cnf", "cnf", "two_moons", iters_per_epoch=2, batch_size=16, test_size=32))
    batches = list(task.train_batches(1))
    assert len(batches) == 2 and batches[0].shape == (16, 2)
    out = task.training_step(batches[0])
    out.loss.backward()
    assert out.batch_size == 16 and all(p.grad is not None for p in task.model.parameters())
    first = task.evaluate()["test_nll"]
    assert first == task.evaluate()["test_nll"]  # fixed held-out set, deterministic metric
    assert task.model.block.solver.rtol == 1e-5 and task.model.block.solver.adjoint  # task default tolerance


def test_density_matching_kl_is_true_kl_and_decreases() -> None:
    task = build_on_cpu(compose("cnf_match", "planar", "ring_modes", eval_samples=2000, batch_size=256,
                                iters_per_epoch=150))
    optimizer, _ = task.configure_optimizers(1)
    before = task.evaluate()["kl"]
    for batch in task.train_batches(1):
        optimizer.zero_grad()
        task.training_step(batch).loss.backward()
        optimizer.step()
    after = task.evaluate()["kl"]
    assert 0 < after < before  # a true KL is positive: log Z is included


@pytest.mark.parametrize(("task", "data", "message"), [
    ("cnf", "ring_modes", "task=cnf needs a 2-D samples data set"),
    ("cnf_match", "two_moons", "task=cnf_match needs a 2-D potential data set"),
])
def test_wrong_kind_of_data_is_one_clear_error(task: str, data: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_on_cpu(compose(task, "planar", data))
