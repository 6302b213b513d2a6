"""Models of a trajectory from its initial state, for learning dynamics from data (tasks/dynamics.py).

Each maps ``y0`` [B, D] and times ``t`` [B, W] (per row, sorted, ``t[:, 0]`` the time of ``y0``) to the states
[B, W, D] (``forward``, what training fits) and has ``predict`` (what evaluation scores):

- ``NeuralODE``: y(t) = ODESolve(f, y0, t) with an MLP vector field f (the neural ODE);
- ``ResNetEuler``: one residual step y + dt f(y) per observation, dt fixed (the ResNet-as-Euler view): it has
  no notion of the time between observations, so irregular sampling breaks it. ``predict`` places its steps
  at multiples of dt and interpolates linearly between them;
- ``DynamicsRNN``: a GRU rolled out from y0, reading its previous output and (``use_dt``) the time gap.

Inputs are standardised and outputs scaled with fixed statistics of the training observations
(:class:`Scales`), so one set of sizes fits systems of different scales.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from neuralode.models.latent_ode import make_cell
from neuralode.models.odeblock import ODEBlock, SolverSpec
from neuralode.models.regularization import Regularization


@dataclass
class Scales:
    """Statistics of the training observations: the observed ``states`` [M, D] and the std of the
    finite-difference derivatives ``rate`` [D] (the scale of dy/dt)."""

    states: torch.Tensor
    rate: torch.Tensor

    @classmethod
    def of(cls, times: torch.Tensor, values: torch.Tensor) -> Scales:
        """From observations ``values`` [N, K, D] at ``times`` [N, K]."""
        rates = values.diff(dim=1) / times.diff(dim=1)[..., None]
        dim = values.shape[-1]
        return cls(values.reshape(-1, dim), rates.reshape(-1, dim).std(0).clamp_min(1e-6))

    @property
    def mean(self) -> torch.Tensor:
        return self.states.mean(0)

    @property
    def std(self) -> torch.Tensor:
        return self.states.std(0).clamp_min(1e-6)


class VectorField(nn.Module):
    """f(y) = rate * MLP(standardised features), the features y or (``cubic_feature``) y and y^3, the course's
    input feature for the cubic oscillator. Autonomous: ``t`` is ignored."""

    def __init__(self, scales: Scales, *, hidden: int = 50, hidden_layers: int = 1, cubic_feature: bool = False) -> None:
        super().__init__()
        self.cubic_feature = cubic_feature
        dim = scales.rate.numel()
        observed = self.features(scales.states)
        self.register_buffer("in_mean", observed.mean(0))
        self.register_buffer("in_std", observed.std(0).clamp_min(1e-6))
        self.register_buffer("rate", scales.rate.clone())
        layers: list[nn.Module] = []
        for i in range(hidden_layers):
            layers += [nn.Linear(observed.shape[-1] if i == 0 else hidden, hidden), nn.Tanh()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, dim))

    def features(self, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([y, y**3], dim=-1) if self.cubic_feature else y

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.rate * self.net((self.features(y) - self.in_mean) / self.in_std)


def gather_rows(ys: torch.Tensor, union: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """States [B, W, D] at each row's times ``t`` [B, W] from ``ys`` [U, B, D] solved at the sorted ``union``."""
    return ys[torch.searchsorted(union, t.contiguous()), torch.arange(t.shape[0], device=t.device)[:, None]]


class NeuralODE(nn.Module):
    def __init__(self, field: VectorField, solver: SolverSpec, regularization: Regularization | None = None) -> None:
        super().__init__()
        self.ode = ODEBlock(field, solver, regularization=regularization)

    def vector_field(self, y: torch.Tensor) -> torch.Tensor:
        return self.ode.func(None, y)

    def forward(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # The field is autonomous, so every row may start at its own time: shift each to 0 and solve once over
        # the union of the shifted times (one time grid for a whole batch of irregular windows).
        shifted = t - t[:, :1]
        union = torch.unique(shifted)
        return gather_rows(self.ode(y0, union, last_only=False), union, shifted)

    predict = forward


class ResNetEuler(nn.Module):
    def __init__(self, field: VectorField, dt: float) -> None:
        super().__init__()
        self.field = field
        self.dt = dt

    def vector_field(self, y: torch.Tensor) -> torch.Tensor:
        return self.field(None, y)

    def steps(self, y0: torch.Tensor, n: int) -> torch.Tensor:
        """y0 and ``n`` residual steps after it: [B, n + 1, D]."""
        ys = [y0]
        for _ in range(n):
            ys.append(ys[-1] + self.dt * self.field(None, ys[-1]))
        return torch.stack(ys, 1)

    def forward(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.steps(y0, t.shape[1] - 1)  # one step per observation, whatever the time between them

    def predict(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """At the times ``t``: its steps sit at t[:, 0] + k dt, interpolated linearly between."""
        position = (t - t[:, :1]) / self.dt
        ys = self.steps(y0, int(position.max().ceil()) + 1)
        lower = position.floor().long()
        frac = (position - lower)[..., None]
        rows = torch.arange(len(y0), device=y0.device)[:, None]
        return (1 - frac) * ys[rows, lower] + frac * ys[rows, lower + 1]


class DynamicsRNN(nn.Module):
    def __init__(self, scales: Scales, *, hidden: int = 25, cell: str = "gru", use_dt: bool = True,
                 time_unit: float = 1.0) -> None:
        super().__init__()
        dim = scales.rate.numel()
        self.use_dt = use_dt
        self.time_unit = time_unit  # gaps enter in units of the mean observation gap, so they are O(1)
        self.hidden = hidden
        self.register_buffer("mean", scales.mean.clone())
        self.register_buffer("std", scales.std.clone())
        self.register_buffer("step_scale", scales.rate.clone() * time_unit)  # a typical change per mean gap
        self.cell = make_cell(cell, dim + int(use_dt), hidden)
        self.head = nn.Linear(hidden, dim)

    def forward(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Free-running from ``y0``: each step reads the previous output (and gap) and adds the predicted change."""
        h = y0.new_zeros(len(y0), self.hidden)
        ys = [y0]
        for k in range(1, t.shape[1]):
            inputs = (ys[-1] - self.mean) / self.std
            if self.use_dt:
                inputs = torch.cat([inputs, ((t[:, k] - t[:, k - 1]) / self.time_unit)[:, None]], -1)
            h = self.cell(inputs, h)
            ys.append(ys[-1] + self.step_scale * self.head(h))
        return torch.stack(ys, 1)

    predict = forward
