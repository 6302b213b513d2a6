"""Shared helpers of the solver tests (imported as a top-level module by pytest's rootdir insertion)."""
from __future__ import annotations

import torch
from torch import nn

ADAPTIVE = ["adaptive_heun", "fehlberg2", "bosh3", "dopri5", "tsit5", "dopri8"]
FIXED = ["euler", "midpoint", "heun2", "heun3", "rk4"]


class MLPDynamics(nn.Module):
    """A small neural ODE f(t, y) = W2 tanh(W1 y + b1 + t) + b2."""

    def __init__(self, dim: int = 2, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.l1 = nn.Linear(dim, hidden)
        self.l2 = nn.Linear(hidden, dim)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.tanh(self.l1(y) + t))


class Counting(nn.Module):
    """Counts the calls another library (torchdiffeq, SciPy) makes; neuralode counts its own into SolveStats."""

    def __init__(self, func: nn.Module) -> None:
        super().__init__()
        self.func, self.calls = func, 0

    def forward(self, t, y):
        self.calls += 1
        return self.func(t, y)
