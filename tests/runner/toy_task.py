"""A tiny ODE regression task for the runner's tests (selected with ``task=toy``; see configs/task/toy.yaml).

The model integrates a small MLP vector field through an ODEBlock from t=0 to 1 and is trained so that
y(1) matches a fixed linear map of y(0); so the trainer's NFE, memory and checkpoint paths are all exercised
in well under a second per epoch.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuralode.models.odeblock import ODEBlock, SolverSpec
from neuralode.models.regularization import regularization_from_config
from neuralode.tasks.base import StepOutput


class Dynamics(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class ToyTask:
    def __init__(self, cfg: Any, device: torch.device, solver: SolverSpec) -> None:
        self.cfg = cfg.task
        self.device = device
        # The trainer seeded torch's global RNG: data, init and shuffling all come from it.
        target = torch.tensor([[0.0, -1.0], [1.0, 0.0]]) * 0.8
        x = torch.randn(self.cfg.n_train + self.cfg.n_test, 2)
        y = x @ target.T
        self.train_x, self.train_y = x[: self.cfg.n_train].to(device), y[: self.cfg.n_train].to(device)
        self.test_x, self.test_y = x[self.cfg.n_train:].to(device), y[self.cfg.n_train:].to(device)
        regularization = regularization_from_config(cfg.get("regularize"), "toy", has_ode=True, steer_end=1.0)
        self.model = ODEBlock(Dynamics(self.cfg.hidden), solver, regularization=regularization).to(device)

    def train_batches(self, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(self.cfg.n_train).to(self.device)
        return [(self.train_x[i], self.train_y[i]) for i in order.split(self.cfg.batch_size)]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> StepOutput:
        if self.cfg.step_delay:
            time.sleep(self.cfg.step_delay)  # lets the resume test kill the run mid-epoch
        x, y = batch
        loss = nn.functional.mse_loss(self.model(x), y)
        return StepOutput(loss=loss, batch_size=len(x), metrics={"train_rmse": loss.detach().sqrt().item()})

    def evaluate(self) -> dict[str, float]:
        with torch.no_grad():
            loss = nn.functional.mse_loss(self.model(self.test_x), self.test_y)
        return {"test_rmse": loss.sqrt().item()}

    def configure_optimizers(self, epochs: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        optimizer = torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr, momentum=0.9)
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2], gamma=0.5)

    def save_figures(self, out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "toy.txt"  # a text "figure" keeps the tests free of matplotlib start-up time
        path.write_text(f"{self.evaluate()['test_rmse']}\n")
        return [path]


def build(cfg: Any, device: torch.device, solver: SolverSpec) -> ToyTask:
    return ToyTask(cfg, device, solver)
