"""Sampled trajectories of small 2-D dynamical systems: the course's neural-ODE exercises.

``cubic``: the oscillator y' = (y^3) A, A = [[-0.1, 2.0], [-2.0, -0.1]] (cubes elementwise, y a row vector),
from y(0) = (2, 0) -- torchdiffeq's ``ode_demo`` and the DiffEqFlux course exercise.
``lotka_volterra``: x' = alpha x - beta x y, y' = delta x y - gamma y with (alpha, beta, gamma, delta) =
(1.5, 1, 3, 1), from (1, 1); its orbits circle the equilibrium (gamma/delta, alpha/beta) = (3, 1.5).

Training data: ``n_trajectories`` trajectories over the training span [0, t_end] (the first from the system's
y(0), the others from initial conditions in the region it covers), each observed at ``n_points`` times --
a shared regular grid, or (``irregular``) t=0 plus ``n_points - 1`` uniform random times of its own -- with
Gaussian noise of std ``noise_std``. Evaluation, always on the noise-free truth:

- ``grid``: regular times at the mean training gap over [0, t_end * (1 + extrapolate)]; its first
  ``n_train_grid`` points lie in the training span, the rest is the held-out extrapolation horizon;
- ``midpoints``: the times halfway between the grid points of the training span, never observed in
  regular sampling (interpolation);
- ``test_y0``: unseen initial conditions in the same region, followed over the training span.

The region of initial conditions is that between the equilibrium c the orbits circle and the orbit from
the system's y(0): c + s (y_ref(tau) - c), with tau uniform over the training span and s uniform in
[ic_scale_min, 1]. The truth is solved in float64 at rtol=atol=1e-10; everything is seeded.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from neuralode.data.samples import Samples
from neuralode.errors import ConfigError
from neuralode.solvers import odeint

CUBIC_A = ((-0.1, 2.0), (-2.0, -0.1))
LOTKA_VOLTERRA = {"alpha": 1.5, "beta": 1.0, "gamma": 3.0, "delta": 1.0}
TRUTH_TOL = 1e-10


def cubic_field(y: torch.Tensor) -> torch.Tensor:
    return (y**3) @ torch.tensor(CUBIC_A, dtype=y.dtype, device=y.device)


def lotka_volterra_field(y: torch.Tensor) -> torch.Tensor:
    p = LOTKA_VOLTERRA
    prey, predator = y[..., 0], y[..., 1]
    return torch.stack([p["alpha"] * prey - p["beta"] * prey * predator,
                        p["delta"] * prey * predator - p["gamma"] * predator], dim=-1)


@dataclass(frozen=True)
class System:
    """An autonomous system dy/dt = field(y) on states [..., D], its usual initial condition and the equilibrium
    its orbits circle (the centre of the region unseen initial conditions are drawn from)."""

    name: str
    field: Callable[[torch.Tensor], torch.Tensor]
    y0: tuple[float, ...]
    center: tuple[float, ...]


SYSTEMS: dict[str, System] = {
    "cubic": System("cubic", cubic_field, (2.0, 0.0), (0.0, 0.0)),
    "lotka_volterra": System("lotka_volterra", lotka_volterra_field, (1.0, 1.0),
                             (LOTKA_VOLTERRA["gamma"] / LOTKA_VOLTERRA["delta"],
                              LOTKA_VOLTERRA["alpha"] / LOTKA_VOLTERRA["beta"])),
}


def solve_truth(system: System, y0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """The exact (to 1e-10) states [N, T, D] from ``y0`` [N, D] at the sorted ``times`` [T] (from 0), in float64."""
    ys = odeint(lambda t, y: system.field(y), y0.double(), times.double(), rtol=TRUTH_TOL, atol=TRUTH_TOL,
                method="dopri8")
    return ys.transpose(0, 1)


def at_times(states: torch.Tensor, solved_at: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Rows of ``states`` [N, T, D] (solved at ``solved_at`` [T]) at ``times`` ([K] shared or [N, K] per row)."""
    times = times.expand(len(states), -1).contiguous()
    return states[torch.arange(len(states))[:, None], torch.searchsorted(solved_at, times)]


@dataclass
class Observations(Samples):
    """``n`` trajectories observed at ``times`` [N, K] (sorted, from 0): noisy ``values`` and the noise-free
    ``clean`` states [N, K, D], started from ``y0`` [N, D]."""

    times: torch.Tensor
    values: torch.Tensor
    clean: torch.Tensor
    y0: torch.Tensor


@dataclass
class DynamicsData:
    """Training observations and the noise-free evaluation sets described in the module docstring."""

    system: System
    train: Observations
    irregular: bool
    t_end: float
    grid: torch.Tensor        # [G]
    n_train_grid: int         # grid[:n_train_grid] lies in [0, t_end]
    grid_truth: torch.Tensor  # [N, G, D] from the training initial conditions
    midpoints: torch.Tensor   # [M]
    mid_truth: torch.Tensor   # [N, M, D]
    test_y0: torch.Tensor     # [N_test, D]
    test_truth: torch.Tensor  # [N_test, n_train_grid, D]

    @property
    def dt(self) -> float:
        """The mean gap between training observations (the grid's spacing)."""
        return float(self.grid[1] - self.grid[0])

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> DynamicsData:
        """A copy with ``fn`` applied to every tensor (a device move, a dtype cast)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["train"] = self.train.apply(fn)
        return DynamicsData(**{k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in values.items()})

    def to(self, device: torch.device | str) -> DynamicsData:
        return self.apply(lambda x: x.to(device))


def region_points(system: System, reference: torch.Tensor, n: int, scale_min: float,
                  gen: torch.Generator) -> torch.Tensor:
    """``n`` points c + s (reference[k] - c) for random rows k of ``reference`` [T, D] and s ~ U[scale_min, 1]."""
    center = torch.tensor(system.center, dtype=reference.dtype)
    rows = torch.randint(len(reference), (n,), generator=gen)
    scale = scale_min + (1 - scale_min) * torch.rand(n, 1, generator=gen, dtype=reference.dtype)
    return center + scale * (reference[rows] - center)


def observation_times(n_traj: int, n_points: int, t_end: float, irregular: bool, gen: torch.Generator) -> torch.Tensor:
    """[N, K]: a shared regular grid, or per row t=0 and ``n_points - 1`` sorted uniform times in (0, t_end]."""
    if not irregular:
        return torch.linspace(0.0, t_end, n_points, dtype=torch.float64).expand(n_traj, -1).clone()
    draws = torch.sort(torch.rand(n_traj, n_points - 1, generator=gen, dtype=torch.float64) * t_end, dim=1).values
    return torch.cat([torch.zeros(n_traj, 1, dtype=torch.float64), draws], dim=1)


def generate_dynamics(system: System, *, t_end: float, n_points: int, extrapolate: float, noise_std: float,
                      irregular: bool, n_trajectories: int, n_test: int, ic_scale_min: float, seed: int) -> DynamicsData:
    """Training observations and evaluation sets (float32); a function of its arguments."""
    if n_points < 2 or n_trajectories < 1 or n_test < 1 or t_end <= 0 or extrapolate < 0 or noise_std < 0:
        raise ConfigError("data: need n_points >= 2, n_trajectories >= 1, n_test >= 1, t_end > 0, extrapolate >= 0 "
                          f"and noise_std >= 0; got {n_points}, {n_trajectories}, {n_test}, {t_end}, {extrapolate}, "
                          f"{noise_std}")
    if not 0 < ic_scale_min <= 1:
        raise ConfigError(f"data.ic_scale_min must be in (0, 1], got {ic_scale_min}")
    gen = torch.Generator().manual_seed(seed)
    dt = t_end / (n_points - 1)
    n_extra = round(extrapolate * (n_points - 1))
    grid = torch.arange(n_points + n_extra, dtype=torch.float64) * dt
    midpoints = grid[:n_points - 1] + dt / 2
    y_ref = torch.tensor(system.y0, dtype=torch.float64)[None]
    reference = solve_truth(system, y_ref, grid[:n_points])[0]
    y0 = torch.cat([y_ref, region_points(system, reference, n_trajectories - 1, ic_scale_min, gen)])
    test_y0 = region_points(system, reference, n_test, ic_scale_min, gen)
    times = observation_times(n_trajectories, n_points, t_end, irregular, gen)
    # One solve for every initial condition at every time any of them needs.
    solved_at = torch.unique(torch.cat([times.flatten(), grid, midpoints]))
    truth = solve_truth(system, torch.cat([y0, test_y0]), solved_at)
    train, test = truth[:n_trajectories], truth[n_trajectories:]
    clean = at_times(train, solved_at, times)
    values = clean + noise_std * torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    data = DynamicsData(
        system=system, train=Observations(times, values, clean, y0), irregular=irregular, t_end=t_end, grid=grid,
        n_train_grid=n_points,
        grid_truth=at_times(train, solved_at, grid), midpoints=midpoints, mid_truth=at_times(train, solved_at, midpoints),
        test_y0=test_y0, test_truth=at_times(test, solved_at, grid[:n_points]))
    return data.apply(torch.Tensor.float)
